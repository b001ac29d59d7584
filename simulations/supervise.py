"""Supervising a loopback deployment from outside: start its processes, crash them, watch
its run folder and the nodes' ledgers.

Used by ``tests/test_deploy_loopback.py`` and ``bench/faults.py``. Every process is
started in a session of its own and stopped by PID (its whole tree, see
:mod:`simulations.proctree`), never by name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import torch

from common.privacy.ledger import PrivacyLedger
from simulations.proctree import process_tree, stop_process_group

ROOT = Path(__file__).resolve().parent.parent
FEDISTILL = str(Path(sys.executable).parent / "fedistill")


class WaitFailed(RuntimeError):
    """A condition was not met in time, or the process it depended on exited."""


def _raise(message: str) -> NoReturn:
    raise WaitFailed(message)


def flower_env(home: Path) -> dict[str, str]:
    """This environment plus a private FLWR_HOME, no telemetry, no installs at run time."""
    env = os.environ.copy()
    env.update({"FLWR_HOME": str(home),
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                "COLUMNS": "200",  # Rich wraps a log file's lines at 80 columns otherwise
                "PATH": str(Path(sys.executable).parent) + os.pathsep
                + os.environ.get("PATH", "")})
    return env


class Processes:
    """Every process a supervisor starts, by name; :meth:`stop_all` stops them by PID."""

    def __init__(self, root: Path, cwd: Path = ROOT) -> None:
        self.root = root
        self.cwd = cwd
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = flower_env(root / "flwr-home")

    def start(self, name: str, cmd: list[str], log: Path) -> subprocess.Popen:
        """Start ``cmd`` in a new session, its output appended to ``log``."""
        with log.open("ab") as fh:
            proc = subprocess.Popen(cmd, cwd=self.cwd, env=self.env, stdout=fh,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.procs[name] = proc
        return proc

    def sigkill_tree(self, name: str) -> None:
        """A crash: SIGKILL the process and everything it started, at once."""
        proc = self.procs[name]
        for pid in process_tree(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            stop_process_group(proc, grace=5.0)


def wait_for(what: str, check: Callable[[], bool], timeout: float,
             diagnose: Callable[[], str], alive: subprocess.Popen, *,
             interval: float = 0.3, fail: Callable[[str], NoReturn] = _raise) -> float:
    """Poll ``check`` every ``interval`` s; return the seconds waited.

    ``fail`` (default: raise :class:`WaitFailed`) is called with the reason and
    ``diagnose()`` at once if ``alive`` (the coordinator) exits meanwhile, or after
    ``timeout`` seconds."""
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic() - start
        if alive.poll() is not None:
            fail(f"the coordinator exited ({alive.returncode}) while waiting for "
                 f"{what}\n{diagnose()}")
        time.sleep(interval)
    fail(f"timed out after {timeout}s waiting for {what}\n{diagnose()}")


def checkpoint_round(run: Path) -> int:
    """The round of the run's checkpoint; -1 when there is none (or it is being written)."""
    path = run / "checkpoint.pt"
    if not path.exists():
        return -1
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["round"])
    except Exception:  # replaced while read: look again
        return -1


def ledger_size(ledger: PrivacyLedger) -> int:
    """Records in ``ledger``; 0 when it is absent or cannot be read right now."""
    try:
        return len(ledger.records()) if ledger.path.exists() else 0
    except Exception:  # a line being written: look again
        return 0


def metrics(run: Path) -> list[dict[str, Any]]:
    """The run's ``metrics.jsonl`` records, in order ([] before the first)."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
