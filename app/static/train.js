// The training page: start a job with POST /train, follow it with GET /train/{id}, draw its curves as
// the epochs come, and make the new model the one that serves with PUT /models/default.
"use strict";

const COLOURS = { train: "#0b6e4f", val: "#9a3412" };

function drawCurves(canvas, history, metric) {
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  context.clearRect(0, 0, width, height);
  if (!history.length) return;
  const values = history
    .flatMap((r) => [r[`train_${metric}`], r[`val_${metric}`]])
    .filter((v) => typeof v === "number" && Number.isFinite(v));
  if (!values.length) return;
  const low = metric === "accuracy" ? 0 : Math.min(...values);
  const high = metric === "accuracy" ? 1 : Math.max(...values);
  const first = history[0].epoch;
  const x = (epoch) => 30 + ((width - 40) * (epoch - first)) / Math.max(1, history.length - 1);
  const y = (value) => height - 20 - ((height - 30) * (value - low)) / Math.max(1e-9, high - low);
  context.strokeStyle = "#d0d7de";
  context.strokeRect(30, 10, width - 40, height - 30);
  context.font = "12px system-ui";
  // Axis values: the metric at the bottom and top of the frame, and the first and last epoch.
  context.fillStyle = "#57606a";
  const digits = metric === "accuracy" ? 1 : 2;
  context.fillText(high.toFixed(digits), 0, 20);
  context.fillText(low.toFixed(digits), 0, height - 20);
  const last = history[history.length - 1].epoch;
  context.fillText(`epoch ${first}`, 30, height - 4);
  if (last !== first) context.fillText(`epoch ${last}`, width - 60, height - 4);
  for (const split of ["train", "val"]) {
    context.strokeStyle = COLOURS[split];
    context.fillStyle = COLOURS[split];
    context.beginPath();
    let drawing = false;
    for (const record of history) {
      const value = record[`${split}_${metric}`];
      if (typeof value !== "number" || !Number.isFinite(value)) continue;
      if (drawing) context.lineTo(x(record.epoch), y(value));
      else context.moveTo(x(record.epoch), y(value));
      drawing = true;
    }
    context.stroke();
    context.fillText(split === "train" ? "train" : "validation", width - 90, split === "train" ? 24 : 40);
  }
}

function show(job) {
  $("job").hidden = false;
  $("job-id").textContent = job.id.slice(0, 8);
  $("state").textContent = job.state;
  $("progress").value = job.progress;
  const eta = job.eta_seconds == null ? "" : `, about ${Math.round(job.eta_seconds)} s left`;
  $("epoch").textContent = `epoch ${job.epoch} of ${job.epochs}${eta}`;
  drawCurves($("loss"), job.history, "loss");
  drawCurves($("accuracy"), job.history, "accuracy");
}

async function follow(url, key) {
  for (;;) {
    const response = await fetch(url, { headers: { "X-API-Key": key } });
    if (!response.ok) {
      $("status").textContent = `Could not read the job: ${await errorText(response)}`;
      return;
    }
    const job = await response.json();
    show(job);
    if (job.state === "succeeded") {
      const r = job.result;
      const test = r.test_accuracy == null ? "n/a" : `${(100 * r.test_accuracy).toFixed(1)}%`;
      $("report").textContent =
        `Registered ${r.model.name} ${r.model.version}: best validation accuracy ` +
        `${(100 * r.best_val_accuracy).toFixed(1)}% (epoch ${r.best_epoch}), test accuracy ${test}` +
        (r.calibrated ? ", probabilities calibrated." : ".");
      $("done").hidden = false;
      const serving = await servingNow();
      $("serving-now").textContent = serving
        ? `Serving now: ${serving.name} ${serving.version}.`
        : "No model is serving now.";
      $("promote").onclick = () => promote(r.model, serving, key);
      return;
    }
    if (job.state === "failed" || job.state === "cancelled") {
      $("status").textContent = `The job ${job.state}${job.error ? `: ${job.error}` : ""}`;
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 1500));
  }
}

// What serves every request now (GET /models), or null.
async function servingNow() {
  const response = await fetch("/models");
  return response.ok ? (await response.json()).serving : null;
}

// Every request is answered by the promoted model at once: ask first, and say how to undo it.
async function promote(model, serving, key) {
  const replaced = serving ? ` in place of ${serving.name} ${serving.version}` : "";
  const question =
    `Serve ${model.name} ${model.version}${replaced}? Every request will use it from now on; ` +
    "POST /models/default/rollback undoes it.";
  if (!window.confirm(question)) {
    $("status").textContent = "Nothing changed.";
    return;
  }
  const response = await fetch("/models/default", {
    method: "PUT",
    headers: { "X-API-Key": key, "Content-Type": "application/json" },
    body: JSON.stringify(model),
  });
  $("status").textContent = response.ok
    ? `${model.name} ${model.version} is now serving.`
    : `Could not serve it: ${await errorText(response)}`;
  if (response.ok) {
    $("serving-now").textContent = `Serving now: ${model.name} ${model.version}.`;
  }
}

$("train").addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = $("key").value;
  const archive = $("archive").files[0];
  if (!archive) {
    $("status").textContent = "Choose an archive of photos first.";
    return;
  }
  const form = new FormData();
  form.append("file", archive);
  for (const field of ["base", "name", "epochs"]) {
    if ($(field).value) form.append(field, $(field).value);
  }
  // The split is three fields: train, validation, test.
  if ($("split").value) for (const fraction of $("split").value.split(" ")) form.append("split", fraction);
  $("start").disabled = true;
  $("status").textContent = "Uploading…";
  try {
    const response = await fetch("/train", { method: "POST", headers: { "X-API-Key": key }, body: form });
    if (!response.ok) {
      $("status").textContent = `Training was refused: ${await errorText(response)}`;
      return;
    }
    $("status").textContent = "Training started.";
    await follow(response.headers.get("Location"), key);
  } finally {
    $("start").disabled = false;
  }
});

// Reopen a job started earlier (here or elsewhere): follow it again by its id.
$("reopen").addEventListener("submit", async (event) => {
  event.preventDefault();
  const id = $("job-to-open").value.trim();
  if (!id) return;
  $("status").textContent = `Following job ${id}.`;
  await follow(`/train/${encodeURIComponent(id)}`, $("key").value);
});
