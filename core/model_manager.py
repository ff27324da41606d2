"""Which model serves: :class:`ModelManager` picks the checkpoint (the store's default, else the configured
path, else the shipped weights) and its precision, and swaps predictors atomically, so a request that took the
current predictor finishes on it. The API and the heatmap workers both load their model through it.
"""

import functools
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from core.model_store import ModelStore
from core.settings import Settings
from models.calibration import Thresholds
from models.checkpoint import CheckpointError
from models.machine import usable_cores
from models.precision import InferencePrecision, choose_precision
from models.predictor import Predictor, select_device
from models.runtime import RuntimeOptions, forget_conversions
from models.store import CHECKPOINT_FILE, ModelInUseError, ModelVersion

logger = logging.getLogger(__name__)

#: How many stored versions besides the serving one stay loaded for comparisons.
OTHER_MODELS_KEPT = 2
#: How many bases deep a chain of site models fine-tuned from site models is loaded.
MAX_BASE_DEPTH = 3


class NoModelError(RuntimeError):
    """No model is configured, stored or shipped."""


class NothingToRollBackError(LookupError):
    """No promotion is on record to undo."""


def model_store(settings: Settings) -> ModelStore:
    """The store of the service's models, with the shipped model as its built-in version."""
    return ModelStore(settings.models_dir, settings.database, builtin=settings.shipped_model_path)


