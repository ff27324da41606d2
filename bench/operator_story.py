"""An operator's story, through the real HTTP API and workers: label k photos per class of one site,
fine-tune the serving model on them, and compare on the site's other photos.

    python -m bench.operator_story --extra ../shared/data/waste-extra-144.tar.gz --source sd --k 10 30 \\
        --out docs/operator

It starts the service with ``trashcam serve`` (its own var folder, a Redis database of its own), and
for each k, with photos drawn per class with ``--seed`` (the rest of the site's photos are the test set):

- (a) the serving model as it is, on every test photo (6-way, and restricted to the site's classes);
- (b) ``POST /train`` with ``base=default``: fine-tuned from the serving model with the finetune recipe,
  and the same from every ``--base NAME=CHECKPOINT`` (registered in the service's model store first);
- (c) ``POST /train`` from scratch (``--scratch-recipe``, ``--scratch-epochs``, batches of 16, as the
  finetune recipe's) on the same photos (``--no-scratch``: not).

``--split`` sets how every job splits its photos (e.g. ``0.85 0.15 0``: no test split).
``--data-root`` is the service's data root, where it finds the base model's data sets to replay.
``--retained-manifest`` (with ``--retained-data``) scores the serving model and every fine-tuned one on
the test split of the base's data sets too, on all its photos and on those of the classes the site sent
none of (``bench.retained``).

Each trained model is then made the default (``PUT /models/default``) and classifies the same test
photos through ``POST /classify``. ``results.json`` holds every figure, the job times and the commands.
"""

import argparse
import csv
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2

from bench.retained import retained_accuracy
from core.model_store import ModelStore
from core.settings import Settings
from models.store import CHECKPOINT_FILE
from training.split import AnyManifest, manifest_and_root

API_KEY = "operator-story-key-0123456789"
KEY = {"X-API-Key": API_KEY}
#: Photos per /classify request (the service's default limit is 32).
CLASSIFY_BATCH = 16


def read_source(archive: Path, source: str) -> dict[str, list[tuple[str, bytes]]]:
    """The photos of ``source`` in a waste-extra style archive (``manifest.csv`` tags each), by class.
    The manifest names a photo by ``path`` (within the archive's folder) or ``file`` (with it)."""
    photos: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
    with tarfile.open(archive) as tar:
        rows: list[dict[str, str]] = []
        for member in tar.getmembers():
            if member.name.endswith("manifest.csv"):
                handle = tar.extractfile(member)
                assert handle is not None
                rows = list(csv.DictReader(io.StringIO(handle.read().decode())))
        wanted = {
            row["path"] if "path" in row else row["file"].split("/", 1)[-1]: row["class"]
            for row in rows
            if row["source"] == source
        }
        for member in tar.getmembers():
            relative = member.name.split("/", 1)[-1]
            if member.isfile() and relative in wanted:
                handle = tar.extractfile(member)
                assert handle is not None
                photos[wanted[relative]].append((Path(relative).name, handle.read()))
    if not photos:
        raise SystemExit(f"{archive}: no photos of source {source!r}")
    return {label: sorted(items) for label, items in sorted(photos.items())}


def draw(
    photos: dict[str, list[tuple[str, bytes]]], k: int, seed: int
) -> tuple[dict[str, list[tuple[str, bytes]]], list[tuple[str, str, bytes]]]:
    """k photos per class for training (seeded) and the rest as (class, name, bytes) test photos."""
    rng = random.Random(seed)
    train, test = {}, []
    for label, items in photos.items():
        order = list(range(len(items)))
        rng.shuffle(order)
        train[label] = [items[i] for i in order[:k]]
        test += [(label, *items[i]) for i in sorted(order[k:])]
    return train, test


