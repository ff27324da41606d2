"""Keeping what a fine-tuned model's base knew: replaying the base's own training photos, or distilling
the base's outputs where those photos are not at hand (learning without forgetting, Li and Hoiem 2017).

A site rarely uploads photos of every class, and a few dozen photos of three classes pull every other
class's evidence towards those three: a glass bottle becomes "paper". Replay mixes the base's training
photos into each epoch (a share of the draws, ``TrainConfig.replay``); distillation adds the KL
divergence between the base's and the new model's softened outputs on the new photos
(``TrainConfig.distill``).
"""

import functools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from models.checkpoint import file_sha256
from training.data import DataError, Sample
from training.split import AnyManifest, MixedManifest, load_manifest, manifest_data_root, parse_data_sets

logger = logging.getLogger(__name__)

#: The softening temperature of the distilled outputs (Hinton et al. 2015; LwF uses 2).
DISTILL_TEMPERATURE = 2.0


@dataclass(frozen=True)
class Replay:
    """The base's training photos that a run may draw: absolute paths, labels in the run's class order,
    and each photo's source."""

    samples: tuple[Sample, ...]
    sources: tuple[str, ...]
    manifest_digest: str
    data_sets: tuple[str, ...]
    #: The base's validation photos, as ``samples`` are: never trained on, they check what was kept.
    val_samples: tuple[Sample, ...] = ()

    def record(self, share: float, distill: float = 0.0) -> dict[str, Any]:
        """What the run's spec says was replayed (and how much the base's outputs on those photos were
        distilled)."""
        per_source: dict[str, int] = {}
        for source in self.sources:
            per_source[source] = per_source.get(source, 0) + 1
        return {
            "method": "replay",
            "share": share,
            "distill": distill,
            "photos": len(self.samples),
            "per_source": dict(sorted(per_source.items())),
            "data_sets": list(self.data_sets),
            "manifest_digest": self.manifest_digest,
        }


def _moved(manifest: AnyManifest, data: Sequence[str]) -> str | dict[str, str] | None:
    if not data:
        return None
    if isinstance(manifest, MixedManifest):
        return dict(parse_data_sets(data))
    if len(data) > 1:
        raise DataError("a single data set's replay manifest takes one replay_data path")
    return data[0].partition("=")[2] or data[0]


def load_replay(
    manifest_path: str | os.PathLike[str],
    data: Sequence[str],
    cache_dir: Path,
    class_names: Sequence[str],
    *,
    verify: bool = True,
) -> Replay:
    """The train (and val) split of the base's manifest, its data sets found (``data``: where they are now, as
    ``NAME=PATH``) and checked against their digests (``verify``), relabelled to ``class_names`` by name.
    Photos of classes the run does not have are left out."""
    manifest = load_manifest(Path(manifest_path))
    # Absolute: the photos are joined to the run's own data root, which a relative path would lead into.
    located = manifest_data_root(manifest, cache_dir, source=_moved(manifest, data), verify=verify)
    root = located.resolve()

    def relabelled(split: str) -> tuple[list[Sample], list[str]]:
        samples, sources = [], []
        for (path, label), source in zip(
            manifest.select(split), manifest.select_sources(split, "replay"), strict=True
        ):
            name = manifest.class_names[label]
            if name in class_names:
                samples.append((str(root / path), class_names.index(name)))
                sources.append(source)
        return samples, sources

    samples, sources = relabelled("train")
    if not samples:
        raise DataError(f"{manifest_path}: no training photos of the classes {list(class_names)} to replay")
    names = (
        [part.name for part in manifest.parts] if isinstance(manifest, MixedManifest) else [manifest.source]
    )
    val, _ = relabelled("val")
    return Replay(tuple(samples), tuple(sources), manifest.digest, tuple(names), tuple(val))


def find_replay_data(manifest_path: Path, folders: Sequence[Path]) -> tuple[str, ...] | None:
    """Where the data sets of a base model's manifest are on this server, as ``NAME=PATH`` (``PATH`` for a
    single data set): each archive is looked up by its file name in ``folders``, in order, and must have
    the recorded sha256. ``None`` when the manifest or any of its data sets is not at hand."""
    try:
        manifest = load_manifest(manifest_path)
    except DataError:
        return None
    parts = (
        [(part.name, part.manifest) for part in manifest.parts]
        if isinstance(manifest, MixedManifest)
        else [(None, manifest)]
    )
    found = []
    for name, part in parts:
        if part.source_sha256 is None:
            return None  # a folder, not an archive: nothing to check a copy against
        candidates = [folder / Path(part.source).name for folder in folders]
        match = next((c for c in candidates if c.is_file() and _sha256(c) == part.source_sha256), None)
        if match is None:
            return None
        found.append(str(match) if name is None else f"{name}={match}")
    return tuple(found)


def _sha256(path: Path) -> str:
    stat = path.stat()
    return _cached_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    # Keyed on size and modification time too: a file replaced in place is hashed again.
    return file_sha256(path)


def replay_weights(site: Sequence[float], replayed: Sequence[float], share: float) -> list[float]:
    """Sampling weights of the site's photos then the replayed ones, each group's scaled so that the
    replayed photos get ``share`` of the draws."""
    site_total, replay_total = sum(site), sum(replayed)
    return [w * (1 - share) / site_total for w in site] + [w * share / replay_total for w in replayed]


def lacking_only(weights: list[float], replayed: Sequence[Sample], own_labels: set[int]) -> list[float]:
    """The replayed photos' sampling ``weights`` with those of the data's own classes at 0: those classes
    are the data's own photos' to define (a site's "plastic" need not look like the web's). Where the data
    has every class, all are replayed as before."""
    kept = [
        0.0 if label in own_labels else weight for weight, (_, label) in zip(weights, replayed, strict=True)
    ]
    if not any(kept):
        logger.info("the data has photos of every class: the base's photos of all of them are replayed")
        return weights
    return kept


def column_map(base_classes: Sequence[str], class_names: Sequence[str]) -> tuple[list[int], list[int]]:
    """The logit columns of the classes the base and the run share: (base's, run's)."""
    shared = [name for name in base_classes if name in class_names]
    return [base_classes.index(n) for n in shared], [list(class_names).index(n) for n in shared]


def distillation_loss(
    logits: torch.Tensor, base_logits: torch.Tensor, columns: tuple[list[int], list[int]]
) -> torch.Tensor:
    """KL(base || new) of the softened outputs over the shared classes, scaled by T**2 so that its
    gradients keep their size whatever the temperature (Hinton et al. 2015)."""
    base_columns, own_columns = columns
    t = DISTILL_TEMPERATURE
    target = F.softmax(base_logits[:, base_columns].float() / t, dim=1)
    log_probs = F.log_softmax(logits[:, own_columns].float() / t, dim=1)
    return F.kl_div(log_probs, target, reduction="batchmean") * t * t


def replay_record_for(
    config_replay: float, replay: Replay | None, distill: float, replay_distill: float = 0.0
) -> dict[str, Any] | None:
    """What protected the base's classes in a fine-tuning run, for its spec."""
    if replay is not None and config_replay > 0:
        return replay.record(config_replay, replay_distill)
    if distill > 0:
        return {"method": "distill", "weight": distill, "temperature": DISTILL_TEMPERATURE}
    return None