class ModelManager:
    def __init__(
        self,
        *,
        store: ModelStore,
        explicit_path: Path | None,
        shipped_path: Path,
        device_name: str,
        thresholds: Thresholds | None = None,
        precision: str = "auto",
        channels_last: bool = True,
        runtime: RuntimeOptions | None = None,
    ) -> None:
        self.store = store
        self.explicit_path = explicit_path
        self.shipped_path = shipped_path
        self.device = select_device(device_name)
        #: How every model it loads infers on its device (``models.precision.choose_precision``).
        self.precision: InferencePrecision = choose_precision(
            self.device, precision, channels_last=channels_last
        )
        #: What runs the forward passes of every model it loads (``models.runtime``).
        self.runtime = runtime or RuntimeOptions()
        # Refused here, at start-up, rather than at the first model: OpenVINO on a GPU.
        self.runtime.compiled_on(self.device)
        #: "Unsure" thresholds from the settings, over every model's own.
        self.thresholds = thresholds or Thresholds()
        self._predictor: Predictor | None = None
        #: The default last seen, by name:version and weights (a version number reused after a deletion
        #: names other weights).
        self._seen_default: tuple[str, str] | None = None
        #: Stored versions loaded to compare with the serving one, oldest first.
        self._others: dict[str, Predictor] = {}
        #: The checkpoints that could not be loaded at start-up, for /ready.
        self.load_errors: list[str] = []
        #: What serves and why, for /ready.
        self.source = "nothing"
        # Loading and swapping happen under one lock, so a slow refresh cannot land after a switch; a
        # rollback reads the promotions and switches under it too (re-entered, hence an RLock).
        self._swap = threading.RLock()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        store: ModelStore | None = None,
        *,
        streams: int = 1,
        threads: int | None = None,
    ) -> "ModelManager":
        """The manager of the model the service serves by default, as its settings say (not loaded yet:
        call :meth:`load_initial`); a compiled runtime runs ``streams`` requests at once on ``threads``
        threads each (None: the usable cores shared out among them)."""
        runtime = RuntimeOptions(
            backend=settings.inference_backend,
            cache_dir=settings.runtime_cache,
            streams=streams,
            threads=threads or max(1, usable_cores() // streams),
            int8=settings.inference_int8,
        )
        return cls(
            store=store or model_store(settings),
            explicit_path=settings.model_path,
            shipped_path=settings.shipped_model_path,
            device_name=settings.device,
            thresholds=settings.unsure_thresholds,
            precision=settings.inference_precision,
            channels_last=settings.inference_channels_last,
            runtime=runtime,
        )

    @property
    def predictor(self) -> Predictor:
        if self._predictor is None:
            raise NoModelError(
                "no model is loaded: configure TRASHCAM_MODEL_PATH, ship weights with the service, "
                "or train one with POST /train and make it the default"
            )
        return self._predictor

    @property
    def loaded(self) -> bool:
        return self._predictor is not None

    def load_initial(self) -> None:
        """Serve by the one rule that the API and every worker follow, at start-up as later: the store's
        default (set by PUT /models/default, a rollback or a training job asked to make its model the
        default), else the configured checkpoint (``TRASHCAM_MODEL_PATH``), else the shipped weights.

        A checkpoint that cannot be loaded (corrupt, truncated, altered) is skipped for the next one, the
        default's earlier versions first, so one bad file never keeps the service from starting;
        ``load_errors`` says what was skipped and :attr:`source` what serves and why.
        """
        default = self.store.default()
        self._seen_default = (default.ref, default.sha256) if default is not None else None
        self.load_errors = []
        for described, why, load in self._candidates(default):
            try:
                self._predictor = load()
            except CheckpointError as error:
                logger.error("cannot serve %s: %s", described, error)
                self.load_errors.append(f"{described} cannot be loaded (corrupt, truncated or altered)")
                continue
            self.source = f"{described}: {why}"
            logger.info("serving %s", self.source)
            return

    def _candidates(self, default: ModelVersion | None) -> list[tuple[str, str, Callable[[], Predictor]]]:
        """What could serve, in the rule's order: (what it is, why it would serve, how to load it)."""
        candidates: list[tuple[str, str, Callable[[], Predictor]]] = []
        if default is not None:
            load = functools.partial(self._from_version, default)
            candidates.append((f"model {default.ref}", "the store's default", load))
            earlier = [v for v in self.store.versions(default.name) if v.version != default.version]
            for version in reversed(earlier):
                why = f"the last version that loads of {default.name}, whose {default.ref} is the default"
                candidates.append(
                    (f"model {version.ref}", why, functools.partial(self._from_version, version))
                )
        no_default = "no default is set" if default is None else "no version of the default loads"
        if self.explicit_path is not None:
            path = self.explicit_path
            candidates.append(
                ("the configured model", f"TRASHCAM_MODEL_PATH, {no_default}", lambda: self._from_file(path))
            )
        builtin = self.store.builtin()
        if builtin is not None and builtin.path == self.shipped_path:
            load = functools.partial(self._from_version, builtin)
            candidates.append((f"the shipped model {builtin.ref}", no_default, load))
        if self.shipped_path.is_file():
            # The file itself, should the record beside it (spec.json) not match it.
            candidates.append(
                ("the shipped model's file", no_default, lambda: self._from_file(self.shipped_path))
            )
        return candidates

    def refresh(self) -> bool:
        """Follow the store's default when something else (a finished training job) changed it.

        Returns True if a new predictor was swapped in.
        """
        with self._swap:
            default = self.store.default()
            seen = (default.ref, default.sha256) if default is not None else None
            if seen == self._seen_default or default is None:
                self._seen_default = seen
                return False
            ref = default.ref
            predictor = self._from_version(default)
            self._predictor, self._seen_default = predictor, seen
            self.source = f"model {ref}: the store's default"
        logger.info("serving model %s (new default)", ref)
        return True

    def switch(
        self,
        name: str,
        version: str | None,
        *,
        by: str | None = None,
        reason: str = "promote",
        after: int | None = None,
    ) -> ModelVersion:
        """Make a stored version the default and serve it; it is loaded before the swap. The promotion
        is recorded with what served before it, ``by`` whom and why (``after``: see
        :meth:`ModelStore.set_default`)."""
        with self._swap:
            chosen = self.store.get(name, version)
            predictor = self._from_version(chosen)
            # What it replaces is the store's default (or the built-in model): what every process that
            # follows the store serves, and what a rollback can go back to.
            self.store.set_default(chosen.name, chosen.version, by=by, reason=reason, after=after)
            self._predictor, self._seen_default = predictor, (chosen.ref, chosen.sha256)
            self.source = f"model {chosen.ref}: the store's default"
        return chosen

    def rollback(self, *, by: str | None = None) -> ModelVersion:
        """Serve what served before the last promotion (a second rollback undoes the first, as
        ``kubectl rollout undo`` does). :class:`NothingToRollBackError` when there is nothing to go back
        to; ``ModelNotFoundError`` when that version has been deleted since."""
        # Two rollbacks at once, here or on another replica, must not both undo the same promotion: the
        # second finds that the last promotion is no longer the one it read (DefaultChangedError).
        with self._swap:
            promotions = self.store.promotions()
            if not promotions or promotions[-1].get("from") is None:
                raise NothingToRollBackError("no promotion is on record to roll back")
            last = promotions[-1]
            name, _, version = str(last["from"]).partition(":")
            reason = f"rollback of {last['to']}"
            return self.switch(name, version or None, by=by, reason=reason, after=last["id"])

    def delete(self, name: str, version: str) -> ModelVersion:
        """Delete a stored version, under the swap lock, so no promotion of it lands meanwhile
        (``ModelInUseError`` for the built-in model, the default and the version serving here), and
        the compiled networks of its weights once no stored version has them."""
        with self._swap:
            serving = self._predictor
            if serving is not None and (serving.name, serving.version) == (name, version):
                raise ModelInUseError(f"{name}:{version} is serving: promote another one first")
            base = serving.base if serving is not None else None
            while base is not None:
                if (base.name, base.version) == (name, version):
                    raise ModelInUseError(
                        f"{name}:{version} answers the photos that the serving {serving.name}:"  # type: ignore[union-attr]
                        f"{serving.version} passes to its base: promote another one first"  # type: ignore[union-attr]
                    )
                base = base.base
            deleted = self.store.delete(name, version)
        # Its compiled network goes too, unless another stored version has the same weights.
        cache = self.runtime.cache_dir
        if cache is not None and all(other.sha256 != deleted.sha256 for other in self.store.all_versions()):
            forget_conversions(cache, deleted.sha256)
        return deleted

    def stored_predictor(self, ref: str) -> Predictor:
        """A stored version (``name:version``, or ``name`` for its newest now), for comparisons: the
        serving predictor when it is that version, else one of the last few loaded. Loads from disk:
        call it off the event loop. ``ModelNotFoundError`` if there is no such version."""
        name, _, version = ref.partition(":")
        chosen = self.store.get(name, version or None)
        with self._swap:
            serving = self._predictor
            if serving is not None and (serving.name, serving.version) == (chosen.name, chosen.version):
                return serving
            cached = self._others.get(chosen.ref)
            if cached is None or cached.sha256 != chosen.sha256:
                cached = self._others[chosen.ref] = self._from_version(chosen)
                while len(self._others) > OTHER_MODELS_KEPT:
                    self._others.pop(next(iter(self._others)))
            return cached

    def _from_file(self, path: Path) -> Predictor:
        # A file outside the store is versioned by its weights' digest.
        name = path.parent.name if path.name == CHECKPOINT_FILE else path.stem
        predictor = Predictor.from_checkpoint(
            str(path),
            name=name,
            version=None,
            device=self.device,
            thresholds=self.thresholds,
            precision=self.precision,
            runtime=self.runtime,
        )
        return self._with_base(predictor)

    def _with_base(self, predictor: Predictor, depth: int = 0) -> Predictor:
        """``predictor`` with its base loaded beside it, when it is a fine-tune that serves so (its
        feature bank routes) and the store still holds the base's weights; else as it is, logged."""
        bank = predictor.feature_bank
        base_sha256 = predictor.spec.recipe.get("init_sha256")
        if bank is None or bank.route_margin is None or not base_sha256:
            return predictor
        ref = f"{predictor.name}:{predictor.version}"
        if depth >= MAX_BASE_DEPTH:
            logger.warning("%s answers every photo itself: its bases go over %d deep", ref, MAX_BASE_DEPTH)
            return predictor
        found = next((v for v in self.store.all_versions() if v.sha256 == base_sha256), None)
        if found is None:
            logger.warning(
                "%s answers every photo itself: its base (weights %s) is not in the store",
                ref,
                str(base_sha256)[:12],
            )
            return predictor
        try:
            base = self._from_version(found, depth + 1)
        except (CheckpointError, OSError) as error:
            logger.warning(
                "%s answers every photo itself: its base %s cannot be loaded: %s", ref, found.ref, error
            )
            return predictor
        if not predictor.can_route_to(base):
            logger.warning(
                "%s answers every photo itself: %s reads photos or names classes differently", ref, found.ref
            )
            return predictor
        predictor.base = base
        return predictor

    def _from_version(self, version: ModelVersion, depth: int = 0) -> Predictor:
        predictor = Predictor.from_checkpoint(
            str(version.path),
            name=version.name,
            version=version.version,
            device=self.device,
            thresholds=self.thresholds,
            precision=self.precision,
            runtime=self.runtime,
        )
        # The file's own digest only proves it is intact; the store's record proves it is the version
        # that was registered (and that /models shows), not weights swapped in with a new digest.
        if predictor.sha256 != version.sha256:
            raise CheckpointError(
                f"{version.ref}: weights {predictor.sha256[:12]} are not the registered {version.sha256[:12]}"
            )
        return self._with_base(predictor, depth)
