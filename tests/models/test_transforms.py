import numpy as np
import torch
from PIL import Image

from models.checkpoint import ModelSpec
from models.transforms import build_eval_transform, denormalize

SPEC = ModelSpec(
    arch="simple_cnn",
    class_names=("a", "b"),
    input_size=48,
    mean=(0.5, 0.4, 0.3),
    std=(0.2, 0.25, 0.3),
)


def test_eval_transform_resizes_and_normalises_with_the_specs_statistics() -> None:
    image = Image.new("RGB", (100, 60), color=(255, 0, 128))
    tensor = build_eval_transform(SPEC)(image)
    assert tensor.shape == (3, 48, 48)
    expected = [(1.0 - 0.5) / 0.2, (0.0 - 0.4) / 0.25, (128 / 255 - 0.3) / 0.3]
    torch.testing.assert_close(tensor.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-4, rtol=0)


def test_denormalize_inverts_the_eval_transform() -> None:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8))
    gray = Image.new("L", (30, 30), color=77)
    transform = build_eval_transform(SPEC)
    batch = torch.stack([transform(rgb), transform(gray.convert("RGB"))])
    assert batch.shape == (2, 3, 48, 48)
    restored = denormalize(batch, SPEC)
    torch.testing.assert_close(
        restored[0], torch.from_numpy(np.array(rgb)).permute(2, 0, 1) / 255.0, atol=1e-5, rtol=0
    )
    torch.testing.assert_close(restored[1], torch.full((3, 48, 48), 77 / 255.0), atol=1e-5, rtol=0)


def test_a_predictor_prepares_uint8_pixels_and_scales_them_as_the_eval_transform_does() -> None:
    """Serving stacks uint8 pixels and normalises a batch at once: the model sees exactly the inputs
    that evaluation's photo-at-a-time transform gives."""
    import models
    from models.predictor import Predictor

    torch.manual_seed(0)
    predictor = Predictor(
        models.create_model("simple_cnn", num_classes=2, width=4),
        SPEC,
        name="small",
        version="1",
        device=torch.device("cpu"),
    )
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)) for _ in range(3)]
    prepared = [predictor.prepare(photo) for photo in photos]
    assert all(pixels.dtype == torch.uint8 and pixels.shape == (3, 48, 48) for pixels in prepared)
    transform = build_eval_transform(SPEC)
    evaluated = torch.stack([transform(photo) for photo in photos])
    assert torch.equal(predictor.inputs(torch.stack(prepared)), evaluated)
    assert torch.equal(predictor.inputs(photos), evaluated)
    assert torch.equal(predictor.inputs(evaluated), evaluated), "normalised inputs are taken as given"
    assert torch.equal(
        predictor.classify(torch.stack(prepared)).probabilities, predictor.classify(evaluated).probabilities
    )
