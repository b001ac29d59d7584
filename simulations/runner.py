"""Run the Flower App on Flower's Simulation Engine, as ``flwr run`` does, with cleanup.

``flwr run`` against the magic ``:local:`` address starts a detached SuperLink that
outlives the run and whose PID nobody holds (FLOWER.md). We start our own simulation
SuperLink instead, on a free loopback port, in its own process group, and stop that
group by its PID when the run ends, however it ends. The app itself is the project's
``pyproject.toml`` Flower App: ServerApp in ``coordinator/``, ClientApp in ``client/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import tomli_w

from common.config import FedConfig
from common.data import shared_data_dir
from common.errors import FedistillError
from common.privacy.policy import POLICY_FILE, NodePolicy

FEDERATION = "fedistill-sim"


class SimulationError(FedistillError):
    """The Flower run failed; the message points at its log."""


def app_dir() -> Path:
    """The Flower App directory: the project root that holds ``pyproject.toml``."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").exists():
        raise SimulationError(
            f"{root} has no pyproject.toml: run fedistill from a checkout installed with "
            "`pip install -e .` (the Flower App is the project directory)."
        )
    return root


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower's processes: our FLWR_HOME, no per-run installs, no telemetry.

    The apps run from Flower's copy of the project under FLWR_HOME, where ``../shared/data``
    does not exist: resolve the shared data folder here, against the real checkout.
    """
    env = os.environ.copy()
    env.setdefault("FEDISTILL_SHARED_DATA", str(shared_data_dir()))
    bin_dir = str(Path(sys.executable).parent)
    env.update({
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
        "PATH": bin_dir + os.pathsep + env.get("PATH", ""),
    })
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def simulation_superlink(out: Path, env: dict[str, str]) -> Iterator[int]:
    """A SuperLink in simulation mode on a free loopback port; stopped by PID on exit."""
    port = free_port()
    log_path = out / "superlink.log"
    cmd = [
        "flower-superlink", "--insecure", "--simulation", "--isolation", "subprocess",
        "--host", "127.0.0.1", "--port", str(port),
        "--database", str(out / ".flwr" / "superlink.db"),
        "--disable-runtime-dependency-installation",
    ]
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_healthy(proc, port, log_path)
        yield port
    finally:
        stop_process_group(proc)


def _wait_healthy(proc: subprocess.Popen, port: int, log_path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SimulationError(f"flower-superlink exited with {proc.returncode}; see {log_path}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).is_success:
                return
        time.sleep(0.3)
    raise SimulationError(f"flower-superlink did not become healthy in {timeout}s; see {log_path}")


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, session id) of every process, read from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp sid
        table[int(entry.name)] = (int(fields[1]), int(fields[3]))
    return table


def process_tree(root: int) -> set[int]:
    """``root``, its descendants, and every process in a session one of them leads.

    Flower's SuperExec starts Ray in a session of its own, and Ray's daemons outlive
    their parent, so a process group alone misses them.
    """
    table = _proc_table()
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _) in table.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    sessions = {pid for pid in tree if table.get(pid, (0, 0))[1] == pid}
    tree |= {pid for pid, (_, sid) in table.items() if sid in sessions}
    return tree


def stop_process_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop ``proc`` and everything it started (by PID): SIGTERM, then SIGKILL."""
    targets = process_tree(proc.pid) if proc.poll() is None else set()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in targets):
            time.sleep(0.2)
        if not any(_alive(p) for p in targets):
            break
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is already dead


def run_simulation(
    cfg: FedConfig,
    *,
    num_cpus: int = 1,
    num_gpus: float = 0.0,
    verbose: bool = False,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run ``cfg`` through ``flwr run`` on a private simulation SuperLink; return the summary."""
    out = Path(cfg.out_dir).resolve()
    cfg = cfg.replace(out_dir=str(out))
    flwr_home = out / ".flwr"
    flwr_home.mkdir(parents=True, exist_ok=True)
    env = flower_env(flwr_home)
    run_config = out / "run_config.toml"
    run_config.write_text(tomli_w.dumps(cfg.to_run_config()))
    write_node_policies(cfg, out)
    with simulation_superlink(out, env) as port:
        (flwr_home / "config.toml").write_text(tomli_w.dumps({"superlink": {
            "default": FEDERATION,
            FEDERATION: {"address": f"127.0.0.1:{port}", "insecure": True},
        }}))
        fed = (f"num-supernodes={cfg.num_clients} client-resources-num-cpus={num_cpus} "
               f"client-resources-num-gpus={num_gpus}")
        cmd = ["flwr", "run", str(app_dir()), FEDERATION, "--stream",
               "--run-config", str(run_config), "--federation-config", fed]
        _run_and_follow(cmd, env, out, verbose, on_record, timeout)
    summary_path = out / "summary.json"
    if not summary_path.exists():
        cause = last_error(out / "flower.log")
        raise SimulationError(
            f"the run ended without {summary_path}"
            + (f": {cause}" if cause else "")
            + f". Flower's log: {out / 'flower.log'}"
        )
    return json.loads(summary_path.read_text())


def write_node_policies(cfg: FedConfig, out: Path) -> None:
    """Each simulated node's own policy.toml, from the simulation's settings.

    In a simulation the user owns every node, so the nodes allow what the user chose for
    them (non-DP training only in a ``dp = false`` ablation; unmasked replies unless
    secure aggregation is on). A policy.toml already there is the user's and is kept.
    """
    policy = NodePolicy(epsilon=cfg.epsilon, delta=cfg.delta, allow_non_dp=not cfg.dp,
                        require_secure_aggregation=cfg.secure_aggregation)
    for k in range(cfg.num_clients):
        state_dir = out / "clients" / f"client-{k}"
        if not (state_dir / POLICY_FILE).exists():
            policy.save(state_dir)


def _run_and_follow(cmd: list[str], env: dict[str, str], out: Path, verbose: bool,
                    on_record: Callable[[dict[str, Any]], None] | None,
                    timeout: float | None) -> None:
    """Run ``flwr run``; feed each new ``metrics.jsonl`` line to ``on_record`` as it lands."""
    log_path = out / "flower.log"
    metrics = out / "metrics.jsonl"
    seen = 0
    deadline = time.monotonic() + timeout if timeout else None
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                stdout=None if verbose else log_file,
                                stderr=None if verbose else subprocess.STDOUT,
                                start_new_session=True)
        try:
            while proc.poll() is None:
                seen = _feed(metrics, seen, on_record)
                if deadline and time.monotonic() > deadline:
                    raise SimulationError(f"the simulation ran past {timeout}s; see {log_path}")
                time.sleep(0.5)
            _feed(metrics, seen, on_record)
        finally:
            stop_process_group(proc)
    if proc.returncode != 0:
        raise SimulationError(f"flwr run exited with {proc.returncode}; see {log_path}")


def last_error(log_path: Path) -> str | None:
    """The last ``SomeError: message`` line of Flower's log (the app's own exception)."""
    if not log_path.exists():
        return None
    hits = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines()
            if re.match(r"^[\w.]+(Error|Exception): ", ln.strip())]
    return hits[-1] if hits else None


def _feed(metrics: Path, seen: int, on_record: Callable[[dict[str, Any]], None] | None) -> int:
    if not metrics.exists():
        return seen
    lines = metrics.read_text().splitlines()
    complete = [ln for ln in lines[seen:] if ln.strip()]
    for line in complete:
        if on_record is not None:
            on_record(json.loads(line))
    return seen + len(complete)
