"""A training job's run in several processes: torchrun started by the worker, the run's progress read
from its history as rank 0 writes it, and a cancellation or a lost lease stopping every process.

The run is prepared here (its split and config written, as ``trashcam-train train`` does on rank 0)
and trained by ``trashcam-train resume --nproc-per-node N``, so a job retried after a crash goes on from
its last epoch as a job of one process does.
"""

import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import load_checkpoint
from models.files import read_json
from models.predictor import select_device
from training.config import TrainConfig
from training.distributed import Launch
from training.engine import TrainResult, prepare_run
from training.progress import Progress, ProgressCallback, TrainingCancelled
from training.run_folder import RunFolder

logger = logging.getLogger(__name__)

#: How often the worker reads the run's history and asks whether the job was cancelled.
POLL_SECONDS = 1.0
#: How long the processes have to stop after SIGTERM before they are killed: longer than torchrun's own
#: 30 s for closing its processes.
STOP_GRACE_SECONDS = 45.0
#: How much of the processes' output a failed job's error quotes, read from how much of its end.
ERROR_TAIL_BYTES, LOG_READ_BYTES = 2000, 256 * 1024


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on now, for the processes' rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _history(folder: RunFolder) -> list[dict[str, Any]]:
    return list(read_json(folder.history)) if folder.history.is_file() else []


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to torchrun and its processes (their own session), then SIGKILL after a grace period."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _result(folder: RunFolder, out: Path) -> TrainResult:
    """How the run ended, from the files rank 0 wrote."""
    metrics = load_checkpoint(folder.best).spec.metrics
    report = read_json(folder.report) if folder.report.is_file() else None
    return TrainResult(
        "completed",
        out,
        len(_history(folder)),
        float(metrics["val_accuracy"]),
        int(metrics["epoch"]),
        None if report is None else float(report["accuracy"]),
    )


def _what_they_said(path: Path) -> str:
    """The processes' error lines (each rank logs the same once), else the end of their output."""
    if not path.is_file():
        return ""
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - LOG_READ_BYTES))
        text = handle.read().decode("utf-8", errors="replace")
    errors = [line.split(" ERROR ", 1)[1] for line in text.splitlines() if " ERROR " in line]
    said = "\n".join(dict.fromkeys(errors)) if errors else text.strip()
    return said[-ERROR_TAIL_BYTES:]


def _check_devices(config: TrainConfig, processes: int) -> None:
    """Refuse more processes than the host has GPUs, where the run trains on GPUs (a GPU each)."""
    device = select_device(config.device)
    if device.type == "cuda" and processes > torch.cuda.device_count():
        raise ValueError(
            f"{processes} processes asked for, and this worker's host has {torch.cuda.device_count()} GPUs"
        )


def train_in_processes(config: TrainConfig, processes: int, callback: ProgressCallback) -> TrainResult:
    """Train (or go on training) the run in ``config.out`` in ``processes`` processes on this host.

    ``callback`` hears each epoch once rank 0 has checkpointed it, and is asked about once a second
    between them, so that a cancellation (``TrainingCancelled`` from it) stops the processes within
    seconds; the run then resumes from its last epoch.
    """
    out = Path(config.out)
    folder = RunFolder(out)
    _check_devices(config, processes)
    if not folder.holds_run():
        prepared = prepare_run(config, callback)
        if isinstance(prepared, TrainResult):
            return prepared
    epochs = int(read_json(folder.config)["epochs"])
    reported = len(_history(folder))
    launch = Launch(nproc_per_node=processes, master_port=free_port())
    command = launch.command(["resume", f"--out={out}", "--no-progress"])
    logger.info("training %s in %d processes: %s", out, processes, " ".join(command))
    with open(folder.processes_log, "ab") as log:
        process = subprocess.Popen(
            command,
            env=launch.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        while process.poll() is None:
            time.sleep(POLL_SECONDS)
            reported = _report_epochs(folder, reported, epochs, callback)
            callback(Progress("prepare", reported, epochs, 0, 0))
        reported = _report_epochs(folder, reported, epochs, callback)
    except TrainingCancelled:
        # A lost lease is a cancellation too; the caller tells the two apart by the lease.
        _stop(process)
        logger.info("training of %s stopped after epoch %d", out, reported)
        return TrainResult("cancelled", out, reported, -1.0, 0)
    finally:
        if process.poll() is None:
            _stop(process)
    if process.returncode != 0:
        raise RuntimeError(
            f"the {processes} training processes stopped with status {process.returncode} after epoch "
            f"{reported}; they said:\n{_what_they_said(folder.processes_log)}"
        )
    return _result(folder, out)


def _report_epochs(folder: RunFolder, reported: int, epochs: int, callback: ProgressCallback) -> int:
    """Tell ``callback`` of the epochs rank 0 has recorded since the ``reported`` first; how many now."""
    history = _history(folder)
    for record in history[reported:]:
        callback(Progress("epoch", int(record["epoch"]), epochs, 1, 1, dict(record)))
    return len(history)
