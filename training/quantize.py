"""An int8 network for a model, for serving on OpenVINO: post-training quantization with NNCF.

trashcam-train quantize --checkpoint weights/se_resnet50/model.pt \
    --manifest weights/se_resnet50/manifest.json \
    --data trashnet=data/trashnet-112.tar.gz --data extra=$DATA_ROOT/waste-extra-144.tar.gz

The model is converted as the service runs it (batch norms folded, :func:`models.runtime.convert_network`),
NNCF measures its activations on a few hundred training photos (drawn with a seed) and writes int8
weights and activations for its convolutions and linear layers. With ``--max-val-drop`` it does so
under NNCF's accuracy control: layers whose int8 form costs the most top-1 on the validation photos go
back to floating point, one at a time, until the validation top-1 is within that many points of the
fp32 network's (a slower network, for a closer one). The int8 network and the fp32
conversion then classify the test photos of every data set of the manifest: the int8 network is kept,
beside the checkpoint (``int8.xml``, its ``.bin`` and the record ``int8.json``, which
:func:`models.runtime.read_quantized` checks), only when no data set loses more than ``max_drop``
points of top-1. Otherwise nothing is written and the command fails, saying which set lost how much.
"""

import argparse
import logging
import os
import platform
import random
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.checkpoint import build_model, file_sha256, load_checkpoint
from models.files import write_json
from models.fusion import fold_batch_norms
from models.runtime import (
    QUANTIZED_NETWORK,
    QUANTIZED_RECORD,
    RuntimeUnavailableError,
    convert_network,
    linear_head,
    openvino_version,
)
from training.data import Loading, Sample
from training.evaluation import eval_loader, remap_labels

logger = logging.getLogger(__name__)

#: Training photos NNCF measures activations on (its own default subset size).
DEFAULT_CALIBRATION_PHOTOS = 300
#: The most top-1 (points) that any data set's test photos may lose to int8.
DEFAULT_MAX_DROP = 0.5
NNCF_MISSING = "quantizing needs NNCF: pip install 'trashcam[quantize]' (nncf 3.4.0)"


class QuantizationRefusedError(Exception):
    """The int8 network loses more top-1 than allowed on some data set: it is not written."""


@dataclass(frozen=True)
class Accuracy:
    """Top-1 (fraction) of the fp32 conversion and of the int8 network on each data set's test photos
    (and ``all`` of them), with how many photos each has."""

    fp32: Mapping[str, float]
    int8: Mapping[str, float]
    photos: Mapping[str, int]

    def drops(self) -> dict[str, float]:
        """Points of top-1 that int8 loses on each set (negative: it gains)."""
        return {name: 100 * (self.fp32[name] - self.int8[name]) for name in self.fp32}

    def refused(self, max_drop: float) -> list[str]:
        """The sets that lose more than ``max_drop`` points, said as a person reads them."""
        return [
            f"{name}: {100 * self.fp32[name]:.2f}% -> {100 * self.int8[name]:.2f}% ({drop:+.2f} points lost)"
            for name, drop in self.drops().items()
            if drop > max_drop
        ]


def _batches(spec: Any, root: Path, samples: Sequence[Sample], loading: Loading) -> Iterator[np.ndarray]:
    for images, _ in eval_loader(spec, root, samples, loading):
        yield images.numpy()


