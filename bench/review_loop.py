"""The person-in-the-loop, measured through the real service: the model answers a site's photos, a
person labels what the review queue lists first, the site's model is fine-tuned on every label so far
and served, and the site's photos are answered again.

    python -m bench.review_loop --extra ../shared/data/waste-extra-144.tar.gz --source sd --seed 1 \\
        --data-root /tmp/dataroot --out docs/operator/review-loop-seed1

It starts the service with ``trashcam serve`` (its own var folder and Redis database), splits the site's
photos into a pool and a test set (``--test-share``, seeded), and classifies the pool with the shipped
model, every photo kept for review (``review=all``, ``site``). Each round a simulated person labels the
``--batch`` photos that ``GET /review?order=least_sure`` lists first among those the serving model
answered and nobody labelled (with their true class); ``POST /train`` with ``data_path=review:SITE``
fine-tunes the shipped model (``base=se_resnet50``, ``base_version=builtin``) on every label so far; the
result is served and answers the unlabelled pool again. The comparison labels photos drawn at random
from the pool (the same counts, under a site tag of its own). After each round both models answer the
test photos: accuracy, unsure share, accuracy when sure, the job's wall time. ``results.json`` holds it.
"""

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx2

from bench.operator_story import KEY, classify, read_source, score, service, wait_for_job

BASE = {"base": "se_resnet50", "base_version": "builtin"}


def split_pool(
    photos: dict[str, list[tuple[str, bytes]]], test_share: float, seed: int
) -> tuple[list[tuple[str, str, bytes]], list[tuple[str, str, bytes]]]:
    """(pool, test) as (class, name, bytes), each class split with ``test_share`` to the test set."""
    rng = random.Random(seed)
    pool, test = [], []
    for label, items in photos.items():
        order = list(range(len(items)))
        rng.shuffle(order)
        cut = round(len(items) * test_share)
        test += [(label, *items[i]) for i in sorted(order[:cut])]
        pool += [(label, *items[i]) for i in sorted(order[cut:])]
    return pool, test


def keep_for_review(client: httpx2.Client, photos: Sequence[tuple[str, str, bytes]], site: str) -> None:
    for start in range(0, len(photos), 16):
        files = [("files", (name, data, "image/jpeg")) for _, name, data in photos[start : start + 16]]
        response = client.post("/classify", files=files, data={"site": site, "review": "all"}, headers=KEY)
        response.raise_for_status()


def pending(client: httpx2.Client, site: str, model: str, order: str) -> list[dict[str, Any]]:
    params = {"site": site, "model": model, "order": order, "limit": "500"}
    items: list[dict[str, Any]] = []
    while True:
        page = client.get("/review", params={**params, "offset": str(len(items))}, headers=KEY).json()
        items += page["items"]
        if len(items) >= page["total"] or not page["items"]:
            return items


def label(client: httpx2.Client, item: dict[str, Any], truth: dict[str, str]) -> None:
    response = client.post(f"/review/{item['id']}", data={"label": truth[item["filename"]]}, headers=KEY)
    response.raise_for_status()


def train_and_serve(client: httpx2.Client, site: str, name: str) -> dict[str, Any]:
    form = {"data_path": f"review:{site}", "name": name, **BASE}
    created = client.post("/train", data=form, headers=KEY)
    if created.status_code != 202:
        raise SystemExit(f"POST /train {form}: {created.status_code} {created.text}")
    job = wait_for_job(client, str(created.headers["location"]))
    model = job["result"]["model"]
    client.put("/models/default", json=model, headers=KEY).raise_for_status()
    return {"job_seconds": round(job["wall_seconds"], 1), "model": model}


def serving(client: httpx2.Client) -> str:
    model = client.get("/models").json()["serving"]
    return f"{model['name']}:{model['version']}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--extra", type=Path, required=True, help="waste-extra-144.tar.gz")
    parser.add_argument("--source", default="sd")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--test-share", type=float, default=0.4)
    parser.add_argument("--batch", type=int, default=30, help="labels per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-root", type=Path, help="where the service finds the base's data sets")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    photos = read_source(args.extra, args.source)
    classes = sorted(photos)
    pool, test = split_pool(photos, args.test_share, args.seed)
    truth = {name: label_ for label_, name, _ in pool}
    active_site, random_site = args.source, f"{args.source}-random"
    rng = random.Random(args.seed)
    random_order = [name for _, name, _ in pool]
    rng.shuffle(random_order)
    rounds: list[dict[str, Any]] = []
    started = time.time()
    with (
        tempfile.TemporaryDirectory(prefix="review-loop-") as scratch,
        service(Path(scratch) / "var", args.redis_url, args.out / "service.log", args.data_root) as client,
    ):
        shipped = serving(client)
        zero = score(classify(client, test), test, classes)
        rounds.append({"round": 0, "labels": 0, "review": zero, "random": zero})
        print(json.dumps(rounds[-1]), flush=True)
        keep_for_review(client, pool, active_site)
        keep_for_review(client, pool, random_site)
        labelled: set[str] = set()
        for number in range(1, args.rounds + 1):
            # The person labels what the queue lists first: the least sure of the serving model's answers.
            queue = [
                i
                for i in pending(client, active_site, serving(client), "least_sure")
                if i["filename"] not in labelled
            ]
            for item in queue[: args.batch]:
                label(client, item, truth)
                labelled.add(item["filename"])
            count = len(labelled)
            # The comparison: the same count drawn at random (the shipped model's items, oldest first).
            chosen = set(random_order[:count])
            for item in pending(client, random_site, shipped, "oldest"):
                if item["filename"] in chosen:
                    label(client, item, truth)
            trained_random = train_and_serve(client, random_site, f"{args.source}-random")
            random_scores = score(classify(client, test), test, classes)
            trained = train_and_serve(client, active_site, f"{args.source}-review")
            review_scores = score(classify(client, test), test, classes)
            keep_for_review(client, [p for p in pool if p[1] not in labelled], active_site)
            rounds.append(
                {
                    "round": number,
                    "labels": count,
                    "review": {**review_scores, "job_seconds": trained["job_seconds"]},
                    "random": {**random_scores, "job_seconds": trained_random["job_seconds"]},
                    "labelled_per_class": {name: sum(truth[f] == name for f in labelled) for name in classes},
                }
            )
            print(json.dumps(rounds[-1]), flush=True)
    record = {
        "source": args.source,
        "seed": args.seed,
        "pool": len(pool),
        "test": len(test),
        "batch": args.batch,
        "rounds": rounds,
        "wall_seconds": round(time.time() - started, 1),
        "command": "python -m bench.review_loop " + " ".join(argv or sys.argv[1:]),
    }
    (args.out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
