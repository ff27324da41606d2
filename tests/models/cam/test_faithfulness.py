import pytest
import torch
from torch import Tensor, nn

from models.cam.faithfulness import area_under, confidence_change, deletion_insertion, faithfulness


class TopLeftDetector(nn.Module):
    """Class 0's logit grows with channel 0's mean over the top-left quadrant; class 1's is 0."""

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        evidence = 20 * (x[:, 0, :h, :w].mean(dim=(1, 2)) - 0.75)
        return torch.stack([evidence, torch.zeros_like(evidence)], dim=1)


def p_class0(logit: float) -> float:
    return torch.sigmoid(torch.tensor(logit)).item()


@pytest.fixture
def images() -> Tensor:
    """The evidence: channel 0 is 1 in the top-left quadrant and 0 elsewhere."""
    batch = torch.zeros(2, 3, 16, 16)
    batch[:, 0, :8, :8] = 1.0
    return batch


def quadrant(top_left: bool) -> Tensor:
    heat = torch.zeros(16, 16)
    if top_left:
        heat[:8, :8] = 1.0
    else:
        heat[8:, 8:] = 1.0
    return heat


def test_area_under_a_constant_curve_is_the_constant() -> None:
    torch.testing.assert_close(area_under(torch.full((3, 11), 0.25)), torch.full((3,), 0.25))


def test_a_heatmap_on_the_evidence_keeps_the_confidence(images: Tensor) -> None:
    model, targets = TopLeftDetector(), torch.tensor([0, 0])
    heatmaps = torch.stack([quadrant(True), quadrant(False)])
    drop, increase = confidence_change(model, images, heatmaps, targets)
    assert drop[0] == pytest.approx(0.0)
    # Without the evidence the logit falls from 5 to -15.
    assert drop[1] == pytest.approx(1 - p_class0(-15) / p_class0(5), rel=1e-5)
    assert increase.tolist() == [0.0, 0.0]


def test_deleting_the_evidence_first_gives_the_lower_deletion_and_higher_insertion_auc(
    images: Tensor,
) -> None:
    model, targets = TopLeftDetector(), torch.tensor([0, 0])
    heatmaps = torch.stack(
        [quadrant(True) + 0.01 * torch.rand(16, 16), quadrant(False) + 0.01 * torch.rand(16, 16)]
    )
    deletion, insertion = deletion_insertion(model, images, heatmaps, targets, steps=8)
    assert deletion.shape == insertion.shape == (2, 9)
    assert deletion[0, 0] == pytest.approx(p_class0(5))
    assert deletion[0, 2] == pytest.approx(p_class0(-15), abs=1e-6)  # a quarter gone: all the evidence
    assert insertion[0, 2] == pytest.approx(p_class0(5))  # a quarter inserted: all the evidence
    assert area_under(deletion)[0] < area_under(deletion)[1]
    assert area_under(insertion)[0] > area_under(insertion)[1]
    scores = faithfulness(model, images, heatmaps, targets, steps=8)
    torch.testing.assert_close(scores.deletion_auc, area_under(deletion))


def test_heatmaps_must_match_the_images(images: Tensor) -> None:
    with pytest.raises(ValueError, match=r"heatmaps must be \(B, H, W\)"):
        faithfulness(TopLeftDetector(), images, torch.zeros(2, 8, 8), torch.tensor([0, 0]))
