"""Deployment faults that used to hang or mislead, with real processes on loopback.

One coordinator (plaintext: these faults are not about TLS, which
tests/test_deploy_guide.py and tests/test_deploy_loopback.py cover) and one node:

- a second coordinator on the same port exits 2 at once, naming the port, and the first
  one's run is unaffected;
- the node pins another app than the one the coordinator ships: its round fails before
  anything of the shipped app is installed, the coordinator's run fails with the node's
  rejection, and the coordinator exits non-zero;
- the node, started with ``--max-wait-time``, exits non-zero with a clear line once the
  coordinator is gone (Flower alone logs "Giving up reconnection" and stays alive).

Every process is started here and stopped here by PID, whatever happens.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from simulations.runner import free_port
from simulations.supervise import FEDISTILL, Processes, wait_for

pytestmark = pytest.mark.slow
OTHER_APP = "0" * 64
MAX_WAIT = 10


def test_busy_port_unpinned_app_and_a_node_that_outlives_its_coordinator(
        tmp_path: Path) -> None:
    procs = Processes(tmp_path / "supervisor", cwd=tmp_path)
    procs.root.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text("text,label\na fine film,fresh\na dull one,rotten\n")
    port = free_port()
    logs = {name: procs.root / f"{name}.log" for name in ("coordinator", "second", "node")}

    def text(name: str) -> str:
        return logs[name].read_text(errors="replace") if logs[name].exists() else ""

    def diagnose() -> str:
        return "\n".join(f"--- {n} ---\n{text(n)[-3000:]}" for n in logs)

    # the quick preset: this test is about the failures, not the model
    coordinator_cmd = [FEDISTILL, "coordinator", "--insecure", "--port", str(port),
                       "--preset", "quick", "--set", "num-clients=1", "--set",
                       "min-replies=1", "--set", "rounds=1", "--set", "round-timeout=120"]
    try:
        first = procs.start("coordinator", [*coordinator_cmd, "--out", "run"],
                            logs["coordinator"])
        wait_for("the SuperLink", lambda: "SuperLink listening" in text("coordinator"), 180,
                 diagnose, first, fail=pytest.fail)

        # --- a second coordinator on the same port
        start = time.monotonic()
        second = procs.start("second", [*coordinator_cmd, "--out", "run2"], logs["second"])
        assert second.wait(timeout=120) == 2, diagnose()
        assert time.monotonic() - start < 60
        assert f"cannot listen on 127.0.0.1:{port}" in " ".join(text("second").split())
        assert first.poll() is None, diagnose()

        # --- a node that pinned another app
        node = procs.start("node", [
            FEDISTILL, "node", "--superlink", f"127.0.0.1:{port}", "--insecure",
            "--allow-unmasked", "--app-pin", OTHER_APP, "--data-dir", str(data),
            "--state-dir", "state", "--epsilon", "8", "--local-port", str(free_port()),
            "--max-wait-time", str(MAX_WAIT)], logs["node"])
        try:
            code = first.wait(timeout=600)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the coordinator did not end\n{diagnose()}")
        ended = time.monotonic()
        assert code == 2, diagnose()
        assert "did not pin" in text("node"), diagnose()
        assert "the run failed" in text("coordinator") and "min-replies=1" in text(
            "coordinator"), diagnose()
        assert not (tmp_path / "run" / "summary.json").exists()
        installed = tmp_path / "state" / ".flwr" / "apps"
        assert not installed.exists() or not any(installed.iterdir())

        # --- the node gives up on the gone coordinator and says so
        try:
            node_code = node.wait(timeout=MAX_WAIT + 90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the node outlived --max-wait-time by 90 s\n{diagnose()}")
        assert node_code == 2, diagnose()
        assert time.monotonic() - ended < MAX_WAIT + 90
        assert "gave up reaching the SuperLink" in " ".join(text("node").split())
    finally:
        procs.stop_all()
