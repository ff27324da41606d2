"""Training in several processes: each rank's share of the batches, the launcher, and real runs of two
processes on the CPU (gloo) against one."""

import json
from pathlib import Path

import pytest
import torch

from models.machine import usable_cores
from tests.training.helpers import checkpoint_weights, run_cli
from training.data import EpochShuffleSampler, WeightedEpochSampler
from training.distributed import Launch, RankShard, World, rank_batch_size, without_launch_flags
from worker.processes import free_port


def shards(sampler: EpochShuffleSampler, size: int, batch: int) -> list[list[int]]:
    parts = []
    for rank in range(size):
        shard = RankShard(sampler, World(rank=rank, size=size), batch)
        shard.set_epoch(3)
        drawn = [index for index, _ in shard]
        assert len(drawn) == len(shard)
        parts.append(drawn)
    return parts


def test_each_global_batch_is_split_over_the_ranks() -> None:
    sampler = WeightedEpochSampler([1.0] * 20, seed=1)
    sampler.set_epoch(3)
    order = [index for index, _ in sampler]
    first, second = shards(sampler, 2, 8)
    # Batches of 4 a rank: together, each global batch of 8; the last one (4 draws) split 2 and 2.
    for step in range(2):
        assert sorted(first[4 * step : 4 * step + 4] + second[4 * step : 4 * step + 4]) == sorted(
            order[8 * step : 8 * step + 8]
        )
    assert sorted(first[8:] + second[8:]) == sorted(order[16:])
    assert len(first) == len(second) == 10


def test_a_last_batch_smaller_than_the_world_is_dropped_so_the_ranks_step_together() -> None:
    sampler = EpochShuffleSampler(10, seed=0)
    parts = shards(sampler, 3, 9)  # one batch of 9, then 1 draw for 3 ranks: dropped
    assert [len(part) for part in parts] == [3, 3, 3]
    assert len(set(parts[0]) | set(parts[1]) | set(parts[2])) == 9


def test_a_batch_that_does_not_split_evenly_is_refused() -> None:
    assert rank_batch_size(12, World(rank=0, size=3)) == 4
    with pytest.raises(ValueError, match="does not split over 5 processes"):
        rank_batch_size(12, World(rank=0, size=5))


def test_the_launcher_runs_the_same_command_under_torchrun_without_its_own_flags(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv = ["train", "--data=x", "--nproc-per-node", "2", "--nnodes=1", "--out", "runs/a", "--master-port=1"]
    assert without_launch_flags(argv) == ["train", "--data=x", "--out", "runs/a"]
    command = Launch(nproc_per_node=2, master_port=29511).command(argv)
    assert command[1:3] == ["-m", "torch.distributed.run"]
    assert "--nproc-per-node=2" in command
    assert "--master-port=29511" in command
    assert command[-6:] == ["-m", "training.cli", "train", "--data=x", "--out", "runs/a"]
    # Each process computes on its share of the cores, unless the environment says otherwise.
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert Launch(nproc_per_node=2).environment()["OMP_NUM_THREADS"] == str(max(1, usable_cores() // 2))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert Launch(nproc_per_node=2).environment()["OMP_NUM_THREADS"] == "3"


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    """A tiny run whose processes draw nothing of their own: no dropout, no batch norms (simple_cnn)."""
    return [
        "train",
        f"--data={data}",
        f"--out={out}",
        "--recipe=improved",
        "--model=simple_cnn",
        '--model-kwargs={"width": 4, "dropout": 0.0}',
        "--input-size=32",
        "--batch-size=12",
        "--warmup-epochs=0",
        "--seed=7",
        "--device=cpu",
        "--no-amp",
        "--workers=0",
        "--no-progress",
        *extra,
    ]


def test_two_processes_train_the_weights_one_process_does_with_the_same_global_batch(
    reference_data: Path, tmp_path: Path
) -> None:
    one = run_cli(*train_args(reference_data, tmp_path / "one", "--epochs=1"))
    assert one.returncode == 0, one.stderr
    two = run_cli(
        *train_args(reference_data, tmp_path / "two", "--epochs=1"),
        "--nproc-per-node=2",
        f"--master-port={free_port()}",
        timeout=240,
    )
    assert two.returncode == 0, two.stderr
    single, double = (
        checkpoint_weights(tmp_path / "one" / "final.pt"),
        checkpoint_weights(tmp_path / "two" / "final.pt"),
    )
    assert single.keys() == double.keys()
    # The same steps; only the order of the gradients' sums differs (float rounding).
    for name in single:
        torch.testing.assert_close(double[name], single[name], rtol=1e-4, atol=1e-5, msg=name)
    # Rank 0 wrote the run's record: one history, one test report, the processes on record.
    history = json.loads((tmp_path / "two" / "history.json").read_text())
    assert [record["epoch"] for record in history] == [1]
    one_history = json.loads((tmp_path / "one" / "history.json").read_text())
    assert history[0]["val_accuracy"] == pytest.approx(one_history[0]["val_accuracy"])
    assert history[0]["train_loss"] == pytest.approx(one_history[0]["train_loss"], rel=1e-4)
    assert (tmp_path / "two" / "report.json").is_file()
    environment = json.loads((tmp_path / "two" / "environment.json").read_text())
    assert environment[0]["processes"] == 2


def test_a_killed_run_of_two_processes_resumes_to_the_weights_of_an_uninterrupted_one(
    reference_data: Path, tmp_path: Path
) -> None:
    whole = run_cli(
        *train_args(reference_data, tmp_path / "whole", "--epochs=3"),
        "--nproc-per-node=2",
        f"--master-port={free_port()}",
        timeout=240,
    )
    assert whole.returncode == 0, whole.stderr
    killed = run_cli(
        *train_args(reference_data, tmp_path / "killed", "--epochs=3"),
        "--nproc-per-node=2",
        f"--master-port={free_port()}",
        "--kill-after-epoch=1",
        timeout=240,
    )
    assert killed.returncode != 0
    assert not (tmp_path / "killed" / "final.pt").exists()
    resumed = run_cli(
        "resume",
        f"--out={tmp_path / 'killed'}",
        "--no-progress",
        "--nproc-per-node=2",
        f"--master-port={free_port()}",
        timeout=240,
    )
    assert resumed.returncode == 0, resumed.stderr
    expected = checkpoint_weights(tmp_path / "whole" / "final.pt")
    for name, tensor in checkpoint_weights(tmp_path / "killed" / "final.pt").items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0, msg=name)
    history = json.loads((tmp_path / "killed" / "history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2, 3]
