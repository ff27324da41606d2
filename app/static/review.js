// The review page: one photo at a time from GET /review, a key press per class, undo.
"use strict";

// busy: a request is under way, and key presses wait for it (a held key labels one photo, not many).
const state = { items: [], current: null, done: [], classes: [], busy: false };
const PAGE = 100;

function keyHeader() {
  return { "X-API-Key": $("key").value };
}

function setStatus(text) {
  $("status").textContent = text;
}

async function fetchQueue() {
  const params = new URLSearchParams({ state: "pending", order: $("order").value, limit: String(PAGE) });
  if ($("site").value) params.set("site", $("site").value);
  const response = await fetch(`/review?${params}`, { headers: keyHeader() });
  if (!response.ok) {
    setStatus(await errorText(response));
    return false;
  }
  const page = await response.json();
  state.items = page.items;
  $("left").textContent = String(page.total);
  return true;
}

function choiceButton(label, key) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = key ? `${key}: ${label}` : label;
  button.dataset.label = label;
  button.addEventListener("click", () => run(() => choose(label)));
  return button;
}

async function showNext(left) {
  // The page holds at most PAGE items; once they are labelled the next ones are fetched.
  if (state.items.length === 0 && left > 0 && !(await fetchQueue())) {
    $("item").hidden = true;
    return;
  }
  state.current = state.items.shift() || null;
  if (!state.current) {
    $("item").hidden = true;
    setStatus("Nothing left to review.");
    return;
  }
  const response = await fetch(`/review/${state.current.id}`, { headers: keyHeader() });
  if (!response.ok) {
    // Nothing stays on screen that a key press could label by mistake.
    $("item").hidden = true;
    setStatus(await errorText(response));
    return;
  }
  const item = await response.json();
  state.classes = item.classes;
  $("guess").textContent = item.predicted;
  $("confidence").textContent = `${Math.round(item.confidence * 100)}%`;
  $("why").textContent = item.unsure_reasons.length ? `unsure: ${item.unsure_reasons.join(", ")}` : "sure";
  $("photo").src = `data:image/jpeg;base64,${item.thumbnail}`;
  $("heatmap").hidden = !item.heatmap;
  if (item.heatmap) $("heatmap").src = `data:image/png;base64,${item.heatmap}`;
  $("choices").replaceChildren(
    ...item.classes.map((name, index) => choiceButton(name, String(index + 1))),
    choiceButton("skip", "s"),
    choiceButton("not waste", "n"),
  );
  $("last-key").textContent = String(item.classes.length);
  $("item").hidden = false;
  setStatus("");
}

async function choose(label) {
  const item = state.current;
  if (!item || $("item").hidden) return;
  const form = new FormData();
  form.set("label", label);
  // An undone item keeps its first label on record; the new one is recorded beside it.
  if (item.relabel) form.set("relabel", "true");
  const response = await fetch(`/review/${item.id}`, { method: "POST", headers: keyHeader(), body: form });
  if (!response.ok) {
    setStatus(await errorText(response));
    return;
  }
  state.done.push(item);
  $("undo").disabled = false;
  const left = Math.max(0, Number($("left").textContent) - 1);
  await showNext(left);
  // Said last, once the next photo is on screen and ready for a key press.
  $("left").textContent = String(left);
  setStatus(`${item.filename || item.id}: ${label}`);
}

async function undo() {
  const item = state.done.pop();
  if (!item) return;
  if (state.current) state.items.unshift(state.current);
  item.relabel = true;
  state.items.unshift(item);
  $("undo").disabled = state.done.length === 0;
  const left = Number($("left").textContent) + 1;
  await showNext(left);
  $("left").textContent = String(left);
}

// One request at a time: what is on screen is what the next key press labels.
async function run(action) {
  if (state.busy) return;
  state.busy = true;
  try {
    await action();
  } finally {
    state.busy = false;
  }
}

document.addEventListener("keydown", (event) => {
  if ($("item").hidden || event.repeat || event.target instanceof HTMLInputElement) return;
  const index = Number(event.key) - 1;
  if (Number.isInteger(index) && index >= 0 && index < state.classes.length) {
    run(() => choose(state.classes[index]));
  } else if (event.key === "s") {
    run(() => choose("skip"));
  } else if (event.key === "n") {
    run(() => choose("not waste"));
  } else if (event.key === "u") {
    run(undo);
  }
});

$("filters").addEventListener("submit", (event) => {
  event.preventDefault();
  run(async () => {
    state.done = [];
    $("undo").disabled = true;
    if (await fetchQueue()) await showNext(Number($("left").textContent));
  });
});
$("undo").addEventListener("click", () => run(undo));
