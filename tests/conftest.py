"""Shared test settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    from common.config import FedConfig


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread per test process: on a shared 2-core machine torch's default
    threads oversubscribe the CPU and tiny models run up to 100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_in_process(cfg: FedConfig) -> list[dict]:
    """The real ServerApp and ClientApp over Flower's Messages in this process (one node
    per client, simulations/inprocess.py); returns the run's metrics.jsonl records."""
    from flwr.app import Context, RecordDict

    from client.app import app as client_app
    from coordinator.app import main
    from simulations.inprocess import InProcessGrid, restore_task_identity, set_task_identity
    from simulations.runner import write_node_policies

    write_node_policies(cfg, Path(cfg.out_dir))
    saved = set_task_identity(1)
    try:
        grid = InProcessGrid(client_app, cfg.to_run_config(), cfg.num_clients)
        main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                           run_config=cfg.to_run_config()))
    finally:
        restore_task_identity(saved)
    lines = (Path(cfg.out_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def simulate(out: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """``fedistill simulate ARGS --out OUT`` through Flower's Simulation Engine."""
    cmd = [str(Path(sys.executable).parent / "fedistill"), "simulate", *args, "--out", str(out)]
    root = Path(__file__).resolve().parent.parent
    return subprocess.run(cmd, cwd=root, env=os.environ.copy(), capture_output=True,
                          text=True, timeout=timeout)


def simulate_or_fail(out: Path, *args: str) -> Path:
    """:func:`simulate`; a failed run fails the test with the tails of its output and of
    its Flower log."""
    proc = simulate(out, *args)
    if proc.returncode != 0:
        flower_log = out / "flower.log"
        tail = flower_log.read_text()[-4000:] if flower_log.exists() else ""
        pytest.fail(f"simulate failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-3000:]}\n--- flower.log ---\n{tail}")
    return out
