"""Service throughput and latency against its own ceiling and a naive peer, measured in one run.

    python -m bench.service_load --checkpoint weights/se_resnet50/model.pt \\
        --manifest weights/se_resnet50/manifest.json --data data/trashnet-112.tar.gz \\
        --out docs/performance/service-load.json

1. The in-process ceiling: the checkpoint's forward pass alone on the test photos, already
   preprocessed, at each batch size, precision (fp32, and bf16 where the CPU or GPU has it), layout
   (batches of 4 or more channels-last, or not) and with its batch norms as trained or folded, and the
   test-split accuracy of each (on each data set of the manifest); each one batch at a time on the main
   thread with torch's default threads, and, where the service runs more than one lane
   (``app.lanes``), also as many batches side by side as it has lanes, each on a thread of its own
   with the lanes' thread count. On a CPU, the same network compiled by OpenVINO (``models.runtime``)
   in each precision (and the int8 network beside the checkpoint, where ``trashcam-train quantize`` wrote
   one): one request at a time on every core (one stream), and as many at once as the service has lanes
   (a stream each). The best of all is the ceiling.
2. The service, started with the command users run (``trashcam api``), on each inference backend
   (``TRASHCAM_INFERENCE_BACKEND``: "ours" is the default, "ours, torch" eager PyTorch; where the
   checkpoint has an int8 network, "ours" serves it and "ours, no int8" does not), and the naive
   peer (``bench/naive_peer.py``), with the same checkpoint, one after the other: ``clients`` concurrent
   clients each send one photo a request, ``--requests`` requests in all after a warm-up. Photos/s,
   latency percentiles, errors, the CPU that the server and this load generator used (they share the
   machine's cores), and the mean batch the service ran.
3. The request path alone: ``trashcam api`` serving a trivial model (a 4-channel simple CNN at the
   checkpoint's input size and classes) under the most clients on ``/classify``, in every round: what
   HTTP, decoding and preparing cost the server and this load generator a photo, next to the model.
4. Memory: a fresh ``trashcam api``, its RSS after 100 and after 1,000 ``/explain`` requests.
"""

import argparse
import asyncio
import contextlib
import copy
import io
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx2
import psutil
import torch
from PIL import Image

import models
from app.cli import piece_commands, trashcam_command
from app.lanes import plan_lanes
from bench.photos import Photo, add_checkpoint_and_photos, load_photos
from models.checkpoint import Checkpoint, ModelSpec, build_model, load_checkpoint, save_checkpoint
from models.fusion import fold_batch_norms
from models.machine import machine_line, usable_cores
from models.precision import InferencePrecision, cpu_has_native_bf16
from models.runtime import (
    INT8,
    QUANTIZED_RECORD,
    CompiledNetwork,
    RuntimeOptions,
    RuntimeUnavailableError,
    compile_model,
)
from models.transforms import build_eval_transform

OURS_PORT = 8100
PEER_PORT = 8101
TRIVIAL_PORT = 8102
TORCH_PORT = 8103
BASELINE_PORT = 8104
#: The service as an earlier checkout runs it (``--baseline``).
BASELINE = "ours, baseline checkout"
TRIVIAL = "ours, trivial model"
#: The service with its forward passes on eager PyTorch (TRASHCAM_INFERENCE_BACKEND=torch).
EAGER = "ours, torch"
NO_INT8 = "ours, no int8"
INT8_PORT = 8105


def trivial_checkpoint(checkpoint: Path, path: Path) -> Path:
    """A 4-channel simple CNN with ``checkpoint``'s classes, input size and normalisation: a model that
    costs next to nothing, so that serving it measures the request path alone."""
    spec = load_checkpoint(checkpoint).spec
    trivial = ModelSpec(
        arch="simple_cnn",
        class_names=spec.class_names,
        input_size=spec.input_size,
        mean=spec.mean,
        std=spec.std,
        arch_kwargs={"width": 4},
        recipe={"note": "random weights: the request path alone (bench.service_load)"},
    )
    model = models.create_model("simple_cnn", num_classes=len(spec.class_names), width=4)
    save_checkpoint(path, model, trivial)
    return path


