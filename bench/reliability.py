"""The running service under hostile-but-fair use: generated requests, bad images and bounded load.

    python -m bench.reliability --out docs/reliability/reliability.json

Starts the API with the command users run (``trashcam api``), serving ``--checkpoint`` (the shipped
model by default), with an API key, its own var folder and its own Redis database (emptied before and
after: nothing works the queue, so what the generated requests queue is dropped), and measures:

1. Schema conformance: schemathesis generates ``--examples`` requests per operation of the service's
   OpenAPI document and per mode (valid requests with the key, invalid ones with the key, valid ones
   with whatever key it generates), each sent over HTTP and checked: not a 5xx, a documented status, a
   documented content type, a body that fits its schema. Per operation: requests, statuses, 5xx and
   violations. An operation with fewer possible requests (``GET /health`` takes no input) gets those.
2. The bad-image corpus of ``bench/bad_images.py``, each on ``/classify`` and ``/explain``: status,
   expected status and message.
3. Bounded load: ``--clients`` concurrent clients send ``--requests`` test photos to ``/classify``, in
   ``--load-rounds`` rounds: statuses, latency percentiles, and the API's RSS before and after each.
4. Hostile clients (``bench/hostile.py``): Score-CAM beside ``/classify``, photos of costly pixel
   formats at once, ``--slow-sockets`` connections that send a header and nothing more, uploads far
   over the per-file limit, ``--rapid-jobs`` job submissions, archive bombs, and listing thousands of
   jobs.
"""

import argparse
import asyncio
import json
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx2
import psutil
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import CHECKS, load_all_checks, not_a_server_error
from schemathesis.core.result import Err
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.cli import piece_commands, trashcam_command
from bench import hostile
from bench.bad_images import corpus
from bench.photos import Photo, load_photos
from bench.service_load import load, percentile, rss_mb, running
from core.settings import SHIPPED_MODEL_DIR, Settings, get_settings
from models.machine import machine_line
from models.store import CHECKPOINT_FILE
from training.run_folder import RunFolder

PORT = 8110
MAX_UPLOAD_BYTES: int = Settings.model_fields["max_upload_bytes"].default
MAX_IMAGE_PIXELS: int = Settings.model_fields["max_image_pixels"].default
CORE_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def all_checks() -> list[Any]:
    """Every check schemathesis has (its ``--checks all``)."""
    load_all_checks()
    return list(CHECKS.get_all())


#: (name, generation mode, whether the configured key is sent)
PASSES = {
    "valid, with the key": (schemathesis.GenerationMode.POSITIVE, True),
    "invalid, with the key": (schemathesis.GenerationMode.NEGATIVE, True),
    "valid, generated key": (schemathesis.GenerationMode.POSITIVE, False),
}


# --- 1. schema conformance -------------------------------------------------------------------


def failure_titles(error: BaseException) -> list[str]:
    if isinstance(error, FailureGroup):
        return [failure.title for failure in error.exceptions]
    return [getattr(error, "title", type(error).__name__)]


def run_pass(
    operation: Any,
    mode: schemathesis.GenerationMode,
    base_url: str,
    key: str | None,
    examples: int,
    bound_s: float,
    checks: list[Any],
) -> dict[str, Any]:
    """``examples`` generated requests to one operation (fewer if it has fewer, or ``bound_s`` runs
    out), each checked: statuses, 5xx, and each kind of violation with one response that shows it."""
    statuses: Counter[int] = Counter()
    violations: Counter[str] = Counter()
    shown: dict[str, str] = {}
    headers = {"X-API-Key": key} if key is not None else None
    started = time.perf_counter()

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def send(case: schemathesis.Case[Any]) -> None:
        if time.perf_counter() - started > bound_s:
            return
        response = case.call(base_url=base_url, headers=headers, timeout=120)
        statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=checks, headers=headers)
        except (FailureGroup, AssertionError) as error:
            for title in failure_titles(error):
                violations[title] += 1
                request = case.as_curl_command(base_url=base_url)[:400]
                shown.setdefault(title, f"{request} -> {response.status_code} {response.text[:300]}")

    note = None
    try:
        send()
    except Unsatisfiable:
        # E.g. no invalid request exists for an operation whose only input is a free string.
        note = "schemathesis could generate no (more) requests of this kind"
    return {
        "note": note,
        "requests": sum(statuses.values()),
        "statuses": {str(code): n for code, n in sorted(statuses.items())},
        "5xx": sum(n for code, n in statuses.items() if code >= 500),
        "violations": sum(violations.values()),
        "violation_kinds": dict(violations),
        "examples_of_violations": shown,
        "seconds": round(time.perf_counter() - started, 1),
    }


