"""Where a loaded server's CPU goes, thread by thread: ``trashcam api`` serving ``--checkpoint`` (or, with
``--trivial``, a 4-channel simple CNN of its classes and input size, so that the request path is what is
measured), ``--clients`` concurrent clients on ``--endpoint``; each thread's CPU a photo, read from
``/proc``, with the event loop's thread named and the inference lanes' total from ``/metrics``.

    python -m bench.thread_cpu --checkpoint runs/int8-ac/model.pt --manifest runs/int8-ac/manifest.json \\
        --data trashnet=data/trashnet-112.tar.gz --data extra=$DATA_ROOT/waste-extra-144.tar.gz \\
        --endpoint explain --out docs/performance/thread-cpu-explain.json

``--profile FILE`` runs the server under ``cProfile`` on the event loop's thread, timed in that thread's
CPU time, and writes its statistics to FILE (``python -m pstats FILE``).
"""

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from app.cli import piece_commands, trashcam_command
from bench.photos import add_checkpoint_and_photos, load_photos
from bench.record import run_record, write_json
from bench.service_load import load, running, trivial_checkpoint

PORT = 8112
TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """Each thread's user and system CPU seconds so far, by thread id."""
    seconds = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        seconds[int(tid)] = (int(fields[11]) + int(fields[12])) / TICKS
    return seconds


def profiled(stats: str) -> None:
    """Serve as ``trashcam api`` does, under cProfile on the event loop's thread (its CPU time)."""
    import cProfile
    import time

    from app.cli import main

    def stop(*_: object) -> None:
        raise SystemExit(0)  # uvicorn raises the signal again after its shutdown: end here instead

    signal.signal(signal.SIGTERM, stop)
    profile = cProfile.Profile(time.thread_time)
    profile.enable()
    try:
        main(["api", "--host", "127.0.0.1", "--port", str(PORT)])
    finally:
        profile.disable()
        profile.dump_stats(stats)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_checkpoint_and_photos(parser)
    parser.add_argument("--trivial", action="store_true", help="serve a 4-channel CNN instead")
    parser.add_argument("--endpoint", default="classify", choices=["classify", "explain"])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--profile", type=Path, help="cProfile statistics of the event loop's thread")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    photos = load_photos(args.manifest, args.data, "test")
    with tempfile.TemporaryDirectory(prefix="bench-thread-cpu-") as var:
        model = args.checkpoint
        if args.trivial:
            model = trivial_checkpoint(args.checkpoint, Path(var) / "trivial.pt")
        env = {"TRASHCAM_MODEL_PATH": str(model), "TRASHCAM_VAR_DIR": str(Path(var) / "var")}
        command = trashcam_command(piece_commands("127.0.0.1", PORT)["api"])
        if args.profile is not None:
            code = f"from bench.thread_cpu import profiled; profiled({str(args.profile.resolve())!r})"
            command = [sys.executable, "-c", code]
        url = f"http://127.0.0.1:{PORT}/{args.endpoint}"
        with running(command, PORT, env) as server:
            asyncio.run(load(url, photos, clients=args.clients, requests=200, warmup=100, server=server))
            before = thread_cpu_seconds(server.pid)
            timed = asyncio.run(
                load(url, photos, clients=args.clients, requests=args.requests, warmup=0, server=server)
            )
            after = thread_cpu_seconds(server.pid)
    answered = max(1, timed.answered)
    threads = sorted(
        ((1000 * (after[tid] - before.get(tid, 0.0)) / answered, tid) for tid in after), reverse=True
    )
    result = {
        "photos_per_s": timed.answered / timed.seconds,
        "errors": timed.errors,
        "server_cpu_ms_per_photo": 1000 * timed.server_cpu / answered,
        "lanes_cpu_ms_per_photo": None if timed.lane_cpu is None else 1000 * timed.lane_cpu / answered,
        "event_loop_cpu_ms_per_photo": next((ms for ms, tid in threads if tid == server.pid), 0.0),
        # Every thread of the process, busiest first (the event loop's is the process id).
        "threads_cpu_ms_per_photo": [
            {"thread": "event loop" if tid == server.pid else tid, "ms": ms} for ms, tid in threads if ms > 0
        ],
    }
    print(json.dumps(result, indent=2))
    if args.out is not None:
        write_json(
            args.out,
            run_record(
                "bench.thread_cpu",
                argv,
                torch.device("cpu"),
                endpoint=args.endpoint,
                clients=args.clients,
                trivial=args.trivial,
                **result,
            ),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
