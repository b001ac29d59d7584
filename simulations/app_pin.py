"""A node runs only the app it pinned: Flower's ``flwr-clientapp``, behind a FAB-hash check.

In a deployment the coordinator ships the app (a FAB: this project's code) and every
node installs and runs it. Without a check, every node-side privacy guarantee (the DP
step, the budget, the ledger, the refusal of unmasked rounds) would rest on trusting the
coordinator's code. ``fedistill node`` therefore puts this module first on the SuperNode's
PATH as ``flwr-clientapp`` (the command Flower's SuperExec starts for every ClientApp
task) with the SHA-256 hashes of the FABs the node accepts in ``FEDISTILL_APP_PINS``.
Before Flower installs a FAB, its hash must be one of them; otherwise the task fails
with an error reply and nothing of the shipped code is installed or imported.

Flower's own mechanism for this (``--trusted-entities``, signed FABs) needs a SuperLink
that checks licences with Flower's platform, which a private federation does not have.
This module lives outside the packages a FAB holds (common, client, coordinator) and
imports none of them on the ``flwr-clientapp`` path, so the shipped app's modules are
loaded from the installed FAB, not from this checkout.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

APP_PINS_ENV = "FEDISTILL_APP_PINS"


class AppNotPinnedError(RuntimeError):
    """The coordinator shipped an app whose hash this node did not pin."""


def fab_digest(fab: bytes) -> str:
    """The FAB's SHA-256, as Flower names it (``fab_hash``)."""
    return hashlib.sha256(fab).hexdigest()


def pinned(install: Callable[..., Any], pins: frozenset[str]) -> Callable[..., Any]:
    """``install`` (Flower's ``install_from_fab``) that first checks the FAB's hash."""

    def install_if_pinned(fab: bytes, *args: Any, **kwargs: Any) -> Any:
        digest = fab_digest(fab) if isinstance(fab, bytes) else ""
        if digest not in pins:
            raise AppNotPinnedError(
                f"the coordinator shipped app {digest[:12] or '?'}, which this node did not "
                f"pin (it accepts {sorted(p[:12] for p in pins)}); refusing to install or run "
                "it. Check the coordinator's version, or pin it with `fedistill node "
                "--app-pin HASH`.")
        return install(fab, *args, **kwargs)

    return install_if_pinned


def read_pins(value: str | None) -> frozenset[str]:
    return frozenset(p.strip().lower() for p in (value or "").split(",") if p.strip())


def local_app_digest() -> str:
    """The hash of the FAB this checkout builds: what ``flwr run`` ships from it."""
    from flwr.cli.build import build_fab_from_disk

    from simulations.runner import app_dir

    return fab_digest(build_fab_from_disk(app_dir()))


def check_pin_values(values: list[str]) -> None:
    """``--app-pin`` values are ``local``, ``any`` alone, or 64-hex-digit FAB hashes."""
    from common.errors import ConfigError  # not at the top: see the module's docstring

    if "any" in values and values != ["any"]:
        raise ConfigError("--app-pin any cannot be combined with other pins.")
    for value in values:
        if value not in ("local", "any") and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ConfigError(f"--app-pin {value!r}: give `local`, `any`, or a FAB's SHA-256 "
                              "(64 hex digits; `fedistill app-digest` prints this checkout's).")


def resolve_pins(values: list[str]) -> frozenset[str] | None:
    """The FAB hashes ``--app-pin`` accepts (``local``: this checkout's app); None: any."""
    check_pin_values(values)
    if values == ["any"]:
        return None
    return frozenset(local_app_digest() if v == "local" else v.lower() for v in values)


def pinned_env(env: dict[str, str], pins: frozenset[str], bin_dir: Path) -> dict[str, str]:
    """``env`` whose ``flwr-clientapp`` is this module, accepting only ``pins``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "flwr-clientapp"
    shim.write_text(f"#!{sys.executable}\nfrom simulations.app_pin import main\nmain()\n")
    shim.chmod(0o755)
    return {**env, APP_PINS_ENV: ",".join(sorted(pins)),
            "PATH": str(bin_dir) + os.pathsep + env.get("PATH", "")}


def main() -> None:
    """``flwr-clientapp`` with the pin check; fails closed if it cannot install it."""
    pins = read_pins(os.environ.get(APP_PINS_ENV))
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp
    from flwr.supernode.runtime import run_clientapp as runtime

    install = getattr(runtime, "install_from_fab", None)
    if not pins or install is None:
        sys.stderr.write("fedistill app pin: no pins, or this Flower version installs apps "
                         "elsewhere; refusing to run a shipped app unchecked.\n")
        raise SystemExit(2)
    runtime.install_from_fab = pinned(install, pins)
    flwr_clientapp()


if __name__ == "__main__":
    main()