def conformance(
    base_url: str, key: str, examples: int, passes: Sequence[str], bound_s: float, checks: list[Any]
) -> list[dict[str, Any]]:
    """Every operation of the service's document, in every pass."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    rows = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise SystemExit(f"the service's OpenAPI document has an invalid operation: {result.err()}")
        operation = result.ok()
        for name in passes:
            mode, with_key = PASSES[name]
            row = run_pass(operation, mode, base_url, key if with_key else None, examples, bound_s, checks)
            rows.append({"operation": f"{operation.method.upper()} {operation.path}", "pass": name, **row})
            print(json.dumps(rows[-1]), flush=True)
    return rows


# --- 2. bad images ----------------------------------------------------------------------------


def bad_images(base_url: str, max_upload_bytes: int, max_image_pixels: int) -> list[dict[str, Any]]:
    rows = []
    with httpx2.Client(base_url=base_url, timeout=120) as client:
        for case in corpus(max_upload_bytes=max_upload_bytes, max_image_pixels=max_image_pixels):
            for route in ("/classify", "/explain"):
                response = client.post(route, files={"file": (case.filename, case.data, "image/jpeg")})
                body = response.json()
                if response.status_code == 200:
                    answer = body["results"][0] if route == "/classify" else body
                    message = f"label {answer['label']}"
                else:
                    message = body.get("detail", "")[:200]
                rows.append(
                    {
                        "case": case.name,
                        "bytes": len(case.data),
                        "route": route,
                        "status": response.status_code,
                        "expected": case.expected,
                        "as_expected": response.status_code == case.expected,
                        "message": message,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


# --- 3. bounded load --------------------------------------------------------------------------


def bounded_load(
    base_url: str, process: psutil.Process, photos: list[Photo], clients: int, requests: int, rounds: int
) -> dict[str, Any]:
    """``rounds`` rounds of load, the API's RSS before the first and after each: growth that stops
    after the first round is the batches' buffers being allocated, growth in every round a leak."""
    rows: list[dict[str, Any]] = []
    rss = [rss_mb(process)]
    for _ in range(rounds):
        timed = asyncio.run(
            load(
                f"{base_url}/classify",
                photos,
                clients=clients,
                requests=requests,
                warmup=2 * clients if not rows else 0,
                server=process,
            )
        )
        rss.append(rss_mb(process))
        rows.append(
            {
                "requests": requests,
                "statuses": {str(code): n for code, n in sorted(timed.statuses.items(), key=str)},
                "5xx": sum(n for code, n in timed.statuses.items() if isinstance(code, int) and code >= 500),
                "photos_per_s": timed.answered / timed.seconds,
                "p50_ms": 1000 * percentile(timed.latencies, 50),
                "p99_ms": 1000 * percentile(timed.latencies, 99),
                "max_ms": 1000 * max(timed.latencies),
                "mean_batch": sum(timed.batches) / len(timed.batches) if timed.batches else None,
                "rss_mb_after": rss[-1],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return {
        "endpoint": "/classify",
        "clients": clients,
        "requests": requests * rounds,
        "5xx": sum(row["5xx"] for row in rows),
        "rss_mb_before": rss[0],
        "rss_mb_after": rss[-1],
        "rounds": rows,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_MODEL_DIR / CHECKPOINT_FILE)
    parser.add_argument("--manifest", type=Path, default=RunFolder(SHIPPED_MODEL_DIR).manifest)
    parser.add_argument("--data", action="append", default=None, help="where the manifest's data set is")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14", help="a database of its own")
    parser.add_argument("--examples", type=int, default=200, help="generated requests per operation and pass")
    parser.add_argument("--passes", nargs="+", default=list(PASSES), choices=list(PASSES))
    parser.add_argument(
        "--checks",
        choices=["core", "all"],
        default="all",
        help="core: not a 5xx, a documented status, content type and body; all: every check schemathesis has",
    )
    parser.add_argument(
        "--seconds-per-operation", type=float, default=60.0, help="a bound on each operation's pass"
    )
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=1000, help="requests per round of load")
    parser.add_argument("--load-rounds", type=int, default=3)
    parser.add_argument("--slow-sockets", type=int, default=10_000)
    parser.add_argument("--rapid-jobs", type=int, default=2000)
    parser.add_argument("--job-records", type=int, default=2000, help="finished training records to list")
    parser.add_argument("--skip", nargs="*", default=[], choices=["schema", "images", "load", "hostile"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    # The shipped model's test split spans its two data sets: TrashNet ships here, the other is looked
    # for in the data root (where POST /train reads data sets from).
    data = args.data or [
        "trashnet=data/trashnet-112.tar.gz",
        f"extra={get_settings().resolved_data_root / 'waste-extra-144.tar.gz'}",
    ]

    key = secrets.token_hex(16)
    # Its own key for the hostile section: the jobs the schema pass queued count against the other's quota.
    hostile_key = secrets.token_hex(16)
    result: dict[str, Any] = {
        "command": "python -m bench.reliability " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_line(),
        "schemathesis": schemathesis.__version__,
        "checkpoint": str(args.checkpoint),
    }
    queue = redis.Redis.from_url(args.redis_url)
    queue.flushdb()
    with tempfile.TemporaryDirectory(prefix="bench-reliability-") as var:
        env = {
            "TRASHCAM_MODEL_PATH": str(args.checkpoint.resolve()),
            "TRASHCAM_VAR_DIR": var,
            "TRASHCAM_DATA_ROOT": str(Path(var) / "data-root"),
            "TRASHCAM_REDIS_URL": args.redis_url,
            "TRASHCAM_API_KEYS": json.dumps([key, hostile_key]),
            # The limits the bad images are made for (the defaults), whatever this shell has set.
            "TRASHCAM_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
            "TRASHCAM_MAX_IMAGE_PIXELS": str(MAX_IMAGE_PIXELS),
            # Where the API spools uploads, measured by the hostile section.
            "TMPDIR": str(Path(var) / "tmp"),
        }
        (Path(var) / "tmp").mkdir()
        log = Path(var) / "api.log"
        command = trashcam_command(piece_commands("127.0.0.1", PORT)["api"])
        base_url = f"http://127.0.0.1:{PORT}"
        try:
            with running(command, PORT, env, log) as api:
                result["rss_mb_started"] = rss_mb(api)
                if "schema" not in args.skip:
                    checks = all_checks() if args.checks == "all" else CORE_CHECKS
                    rows = conformance(
                        base_url, key, args.examples, args.passes, args.seconds_per_operation, checks
                    )
                    result["schema"] = {
                        "operations": len({row["operation"] for row in rows}),
                        "requests": sum(row["requests"] for row in rows),
                        "5xx": sum(row["5xx"] for row in rows),
                        "violations": sum(row["violations"] for row in rows),
                        "rows": rows,
                    }
                    result["rss_mb_after_schema"] = rss_mb(api)
                if "images" not in args.skip:
                    rows = bad_images(base_url, MAX_UPLOAD_BYTES, MAX_IMAGE_PIXELS)
                    result["bad_images"] = {
                        "cases": len({row["case"] for row in rows}),
                        "requests": len(rows),
                        "as_expected": sum(row["as_expected"] for row in rows),
                        "5xx": sum(row["status"] >= 500 for row in rows),
                        "rows": rows,
                    }
                    result["rss_mb_after_bad_images"] = rss_mb(api)
                if "hostile" not in args.skip:
                    result["hostile"] = {
                        "1_scorecam": hostile.expensive(base_url),
                        "2_pixel_formats": hostile.pixel_formats(base_url, api),
                        "3_slow_sockets": hostile.slow_sockets(base_url, api, log, count=args.slow_sockets),
                        "4_spooling": hostile.spooling(base_url, Path(var) / "tmp"),
                        "7_jobs": hostile.jobs(
                            base_url,
                            hostile_key,
                            Path(var),
                            args.redis_url,
                            rapid=args.rapid_jobs,
                            records=args.job_records,
                        ),
                    }
                if "load" not in args.skip:
                    photos = load_photos(args.manifest, data, "test")
                    result["load"] = bounded_load(
                        base_url, api, photos, args.clients, args.requests, args.load_rounds
                    )
        finally:
            queue.flushdb()

    summary = {key: result[key] for key in ("schema", "bad_images", "load", "hostile") if key in result}
    print(
        json.dumps(
            {
                name: {k: v for k, v in part.items() if k not in ("rows", "rounds")}
                for name, part in summary.items()
            }
        )
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