@dataclass(frozen=True)
class LoadResult:
    server: str
    endpoint: str
    clients: int
    requests: int
    errors: int
    seconds: float
    photos_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    server_cpu_cores: float
    loadgen_cpu_cores: float
    mean_batch: float | None
    #: The server's inference lanes' share of ``server_cpu_cores`` (None: not exposed).
    lane_cpu_cores: float | None = None


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# --- 1. the in-process ceiling ------------------------------------------------------------------


def candidate_precisions(device: torch.device) -> list[InferencePrecision]:
    """fp32 in both layouts, and bf16 where it is native (emulated bf16 is many times slower)."""
    dtypes: list[torch.dtype | None] = [None]
    if device.type == "cuda" or cpu_has_native_bf16():
        dtypes.append(torch.bfloat16)
    return [InferencePrecision(dtype, layout) for dtype in dtypes for layout in (False, True)]


class Ceiling:
    """The forward pass alone, on photos already preprocessed: photos/s per precision, layout and
    batch size, with the batch norms as trained and folded into the convolutions (as the service
    runs it), and the test accuracy of each. The checkpoint is loaded and the photos are prepared
    once, for every measurement of the run."""

    def __init__(self, checkpoint_path: Path, photos: Sequence[Photo]) -> None:
        checkpoint = load_checkpoint(checkpoint_path)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        #: The lanes the service runs on this machine by default (``trashcam api``'s own choice).
        self.lanes = plan_lanes(self.device)
        as_trained = build_model(checkpoint).eval().to(self.device)
        folded = copy.deepcopy(as_trained)
        fold_batch_norms(folded)
        transform = build_eval_transform(checkpoint.spec)
        self.inputs = torch.stack([transform(Image.open(io.BytesIO(p.data)).convert("RGB")) for p in photos])
        self.labels = torch.tensor([checkpoint.spec.class_names.index(p.label) for p in photos])
        self.parts = [p.part for p in photos]
        self.variants: dict[str, tuple[InferencePrecision, torch.nn.Module]] = {
            precision.name + suffix: (precision, model)
            for precision, (suffix, model) in itertools.product(
                candidate_precisions(self.device), (("", as_trained), ("+folded_bn", folded))
            )
        }
        #: OpenVINO's compiled networks by name, with the streams they run at once.
        self.compiled: dict[str, tuple[CompiledNetwork, int]] = {}
        if self.device.type == "cpu":
            self.compiled = compiled_variants(folded, checkpoint, self.lanes.lanes, checkpoint_path.parent)
        self._requests = threading.local()

    @property
    def names(self) -> list[str]:
        return [*self.variants, *self.compiled]

    def forward(self, name: str, batch: torch.Tensor) -> torch.Tensor:
        if name in self.compiled:
            # An inference request serves one thread at a time: one per thread that runs the variant.
            networks = self._requests.__dict__.setdefault("networks", {})
            if name not in networks:
                networks[name] = self.compiled[name][0].for_lane()
            return networks[name](batch).logits
        precision, model = self.variants[name]
        # Each precision as named, at every batch size (the service's own rule for small batches aside).
        dtype = precision.dtype
        cast = contextlib.nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)
        with torch.inference_mode(), cast:
            return model(precision.inputs(batch.to(self.device))).float().cpu()

    def accuracy(self) -> dict[str, dict[str, float]]:
        """Top-1 of each variant on all the photos and on each data set's."""
        accuracy = {}
        parts = sorted(set(self.parts) - {""})
        for name in self.names:
            predicted = torch.cat([self.forward(name, chunk).argmax(1) for chunk in self.inputs.split(64)])
            right = predicted == self.labels
            accuracy[name] = {"all": float(right.float().mean())}
            for part in parts:
                chosen = torch.tensor([p == part for p in self.parts])
                accuracy[name][part] = float(right[chosen].float().mean())
        return accuracy

    def measure(
        self,
        batch_sizes: Sequence[int],
        rounds: int,
        *,
        only: str | None = None,
        lanes: Sequence[int] | None = None,
    ) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for name in self.names if only is None else [only]:
            for batch_size in batch_sizes:
                batch = self.inputs[:batch_size]
                counts = lanes or sorted({1, self.lanes.lanes})
                if name in self.compiled:
                    # A compiled variant runs as many requests at once as it has streams.
                    counts = lanes or [self.compiled[name][1]]
                for count in counts:
                    photos_per_s = (
                        self._one_at_a_time(name, batch, rounds)
                        if count == 1
                        else self._side_by_side(name, batch, rounds, count)
                    )
                    rows.append(
                        {"precision": name, "batch": batch_size, "lanes": count, "photos_per_s": photos_per_s}
                    )
        return rows

    def _one_at_a_time(self, name: str, batch: torch.Tensor, rounds: int) -> float:
        self.forward(name, batch)  # warm-up
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            self.forward(name, batch)
            times.append(time.perf_counter() - started)
        return batch.shape[0] / statistics.median(times)

    def _side_by_side(self, name: str, batch: torch.Tensor, rounds: int, count: int) -> float:
        """Photos/s of ``count`` threads, each running ``rounds`` forward passes of ``batch`` on the
        lanes' thread count, all started together (the model is only read, so they can share it)."""
        start = threading.Barrier(count)

        def run(times: int) -> None:
            start.wait()
            for _ in range(times):
                self.forward(name, batch)

        before = torch.get_num_threads()
        try:
            with ThreadPoolExecutor(
                count, initializer=torch.set_num_threads, initargs=(self.lanes.threads,)
            ) as pool:
                list(pool.map(run, [1] * count))  # warm-up, on every thread
                started = time.perf_counter()
                list(pool.map(run, [rounds] * count))
                return count * rounds * batch.shape[0] / (time.perf_counter() - started)
        finally:
            torch.set_num_threads(before)  # the lanes' count also set the process's default


