"""The serving preprocessing against the ``transforms.v2`` pipeline it replaced, on real photos.

    python -m bench.preprocess_speed --checkpoint weights/se_resnet50/model.pt \\
        --manifest weights/se_resnet50/manifest.json --data data/trashnet-112.tar.gz

Both turn a decoded photo into the model's normalised input; CPU time per photo (this process's, so
torch's own threads count) over every test photo, the two in turn for ``--rounds`` rounds, medians; and
the largest difference between their outputs.
"""

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import v2

from bench.photos import load_photos
from models.checkpoint import load_checkpoint
from models.transforms import build_eval_transform


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--data", action="append")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    spec = load_checkpoint(args.checkpoint).spec
    photos = [Image.open(io.BytesIO(p.data)).convert("RGB") for p in load_photos(args.manifest, args.data)]
    ours = build_eval_transform(spec)
    pipeline = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize((spec.input_size, spec.input_size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(spec.mean), std=list(spec.std)),
        ]
    )
    contenders: dict[str, Callable[[Image.Image], torch.Tensor]] = {
        "models.transforms (PIL resize, one multiply-add)": ours,
        "transforms.v2 pipeline": pipeline,
    }
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, transform in contenders.items():
            started = time.process_time()
            for photo in photos:
                transform(photo)
            samples[name].append((time.process_time() - started) / len(photos))
    difference = max(float((ours(photo) - pipeline(photo)).abs().max()) for photo in photos)
    print(f"{len(photos)} photos, {spec.input_size} px input, {torch.get_num_threads()} threads")
    for name, values in samples.items():
        print(f"{name}: {1000 * statistics.median(values):.3f} ms CPU per photo")
    first, second = (statistics.median(values) for values in samples.values())
    print(f"ratio: {first / second:.2f}; largest difference of the outputs: {difference:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
