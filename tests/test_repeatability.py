"""A rerun with the same public seed and the same node secrets reproduces every metric.

The coordinator's randomness comes from the public seed, each node's DP randomness from
its secret (common/privacy/secrets.py); with both fixed, nothing else may move a number.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import run_in_process

from common.config import FedConfig
from common.privacy.secrets import NODE_SECRET_FILE

# wall-clock seconds and the ledgers' heads (their records carry timestamps) may differ
VOLATILE = ("seconds", "ledgers")


def _run(cfg: FedConfig) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in run_in_process(cfg)]


def _config(out: Path) -> FedConfig:
    return FedConfig(num_clients=2, rounds=2, public_batch_size=120, max_len=24,
                     vocab_size=800, teacher_epochs=1, teacher_distill_epochs=1,
                     student_distill_epochs=1, dp_epochs=0.3, dp_batch_size=32,
                     students="transformer,cnn", out_dir=str(out))


def _copy_secrets(src: Path, dst: Path) -> None:
    for secret in src.glob(f"clients/*/{NODE_SECRET_FILE}"):
        target = dst / secret.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(secret, target)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_rerun_with_the_same_secrets_reproduces_every_metric_and_new_ones_do_not(
        tmp_path: Path) -> None:
    first = _run(_config(tmp_path / "first"))
    _copy_secrets(tmp_path / "first", tmp_path / "again")
    again = _run(_config(tmp_path / "again"))
    rounds = [r for r in first if r.get("round", 0) > 0]
    assert len(rounds) == 2 and all(r["epsilon_max"] > 0 for r in rounds)  # DP ran
    # the aggregate's digest carries every bit of the soft labels, which DP noise moves
    assert all(len(r["aggregate_sha256"]) == 64 for r in rounds)
    assert again == first
    fresh = _run(_config(tmp_path / "fresh"))  # new node secrets: other batches and noise
    fresh_rounds = [r for r in fresh if r.get("round", 0) > 0]
    assert [r["aggregate_sha256"] for r in fresh_rounds] != [
        r["aggregate_sha256"] for r in rounds]
