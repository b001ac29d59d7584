"""docs/DEPLOY.md as a new user follows it: its shell blocks, run verbatim.

The guide marks its blocks: ``run`` blocks run to their end, the ``coordinator`` block
and the ``node`` blocks are long-running (a terminal each), and ``after`` blocks audit the
finished run. They run in an empty folder with relative paths, as written, on the
guide's own ports; the nodes are stopped with Ctrl-C (SIGINT) as the guide says. The
two-machine blocks are checked to differ from the loopback ones only in addresses.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

import pytest

from simulations.supervise import ROOT, Processes, wait_for

GUIDE = ROOT / "docs" / "DEPLOY.md"
BLOCK = re.compile(r"<!-- guide: ([a-z-]+) -->\n```bash\n(.*?)\n```", re.S)
# What changes from loopback to two machines, and nothing else.
ADDRESSES = (("--hosts 127.0.0.1", "--hosts coordinator.example.org,10.0.0.5"),
             ("--host 127.0.0.1", "--host 0.0.0.0"),
             ("--superlink 127.0.0.1:", "--superlink coordinator.example.org:"))


def blocks(kind: str) -> list[str]:
    return [body for k, body in BLOCK.findall(GUIDE.read_text()) if k == kind]


def test_every_block_is_marked_and_the_walk_through_is_complete() -> None:
    kinds = [k for k, _ in BLOCK.findall(GUIDE.read_text())]
    assert set(kinds) == {"run", "coordinator", "node", "after", "two-machines"}
    assert len(blocks("coordinator")) == 1 and len(blocks("node")) == 2


def test_two_machines_differ_from_loopback_only_in_addresses() -> None:
    loopback = [blocks("run")[0], *blocks("coordinator"), *blocks("node")]
    for block in loopback:
        assert "127.0.0.1" in block
    moved = []
    for block in loopback:
        for old, new in ADDRESSES:
            block = block.replace(old, new)
        moved.append(block)
    assert moved == blocks("two-machines")


def _run_block(body: str, procs: Processes) -> None:
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=procs.cwd,
                          env=procs.env, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"$ {body}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@pytest.mark.slow
def test_the_guide_runs_verbatim_and_ends_in_an_audited_run(tmp_path: Path) -> None:
    procs = Processes(tmp_path / "supervisor", cwd=tmp_path / "work")
    procs.root.mkdir()
    procs.cwd.mkdir()
    logs: dict[str, Path] = {}

    def start(name: str, body: str) -> subprocess.Popen:
        logs[name] = procs.root / f"{name}.log"
        return procs.start(name, ["bash", "-euo", "pipefail", "-c", body], logs[name])

    def diagnose() -> str:
        return "\n".join(f"--- {n} ---\n{p.read_text(errors='replace')[-3000:]}"
                         for n, p in logs.items() if p.exists())

    try:
        for body in blocks("run"):
            _run_block(body, procs)
        coordinator = start("coordinator", blocks("coordinator")[0])
        wait_for("the coordinator to register node-1",
                 lambda: "registered node-1" in logs["coordinator"].read_text(), 180,
                 diagnose, coordinator, fail=pytest.fail)
        nodes = [start(f"node-{k}", body) for k, body in enumerate(blocks("node"))]
        try:
            code = coordinator.wait(timeout=900)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run did not end in 900 s\n{diagnose()}")
        assert code == 0, diagnose()
        for node in nodes:  # Ctrl-C, as the guide says
            node.send_signal(signal.SIGINT)
        for body in blocks("after"):
            _run_block(body, procs)
    finally:
        procs.stop_all()

    summary = json.loads((procs.cwd / "runs" / "deploy" / "summary.json").read_text())
    assert summary["rounds"] == 1 and summary["clients_took_part"] == 2, summary
    final = summary["final"]
    # The pretrained default learns: well above the majority class (0.58) it started from.
    assert final["teacher_accuracy"] > 0.68, final
    assert "data: " in logs["node-0"].read_text() and "app pin: " in logs["node-0"].read_text()
    assert (procs.cwd / "audit").is_dir()