def zip_of(photos: dict[str, list[tuple[str, bytes]]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for label, items in photos.items():
            for name, data in items:
                archive.writestr(f"{label}/{name}", data)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def service(var_dir: Path, redis_url: str, log: Path, data_root: Path | None) -> Iterator[httpx2.Client]:
    """``trashcam serve`` (API and both workers), as a user starts it, until the block ends."""
    port = free_port()
    env = {
        **os.environ,
        "TRASHCAM_VAR_DIR": str(var_dir),
        "TRASHCAM_REDIS_URL": redis_url,
        "TRASHCAM_API_KEYS": json.dumps([API_KEY]),
    }
    if data_root is not None:
        env["TRASHCAM_DATA_ROOT"] = str(data_root.resolve())
    script = Path(sys.executable).with_name("trashcam")
    command = [str(script), "serve", "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "ab") as output:
        process = subprocess.Popen(
            command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if client.get("/ready").json().get("ready"):
                        break
                except (httpx2.HTTPError, ValueError):
                    pass
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit(f"the service did not become ready; see {log}")
                time.sleep(1)
            yield client
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:  # the API and its workers, all of them
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def classify(client: httpx2.Client, test: Sequence[tuple[str, str, bytes]]) -> list[dict[str, Any]]:
    """The service's answer for every test photo, in order."""
    results: list[dict[str, Any]] = []
    for start in range(0, len(test), CLASSIFY_BATCH):
        chunk = test[start : start + CLASSIFY_BATCH]
        files = [("files", (name, data, "image/jpeg")) for _, name, data in chunk]
        response = client.post("/classify", files=files)
        response.raise_for_status()
        results += response.json()["results"]
    return results


def score(
    results: Sequence[dict[str, Any]], test: Sequence[tuple[str, str, bytes]], classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy (the model's own classes, and only the site's), the unsure share and the accuracy on
    the photos the model is sure of."""
    right = restricted = sure = sure_right = 0
    for result, (label, _, _) in zip(results, test, strict=True):
        right += result["label"] == label
        site = [p for p in result["predictions"] if p["label"] in classes]
        restricted += bool(site) and site[0]["label"] == label
        if not result["unsure"]:
            sure += 1
            sure_right += result["label"] == label
    n = len(test)
    return {
        "photos": n,
        "accuracy": right / n,
        "accuracy_site_classes": restricted / n,
        "unsure_share": 1 - sure / n,
        "accuracy_when_sure": sure_right / sure if sure else None,
        "calibrated": bool(results[0]["calibrated"]),
        "model": results[0]["model"],
    }


#: A training form: fields, a repeated one (``split``) as a list.
Form = dict[str, str | list[str]]


def start_job(client: httpx2.Client, form: Form, upload: bytes) -> str:
    """Start a training job; its URL. A ``base`` is resolved now, to the model serving now."""
    created = client.post("/train", files={"file": ("site.zip", upload)}, data=form, headers=KEY)
    if created.status_code != 202:
        raise SystemExit(f"POST /train {form}: {created.status_code} {created.text}")
    return str(created.headers["location"])


def wait_for_job(client: httpx2.Client, url: str) -> dict[str, Any]:
    """The job's record once it has ended, with its wall time (created to finished)."""
    while True:
        job = client.get(url).json()
        if job["state"] in {"succeeded", "failed", "cancelled"}:
            break
        time.sleep(2)
    if job["state"] != "succeeded":
        raise SystemExit(f"job {url}: {job['state']}: {job['error']}")
    job["wall_seconds"] = job["finished_at"] - job["created_at"]
    return dict(job)


def serve_model(client: httpx2.Client, ref: dict[str, str]) -> None:
    response = client.put("/models/default", json=ref, headers=KEY)
    response.raise_for_status()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--extra", type=Path, required=True, help="waste-extra-144.tar.gz")
    parser.add_argument("--source", default="sd", help="the site: a source tag of the archive")
    parser.add_argument("--k", type=int, nargs="+", default=[10, 30], help="labelled photos per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--finetune-epochs", type=int, help="default: the finetune recipe's")
    parser.add_argument(
        "--finetune-default",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fine-tune the serving model, (b) (--no-finetune-default: only the --base models)",
    )
    parser.add_argument(
        "--scratch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train from scratch, (c) (--no-scratch: only fine-tune)",
    )
    parser.add_argument("--scratch-recipe", default="strong")
    parser.add_argument("--scratch-epochs", type=int, default=60)
    parser.add_argument(
        "--base",
        action="append",
        default=[],
        metavar="NAME=CHECKPOINT",
        help="also fine-tune from this checkpoint, registered as NAME (repeatable)",
    )
    parser.add_argument(
        "--split",
        type=float,
        nargs=3,
        metavar=("TRAIN", "VAL", "TEST"),
        help="how every job splits its k photos per class (default: the service's, 0.7 0.13 0.17)",
    )
    parser.add_argument("--data-root", type=Path, help="the service's TRASHCAM_DATA_ROOT")
    parser.add_argument("--retained-manifest", type=Path, help="the base model's split manifest")
    parser.add_argument(
        "--retained-data", action="append", default=[], metavar="NAME=PATH", help="its data sets"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    photos = read_source(args.extra, args.source)
    args.out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "command": "python -m bench.operator_story " + " ".join(sys.argv[1:] if argv is None else argv),
        "source": args.source,
        "photos": {label: len(items) for label, items in photos.items()},
        "seed": args.seed,
        "runs": [],
    }
    bases = dict(item.split("=", 1) for item in args.base)
    with tempfile.TemporaryDirectory(prefix="operator-story-") as scratch:
        var = Path(scratch) / "var"
        store = ModelStore(var / "models", f"sqlite:///{var / 'trashcam.sqlite3'}")
        registered = {name: store.add(name, checkpoint) for name, checkpoint in bases.items()}
        retained = None
        if args.retained_manifest is not None:
            retained = manifest_and_root(
                args.retained_manifest, args.retained_data, Path(scratch) / "retained", run_data=Path(scratch)
            )
        with service(var, args.redis_url, args.out / "service.log", args.data_root) as client:
            record["serving_model"] = client.get("/models").json()["serving"]
            record["bases"] = {
                name: {"checkpoint": bases[name], "sha256": version.sha256}
                for name, version in registered.items()
            }
            story(client, args, photos, record, var, retained)
    (args.out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    for run in record["runs"]:
        a = run["a_serving_model"]
        finetuned = f", (b) {run['b_finetuned']['accuracy']:.4f}" if "b_finetuned" in run else ""
        others = "".join(f", (b) from {name} {row['accuracy']:.4f}" for name, row in run["b_from"].items())
        scratch = f", (c) {run['c_from_scratch']['accuracy']:.4f}" if "c_from_scratch" in run else ""
        print(
            f"k={run['k']}: (a) {a['accuracy']:.4f} "
            f"({a['accuracy_site_classes']:.4f} on the site's classes){finetuned}{others}{scratch}"
        )
    return 0


def story(
    client: httpx2.Client,
    args: argparse.Namespace,
    photos: dict[str, list[tuple[str, bytes]]],
    record: dict[str, Any],
    var: Path,
    retained: tuple[AnyManifest, Path] | None,
) -> None:
    """Every job is started while the shipped model serves, so every ``base=default`` fine-tunes from it
    (a base is resolved when its job is started); models are made the default only afterwards, to be
    scored one by one."""
    classes = list(photos)
    bases = [item.split("=", 1)[0] for item in args.base]
    everything = [(label, name, data) for label, items in photos.items() for name, data in items]
    keys = [(label, name) for label, name, _ in everything]
    answers = dict(zip(keys, classify(client, everything), strict=True))
    lacking = [] if retained is None else [name for name in retained[0].class_names if name not in photos]
    if retained is not None:
        record["a_retained"] = retained_accuracy(Settings().shipped_model_path, *retained, lacking)
    started = []
    tests = {}
    for k in args.k:
        train, test = draw(photos, k, args.seed)
        tests[k] = test
        upload = zip_of(train)
        labelled = sum(map(len, train.values()))
        print(f"k={k}: {labelled} photos to train on, {len(test)} to test", flush=True)
        run: dict[str, Any] = {"k": k, "train_photos": labelled, "test_photos": len(test), "b_from": {}}
        run["a_serving_model"] = score([answers[(label, name)] for label, name, _ in test], test, classes)
        forms: dict[tuple[str, str | None], Form] = {}
        if args.finetune_default:
            forms[("b_finetuned", None)] = finetune_form(args, k, "default", f"site-k{k}-finetuned")
        for base in bases:
            forms[("b_from", base)] = finetune_form(args, k, base, f"site-k{k}-from-{base}")
        if args.scratch:
            forms[("c_from_scratch", None)] = {
                "model": "se_resnet50",
                "recipe": args.scratch_recipe,
                "epochs": str(args.scratch_epochs),
                "batch_size": "16",
                "input_size": "112",
                "amp": "true",
                "name": f"site-k{k}-scratch",
            }
        if args.split:
            for form in forms.values():
                form["split"] = [str(fraction) for fraction in args.split]
        for slot, form in forms.items():
            started.append((run, test, slot, form, start_job(client, form, upload)))
        record["runs"].append(run)
    for base in bases:  # each base as it is, before fine-tuning: (a) for that base
        serve_model(client, {"name": base})
        base_answers = dict(zip(keys, classify(client, everything), strict=True))
        for run in record["runs"]:
            test = tests[run["k"]]
            run[f"a_{base}"] = score([base_answers[(label, name)] for label, name, _ in test], test, classes)
    for run, test, (key, base), form, url in started:
        job = wait_for_job(client, url)
        serve_model(client, job["result"]["model"])
        scored = score(classify(client, test), test, classes)
        row = {
            **scored,
            "form": form,
            "base": job["result"].get("base"),
            "wall_seconds": job["wall_seconds"],
            "train_seconds": job["finished_at"] - job["started_at"],
            "epochs": len(job["history"]),
            "best_val_accuracy": job["result"]["best_val_accuracy"],
            "job_test_accuracy": job["result"]["test_accuracy"],
        }
        if retained is not None:
            model = job["result"]["model"]
            checkpoint = var / "models" / model["name"] / model["version"] / CHECKPOINT_FILE
            row["retained"] = retained_accuracy(checkpoint, *retained, lacking)
        row["retention"] = job["result"].get("retention")
        row["forgetting_check"] = job["result"].get("forgetting_check")
        if base is None:
            run[key] = row
        else:
            run[key][base] = row
        label = key if base is None else f"{key} {base}"
        print(f"  k={run['k']} {label}: {scored['accuracy']:.4f} in {job['wall_seconds']:.0f} s", flush=True)
        (args.out / "results.json").write_text(json.dumps(record, indent=2) + "\n")


def finetune_form(args: argparse.Namespace, k: int, base: str, name: str) -> Form:
    form: Form = {"base": base, "name": name, "amp": "true"}
    if args.finetune_epochs:
        form["epochs"] = str(args.finetune_epochs)
    return form


if __name__ == "__main__":
    sys.exit(main())
