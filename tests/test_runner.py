"""The simulation runner's plumbing: environment for Flower, stopping what it started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from simulations.proctree import alive, process_tree, stop_process_group
from simulations.runner import flower_env

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def test_flower_env_points_the_apps_at_the_real_shared_folder(tmp_path: Path,
                                                              monkeypatch) -> None:
    """The apps run from Flower's copy of the project, where ../shared/data is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (the shared real datasets are not in this checkout)")
    monkeypatch.delenv("FEDISTILL_SHARED_DATA", raising=False)
    env = flower_env(tmp_path / "flwr")
    assert Path(env["FEDISTILL_SHARED_DATA"]).resolve() == SHARED.resolve()
    assert env["FLWR_HOME"] == str(tmp_path / "flwr")
    assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"


def test_stop_process_group_stops_children_in_their_own_session() -> None:
    """Like Flower's SuperExec starting Ray: a grandchild in a new session is stopped too."""
    script = ("import subprocess, sys, time\n"
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
              " start_new_session=True)\n"
              "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        for _ in range(50):
            tree = process_tree(proc.pid)
            if len(tree) >= 2:
                break
            subprocess.run(["sleep", "0.1"], check=True)
        assert len(tree) >= 2, tree
        stop_process_group(proc, grace=5)
        assert not any(alive(pid) for pid in tree)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sampler_keeps_a_session_whose_leader_has_exited() -> None:
    """Like Ray's daemons: a process left behind in a session whose leader exited (and so
    re-parented away from the tree) still belongs to the tree once the leader was seen."""
    from simulations.proctree import TreeSampler

    script = ("import subprocess, sys, time\n"
              "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              "print(g.pid, flush=True)\n"
              "sys.stdin.read()\n")
    leader = subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    grandchild = int(leader.stdout.readline())
    try:
        sampler = TreeSampler()
        assert {leader.pid, grandchild} <= sampler.members()
        leader.stdin.close()  # the leader exits; the grandchild is re-parented
        leader.wait(timeout=10)
        assert alive(grandchild) and grandchild not in process_tree(os.getpid())
        assert grandchild in sampler.members() and leader.pid not in sampler.members()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(grandchild, signal.SIGKILL)
        leader.kill()
        leader.wait()
