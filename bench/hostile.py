"""Clients without a key (or with one, sending what they should not) against the running API, each bounded
in count and time, over loopback. ``bench.reliability`` runs them as its ``hostile`` section.

1. Score-CAM: ``/classify`` p50/p99 alone, then while ``expensive`` clients ask for Score-CAM at once.
2. Pixel formats: float TIFFs, RGBA PNGs and 16-bit PNGs at the pixel limit, sent at once; the API's
   RSS at rest and at its peak.
3. Slow sockets: ``count`` connections that send a chunked ``/classify`` header and then nothing, held
   open while a normal client times ``/health`` and ``/classify``; the API's descriptors and log growth.
4. Spooling: parallel uploads of one file part far over the per-file limit; the peak bytes in the API's
   temporary folder.
7. Jobs: rapid ``POST /train`` with one key; a compression bomb and a zip of 100,000 empty files on
   ``/explain/batch``; ``GET /train`` and ``/metrics`` with thousands of job records.
"""

import concurrent.futures
import contextlib
import io
import socket
import statistics
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import psutil
from PIL import Image

from app.connections import open_descriptor_limit
from bench.expensive_load import photo as photo_jpeg
from core.jobs import JobStore, TrainingParams, folder_bytes

MB = 1 << 20


def seconds_of(call: Callable[[], httpx2.Response]) -> tuple[float, int]:
    started = time.perf_counter()
    try:
        status = call().status_code
    except httpx2.HTTPError:
        status = 0  # no answer in time
    return time.perf_counter() - started, status


def quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
        "max_ms": round(1000 * ordered[-1], 1),
    }


class Sampler:
    """The largest value ``read`` returned while the block ran, sampled every few milliseconds."""

    def __init__(self, read: Callable[[], float]) -> None:
        self.read, self.peak = read, read()
        self.at_start = self.peak
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._done.is_set():
            with contextlib.suppress(OSError, psutil.Error):  # a file removed while it was measured
                self.peak = max(self.peak, self.read())
            time.sleep(0.005)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def classify(client: httpx2.Client, photo: bytes) -> httpx2.Response:
    return client.post("/classify", files={"file": ("p.jpg", photo, "image/jpeg")})


# --- 1 ----------------------------------------------------------------------------------------------


def expensive(base_url: str, *, requests: int = 30, clients: int = 4) -> dict[str, Any]:
    photo = photo_jpeg(0)
    with httpx2.Client(base_url=base_url, timeout=600) as client:
        classify(client, photo)  # warm
        alone = [seconds_of(lambda: classify(client, photo))[0] for _ in range(requests)]

        def scorecam() -> tuple[float, int]:
            with httpx2.Client(base_url=base_url, timeout=600) as own:
                return seconds_of(
                    lambda: own.post(
                        "/explain",
                        files={"file": ("p.jpg", photo, "image/jpeg")},
                        data={"method": "scorecam"},
                    )
                )

        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            explained = [pool.submit(scorecam) for _ in range(clients)]
            time.sleep(1.0)  # the explanations are in
            beside = [seconds_of(lambda: classify(client, photo))[0] for _ in range(requests)]
            outcomes = [future.result() for future in explained]
    return {
        "alone": quantiles(alone),
        "beside_scorecam": quantiles(beside),
        "p99_ratio": round(quantiles(beside)["p99_ms"] / quantiles(alone)["p99_ms"], 2),
        "scorecam": [{"status": status, "seconds": round(took, 1)} for took, status in outcomes],
    }


# --- 2 ----------------------------------------------------------------------------------------------


def costly_photos() -> dict[str, bytes]:
    """A float TIFF and an RGBA PNG at the default pixel limit, a 16-bit PNG under the byte limit, each
    small as uploads go."""
    side = 6324
    # Flat photos: a few hundred kilobytes encoded, gigabytes decoded.
    ramp = np.full((side, side), 0.5, dtype=np.float32)

    def encoded(array: np.ndarray, fmt: str, **options: Any) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format=fmt, **options)
        return buffer.getvalue()

    return {
        "float.tiff": encoded(ramp, "TIFF", compression="tiff_deflate"),
        "rgba.png": encoded(np.dstack([(ramp * 255).astype(np.uint8)] * 4), "PNG"),
        "sixteen.png": encoded((ramp[:5000, :5000] * 65535).astype(np.uint16), "PNG"),
    }


def pixel_formats(base_url: str, api: psutil.Process, *, each: int = 5) -> dict[str, Any]:
    photos = costly_photos()
    sends = [(name, data) for name, data in photos.items() for _ in range(each)]

    def send(name: str, data: bytes) -> int:
        with httpx2.Client(base_url=base_url, timeout=600) as client:
            return client.post("/classify", files={"file": (name, data)}).status_code

    with (
        Sampler(lambda: api.memory_info().rss) as rss,
        concurrent.futures.ThreadPoolExecutor(len(sends)) as pool,
    ):
        statuses = list(pool.map(lambda item: send(*item), sends))
    by_photo: dict[str, Counter[int]] = {}
    for (name, _), status in zip(sends, statuses, strict=True):
        by_photo.setdefault(name, Counter())[status] += 1
    return {
        "requests": len(sends),
        "encoded_bytes": {name: len(data) for name, data in photos.items()},
        "statuses": {name: dict(counts) for name, counts in by_photo.items()},
        "rss_mb_at_rest": round(rss.at_start / MB),
        "rss_mb_peak": round(rss.peak / MB),
        "rss_mb_over_rest": round((rss.peak - rss.at_start) / MB),
    }


