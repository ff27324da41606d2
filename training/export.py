"""Export a trained checkpoint as a shippable model folder: fp16 weights, spec, report, checksums.

python -m training.export --run runs/se_resnet50-paper --out weights/se_resnet50
"""

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from models.checkpoint import file_sha256, load_checkpoint, save_checkpoint

CHECKPOINT = "model.pt"


def export_run(run: Path, out: Path, *, checkpoint: str = "best.pt") -> Path:
    """Write ``out/model.pt`` (fp16), ``spec.json``, the run's test report and ``SHA256SUMS``."""
    loaded = load_checkpoint(run / checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    weights_sha = save_checkpoint(out / CHECKPOINT, loaded.state_dict, loaded.spec, dtype=torch.float16)
    meta = {"spec": loaded.spec.to_dict(), "sha256": weights_sha, "source": f"{run.name}/{checkpoint}"}
    (out / "spec.json").write_text(json.dumps(meta, indent=2) + "\n")
    for name in (
        "report.json",
        "confusion_matrix.png",
        "history.json",
        "loss_curve.png",
        "accuracy_curve.png",
    ):
        if (run / name).is_file():
            shutil.copyfile(run / name, out / name)
    files = sorted(p for p in out.iterdir() if p.is_file() and p.name != "SHA256SUMS")
    (out / "SHA256SUMS").write_text("".join(f"{file_sha256(p)}  {p.name}\n" for p in files))
    return out / CHECKPOINT


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, required=True, help="a training run folder")
    parser.add_argument("--checkpoint", default="best.pt", help="which checkpoint of the run")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    path = export_run(args.run, args.out, checkpoint=args.checkpoint)
    sys.stdout.write(f"{path}: {path.stat().st_size / 1e6:.1f} MB\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
