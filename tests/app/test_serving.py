import asyncio
from pathlib import Path

from PIL import Image

from app.serving import InferenceService
from core.model_manager import ModelManager
from core.model_store import ModelStore
from tests.app.conftest import tiny_checkpoint


def test_two_loaded_models_with_the_same_weights_never_share_a_batch(tmp_path: Path) -> None:
    """A model loaded twice (say, recalibrated: same weights, another spec) is two models: each request
    is answered by the one it was sent to, even when both wait for the same batch."""
    checkpoint = tiny_checkpoint(tmp_path / "tiny.pt")
    manager = ModelManager(
        store=ModelStore(tmp_path / "models", f"sqlite:///{tmp_path / 'db.sqlite3'}"),
        explicit_path=checkpoint,
        shipped_path=tmp_path / "none.pt",
        device_name="cpu",
    )
    manager.load_initial()
    first, second = manager.predictor, manager._from_file(checkpoint)
    assert first is not second
    assert first.sha256 == second.sha256
    photo = Image.new("RGB", (40, 30), (90, 120, 30))

    async def run() -> list[object]:
        # A long wait for company: without the models in the key the two would share one batch.
        service = InferenceService(manager, max_batch_size=8, max_wait_s=0.3)
        service.start()
        outcomes = await asyncio.gather(
            *(
                service.explain(photo, method="gradcam", target=None, layer=None, predictor=chosen)
                for chosen in (first, second, first)
            )
        )
        await service.stop()
        return [(outcome.predictor, outcome.batch_size) for outcome in outcomes]

    assert asyncio.run(run()) == [(first, 2), (second, 1), (first, 2)]