# --- 3 ----------------------------------------------------------------------------------------------


def slow_sockets(
    base_url: str, api: psutil.Process, log: Path, *, count: int, probes: int = 10
) -> dict[str, Any]:
    host, port = base_url.removeprefix("http://").split(":")
    open_descriptor_limit()
    header = (
        f"POST /classify HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\n\r\n"
    ).encode()
    log_before = log.stat().st_size if log.is_file() else 0
    held: list[socket.socket] = []
    refused = 0
    started = time.perf_counter()
    for _ in range(count):
        try:
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.sendall(header)
            held.append(sock)
        except OSError:
            refused += 1
    opened_s = time.perf_counter() - started
    photo = photo_jpeg(0)
    try:
        time.sleep(2.0)  # the API accepts what the kernel queued
        descriptors = api.num_fds()
        with httpx2.Client(base_url=base_url, timeout=10) as client:
            health = [seconds_of(lambda: client.get("/health")) for _ in range(probes)]
            classified = [seconds_of(lambda: classify(client, photo)) for _ in range(probes)]
    finally:
        for sock in held:
            sock.close()
    return {
        "connections": count,
        "held": len(held),
        "refused": refused,
        "seconds_to_open": round(opened_s, 1),
        "api_descriptors_while_held": descriptors,
        "health": {**quantiles([s for s, _ in health]), "statuses": dict(Counter(c for _, c in health))},
        "classify": {
            **quantiles([s for s, _ in classified]),
            "statuses": dict(Counter(c for _, c in classified)),
        },
        "log_bytes_added": (log.stat().st_size if log.is_file() else 0) - log_before,
    }


# --- 4 ----------------------------------------------------------------------------------------------


def spooling(base_url: str, temp: Path, *, parallel: int = 6, part_mb: int = 320) -> dict[str, Any]:
    def body() -> Iterator[bytes]:
        yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
        for _ in range(part_mb):
            yield bytes(MB)
        yield b"\r\n--x--\r\n"

    def send() -> int:
        with httpx2.Client(base_url=base_url, timeout=120) as client:
            try:
                return client.post(
                    "/classify", content=body(), headers={"Content-Type": "multipart/form-data; boundary=x"}
                ).status_code
            except httpx2.HTTPError:
                return 0  # the server stopped reading: what it answered was not read back

    with (
        Sampler(lambda: folder_bytes(temp)) as spooled,
        concurrent.futures.ThreadPoolExecutor(parallel) as pool,
    ):
        statuses = list(pool.map(lambda _: send(), range(parallel)))
    return {
        "uploads": parallel,
        "part_mb": part_mb,
        "statuses": dict(Counter(statuses)),
        "temp_mb_peak": round(spooled.peak / MB, 1),
    }


# --- 7 ----------------------------------------------------------------------------------------------


def zip_of(members: Iterator[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def small_data_set() -> bytes:
    small = photo_jpeg(0, (64, 48))
    return zip_of((f"{name}/{i}.jpg", small) for name in ("glass", "paper") for i in range(4))


def jobs(base_url: str, key: str, var: Path, redis_url: str, *, rapid: int, records: int) -> dict[str, Any]:
    headers = {"X-API-Key": key}
    data = small_data_set()

    def post_train(_: int) -> int:
        with httpx2.Client(base_url=base_url, timeout=60) as client:
            return client.post(
                "/train", files={"file": ("d.zip", data)}, data={"epochs": "1"}, headers=headers
            ).status_code

    bomb = zip_of(iter([("photos/a.jpg", photo_jpeg(0)), ("photos/zeros.png", bytes(900 * MB))]))
    empties = zip_of((f"e/{i}.jpg", b"") for i in range(100_000))
    archives = {}
    with httpx2.Client(base_url=base_url, timeout=120, headers=headers) as client:
        for name, archive in (("bomb", bomb), ("100000 empty files", empties)):

            def send(archive: bytes = archive) -> httpx2.Response:
                return client.post("/explain/batch", files={"files": ("a.zip", archive)})

            took, status = seconds_of(send)
            archives[name] = {"zip_bytes": len(archive), "status": status, "seconds": round(took, 2)}

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        rapid_statuses = Counter(pool.map(post_train, range(rapid)))
    rapid_s = time.perf_counter() - started

    # Finished training records, as a service that has run for a while holds.
    store = JobStore.from_url(redis_url, var / "jobs", f"sqlite:///{var / 'trashcam.sqlite3'}")
    params = TrainingParams.model_validate(
        {"name": "x", "config": {"data": "d", "out": "o"}, "source": "bench"}
    )
    for _ in range(records):
        job = store.create(params)
        job.state = "succeeded"
        store.save(job)
    with httpx2.Client(base_url=base_url, timeout=60) as client:
        listing = [seconds_of(lambda: client.get("/train", params={"limit": 100})) for _ in range(5)]
        metrics = [seconds_of(lambda: client.get("/metrics")) for _ in range(5)]
        page = client.get("/train", params={"limit": 100})
    return {
        "rapid_train": {
            "requests": rapid,
            "statuses": dict(rapid_statuses),
            "seconds": round(rapid_s, 1),
        },
        "archives": archives,
        "training_records": records + rapid_statuses[202],
        "list_train": {**quantiles([s for s, _ in listing]), "bytes": len(page.content)},
        "metrics": quantiles([s for s, _ in metrics]),
    }
