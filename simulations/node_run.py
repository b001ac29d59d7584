"""Running one client node: Flower's SuperNode, watched so that every failure ends clearly.

Flower's SuperNode passes its own lines through unchanged, but three of them mean
something a node operator must act on, and Flower alone does not end on them:

- "[code: 2004] Failed to activate SuperNode": Flower exits at once, both for an
  unregistered key and for a key whose earlier SuperNode crashed less than two heartbeats
  ago (or that started before the coordinator registered it). Within ``activation_wait``
  seconds the SuperNode is started again.
- "Connection attempt failed": Flower retries forever without naming the address; the
  node says once which address it dials and what to check.
- "Giving up reconnection" (after ``--max-wait-time``): Flower logs it and then stays
  alive (its local API server keeps the process up), so the node stops it and exits
  non-zero: the run is over, or the coordinator is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from common.errors import FedistillError
from simulations.proctree import stop_process_group

ACTIVATION_REFUSED = "Failed to activate SuperNode"  # Flower's "[code: 2004]" message
CONNECTION_FAILED = "Connection attempt failed"
GAVE_UP = "Giving up reconnection"
# A SuperNode that stops without saying goodbye (a crash, SIGKILL) stays "online" at the
# SuperLink until it misses 2 heartbeats of 30 s (flwr HEARTBEAT_PATIENCE x
# HEARTBEAT_DEFAULT_INTERVAL), and the SuperLink refuses to activate a node that is online.
# So a restarted node may be refused for up to a minute; we retry for a little longer.
DEFAULT_ACTIVATION_WAIT = 90.0
ACTIVATION_RETRY_DELAY = 5.0


class NodeError(FedistillError):
    """The SuperNode ended for a reason its operator must act on (exit code 2)."""


@dataclass
class _Watch:
    """What the SuperNode's output said so far (set by the reader thread)."""

    refused: threading.Event = field(default_factory=threading.Event)
    gave_up: threading.Event = field(default_factory=threading.Event)
    unreachable: threading.Event = field(default_factory=threading.Event)


def supervise_supernode(cmd: list[str], env: dict[str, str], *, superlink: str,
                        activation_wait: float, say: Callable[[str], None]) -> int:
    """Run ``flower-supernode`` until it ends; its exit code, or NodeError with the cause."""
    deadline = time.monotonic() + activation_wait
    env = {**env, "PYTHONUNBUFFERED": "1"}  # Flower's lines as they come, not per 8 KiB
    attempt = 0
    while True:
        attempt += 1
        watch = _Watch()
        code = _run_once(cmd, env, watch, superlink, say)
        if watch.gave_up.is_set():
            raise NodeError(
                f"gave up reaching the SuperLink at {superlink} (--max-wait-time): the run is "
                "over, or the coordinator is gone or unreachable.")
        if not watch.refused.is_set():
            return code
        left = deadline - time.monotonic()
        if left <= 0:
            raise NodeError(
                f"the SuperLink refused to activate this node {attempt} time(s) over "
                f"{activation_wait:.0f}s: its key is not registered (register it with "
                "`fedistill coordinator --nodes-keys ...`), or another SuperNode with this "
                "key is online.")
        say(f"activation refused (attempt {attempt}): the key may not be registered yet, or "
            f"this node's earlier run is still marked online; retrying for {left:.0f}s")
        time.sleep(min(ACTIVATION_RETRY_DELAY, left))


def _run_once(cmd: list[str], env: dict[str, str], watch: _Watch, superlink: str,
              say: Callable[[str], None]) -> int:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, text=True,
                            errors="replace")
    reader = threading.Thread(target=_copy_output, args=(proc, watch, superlink, say),
                              daemon=True)
    reader.start()
    try:
        while proc.poll() is None and not watch.gave_up.wait(0.5):
            pass
        code = proc.poll()
    finally:
        stop_process_group(proc)
        _stop_group_leftovers(proc.pid)  # its SuperExec may outlive it, holding the pipe
    reader.join(timeout=5)
    return proc.returncode if code is None else code


def _copy_output(proc: subprocess.Popen, watch: _Watch, superlink: str,
                 say: Callable[[str], None]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if ACTIVATION_REFUSED in line:
            watch.refused.set()
        elif GAVE_UP in line:
            watch.gave_up.set()
        elif CONNECTION_FAILED in line and not watch.unreachable.is_set():
            watch.unreachable.set()
            say(f"cannot reach the SuperLink at {superlink} (the run may be over); Flower "
                "keeps retrying. If this node never connected, check that the coordinator "
                "runs at that address, that --root-certificates is the federation's ca.crt "
                "and its certificate names this host, and that both sides use TLS (or both "
                "--insecure).")


def _stop_group_leftovers(pgid: int, grace: float = 5.0) -> None:
    """Stop what is left in the process group we created for a SuperNode (by its id)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.1)
