"""How well the deep-feature hash finds photos: precision@5 of the hash against the float embedding,
recall of near-duplicates, and the search time of the whole index.

    python -m bench.fingerprint_quality --checkpoint weights/se_resnet50/model.pt \\
        --manifest weights/se_resnet50/manifest.json --data data/trashnet-112.tar.gz \\
        --out docs/fingerprint/se_resnet50-trashnet.json

- precision@5: for each test photo, the 5 training photos of the checkpoint's index nearest to it (by
  Hamming distance of the hashes, or by cosine of the embeddings): the share with the photo's label;
- near-duplicate recall: each test photo flipped left-right, cropped by 10% of each side's length
  (centre crop of 90%), and re-encoded as JPEG at quality 50: the share whose hash is within 8 bits
  of the original's;
- search time: the median over the test photos of one search of the whole index (after embedding).
"""

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from bench.photos import add_checkpoint_and_photos
from models.checkpoint import build_model, load_checkpoint
from models.fingerprint import embed, hamming, hash_bits
from models.similarity import INDEX_FILE, FingerprintIndex
from models.transforms import build_eval_transform
from training.split import manifest_and_root

#: The Hamming radius within which a copy counts as found.
RADIUS = 8
BATCH = 64


def jpeg_50(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=50)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def crop_10(image: Image.Image) -> Image.Image:
    width, height = image.size
    dx, dy = round(width * 0.05), round(height * 0.05)
    return image.crop((dx, dy, width - dx, height - dy))


COPIES: dict[str, Callable[[Image.Image], Image.Image]] = {
    "flipped": ImageOps.mirror,
    "cropped 10%": crop_10,
    "JPEG quality 50": jpeg_50,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_checkpoint_and_photos(parser)
    parser.add_argument("--index", type=Path, help=f"default: {INDEX_FILE} beside the checkpoint")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    checkpoint = load_checkpoint(args.checkpoint)
    model = build_model(checkpoint).eval()
    transform = build_eval_transform(checkpoint.spec)
    index_path = args.index or args.checkpoint.parent / INDEX_FILE
    index = FingerprintIndex.load(index_path, model_sha256=checkpoint.sha256)
    with tempfile.TemporaryDirectory(prefix="fingerprint-") as scratch:
        manifest, root = manifest_and_root(
            args.manifest, args.data, Path(scratch) / "data", run_data=args.manifest.parent / "data"
        )
        samples = manifest.select(args.split)
        photos = []
        for path, _ in samples:
            with Image.open(root / path) as image:
                photos.append(image.convert("RGB"))
    labels = [checkpoint.spec.class_names.index(manifest.class_names[label]) for _, label in samples]

    def embeddings_of(images: list[Image.Image]) -> torch.Tensor:
        chunks = []
        for start in range(0, len(images), BATCH):
            batch = torch.stack([transform(image) for image in images[start : start + BATCH]])
            chunks.append(embed(model, batch)[1])
        return torch.cat(chunks)

    features = embeddings_of(photos)
    hashes = hash_bits(features)
    hits: dict[str, list[float]] = {"hash": [], "embedding": []}
    times: dict[str, list[float]] = {"hash": [], "embedding": []}
    for vector, value, label in zip(features.numpy(), hashes, labels, strict=True):
        for by in ("hash", "embedding"):
            started = time.perf_counter()
            found = index.by_hash(int(value), 5) if by == "hash" else index.by_embedding(vector, 5)
            times[by].append(time.perf_counter() - started)
            hits[by].append(sum(int(index.labels[n.position]) == label for n in found) / 5)
    recall = {}
    for name, copy in COPIES.items():
        copied = hash_bits(embeddings_of([copy(photo) for photo in photos]))
        distances = [int(hamming(copied[i : i + 1], hashes[i])[0]) for i in range(len(hashes))]
        recall[name] = {
            "recall_within_8_bits": float(np.mean([d <= RADIUS for d in distances])),
            "median_bits": float(statistics.median(distances)),
        }
    # Unrelated pairs, for scale: each test photo against the next one.
    unrelated = [int(hamming(hashes[i : i + 1], hashes[i - 1])[0]) for i in range(1, len(hashes))]
    result: dict[str, Any] = {
        "command": "python -m bench.fingerprint_quality " + " ".join(sys.argv[1:] if argv is None else argv),
        "checkpoint_sha256": checkpoint.sha256,
        "split": args.split,
        "queries": len(samples),
        "index": {"split": index.split, "photos": len(index), "bytes": index_path.stat().st_size},
        "precision_at_5": {by: float(np.mean(values)) for by, values in hits.items()},
        "search_ms_median": {by: 1000 * statistics.median(values) for by, values in times.items()},
        "near_duplicates": recall,
        "unrelated_pairs_median_bits": float(statistics.median(unrelated)),
        "unrelated_pairs_within_8_bits": float(np.mean([d <= RADIUS for d in unrelated])),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
