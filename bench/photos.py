"""Real photos for the benchmarks: the files of one split of a run's manifest, as stored."""

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

from training.split import manifest_and_root


@dataclass(frozen=True)
class Photo:
    name: str
    data: bytes
    label: str
    #: The data set it comes from, where the manifest has several (its path's first folder).
    part: str = ""


def add_checkpoint_and_photos(parser: argparse.ArgumentParser) -> None:
    """The arguments of a benchmark of a checkpoint on the photos of its run's manifest."""
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--data", action="append", help="where the manifest's data set is now")


def load_photos(manifest: Path, data: list[str] | None, split: str = "test") -> list[Photo]:
    """The encoded bytes and labels of the ``split`` photos of ``manifest`` (its data set named by
    ``data`` when it has moved since the manifest was written)."""
    with tempfile.TemporaryDirectory(prefix="bench-photos-") as scratch:
        run_data = manifest.parent / "data"
        loaded, root = manifest_and_root(manifest, data, Path(scratch) / "data", run_data=run_data)
        parts = len(getattr(loaded, "parts", ())) > 1
        return [
            Photo(
                Path(path).name,
                (root / path).read_bytes(),
                loaded.class_names[label],
                Path(path).parts[0] if parts else "",
            )
            for path, label in loaded.select(split)
        ]
