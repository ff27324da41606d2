"""The training loop: epochs, checkpoints after each one, resume, and the final test report.

A run's folder and its files are named in ``training.run_folder``.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from models import create_model
from models.checkpoint import Checkpoint, CheckpointError, ModelSpec, load_checkpoint, save_checkpoint
from models.files import read_json, write_json
from models.precision import amp_dtype, autocast
from models.predictor import select_device
from training.augment import build_batch_mix, build_train_transform
from training.averaging import restart, weight_average
from training.config import TrainConfig
from training.data import (
    Batches,
    EpochShuffleSampler,
    ImageDataset,
    Loading,
    Prepare,
    Sample,
    TaggedDataset,
    WeightedEpochSampler,
    balance_weights,
    default_workers,
    make_loader,
)
from training.device_augment import DeviceAugment
from training.device_data import DeviceEvalBatches, DeviceTrainBatches, decode_photos
from training.distributed import (
    RankShard,
    World,
    barrier,
    from_writer,
    join_world,
    leave_world,
    rank_batch_size,
    rank_device,
    share_buffers,
    sum_over_ranks,
    sync_batch_norms,
    wrap_model,
)
from training.evaluation import (
    eval_loader,
    predict,
    remap_labels,
)
from training.finish import finish_run
from training.hardware import environment
from training.optim import build_criterion, build_optimizer, build_scheduler
from training.paste import BackgroundPaste
from training.progress import EtaClock, Phase, Progress, ProgressCallback, TrainingCancelled
from training.replay import (
    column_map,
    distillation_loss,
    lacking_only,
    load_replay,
    replay_record_for,
    replay_weights,
)
from training.report import plot_curves
from training.run_folder import BEST_FILE, RunFolder
from training.seeding import capture_rng_state, derive_seed, restore_rng_state, seed_everything
from training.split import (
    DEFAULT_SOURCE,
    AnyManifest,
    create_manifest,
    create_mixed_manifest,
    load_manifest,
    manifest_data_root,
    parse_data_sets,
    save_manifest,
)
from training.state import ResumeError, ResumeState, load_resume_state, save_resume_state
from training.transfer import head_keys, transfer_weights

logger = logging.getLogger(__name__)


class RunExistsError(Exception):
    """``train`` was asked to start a run in a folder that already holds one."""


@dataclass(frozen=True)
class TrainResult:
    """How a call to :func:`train` or :func:`resume` ended (``test_accuracy`` is best.pt's)."""

    status: Literal["completed", "cancelled"]
    out_dir: Path
    epochs_completed: int
    best_val_accuracy: float
    best_epoch: int
    test_accuracy: float | None = None


def run_classes(config: TrainConfig, manifest: AnyManifest) -> tuple[str, ...]:
    """The classes a run's model knows: with a base and ``classes="base"``, the base's in its order and
    the data's new ones after them (so no head row moves); else the data's."""
    if config.init_from is None or config.classes == "data":
        return manifest.class_names
    new = [name for name in manifest.class_names if name not in config.init_classes]
    return (*config.init_classes, *new)


def model_spec(
    config: TrainConfig,
    manifest: AnyManifest,
    metrics: dict[str, Any] | None = None,
    *,
    retention: dict[str, Any] | None = None,
) -> ModelSpec:
    """The spec that every checkpoint of this run carries (recipe and data set included); ``retention``
    says how the base's classes were protected (``training.replay``)."""
    class_names = run_classes(config, manifest)
    recipe = {**config.recipe_record(), "data_source": manifest.source, "data_digest": manifest.digest}
    sources = sorted(set(manifest.select_sources("train", DEFAULT_SOURCE)))
    if sources != [DEFAULT_SOURCE]:
        recipe["train_sources"] = sources
    if config.init_classes:
        recipe["transfer"] = {
            "kept": [name for name in class_names if name in config.init_classes],
            "new": [name for name in class_names if name not in config.init_classes],
            # Classes of the base that no photo of this run's data set shows.
            "without_data": [name for name in class_names if name not in manifest.class_names],
        }
    if retention is not None:
        recipe["retention"] = retention
    return ModelSpec(
        arch=config.model,
        class_names=class_names,
        input_size=config.input_size,
        mean=config.mean,
        std=config.std,
        arch_kwargs=dict(config.model_kwargs),
        recipe=recipe,
        metrics=metrics or {},
    )


def train_step(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    criterion: nn.Module,
    amp: torch.dtype | None,
    extra_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on class indices or class probabilities, plus ``extra_loss(images, logits)``
    when given; returns the (detached) loss and logits."""
    with autocast(images.device, amp):
        logits = model(images)
        loss = criterion(logits.float(), targets)
        if extra_loss is not None:
            loss = loss + extra_loss(images, logits)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), logits.detach()


class _Run:
    """One training process's view of a run: the objects it trains and the state it checkpoints."""

    def __init__(
        self,
        config: TrainConfig,
        manifest: AnyManifest,
        root: Path,
        callback: ProgressCallback | None,
        *,
        resuming: bool = False,
        world: World | None = None,
    ) -> None:
        self.world = world or World()
        # Only rank 0 reports progress (and so hears a cancellation); its exit ends the others under
        # torchrun, and the run resumes from the last epoch.
        self.config, self.manifest = config, manifest
        self.callback = callback if self.world.writer else None
        self.out = Path(config.out)
        self.folder = RunFolder(self.out)
        self.device = rank_device(select_device(config.device), self.world)
        self.amp = amp_dtype(self.device, config.amp)
        self.loading = Loading(self.device, config.batch_size, config.workers)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        seed_everything(derive_seed(config.seed, "init"))
        self.class_names = run_classes(config, manifest)
        self.model = create_model(config.model, num_classes=len(self.class_names), **config.model_kwargs)
        self.replay = None
        if config.replay_manifest is not None and config.replay > 0:
            # Rank 0 extracts and checks the replayed photos; the others find them once it has.
            replay_manifest, replay_data = config.replay_manifest, config.replay_data
            if self.world.writer:
                self.replay = load_replay(replay_manifest, replay_data, self.folder.replay, self.class_names)
            barrier(self.world)
            if not self.world.writer:
                self.replay = load_replay(
                    replay_manifest, replay_data, self.folder.replay, self.class_names, verify=False
                )
        # The base model, when its outputs are distilled: on the new photos when it has no photos of its
        # own to replay, or on the replayed photos.
        self.teacher: tuple[nn.Module, tuple[list[int], list[int]]] | None = None
        base = None
        if config.init_from is not None and (not resuming or self._distilling()):
            base = self.base()
        if base is not None and self._distilling():
            teacher = create_model(config.model, num_classes=base.spec.num_classes, **config.model_kwargs)
            teacher.load_state_dict(base.state_dict)
            teacher.requires_grad_(False)
            self.teacher = (
                teacher.eval().to(self.device),
                column_map(base.spec.class_names, self.class_names),
            )
        # A resumed run loads its own weights; only a fresh start takes the base checkpoint's.
        if base is not None and not resuming:
            transfer = transfer_weights(self.model, base, self.class_names)
            logger.info(
                "started from %s: head rows kept for %s, new for %s",
                config.init_from,
                list(transfer.kept_classes),
                list(transfer.new_classes),
            )
        self.model = sync_batch_norms(self.model, self.world, self.device).to(self.device)
        self.spec = model_spec(
            config,
            manifest,
            retention=replay_record_for(
                config.replay, self.replay, self._distill_weight(), config.replay_distill
            ),
        )
        self._build_loaders(root)
        # After the loaders: the device pipeline makes the model channels-last, and the copy follows.
        self.averaged = weight_average(self.model) if config.average_epochs else None
        self.optimizer = build_optimizer(self.model, config, self._head_modules())
        self.scheduler = build_scheduler(self.optimizer, config, len(self.train_loader))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.criterion = build_criterion(config)
        # What the optimiser steps through: the model, under DDP when several processes train it.
        self.trained: nn.Module = self.model
        self._trained_frozen: bool | None = None
        self.batch_mix = build_batch_mix(config, len(self.class_names))
        self._replayed: torch.Tensor | None = None
        self.epoch = 0
        self.environment_recorded = False
        self.history: list[dict[str, float]] = []
        self.best_val_accuracy, self.best_epoch = -1.0, 0
        self.clock = EtaClock(self._units(config.epochs))

    def base(self) -> Checkpoint:
        """The base checkpoint, refused if its weights are not the ones the run started from."""
        config = self.config
        assert config.init_from is not None
        base = load_checkpoint(config.init_from)
        if base.sha256 != config.init_sha256:
            raise ResumeError(
                f"{config.init_from}: its weights ({base.sha256[:12]}) are not the ones this run "
                f"started from ({str(config.init_sha256)[:12]})"
            )
        return base

    def _replaying(self) -> bool:
        return self.config.replay_manifest is not None and self.config.replay > 0

    def _distill_weight(self) -> float:
        """The weight of distilling the base on the new photos: only with a base model and nothing of its
        own to replay."""
        config = self.config
        return config.distill if config.init_from is not None and not self._replaying() else 0.0

    def _distilling(self) -> bool:
        """Whether the base's outputs are distilled at all: on the new photos, or on the replayed ones."""
        return self._distill_weight() > 0 or (self._replaying() and self.config.replay_distill > 0)

    def _build_loaders(self, root: Path) -> None:
        config, manifest = self.config, self.manifest
        train_samples = remap_labels(manifest.select("train"), manifest.class_names, self.class_names)
        sources = manifest.select_sources("train", DEFAULT_SOURCE)
        # Paste only ever mixes the run's own photos: it knows their paths relative to the root.
        prepare = background_paste(config, root, [path for path, _ in train_samples], sources)
        balance = {"class_balance": config.class_balance, "source_balance": config.source_balance}
        sampler: EpochShuffleSampler
        self.train_loader: Batches
        self.val_loader: Batches
        own_count = len(train_samples)
        if self.replay is not None:
            # The replayed photos' paths are absolute, so one dataset (and one root) serves both.
            own = balance_weights([label for _, label in train_samples], sources, **balance)
            # Drawn as the base drew its training photos, not as the site's few are balanced.
            replayed = balance_weights(
                [label for _, label in self.replay.samples],
                self.replay.sources,
                class_balance=config.replay_class_balance,
                source_balance=config.replay_source_balance,
            )
            if config.replay_classes == "lacking":
                replayed = lacking_only(replayed, self.replay.samples, {label for _, label in train_samples})
            weights = replay_weights(own, replayed, config.replay)
            # An epoch draws about every photo of the run's own once, and the replayed share beside them.
            size = round(len(train_samples) / (1 - config.replay))
            train_samples = [*train_samples, *self.replay.samples]
            sampler = WeightedEpochSampler(weights, seed=config.seed, size=size)
        elif config.class_balance > 0 or config.source_balance > 0:
            weights = balance_weights([label for _, label in train_samples], sources, **balance)
            sampler = WeightedEpochSampler(weights, seed=config.seed)
        else:
            sampler = EpochShuffleSampler(len(train_samples), seed=config.seed)
        self.rank_batch_size = rank_batch_size(config.batch_size, self.world)
        # This process's draws: all of them, or its share of each global batch among several.
        self.sampler = (
            RankShard(sampler, self.world, config.batch_size) if self.world.distributed else sampler
        )
        if config.pipeline == "device":
            self._build_device_batches(root, train_samples)
            return
        transform = build_train_transform(config)
        train_set = (
            ImageDataset(root, train_samples, transform, prepare=prepare)
            if self.replay is None
            else TaggedDataset(root, train_samples, transform, first_tagged=own_count, prepare=prepare)
        )
        self.train_loader = make_loader(
            train_set,
            batch_size=self.rank_batch_size,
            device=self.device,
            workers=config.workers,
            sampler=self.sampler,
        )
        self.val_loader = eval_loader(
            self.spec,
            root,
            remap_labels(manifest.select("val"), manifest.class_names, self.class_names),
            self.loading,
        )

    def _build_device_batches(self, root: Path, train_samples: list[Sample]) -> None:
        """The device pipeline (``training.device_data``): each split decoded once, batches made on the
        device, and the network channels-last to take them."""
        config, workers = self.config, self.loading.workers
        decode_workers = default_workers(self.device) if workers is None else workers
        started = time.perf_counter()
        train = decode_photos(root, train_samples, config.input_size, workers=decode_workers)
        # Rank 0 alone validates.
        val_samples = (
            remap_labels(self.manifest.select("val"), self.manifest.class_names, self.class_names)
            if self.world.writer
            else []
        )
        val = decode_photos(root, val_samples, config.input_size, workers=decode_workers)
        logger.info(
            "decoded %d training and %d validation photos onto %s in %.1fs",
            len(train),
            len(val),
            self.device,
            time.perf_counter() - started,
        )
        self.train_loader = DeviceTrainBatches(
            train.to(self.device),
            self.sampler,
            batch_size=self.rank_batch_size,
            augment=DeviceAugment(config),
            # Each rank draws its own augmentations: a global batch gets one draw a photo.
            seed=derive_seed(config.seed, "rank", self.world.rank) if self.world.distributed else config.seed,
        )
        self.val_loader = DeviceEvalBatches(
            val.to(self.device), batch_size=config.batch_size, mean=config.mean, std=config.std
        )
        self.model.to(memory_format=torch.channels_last)

    def _units(self, epochs: int) -> int:
        # An averaged epoch validates the mean of the weights as well.
        averaged = max(0, epochs - self.config.epochs + self.config.average_epochs)
        return epochs * (len(self.train_loader) + len(self.val_loader)) + averaged * len(self.val_loader)

    def load(self, state: ResumeState) -> None:
        self.model.load_state_dict(state.model)
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        if state.scaler:
            self.scaler.load_state_dict(state.scaler)
        restore_rng_state(state.rng)
        self.epoch, self.history = state.epoch, list(state.history)
        self.best_val_accuracy, self.best_epoch = state.best_val_accuracy, state.best_epoch
        if self.averaged is not None and state.averaged is not None:
            self.averaged.load_state_dict(state.averaged)
        self.clock = EtaClock(self._units(self.config.epochs), self._units(self.epoch))

    def state(self) -> ResumeState:
        return ResumeState(
            config=self.config.to_dict(),
            epoch=self.epoch,
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else {},
            rng=capture_rng_state(),
            history=self.history,
            best_val_accuracy=self.best_val_accuracy,
            best_epoch=self.best_epoch,
            manifest_digest=self.manifest.digest,
            averaged=self.averaged.state_dict() if self.averaged is not None else None,
        )

    def _report(self, phase: Phase, step: int, steps: int, metrics: dict[str, float], done: int) -> None:
        if self.callback is not None:
            progress = Progress(
                phase=phase,
                epoch=self.epoch + 1 if phase != "epoch" else self.epoch,
                epochs=self.config.epochs,
                step=step,
                steps=steps,
                metrics=metrics,
                eta_seconds=self.clock.eta(done),
            )
            self.callback(progress)

    def _head_modules(self) -> set[str]:
        """The names of the classifier's modules."""
        return {key.rsplit(".", 1)[0] for key in head_keys(self.model.state_dict(), self.spec.num_classes)}

    def _freeze_backbone(self, frozen: bool) -> None:
        """Train only the classifier (``frozen``), or everything. Frozen parameters get no gradient, so
        the optimiser leaves them (and their weight decay) alone, and frozen batch norms keep their
        statistics; with ``freeze_norm`` they keep them throughout."""
        head = self._head_modules()
        for name, parameter in self.model.named_parameters():
            parameter.requires_grad_(not frozen or name.rsplit(".", 1)[0] in head)
        if frozen:
            self.model.eval()
            for name in head:
                self.model.get_submodule(name).train()
        elif self.config.freeze_norm:
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def train_batch(
        self, images: torch.Tensor, labels: torch.Tensor, replayed: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step and one scheduler step on a batch from the loader; the loss and logits.
        ``replayed`` marks the base's own photos in the batch, when some are replayed."""
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        self._replayed = None if replayed is None else replayed.to(self.device, non_blocking=True)
        # Mixed batches train on class probabilities; accuracy still counts each image's own label.
        images, targets = (images, labels) if self.batch_mix is None else self.batch_mix(images, labels)
        loss, logits = train_step(
            self.trained,
            images,
            targets,
            optimizer=self.optimizer,
            scaler=self.scaler,
            criterion=self.criterion,
            amp=self.amp,
            extra_loss=None if self.teacher is None else self._distillation,
        )
        self.scheduler.step()
        return loss, logits

    def _distillation(self, images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The base's outputs distilled: on every photo of the batch when nothing is replayed, else on
        the replayed photos alone (where the base's answers are the ones to keep)."""
        assert self.teacher is not None
        teacher, columns = self.teacher
        if self._replayed is None:
            with torch.no_grad():
                base_logits = teacher(images)
            return self._distill_weight() * distillation_loss(logits, base_logits, columns)
        if not bool(self._replayed.any()):
            return logits.new_zeros(())
        with torch.no_grad():
            base_logits = teacher(images[self._replayed])
        kept = distillation_loss(logits[self._replayed], base_logits, columns)
        # Averaged over the whole batch, as the cross-entropy is.
        share = self._replayed.float().mean()
        return self.config.replay_distill * share * kept

    def plateaued(self) -> bool:
        return plateaued([record["val_loss"] for record in self.history], self.config.early_stop)

    def train_epoch(self) -> dict[str, float]:
        self.model.train()
        # Epochs are counted from 1: epoch self.epoch + 1 runs now.
        frozen = self.epoch < self.config.freeze_epochs
        self._freeze_backbone(frozen)
        if frozen != self._trained_frozen:
            # DDP reduces the parameters that train when it wraps the model: wrapped again on a change.
            self.trained = wrap_model(self.model, self.world, self.device)
            self._trained_frozen = frozen
        done = self._units(self.epoch)
        loss_sum, correct, seen = 0.0, 0, 0
        loader = self.train_loader
        for step, batch in enumerate(loader, start=1):
            images, labels = batch[0], batch[1].to(self.device, non_blocking=True)
            replayed = batch[2] if len(batch) > 2 else None
            loss, logits = self.train_batch(images, labels, replayed)
            loss_sum += float(loss) * len(labels)
            correct += int((logits.argmax(dim=1) == labels).sum())
            seen += len(labels)
            metrics = {"loss": loss_sum / seen, "accuracy": correct / seen}
            self._report("train", step, len(loader), metrics, done + step)
        loss_sum, correct_sum, seen_sum = sum_over_ranks([loss_sum, correct, seen], self.world, self.device)
        return {"loss": loss_sum / seen_sum, "accuracy": correct_sum / seen_sum}

    def val_epoch(self, model: nn.Module | None = None) -> dict[str, float]:
        """The validation loss and accuracy of ``model`` (the one training if not given); the mean of the
        weights is validated after the epoch's own."""
        second = model is not None
        done = self._units(self.epoch) + len(self.train_loader) + (len(self.val_loader) if second else 0)
        predictions = predict(
            model if model is not None else self.model,
            self.val_loader,
            device=self.device,
            amp_dtype=self.amp,
            on_step=lambda step, steps, metrics: self._report("val", step, steps, dict(metrics), done + step),
        )
        return {"loss": predictions.loss, "accuracy": predictions.accuracy}

    def run_epoch(self) -> None:
        epoch = self.epoch + 1
        # Reseeding from (seed, epoch) makes the epoch independent of the process that runs it; each rank
        # of several draws its dropout and batch mixing from a stream of its own.
        rank = (self.world.rank,) if self.world.distributed else ()
        seed_everything(derive_seed(self.config.seed, "epoch", epoch, *rank))
        self.sampler.set_epoch(epoch)
        started = time.perf_counter()
        lr = float(self.optimizer.param_groups[0]["lr"])
        train = self.train_epoch()
        # Validated once, by rank 0 with its statistics, and its figures given to every rank: early
        # stopping and the kept epoch are decided alike everywhere.
        share_buffers(self.model, self.world)
        nothing = {"loss": float("nan"), "accuracy": float("nan")}
        val = from_writer(self.val_epoch() if self.world.writer else nothing, self.world, self.device)
        kept, averaged = self._average(epoch), None
        if kept is not None:
            averaged = from_writer(
                self.val_epoch(kept) if self.world.writer else nothing, self.world, self.device
            )
        record = {
            "epoch": epoch,
            "train_loss": train["loss"],
            "train_accuracy": train["accuracy"],
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "lr": lr,
            "seconds": time.perf_counter() - started,
        }
        if averaged is not None:
            record.update(averaged_val_loss=averaged["loss"], averaged_val_accuracy=averaged["accuracy"])
        self.epoch = epoch
        self.history.append(record)
        if kept is not None and averaged is not None:
            # The kept model's own figures, as every other run's best.pt carries.
            self.best_val_accuracy, self.best_epoch = averaged["accuracy"], epoch
            if self.world.writer:
                kept_metrics = {**record, "val_loss": averaged["loss"], "val_accuracy": averaged["accuracy"]}
                self.save_model(BEST_FILE, kept_metrics, kept)
        elif self.config.keep_epoch == "last" or val["accuracy"] > self.best_val_accuracy:
            self.best_val_accuracy, self.best_epoch = val["accuracy"], epoch
            if self.world.writer:
                self.save_model(BEST_FILE, record)
        if not self.world.writer:
            return
        if not self.environment_recorded:
            process = {**environment(self.device, self.amp), "processes": self.world.size}
            record_environment(self.folder.environment, epoch, process)
            self.environment_recorded = True
        # The resume file goes last: a kill before it only repeats this epoch, deterministically.
        save_resume_state(self.folder.resume, self.state())
        self.write_history()
        logger.info(
            "epoch %d/%d: train loss %.4f acc %.4f, val loss %.4f acc %.4f (%.1fs)",
            epoch,
            self.config.epochs,
            record["train_loss"],
            record["train_accuracy"],
            record["val_loss"],
            record["val_accuracy"],
            record["seconds"],
        )
        self._report("epoch", len(self.train_loader), len(self.train_loader), record, self._units(epoch))

    def _average(self, epoch: int) -> nn.Module | None:
        """The mean of the weights of the last ``average_epochs`` epochs up to ``epoch`` (its own weights
        added to it), or ``None`` before them. A run stopped early before them keeps its last epoch's
        weights. A run resumed with more epochs moves the window: the mean starts again."""
        first = self.config.epochs - self.config.average_epochs + 1
        if self.averaged is None or epoch < first:
            return None
        # The mean holds the n epochs before this one, consecutive: it must not reach before the window.
        if epoch - int(self.averaged.n_averaged) < first:
            restart(self.averaged)
        self.averaged.update_parameters(self.model)
        return self.averaged.module

    def save_model(self, name: str, metrics: dict[str, Any], model: nn.Module | None = None) -> None:
        spec = ModelSpec.from_dict({**self.spec.to_dict(), "metrics": metrics})
        save_checkpoint(self.folder.checkpoint(name), model if model is not None else self.model, spec)

    def write_history(self) -> None:
        write_json(self.folder.history, self.history)
        plot_curves(self.history, self.out)

    def between(self, phase: Phase) -> None:
        """Tell the callback where the run is between its long steps (where a cancellation is heard)."""
        if self.callback is not None:
            units = self._units(self.epoch)
            self.callback(Progress(phase, self.epoch, self.config.epochs, 0, 0, {}, self.clock.eta(units)))


def background_paste(config: TrainConfig, root: Path, paths: list[str], sources: list[str]) -> Prepare | None:
    """The cut-and-paste of ``config.paste_background`` over the training photos, if it is on: photos
    of the plain sources onto crops of the others."""
    if config.paste_background == 0 or not config.plain_sources:
        return None
    plain = [index for index, source in enumerate(sources) if source in config.plain_sources]
    backgrounds = [
        path for path, source in zip(paths, sources, strict=True) if source not in config.plain_sources
    ]
    if not plain or not backgrounds:
        logger.warning(
            "paste_background is on, but the training split has %d photos of %s and %d of other sources; off",
            len(plain),
            list(config.plain_sources),
            len(backgrounds),
        )
        return None
    return BackgroundPaste(root, backgrounds, plain, p=config.paste_background)


def plateaued(val_losses: list[float], patience: int) -> bool:
    """Whether the validation loss has not improved for ``patience`` epochs (0: never stop). Decided
    from the history alone, so a resumed run stops where the first would have."""
    if patience == 0 or len(val_losses) <= patience:
        return False
    best = min(range(len(val_losses)), key=val_losses.__getitem__)
    return len(val_losses) - 1 - best >= patience


def record_environment(path: Path, first_epoch: int, process: dict[str, Any]) -> None:
    """Add the process that trains from ``first_epoch`` on to a run's record, replacing any entry from a
    process that was killed before the epochs it recorded were kept."""
    kept = [entry for entry in read_environment(path) if entry["first_epoch"] < first_epoch]
    write_json(path, [*kept, {"first_epoch": first_epoch, **process}])


def read_environment(path: Path) -> list[dict[str, Any]]:
    """The entries of a run's ``environment.json``, by first epoch; none for a run that predates it."""
    return list(read_json(path)) if path.is_file() else []


def _fit(run: _Run, root: Path) -> TrainResult:
    try:
        run.between("prepare")
        while run.epoch < run.config.epochs and not run.plateaued():
            run.run_epoch()
        if run.epoch < run.config.epochs:
            logger.info(
                "stopped after epoch %d: no lower validation loss for %d epochs",
                run.epoch,
                run.config.early_stop,
            )
        # The finish (calibration, index, feature bank, test report) is rank 0's alone.
        test_accuracy = finish_run(run, root) if run.world.writer else None
    except TrainingCancelled:
        logger.info("training cancelled; resumable from epoch %d", run.epoch)
        return TrainResult("cancelled", run.out, run.epoch, run.best_val_accuracy, run.best_epoch)
    logger.info(
        "finished: best val acc %.4f (epoch %d), test acc %s",
        run.best_val_accuracy,
        run.best_epoch,
        "n/a (no test photos)" if test_accuracy is None else f"{test_accuracy:.4f}",
    )
    return TrainResult("completed", run.out, run.epoch, run.best_val_accuracy, run.best_epoch, test_accuracy)


def split_data(config: TrainConfig, cache_dir: Path) -> tuple[AnyManifest, Path]:
    """The manifest of a new run's data set(s) and the folder its paths are relative to."""
    if isinstance(config.data, str):
        return create_manifest(
            config.data, cache_dir, seed=config.seed, fractions=config.split, holdout=config.holdout_sources
        )
    return create_mixed_manifest(
        parse_data_sets(config.data),
        cache_dir,
        seed=config.seed,
        fractions=config.split,
        holdout=config.holdout_sources,
    )


def _pin_base(config: TrainConfig) -> TrainConfig:
    """The config with its base checkpoint's digest and classes recorded; refuses a base whose weights
    are not the ones asked for, or whose architecture cannot take this run's."""
    assert config.init_from is not None
    base = load_checkpoint(config.init_from)
    if config.init_sha256 is not None and base.sha256 != config.init_sha256:
        raise CheckpointError(
            f"{config.base or config.init_from}: its weights ({base.sha256[:12]}) are not the ones asked "
            f"for ({config.init_sha256[:12]})"
        )
    spec = base.spec
    if (spec.arch, spec.arch_kwargs) != (config.model, dict(config.model_kwargs)):
        raise ValueError(
            f"the base model is {spec.arch} {spec.arch_kwargs or ''}, this run builds {config.model} "
            f"{dict(config.model_kwargs) or ''}: fine-tuning keeps the base's architecture and options"
        )
    return config.replace(init_sha256=base.sha256, init_classes=spec.class_names)


def train(config: TrainConfig, *, callback: ProgressCallback | None = None) -> TrainResult:
    """Start a new run in ``config.out``: split the data set, train, checkpoint, report.

    Raises :class:`RunExistsError` if the folder already holds a run (use :func:`resume`). Started by
    torchrun (``training.distributed``), rank 0 splits the data and writes the run's files; the other
    ranks read them once it has.
    """
    world = join_world(select_device(config.device))
    try:
        if world.writer:
            started = prepare_run(config, callback)
            if isinstance(started, TrainResult):
                return started
            config, manifest, root = started
        barrier(world)
        if not world.writer:
            folder = RunFolder(Path(config.out))
            config = TrainConfig.from_dict(read_json(folder.config))
            manifest = load_manifest(folder.manifest)
            root = manifest_data_root(manifest, folder.data, verify=False)
        return _fit(_Run(config, manifest, root, callback, world=world), root)
    finally:
        leave_world(world)


def prepare_run(
    config: TrainConfig, callback: ProgressCallback | None = None
) -> tuple[TrainConfig, AnyManifest, Path] | TrainResult:
    """A new run's folder with its config and split written: the config as recorded, the split and the
    folder its paths are relative to; or the result of a run cancelled before it started."""
    out = Path(config.out)
    folder = RunFolder(out)
    if folder.holds_run():
        raise RunExistsError(f"{out} already holds a run; resume it or choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    try:
        if callback is not None:  # a job cancelled while it waited stops before its data is extracted
            callback(Progress("prepare", 0, config.epochs, 0, 0))
    except TrainingCancelled:
        logger.info("training cancelled before it started")
        return TrainResult("cancelled", out, 0, -1.0, 0)
    manifest, root = split_data(config, folder.data)
    wanted = ("train", "val", "test") if config.split[2] > 0 else ("train", "val")
    for split, count in ((s, len(manifest.select(s))) for s in wanted):
        if count == 0:
            raise ValueError(f"the {split} split is empty; the data set is too small to split")
    if config.init_from is not None:
        config = _pin_base(config)
    write_json(folder.config, config.to_dict())
    save_manifest(manifest, folder.manifest)
    logger.info(
        "split %s: %s", config.data, {split: sum(row.values()) for split, row in manifest.counts().items()}
    )
    return config, manifest, root


def resume(
    out_dir: str | Path,
    *,
    callback: ProgressCallback | None = None,
    device: str | None = None,
    workers: int | None = None,
    epochs: int | None = None,
) -> TrainResult:
    """Continue the run in ``out_dir`` after its last completed epoch, with the same split, optimiser
    and schedule state. ``device`` and ``workers`` may differ from the original run.

    ``epochs`` changes the run's length: the learning-rate schedule goes on from the step it reached,
    over the new number of epochs (so a cosine decay ends at the new last epoch). The new length is
    saved with the run.

    A run stopped before its first epoch finished (no resume file yet) starts again from its saved
    config and manifest.
    """
    out = Path(out_dir)
    folder = RunFolder(out)
    # The group's backend follows the device the run trains on: the one given, else the run's own.
    saved_device = read_json(folder.config).get("device") if folder.config.is_file() else None
    world = join_world(select_device(device or saved_device))
    try:
        return _resume(out, folder, world, callback=callback, device=device, workers=workers, epochs=epochs)
    finally:
        leave_world(world)


def _resume(
    out: Path,
    folder: RunFolder,
    world: World,
    *,
    callback: ProgressCallback | None,
    device: str | None,
    workers: int | None,
    epochs: int | None,
) -> TrainResult:
    state = load_resume_state(folder.resume) if folder.resume.exists() else None
    if state is None and not folder.config.is_file():
        raise ResumeError(f"{out}: no run to resume (no {folder.resume.name} or {folder.config.name})")
    saved = state.config if state is not None else read_json(folder.config)
    runtime = {"device": device, "workers": workers}
    config = TrainConfig.from_dict(saved).replace(
        out=str(out), **{key: value for key, value in runtime.items() if value is not None}
    )
    if epochs is not None:
        done = state.epoch if state is not None else 0
        if epochs <= done:
            raise ResumeError(f"{out}: {done} epochs are done already; --epochs must be more")
        config = config.replace(epochs=epochs)
        if world.writer:
            write_json(folder.config, config.to_dict())
    manifest = load_manifest(folder.manifest)
    if state is not None and manifest.digest != state.manifest_digest:
        raise ResumeError(f"{out}: manifest does not match the resume file")
    # Rank 0 extracts (where the photos went with the run's data folder) and checks; the others follow.
    root = manifest_data_root(manifest, folder.data) if world.writer else None
    barrier(world)
    if root is None:
        root = manifest_data_root(manifest, folder.data, verify=False)
    run = _Run(config, manifest, root, callback, resuming=state is not None, world=world)
    if state is not None:
        run.load(state)
    logger.info("resuming %s after epoch %d of %d", out, run.epoch, config.epochs)
    return _fit(run, root)
