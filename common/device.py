"""Device selection shared by every model and loop."""

from __future__ import annotations

import torch

from common.errors import ConfigError


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` into a ``torch.device``.

    ``auto`` picks CUDA when it is available, else the CPU, so no path assumes a CPU.
    """
    if isinstance(spec, torch.device):
        return spec
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu" or spec.startswith("cuda"):
        if spec.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(
                f"device={spec!r} asked for CUDA but none is available; use 'auto' or 'cpu'."
            )
        return torch.device(spec)
    raise ConfigError(f"Unknown device {spec!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'.")
