// The classify page: send a photo to /explain and /similar, show the answer, the heatmap and the
// training photos it resembles. Plain DOM, no libraries, so the page runs with no network but the API.
"use strict";

// Each photo (or change of method or model) starts a new generation; answers of an older one are
// dropped, so a slow reply never overwrites the photo chosen after it.
let generation = 0;
let photoUrl = null;

function setStatus(text) {
  $("status").textContent = text;
}

function showBars(predictions) {
  const list = $("bars");
  list.replaceChildren();
  for (const { label, probability } of predictions) {
    const item = document.createElement("li");
    const name = document.createElement("span");
    name.textContent = label;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.setAttribute("role", "presentation");
    const fill = document.createElement("span");
    fill.style.width = `${(100 * probability).toFixed(1)}%`;
    bar.append(fill);
    const value = document.createElement("span");
    value.textContent = `${(100 * probability).toFixed(1)}%`;
    item.setAttribute("aria-label", `${label}: ${(100 * probability).toFixed(1)} percent`);
    item.append(name, bar, value);
    list.append(item);
  }
}

function showSimilar(body) {
  const list = $("similar");
  list.replaceChildren();
  $("similar-status").textContent =
    `${body.neighbours.length} of ${body.indexed} training photos, nearest by their 64-bit deep-feature hash`;
  for (const neighbour of body.neighbours) {
    const item = document.createElement("li");
    const image = document.createElement("img");
    image.src = `data:image/jpeg;base64,${neighbour.thumbnail}`;
    image.alt = `training photo ${neighbour.path}, labelled ${neighbour.label}`;
    const caption = document.createElement("span");
    caption.textContent = `${neighbour.label} · ${neighbour.distance} bits`;
    item.append(image, document.createElement("br"), caption);
    list.append(item);
  }
}

async function similar(file, mine) {
  const form = new FormData();
  form.append("file", file);
  form.append("k", "5");
  const response = await fetch("/similar", { method: "POST", body: form });
  if (mine !== generation) return;
  if (!response.ok) {
    $("similar").replaceChildren();
    $("similar-status").textContent = `No similar photos: ${await errorText(response)}`;
    return;
  }
  const body = await response.json();
  if (mine === generation) showSimilar(body);
}

async function explainWith(file, model) {
  const form = new FormData();
  form.append("file", file);
  form.append("method", $("method").value);
  if (model) form.append("model", model);
  const response = await fetch("/explain", { method: "POST", body: form });
  if (!response.ok) throw new Error(await errorText(response));
  return response.json();
}

function caption(body) {
  const top = body.predictions[0];
  return `${body.model.name} ${body.model.version}: ${body.label} (${(100 * top.probability).toFixed(1)}%)`;
}

// The paper's comparison, live: the same photo explained by the serving model and another stored one.
async function compare(file, serving, mine) {
  const response = await fetch("/models");
  if (!response.ok || mine !== generation) return;
  const others = (await response.json()).models
    .map((m) => `${m.name}:${m.version}`)
    .filter((ref) => ref !== `${serving.model.name}:${serving.model.version}`);
  $("compare").hidden = others.length === 0;
  if (!others.length) return;
  const select = $("other");
  const chosen = others.includes(select.value) ? select.value : others[0];
  select.replaceChildren(...others.map((ref) => new Option(ref, ref, false, ref === chosen)));
  // Both overlays at the server's default blend, so the two heatmaps are drawn alike; each side
  // shows its own answer or its own error.
  const [left, right] = await Promise.allSettled([explainWith(file, null), explainWith(file, chosen)]);
  if (mine !== generation) return;
  for (const [side, outcome, ref] of [["mine", left, "the serving model"], ["theirs", right, chosen]]) {
    if (outcome.status === "fulfilled") {
      $(side).src = `data:image/png;base64,${outcome.value.overlay}`;
      $(`${side}-caption`).textContent = caption(outcome.value);
    } else {
      $(side).removeAttribute("src");
      $(`${side}-caption`).textContent = `${ref} could not explain it: ${outcome.reason.message}`;
    }
  }
}

async function explain(file) {
  const mine = ++generation;
  setStatus(`Looking at ${file.name}…`);
  // The last photo's neighbours must not pass for this one's while it loads.
  $("similar").replaceChildren();
  $("similar-status").textContent = "Looking for similar training photos…";
  const form = new FormData();
  form.append("file", file);
  form.append("method", $("method").value);
  form.append("alpha", "1"); // the heatmap alone; the slider blends it over the photo
  const response = await fetch("/explain", { method: "POST", body: form });
  if (mine !== generation) return;
  if (!response.ok) {
    setStatus(`Could not explain ${file.name}: ${await errorText(response)}`);
    return;
  }
  const body = await response.json();
  if (mine !== generation) return;
  if (photoUrl) URL.revokeObjectURL(photoUrl);
  photoUrl = URL.createObjectURL(file);
  $("original").src = photoUrl;
  $("heatmap").src = `data:image/png;base64,${body.overlay}`;
  $("label").textContent = body.label;
  // Why a person should look: not sure enough, or unlike the photos the model was trained on.
  $("unsure").hidden = !body.unsure;
  $("unsure").textContent = `unsure (${(body.unsure_reasons || []).join(", ")}): a person should look`;
  $("model").textContent =
    `${body.model.name} ${body.model.version}; ${body.method} on ${body.layer}, explaining "${body.target.label}"` +
    (body.calibrated ? "; calibrated probabilities" : "");
  showBars(body.predictions);
  $("result").hidden = false;
  setStatus(`Done: ${file.name}`);
  await Promise.all([similar(file, mine), compare(file, body, mine)]);
}

let current = null;

function choose(file) {
  if (!file) return;
  current = file;
  explain(file).catch((error) => setStatus(`Something went wrong: ${error}`));
}

$("photo").addEventListener("change", (event) => choose(event.target.files[0]));
$("method").addEventListener("change", () => choose(current));
$("other").addEventListener("change", () => choose(current));
$("opacity").addEventListener("input", (event) => {
  $("heatmap").style.opacity = String(event.target.value / 100);
  $("opacity-value").textContent = `${event.target.value}%`;
});
const drop = $("drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  choose(event.dataTransfer.files[0]);
});
