"""A node's files across restarts: a student file that no longer loads never stops it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from client.state import ClientState


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("damage", ["torn", "garbage", "another model"])
def test_a_student_file_that_does_not_load_is_set_aside(tmp_path: Path, damage: str,
                                                        caplog) -> None:
    state = ClientState(tmp_path)
    state.save_student(nn.Linear(4, 2))
    path = tmp_path / "student.pt"
    if damage == "torn":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint")
    else:
        state.save_student(nn.Linear(8, 3))
    fresh = nn.Linear(4, 2)
    before = _weights(fresh)

    assert state.load_student(fresh) is False
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(fresh), strict=True))
    assert not path.exists()
    assert len(list(tmp_path.glob("student.pt.unreadable-*"))) == 1
    assert "does not load" in caplog.text
    # the node goes on: the next save and load work
    state.save_student(fresh)
    assert state.load_student(nn.Linear(4, 2)) is True


def test_a_saved_student_loads_back(tmp_path: Path) -> None:
    state = ClientState(tmp_path)
    assert state.load_student(nn.Linear(4, 2)) is False  # nothing saved yet
    saved = nn.Linear(4, 2)
    state.save_student(saved)
    loaded = nn.Linear(4, 2)
    assert state.load_student(loaded) is True
    assert all(torch.equal(a, b) for a, b in zip(_weights(saved), _weights(loaded), strict=True))