def compiled_variants(
    folded: torch.nn.Module, checkpoint: Checkpoint, lanes: int, folder: Path
) -> dict[str, tuple[CompiledNetwork, int]]:
    """``folded`` compiled by OpenVINO in fp32 and (where the CPU has it) bf16, and the int8 network
    stored in ``folder`` for its weights where there is one, each as one stream on every core and as one
    stream per lane; none where it does not compile (said on stderr)."""
    cores = usable_cores()
    dtypes: list[torch.dtype | None] = [None, torch.bfloat16] if cpu_has_native_bf16() else [None]
    # None: the int8 network, whatever the precision it falls back to when there is none.
    kinds: list[tuple[torch.dtype | None, bool]] = [(dtype, False) for dtype in dtypes] + [(None, True)]
    compiled: dict[str, tuple[CompiledNetwork, int]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-openvino-") as cache:
        for (dtype, int8), streams in itertools.product(kinds, sorted({1, lanes})):
            options = RuntimeOptions(
                "openvino", Path(cache), streams=streams, threads=max(1, cores // streams), int8=int8
            )
            try:
                network = compile_model(
                    folded,
                    input_size=checkpoint.spec.input_size,
                    sha256=checkpoint.sha256,
                    options=options,
                    dtype=dtype,
                    quantized_in=folder,
                )
            except RuntimeUnavailableError as error:
                print(f"OpenVINO: {error}", file=sys.stderr)
                return {}
            if int8 and network.precision != INT8:
                continue  # no int8 network for these weights
            name = f"openvino-{network.precision}" + (f" x{streams} streams" if streams > 1 else "")
            compiled[name] = (network, streams)
    return compiled


# --- 2. servers and load ------------------------------------------------------------------------


@contextmanager
def running(
    command: list[str], port: int, env: dict[str, str], log: Path | None = None, cwd: Path | None = None
) -> Iterator[psutil.Process]:
    """The server ``command`` starts (in ``cwd``), once it answers; its output goes to ``log`` (stderr
    included) if given, else stdout is dropped."""
    output = open(log, "wb") if log is not None else None  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env={**os.environ, **env},
        stdout=output or subprocess.DEVNULL,
        stderr=output if output is not None else None,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx2.get(f"http://127.0.0.1:{port}/openapi.json", timeout=2).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{' '.join(command)} did not start")
            time.sleep(0.5)
        yield psutil.Process(process.pid)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        if output is not None:
            output.close()


def checkout_api(port: int) -> list[str]:
    """``trashcam api`` of the checkout it runs in (``running(..., cwd=CHECKOUT)``): ``-m`` puts the
    working folder first on the path, so the checkout's own code is imported ahead of this
    installation's, on this installation's packages."""
    return [sys.executable, "-m", "app", "api", "--host", "127.0.0.1", "--port", str(port)]


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


@dataclass
class Timed:
    latencies: list[float]
    answered: int
    errors: int
    seconds: float
    batches: list[int]
    server_cpu: float
    own_cpu: float
    #: CPU seconds of the server's inference lanes meanwhile (None: a server that does not expose them).
    lane_cpu: float | None
    #: Responses by status code; "no answer" counts requests that got none (a connection error).
    statuses: Counter[int | str]


async def load(
    url: str,
    photos: Sequence[Photo],
    *,
    clients: int,
    requests: int,
    warmup: int,
    server: psutil.Process | None = None,
) -> Timed:
    """``requests`` requests after ``warmup`` ones: latencies (s), errors, wall time, the service's batch
    sizes, and the CPU seconds that the server, its inference lanes and this process spent meanwhile."""
    order = itertools.cycle(photos)
    latencies: list[float] = []
    batches: list[int] = []
    statuses: Counter[int | str] = Counter()
    errors = answered = remaining = 0

    async def client_loop(client: httpx2.AsyncClient) -> None:
        nonlocal errors, answered, remaining
        while remaining > 0:
            remaining -= 1
            photo = next(order)
            started = time.perf_counter()
            try:
                response = await client.post(url, files={"file": (photo.name, photo.data, "image/jpeg")})
            except httpx2.HTTPError:
                errors += 1
                statuses["no answer"] += 1
                continue
            latencies.append(time.perf_counter() - started)
            statuses[response.status_code] += 1
            if response.status_code != 200:
                errors += 1
                continue
            answered += 1
            body = response.json()
            results = body.get("results", [body])
            batches.extend(int(r["batch_size"]) for r in results if "batch_size" in r)

    limits = httpx2.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx2.AsyncClient(limits=limits, timeout=300) as client:
        remaining = warmup
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        latencies.clear()
        batches.clear()
        statuses.clear()
        errors = answered = 0
        remaining = requests
        metrics_url = httpx2.URL(url).join("/metrics")
        lane_cpu = await lane_cpu_seconds(client, metrics_url)
        server_cpu = 0.0 if server is None else cpu_seconds(server)
        own_cpu = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        wall = time.perf_counter() - started
        own_cpu = time.process_time() - own_cpu
        server_cpu = 0.0 if server is None else cpu_seconds(server) - server_cpu
        lane_cpu_after = await lane_cpu_seconds(client, metrics_url)
        lanes = None if lane_cpu is None or lane_cpu_after is None else lane_cpu_after - lane_cpu
    return Timed(latencies, answered, errors, wall, batches, server_cpu, own_cpu, lanes, statuses)


LANE_CPU_METRIC = "trashcam_inference_lane_cpu_seconds_total"


async def lane_cpu_seconds(client: httpx2.AsyncClient, metrics_url: httpx2.URL) -> float | None:
    """The server's inference lanes' CPU seconds so far, from its ``/metrics`` (None where it has none:
    a service before the counter, or the naive peer)."""
    try:
        response = await client.get(metrics_url)
    except httpx2.HTTPError:
        return None
    if response.status_code != 200:
        return None
    for line in response.text.splitlines():
        if line.startswith(LANE_CPU_METRIC + " "):
            return float(line.split()[1])
    return None


def measure(
    server: str, process: psutil.Process, url: str, photos: Sequence[Photo], clients: int, requests: int
) -> LoadResult:
    timed = asyncio.run(
        load(url, photos, clients=clients, requests=requests, warmup=2 * clients, server=process)
    )
    wall = timed.seconds
    return LoadResult(
        server=server,
        endpoint=url.rsplit("/", 1)[-1],
        clients=clients,
        requests=requests,
        errors=timed.errors,
        seconds=wall,
        photos_per_s=timed.answered / wall,
        p50_ms=1000 * percentile(timed.latencies, 50),
        p95_ms=1000 * percentile(timed.latencies, 95),
        p99_ms=1000 * percentile(timed.latencies, 99),
        server_cpu_cores=timed.server_cpu / wall,
        loadgen_cpu_cores=timed.own_cpu / wall,
        mean_batch=statistics.mean(timed.batches) if timed.batches else None,
        lane_cpu_cores=None if timed.lane_cpu is None else timed.lane_cpu / wall,
    )


def rss_mb(process: psutil.Process) -> float:
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20


def summarise(rows: list[LoadResult]) -> dict[str, Any]:
    """The median of the rounds of one configuration (photos/s and each percentile on its own)."""
    first = rows[0]
    outside = [
        1000 * (row.server_cpu_cores - row.lane_cpu_cores) / row.photos_per_s
        for row in rows
        if row.photos_per_s and row.lane_cpu_cores is not None
    ]
    return {
        "server": first.server,
        "endpoint": first.endpoint,
        "clients": first.clients,
        "rounds": len(rows),
        "requests": sum(row.requests for row in rows),
        "errors": sum(row.errors for row in rows),
        **{
            name: statistics.median(getattr(row, name) for row in rows)
            for name in (
                "photos_per_s",
                "p50_ms",
                "p95_ms",
                "p99_ms",
                "server_cpu_cores",
                "loadgen_cpu_cores",
            )
        },
        # CPU a photo: what the cores, shared by the server and the load generator, spend on each.
        "server_cpu_ms_per_photo": statistics.median(
            [1000 * row.server_cpu_cores / row.photos_per_s for row in rows if row.photos_per_s] or [0.0]
        ),
        "loadgen_cpu_ms_per_photo": statistics.median(
            [1000 * row.loadgen_cpu_cores / row.photos_per_s for row in rows if row.photos_per_s] or [0.0]
        ),
        "mean_batch": statistics.median(
            [row.mean_batch for row in rows if row.mean_batch is not None] or [0.0]
        ),
        # The server's CPU a photo outside its inference lanes: HTTP, decoding, preparing, answering.
        "outside_lanes_cpu_ms_per_photo": statistics.median(outside) if outside else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_checkpoint_and_photos(parser)
    parser.add_argument("--split", default="test")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=160, help="requests per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every measurement, in turn")
    parser.add_argument("--endpoints", nargs="+", default=["classify", "explain"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16, 32])
    parser.add_argument("--ceiling-rounds", type=int, default=5)
    parser.add_argument("--memory", type=int, nargs=2, default=[100, 1000], metavar=("FIRST", "THEN"))
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["peer", "torch", "int8", "memory", "request-path"]
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of an earlier version of the service (git worktree add), served beside this one",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    photos = load_photos(args.manifest, args.data, args.split)
    result: dict[str, Any] = {
        "command": "python -m bench.service_load " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_line(),
        "photos": f"{len(photos)} {args.split} photos of {args.manifest}",
    }
    ceiling = Ceiling(args.checkpoint, photos)
    ceiling_rows = ceiling.measure(args.batch_sizes, args.ceiling_rounds)
    result["ceiling"] = {
        "device": ceiling.device.type,
        "lanes": ceiling.lanes.name,
        "rows": ceiling_rows,
        "accuracy": ceiling.accuracy(),
        "best": max(ceiling_rows, key=lambda row: row["photos_per_s"]),
    }
    result["ceiling"]["compiled_over_eager"] = compiled_over_eager(ceiling_rows, ceiling.compiled)
    print(json.dumps(result["ceiling"], indent=2), flush=True)
    best = result["ceiling"]["best"]

    with tempfile.TemporaryDirectory(prefix="bench-service-") as var, contextlib.ExitStack() as stack:
        env = {"TRASHCAM_MODEL_PATH": str(args.checkpoint.resolve()), "TRASHCAM_VAR_DIR": var}
        ours_command = trashcam_command(piece_commands("127.0.0.1", OURS_PORT)["api"])
        servers = {"ours": (stack.enter_context(running(ours_command, OURS_PORT, env)), OURS_PORT)}
        if (args.checkpoint.parent / QUANTIZED_RECORD).is_file() and "int8" not in args.skip:
            int8_env = {**env, "TRASHCAM_INFERENCE_INT8": "false"}
            int8_command = trashcam_command(piece_commands("127.0.0.1", INT8_PORT)["api"])
            servers[NO_INT8] = (stack.enter_context(running(int8_command, INT8_PORT, int8_env)), INT8_PORT)
        if "torch" not in args.skip:
            torch_env = {**env, "TRASHCAM_INFERENCE_BACKEND": "torch"}
            torch_command = trashcam_command(piece_commands("127.0.0.1", TORCH_PORT)["api"])
            torch_server = stack.enter_context(running(torch_command, TORCH_PORT, torch_env))
            servers[EAGER] = (torch_server, TORCH_PORT)
        if args.baseline is not None:
            baseline_env = {**env, "TRASHCAM_VAR_DIR": str(Path(var) / "baseline")}
            baseline = running(checkout_api(BASELINE_PORT), BASELINE_PORT, baseline_env, cwd=args.baseline)
            servers[BASELINE] = (stack.enter_context(baseline), BASELINE_PORT)
        if "peer" not in args.skip:
            peer_command = [sys.executable, "-m", "bench.naive_peer", "--checkpoint", str(args.checkpoint)]
            peer_command += ["--port", str(PEER_PORT)]
            servers["naive peer"] = (stack.enter_context(running(peer_command, PEER_PORT, {})), PEER_PORT)
        if "request-path" not in args.skip:
            trivial = trivial_checkpoint(args.checkpoint, Path(var) / "trivial.pt")
            trivial_env = {
                "TRASHCAM_MODEL_PATH": str(trivial),
                "TRASHCAM_VAR_DIR": str(Path(var) / "trivial"),
            }
            trivial_command = trashcam_command(piece_commands("127.0.0.1", TRIVIAL_PORT)["api"])
            trivial_server = stack.enter_context(running(trivial_command, TRIVIAL_PORT, trivial_env))
            servers[TRIVIAL] = (trivial_server, TRIVIAL_PORT)
        # What runs each server's model, as it says itself (/ready answers 503 without workers, with
        # the same body): a model that fell back to torch would otherwise pass for a compiled one.
        ready = {
            name: httpx2.get(f"http://127.0.0.1:{port}/ready", timeout=10).json()
            for name, (_, port) in servers.items()
            if name != "naive peer"
        }
        result["backends"] = {name: body.get("backend", "torch") for name, body in ready.items()}
        result["precisions"] = {name: body.get("precision") for name, body in ready.items()}
        print(result["backends"], result["precisions"], flush=True)
        rows: dict[tuple[str, str, int], list[LoadResult]] = {}
        ceilings: list[float] = []
        # Every round measures each configuration once, the servers in turn, and the ceiling again, so
        # that load from elsewhere on the machine falls on all of them alike.
        for round_index in range(args.rounds):
            (again,) = ceiling.measure(
                [best["batch"]], args.ceiling_rounds, only=best["precision"], lanes=[best["lanes"]]
            )
            ceilings.append(again["photos_per_s"])
            for endpoint, clients in itertools.product(args.endpoints, args.clients):
                names = list(servers)
                names = names[round_index % len(names) :] + names[: round_index % len(names)]
                for name in names:
                    if name == TRIVIAL and (endpoint, clients) != ("classify", max(args.clients)):
                        continue
                    process, port = servers[name]
                    url = f"http://127.0.0.1:{port}/{endpoint}"
                    row = measure(name, process, url, photos, clients, args.requests)
                    rows.setdefault((name, endpoint, clients), []).append(row)
                    print(row, flush=True)
        result["ceiling"]["per_round"] = ceilings
        result["load"] = [summarise(group) for group in rows.values()]
        result["load_rounds"] = [asdict(row) for group in rows.values() for row in group]
        result["ratios"] = ratios(result["load"], statistics.median(ceilings))

    if "memory" not in args.skip:
        with tempfile.TemporaryDirectory(prefix="bench-memory-") as var:
            env = {"TRASHCAM_MODEL_PATH": str(args.checkpoint.resolve()), "TRASHCAM_VAR_DIR": var}
            first, then = args.memory
            with running(ours_command, OURS_PORT, env) as ours:
                url = f"http://127.0.0.1:{OURS_PORT}/explain"
                rss = {"started": rss_mb(ours)}
                asyncio.run(load(url, photos, clients=8, requests=first, warmup=0))
                rss[f"after {first}"] = rss_mb(ours)
                asyncio.run(load(url, photos, clients=8, requests=then - first, warmup=0))
                rss[f"after {then}"] = rss_mb(ours)
            rss["drift"] = rss[f"after {then}"] / rss[f"after {first}"] - 1
            result["memory_rss_mb"] = rss

    print(json.dumps({key: result[key] for key in ("ratios", "memory_rss_mb") if key in result}, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def compiled_over_eager(rows: list[dict[str, Any]], compiled: Iterable[str]) -> dict[str, float]:
    """At each batch size, the best compiled variant's photos/s over the best eager one's."""
    out = {}
    for batch in sorted({row["batch"] for row in rows}):
        at = [row for row in rows if row["batch"] == batch]
        ours = [row["photos_per_s"] for row in at if row["precision"] in compiled]
        eager = [row["photos_per_s"] for row in at if row["precision"] not in compiled]
        if ours and eager:
            out[f"batch {batch}"] = max(ours) / max(eager)
    return out


#: The servers ours is compared with, by the name their ratios use.
COMPARED = {"baseline checkout": BASELINE, "torch backend": EAGER, "no int8": NO_INT8, "peer": "naive peer"}


def ratios(load: list[dict[str, Any]], ceiling_photos_per_s: float) -> dict[str, float]:
    """Ours against the ceiling and each server it is compared with, per endpoint and number of
    clients: photos/s (higher is better for ours) and median latency (lower is)."""
    by = {(row["server"], row["endpoint"], row["clients"]): row for row in load}
    out: dict[str, float] = {}
    for (server, endpoint, clients), row in by.items():
        if server != "ours":
            continue
        if endpoint == "classify":
            out[f"classify {clients} clients / ceiling"] = row["photos_per_s"] / ceiling_photos_per_s
        for label, other_name in COMPARED.items():
            other = by.get((other_name, endpoint, clients))
            if other is not None:
                prefix = f"{endpoint} {clients} clients / {label}"
                out[f"{prefix} (photos/s)"] = row["photos_per_s"] / other["photos_per_s"]
                out[f"{prefix} (p50)"] = row["p50_ms"] / other["p50_ms"]
    return out


if __name__ == "__main__":
    sys.exit(main())
