// The review page: one photo at a time from GET /review, a key press per class, undo.
"use strict";

const state = { items: [], current: null, done: [], classes: [] };

function keyHeader() {
  return { "X-API-Key": $("key").value };
}

function setStatus(text) {
  $("status").textContent = text;
}

async function loadQueue() {
  const params = new URLSearchParams({ state: "pending", order: $("order").value, limit: "100" });
  if ($("site").value) params.set("site", $("site").value);
  const response = await fetch(`/review?${params}`, { headers: keyHeader() });
  if (!response.ok) {
    setStatus(await errorText(response));
    return;
  }
  const page = await response.json();
  state.items = page.items;
  $("left").textContent = String(page.total);
  await showNext();
}

function choiceButton(label, key) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = key ? `${key}: ${label}` : label;
  button.dataset.label = label;
  button.addEventListener("click", () => choose(label));
  return button;
}

async function showNext() {
  state.current = state.items.shift() || null;
  if (!state.current) {
    $("item").hidden = true;
    setStatus("Nothing left to review.");
    return;
  }
  const response = await fetch(`/review/${state.current.id}`, { headers: keyHeader() });
  if (!response.ok) {
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
  const choices = $("choices");
  choices.replaceChildren(
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
  if (!item) return;
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
  $("left").textContent = String(Math.max(0, Number($("left").textContent) - 1));
  await showNext();
  setStatus(`${item.filename || item.id}: ${label}`);
}

async function undo() {
  const item = state.done.pop();
  if (!item) return;
  if (state.current) state.items.unshift(state.current);
  item.relabel = true;
  state.items.unshift(item);
  $("undo").disabled = state.done.length === 0;
  $("left").textContent = String(Number($("left").textContent) + 1);
  await showNext();
}

document.addEventListener("keydown", (event) => {
  if ($("item").hidden || event.target instanceof HTMLInputElement) return;
  const index = Number(event.key) - 1;
  if (Number.isInteger(index) && index >= 0 && index < state.classes.length) {
    choose(state.classes[index]);
  } else if (event.key === "s") {
    choose("skip");
  } else if (event.key === "n") {
    choose("not waste");
  } else if (event.key === "u") {
    undo();
  }
});

$("filters").addEventListener("submit", (event) => {
  event.preventDefault();
  loadQueue();
});
$("undo").addEventListener("click", undo);
