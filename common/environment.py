"""What a measured number depends on: versions, CPUs, threads, device and load.

Every benchmark and results file stores this next to its numbers, and prints it first,
so that a log or a page shows what produced the figures under it.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any


def _version(package: str) -> str | None:
    """The installed version, or None (the GPU machine may run without Flower)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(device: Any = "cpu", *, torch_threads: int | None = None) -> dict[str, Any]:
    """The environment of a measurement on ``device`` (a name or a ``torch.device``).

    ``torch_threads`` overrides torch's own count, for scripts whose workers set theirs.
    """
    import torch

    name = str(device)
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads() if torch_threads is None else torch_threads,
        "torch": torch.__version__,
        "opacus": _version("opacus"),
        "flwr": _version("flwr"),
        "device": name,
        # neighbours' load at the start: wide ratio ranges on a busy machine are expected
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    if name.startswith(("cuda", "mixed")) and torch.cuda.is_available():
        index = torch.device(name).index if name.startswith("cuda") else None
        env["gpu"] = torch.cuda.get_device_name(index or 0)
        env["cuda"] = torch.version.cuda
    return env


def print_environment(env: dict[str, Any]) -> None:
    """One line, so a log shows what produced the numbers under it."""
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()), flush=True)
