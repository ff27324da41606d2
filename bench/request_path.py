"""What a request costs the server outside the model: ``trashcam api`` serving a trivial model (a
4-channel simple CNN at the checkpoint's input size and classes), ``clients`` concurrent clients on
``/classify``, server CPU a photo; against an earlier checkout of the service served the same way, the
two measured in turn, so that the machine's load falls on both alike.

    git worktree add ../trashcam-6b1a129 6b1a129
    python -m bench.request_path --checkpoint weights/se_resnet50/model.pt \\
        --manifest weights/se_resnet50/manifest.json --data trashnet=data/trashnet-112.tar.gz \\
        --data extra=$DATA_ROOT/waste-extra-144.tar.gz --baseline ../trashcam-6b1a129 \\
        --out docs/performance/request-path.json
"""

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import httpx2
import torch

from app.cli import piece_commands, trashcam_command
from bench.photos import add_checkpoint_and_photos, load_photos
from bench.record import run_record, write_json
from bench.service_load import checkout_api, load, running, trivial_checkpoint

OURS_PORT = 8110
BASELINE_PORT = 8111


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_checkpoint_and_photos(parser)
    parser.add_argument("--baseline", type=Path, help="a checkout of an earlier version (git worktree add)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=1000, help="requests per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    photos = load_photos(args.manifest, args.data, "test")
    rows: dict[str, list[dict[str, float | None]]] = {}
    plans: dict[str, str | None] = {}
    with tempfile.TemporaryDirectory(prefix="bench-request-path-") as var:
        trivial = trivial_checkpoint(args.checkpoint, Path(var) / "trivial.pt")
        servers: list[tuple[str, list[str], int, Path | None]] = [
            ("ours", trashcam_command(piece_commands("127.0.0.1", OURS_PORT)["api"]), OURS_PORT, None)
        ]
        if args.baseline is not None:
            servers.append(("baseline checkout", checkout_api(BASELINE_PORT), BASELINE_PORT, args.baseline))
        for round_index in range(args.rounds):
            for name, command, port, cwd in (
                servers[round_index % len(servers) :] + servers[: round_index % len(servers)]
            ):
                env = {"TRASHCAM_MODEL_PATH": str(trivial), "TRASHCAM_VAR_DIR": str(Path(var) / name)}
                with running(command, port, env, cwd=cwd) as process:
                    url = f"http://127.0.0.1:{port}/classify"
                    timed = asyncio.run(
                        load(
                            url,
                            photos,
                            clients=args.clients,
                            requests=args.requests,
                            warmup=100,
                            server=process,
                        )
                    )
                    # How the lanes ran (a service before /health named them says nothing).
                    plans[name] = httpx2.get(f"http://127.0.0.1:{port}/ready").json().get("lanes")
                row = {
                    "photos_per_s": timed.answered / timed.seconds,
                    "server_cpu_ms_per_photo": 1000 * timed.server_cpu / max(1, timed.answered),
                    "loadgen_cpu_ms_per_photo": 1000 * timed.own_cpu / max(1, timed.answered),
                    # The trivial model runs on torch (OpenVINO has no conversion for it), on the lanes'
                    # own threads where a lane has one thread (a CPU of up to 4 cores): the request path
                    # is what the server spends outside them.
                    "lane_cpu_ms_per_photo": None
                    if timed.lane_cpu is None
                    else 1000 * timed.lane_cpu / max(1, timed.answered),
                    "outside_lanes_cpu_ms_per_photo": None
                    if timed.lane_cpu is None
                    else 1000 * (timed.server_cpu - timed.lane_cpu) / max(1, timed.answered),
                    "errors": timed.errors,
                }
                rows.setdefault(name, []).append(row)
                print(name, json.dumps(row), flush=True)
    medians = {
        name: {
            key: None if any(value is None for value in values) else statistics.median(values)  # type: ignore[type-var]
            for key in group[0]
            for values in [[row[key] for row in group]]
        }
        for name, group in rows.items()
    }
    print(json.dumps(medians, indent=2))
    if args.out is not None:
        record = run_record(
            "bench.request_path",
            argv,
            torch.device("cpu"),
            clients=args.clients,
            lanes=plans,
            rounds=rows,
            median=medians,
        )
        write_json(args.out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
