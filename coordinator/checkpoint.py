"""Coordinator checkpoints: teacher, optimizer-free state, RNG, round, run id.

Flower keeps no ServerApp state across restarts (FLOWER.md), so the coordinator saves its
own after every round, atomically (write to a temporary file, then rename), so that a
crash leaves either the previous or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Checkpoint:
    run_id: str
    round: int  # the last completed round (0 = only the pre-trained teacher)
    teacher_state: dict[str, Any]
    rng_state: dict[str, Any]
    history: list[dict[str, Any]]
    shadow_states: list[dict[str, Any]] | None = None  # teacher-folds' shadow teachers


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(ckpt.__dict__, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> Checkpoint | None:
    if not path.exists():
        return None
    data = torch.load(path, map_location="cpu", weights_only=False)
    return Checkpoint(**data)


def capture_rng(rng: random.Random, np_rng: np.random.Generator) -> dict[str, Any]:
    return {"python": rng.getstate(), "numpy": np_rng.bit_generator.state,
            "torch": torch.get_rng_state()}


def restore_rng(state: dict[str, Any], rng: random.Random, np_rng: np.random.Generator) -> None:
    rng.setstate(state["python"])
    np_rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
