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
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import tomli_w

from common.config import FedConfig
from common.data import shared_data_dir
from common.errors import FedistillError
from common.privacy.policy import POLICY_FILE, NodePolicy
from simulations.proctree import follow_run, stop_process_group, wait_healthy

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
        wait_healthy(proc, f"http://127.0.0.1:{port}/health", log_path, error=SimulationError)
        yield port
    finally:
        stop_process_group(proc)


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
        code = follow_run(cmd, env, out, verbose=verbose, on_record=on_record,
                          timeout=timeout, error=SimulationError)
    if code != 0:
        raise SimulationError(f"flwr run exited with {code}; see {out / 'flower.log'}")
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


def last_error(log_path: Path) -> str | None:
    """The last ``SomeError: message`` line of Flower's log (the app's own exception)."""
    if not log_path.exists():
        return None
    hits = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines()
            if re.match(r"^[\w.]+(Error|Exception): ", ln.strip())]
    return hits[-1] if hits else None
