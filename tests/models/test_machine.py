import os
from pathlib import Path

import pytest
import torch

from models import machine


def test_the_cpu_is_named() -> None:
    name = machine.device_name(torch.device("cpu"))
    assert machine.cpu_name() in name
    assert f"({torch.get_num_threads()} threads)" in name


def test_the_cpu_name_comes_from_cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9654\n")
    monkeypatch.setattr(machine, "CPUINFO", cpuinfo)
    assert machine.cpu_name() == "AMD EPYC 9654"


def test_usable_cores_follow_the_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert machine.usable_cores() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 5})
    assert machine.usable_cores() == 3


def test_the_machine_line_names_cpu_cores_torch_and_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: AMD EPYC\n")
    monkeypatch.setattr(machine, "CPUINFO", cpuinfo)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    line = f"AMD EPYC, 2 usable cores, torch {torch.__version__}"
    assert machine.machine_line() == line
    assert machine.machine_line(torch.device("cpu")) == f"{line}, cpu"
