"""Photos whose pixels decode to more bytes than RGB (float TIFF, 16-bit PNG, RGBA PNG), at the pixel
limit, five of each at once: the decoding never takes the process more than 1 GB over its memory at
rest. Measured in a process of its own, so that no other test's memory counts."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import concurrent.futures, ctypes, io, json, threading, time
    import numpy as np
    from PIL import Image
    from app.uploads import decode_all
    from core.imaging import BadImageError
    from core.settings import Settings

    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

    def encoded(array, fmt, **options):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format=fmt, **options)
        return buffer.getvalue()

    side = 6324  # 40 million pixels: the default limit of a photo
    ramp = np.linspace(0, 1, side, dtype=np.float32)[None, :].repeat(side, axis=0)
    photos = {
        "float.tiff": encoded(ramp, "TIFF", compression="tiff_deflate"),
        "rgba.png": encoded(np.dstack([(ramp * 255).astype(np.uint8)] * 4), "PNG"),
        # 25 million pixels: under the bytes a photo may decode to.
        "sixteen.png": encoded((ramp[:5000, :5000] * 65535).astype(np.uint16), "PNG"),
    }
    del ramp
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    settings = Settings()
    rest = rss()
    peak = rest
    done = threading.Event()

    def watch():
        global peak
        while not done.is_set():
            peak = max(peak, rss())
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    requests = [[(name, data)] for name, data in photos.items() for _ in range(5)]
    requests.append([("a.png", photos["sixteen.png"]), ("b.png", photos["sixteen.png"])])
    outcomes = {}

    def send(blobs):
        try:
            decode_all(blobs, settings, min_side=112, max_side=None)
            return "decoded"
        except BadImageError as error:
            return error.status_code

    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        for blobs, outcome in zip(requests, pool.map(send, requests)):
            key = "+".join(name for name, _ in blobs)
            outcomes.setdefault(key, []).append(outcome)
    done.set()
    watcher.join()
    modes = {name: Image.open(io.BytesIO(data)).mode for name, data in photos.items()}
    print(json.dumps({"rest": rest, "peak": peak, "outcomes": outcomes, "modes": modes}))
    """
)


def test_parallel_photos_of_costly_modes_stay_within_a_gigabyte_of_memory_at_rest() -> None:
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600, cwd=REPO_ROOT
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    # Float and transparent photos at the pixel limit decode past the bytes a photo may take: refused
    # from the header. 16-bit ones of 25 million pixels fit, alone and two in a request, and are decoded,
    # as many at once as the process's budget of bytes being decoded lets through.
    assert result["outcomes"]["float.tiff"] == [413] * 5
    assert result["outcomes"]["rgba.png"] == [413] * 5
    assert result["outcomes"]["sixteen.png"] == ["decoded"] * 5
    assert result["outcomes"]["a.png+b.png"] == ["decoded"]
    assert result["modes"] == {"float.tiff": "F", "sixteen.png": "I;16", "rgba.png": "RGBA"}
    assert result["peak"] - result["rest"] < 1 << 30, result
