from pathlib import Path

import pytest
import torch

from training import hardware


def test_the_cpu_is_named() -> None:
    name = hardware.device_name(torch.device("cpu"))
    assert hardware.cpu_name() in name
    assert f"({torch.get_num_threads()} threads)" in name


def test_the_cpu_name_comes_from_cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9654\n")
    monkeypatch.setattr(hardware, "CPUINFO", cpuinfo)
    assert hardware.cpu_name() == "AMD EPYC 9654"


def test_environment_names_device_precision_and_torch() -> None:
    record = hardware.environment(torch.device("cpu"), torch.bfloat16)
    assert record["precision"] == "bf16"
    assert record["torch"] == torch.__version__
    assert hardware.environment(torch.device("cpu"), None)["precision"] == "fp32"
