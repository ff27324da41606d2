import torch

from training import hardware


def test_environment_names_device_precision_and_torch() -> None:
    record = hardware.environment(torch.device("cpu"), torch.bfloat16)
    assert record["precision"] == "bf16"
    assert record["torch"] == torch.__version__
    assert hardware.environment(torch.device("cpu"), None)["precision"] == "fp32"
