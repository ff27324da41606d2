"""``/classify`` latency alone and while clients ask for Score-CAM explanations, which run a forward pass
per channel (a minute a photo on 2 CPU cores), through ``trashcam serve`` as users start it.

    python -m bench.expensive_load --out docs/reliability/expensive-load.json

Phase one sends ``--requests`` single-photo ``/classify`` requests one after another. Phase two starts
``--expensive`` parallel ``/explain`` requests with ``method=scorecam`` and, once they are in, sends the
same classify requests again. Prints (and writes) the p50 and p99 of both phases and their ratio, and
what each Score-CAM request got (status, seconds, Retry-After).
"""

import argparse
import io
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import torch
from PIL import Image

from bench.operator_story import service
from bench.record import run_record, write_json


def photo(seed: int, size: tuple[int, int] = (512, 384)) -> bytes:
    """A JPEG of smooth random colours, the size of a small phone photo."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def classify_latencies(client: httpx2.Client, requests: int) -> list[float]:
    """Seconds of each of ``requests`` single-photo classifications, one after another."""
    seconds = []
    for index in range(requests):
        started = time.perf_counter()
        response = client.post("/classify", files={"file": ("p.jpg", photo(index), "image/jpeg")})
        seconds.append(time.perf_counter() - started)
        response.raise_for_status()
    return seconds


def summary(seconds: Sequence[float]) -> dict[str, float]:
    return {
        "requests": len(seconds),
        "p50_ms": round(1000 * statistics.median(seconds), 1),
        "p99_ms": round(1000 * percentile(seconds, 99), 1),
        "max_ms": round(1000 * max(seconds), 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--expensive", type=int, default=4)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="expensive-load-") as scratch:
        log = Path(scratch) / "service.log"
        with service(Path(scratch) / "var", args.redis_url, log, None) as client:
            ready = client.get("/ready").json()
            classify_latencies(client, 10)  # warm-up: lanes, allocator, caches
            alone = classify_latencies(client, args.requests)
            # Each Score-CAM request's answer, and when it ended.
            explained: list[tuple[dict[str, Any], float]] = []

            def scorecam(index: int) -> None:
                started = time.perf_counter()
                with httpx2.Client(base_url=client.base_url, timeout=600) as own:
                    response = own.post(
                        "/explain",
                        files={"file": ("p.jpg", photo(1000 + index), "image/jpeg")},
                        data={"method": "scorecam"},
                    )
                explained.append(
                    (
                        {
                            "status": response.status_code,
                            "seconds": round(time.perf_counter() - started, 1),
                            "retry_after": response.headers.get("retry-after"),
                        },
                        time.perf_counter(),
                    )
                )

            threads = [threading.Thread(target=scorecam, args=(i,)) for i in range(args.expensive)]
            for thread in threads:
                thread.start()
            time.sleep(2.0)  # the explanations are in: refused, or running
            loaded = classify_latencies(client, args.requests)
            loaded_done = time.perf_counter()
            for thread in threads:
                thread.join()
    # The classify phase counts only if an admitted Score-CAM ran through all of it.
    overlapped = any(entry["status"] == 200 and ended > loaded_done for entry, ended in explained)
    result = run_record(
        "bench.expensive_load",
        argv,
        torch.device(ready.get("device", "cpu")),
        lanes=ready.get("lanes"),
        precision=ready.get("precision"),
        alone=summary(alone),
        under_scorecam=summary(loaded),
        p99_ratio=round(percentile(loaded, 99) / percentile(alone, 99), 2),
        scorecam=sorted((entry for entry, _ in explained), key=lambda entry: entry["status"]),
        a_scorecam_ran_through_the_classify_phase=overlapped,
    )
    print(json.dumps(result, indent=2))
    if args.out is not None:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
