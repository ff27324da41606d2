import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same random state, so random-weight models are reproducible."""
    torch.manual_seed(0)