def _top1(compiled: Any, batches: Sequence[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """Whether ``compiled`` (an OpenVINO compiled model; its first output the logits) gets each photo."""
    request = compiled.create_infer_request()
    predicted = np.concatenate([request.infer({0: batch})[0].argmax(1) for batch in batches])
    return np.asarray(predicted == labels)


def quantize(
    checkpoint_path: Path,
    *,
    root: Path,
    class_names: Sequence[str],
    calibration: Sequence[Sample],
    test: Sequence[Sample],
    test_sets: Sequence[str],
    loading: Loading,
    photos: int = DEFAULT_CALIBRATION_PHOTOS,
    seed: int = 0,
    max_drop: float = DEFAULT_MAX_DROP,
    validation: Sequence[Sample] = (),
    max_val_drop: float | None = None,
) -> Accuracy:
    """Quantize the model of ``checkpoint_path`` on ``photos`` of the ``calibration`` samples (drawn with
    ``seed``), compare it with the fp32 conversion on the ``test`` samples (labelled by ``class_names``,
    the data's; ``test_sets`` names each one's data set), and write it beside the checkpoint, or raise
    :class:`QuantizationRefusedError`. ``max_val_drop``: points of top-1 on the ``validation`` samples
    that NNCF's accuracy control may lose, keeping layers in floating point until it does not."""
    try:
        import nncf
    except ImportError:
        raise RuntimeUnavailableError(NNCF_MISSING) from None
    import openvino as ov

    if not calibration or not test:
        raise ValueError("quantizing needs training photos to calibrate on and test photos to check")
    if max_val_drop is not None and not validation:
        raise ValueError("accuracy control (--max-val-drop) needs validation photos")
    checkpoint = load_checkpoint(checkpoint_path)
    spec = checkpoint.spec
    # The data's labels in the model's class order (a model may order its classes otherwise).
    test = remap_labels(test, class_names, spec.class_names)
    model = build_model(checkpoint, source=str(checkpoint_path)).eval()
    fold_batch_norms(model)  # as the service runs it
    network = convert_network(model, linear_head(model, spec.input_size), spec.input_size)

    chosen = random.Random(seed).sample(list(calibration), min(photos, len(calibration)))
    # Every photo is decoded before OpenVINO and NNCF start their threads: the loader's processes are
    # forked, and a process forked from one running those threads can crash.
    calibration_batches = list(_batches(spec, root, chosen, loading))
    test_batches = list(_batches(spec, root, test, loading))
    calibration_set = nncf.Dataset(
        [batch[i : i + 1] for batch in calibration_batches for i in range(len(batch))]
    )
    controlled: dict[str, Any] | None = None
    if max_val_drop is None:
        quantized = nncf.quantize(network, calibration_set, subset_size=len(chosen))
    else:
        validation = remap_labels(validation, class_names, spec.class_names)
        batches = list(_batches(spec, root, validation, loading))
        ends = np.cumsum([len(batch) for batch in batches])
        val_labels = np.array([label for _, label in validation])
        items = [
            (batch, val_labels[end - len(batch) : end]) for batch, end in zip(batches, ends, strict=True)
        ]
        quantized = nncf.quantize_with_accuracy_control(
            network,
            calibration_set,
            nncf.Dataset(items),
            _validation_top1,
            max_drop=max_val_drop / 100,
            drop_type=nncf.DropType.ABSOLUTE,
            subset_size=len(chosen),
        )
        controlled = {"split": "val", "photos": len(validation), "max_drop_points": max_val_drop}

    labels = np.array([label for _, label in test])
    core = ov.Core()
    right = {
        name: _top1(core.compile_model(net, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}), test_batches, labels)
        for name, net in (("fp32", network), ("int8", quantized))
    }
    sets = np.array(test_sets)
    groups = {"all": np.ones(len(test), dtype=bool)}
    if len(set(test_sets)) > 1:
        groups |= {name: sets == name for name in sorted(set(test_sets))}
    accuracy = Accuracy(
        fp32={name: float(right["fp32"][mask].mean()) for name, mask in groups.items()},
        int8={name: float(right["int8"][mask].mean()) for name, mask in groups.items()},
        photos={name: int(mask.sum()) for name, mask in groups.items()},
    )
    refused = accuracy.refused(max_drop)
    if refused:
        raise QuantizationRefusedError(
            f"int8 loses more than {max_drop} points of top-1, not written: {'; '.join(refused)}"
        )
    _write(
        quantized,
        checkpoint_path.parent,
        checkpoint.sha256,
        accuracy,
        photos=len(chosen),
        seed=seed,
        accuracy_control=controlled,
    )
    return accuracy


def _validation_top1(
    compiled: Any, items: Iterable[tuple[np.ndarray, np.ndarray]]
) -> tuple[float, list[float]]:
    """NNCF's validation function: top-1 over every photo of ``items`` (batches and their labels), and
    each batch's, by which NNCF ranks what each layer's int8 form costs."""
    request = compiled.create_infer_request()
    right, per_item = 0, []
    total = 0
    for images, labels in items:
        hits = int((request.infer({0: images})[0].argmax(1) == labels).sum())
        right, total = right + hits, total + len(labels)
        per_item.append(hits / len(labels))
    return right / max(total, 1), per_item


def _write(
    network: Any,
    folder: Path,
    model_sha256: str,
    accuracy: Accuracy,
    *,
    photos: int,
    seed: int,
    accuracy_control: dict[str, Any] | None,
) -> None:
    """The int8 network and its record into ``folder``: the old record goes first and the new one comes
    last, so that a reader never takes files of one network with the record of another."""
    import nncf
    import openvino as ov

    target = folder / QUANTIZED_NETWORK
    staging = folder / f".int8-{uuid.uuid4().hex}"
    (folder / QUANTIZED_RECORD).unlink(missing_ok=True)
    try:
        ov.save_model(network, staging / QUANTIZED_NETWORK, compress_to_fp16=False)
        for suffix in (".xml", ".bin"):
            os.replace((staging / QUANTIZED_NETWORK).with_suffix(suffix), target.with_suffix(suffix))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_json(
        folder / QUANTIZED_RECORD,
        {
            "model_sha256": model_sha256,
            "network_sha256": file_sha256(target),
            "weights_sha256": file_sha256(target.with_suffix(".bin")),
            "openvino": openvino_version(),
            "nncf": nncf.__version__,
            "calibration": {"split": "train", "photos": photos, "seed": seed},
            # The validation photos and the top-1 NNCF's accuracy control kept to; None: not used.
            "accuracy_control": accuracy_control,
            "top1_test": {"fp32": dict(accuracy.fp32), "int8": dict(accuracy.int8)},
            "test_photos": dict(accuracy.photos),
            "machine": platform.machine(),
        },
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--photos",
        type=int,
        default=DEFAULT_CALIBRATION_PHOTOS,
        help="training photos to calibrate on (drawn at random)",
    )
    parser.add_argument("--seed", type=int, default=0, help="which training photos are drawn")
    parser.add_argument(
        "--max-drop",
        type=float,
        default=DEFAULT_MAX_DROP,
        help="points of test top-1 that any data set may lose, else nothing is written",
    )
    parser.add_argument(
        "--max-val-drop",
        type=float,
        default=None,
        help="quantize under NNCF's accuracy control: layers go back to floating point until the "
        "validation photos' top-1 is within this many points of fp32's (slower to make, and to run)",
    )


def check_arguments(args: argparse.Namespace) -> None:
    if args.photos < 1:
        raise ValueError(f"--photos must be at least 1, not {args.photos}")
    if args.max_drop < 0:
        raise ValueError(f"--max-drop is points of top-1 that may be lost, at least 0, not {args.max_drop}")
    if args.max_val_drop is not None and args.max_val_drop < 0:
        raise ValueError(f"--max-val-drop is points of top-1, at least 0, not {args.max_val_drop}")


def summary(accuracy: Accuracy, folder: Path) -> str:
    rows = [
        f"  {name}: fp32 {100 * accuracy.fp32[name]:.2f}%, int8 {100 * accuracy.int8[name]:.2f}% "
        f"({accuracy.photos[name]} test photos)"
        for name in accuracy.fp32
    ]
    return "\n".join([f"int8 network written: {folder / QUANTIZED_NETWORK}", *rows]) + "\n"
