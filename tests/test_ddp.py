"""Data-parallel teacher training (common/training/ddp.py): two gloo processes on the CPU
follow the single-process run with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.training.ddp import (
    DataParallelSettings,
    spawn_train,
    synthetic_problem,
    train_data_parallel,
)

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _single_process(epochs: int, global_batch: int) -> list[float]:
    model, x, y = synthetic_problem()
    return train_data_parallel(model, x, y, DataParallelSettings(
        epochs=epochs, global_batch=global_batch), CPU)


@pytest.mark.slow
def test_two_torchrun_processes_follow_the_single_process_loss_curve(tmp_path):
    out = tmp_path / "ddp.json"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", str(_port()),
                    "-m", "common.training.ddp", "--out", str(out), "--epochs", "3",
                    "--global-batch", "30"],  # 30 = 15 + 15; the last batch (2) is 1 + 1
                   check=True, cwd=ROOT, env=env, capture_output=True, timeout=240)
    ddp = json.loads(out.read_text())
    single = _single_process(epochs=3, global_batch=30)
    assert ddp["world"] == 2 and len(ddp["losses"]) == len(single)
    assert single[-1] < 0.5 * single[0]  # it trained: a flat curve would match trivially
    assert abs(ddp["losses"][-1] - single[-1]) <= 0.02 * single[-1]
    assert max(abs(a - b) for a, b in zip(ddp["losses"], single, strict=True)) < 1e-3


def test_the_global_batch_not_the_local_one_sets_the_step():
    """Halving the global batch changes the curve: the check above can fail."""
    assert abs(_single_process(1, 30)[-1] - _single_process(1, 15)[-1]) > 1e-3


@pytest.mark.slow
def test_spawned_workers_train_the_given_model_in_place():
    """The coordinator's path (spawn_train): the model comes back trained, as one
    process would have trained it."""
    model, x, y = synthetic_problem()
    settings = DataParallelSettings(epochs=2, global_batch=32)
    losses = spawn_train(model, x, y, settings, world=2)
    reference, _, _ = synthetic_problem()
    expected = train_data_parallel(reference, x, y, settings, CPU)
    assert losses == pytest.approx(expected, rel=1e-4, abs=1e-5)
    for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
