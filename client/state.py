"""What a client keeps on disk across rounds, runs and restarts.

``context.state`` does not survive a new run or a SuperNode restart (FLOWER.md), so the
student, the noise plan and the privacy ledger live in a per-client directory. The
ledger is the accountant: ε is always recomputed from its events, so a restart can
neither reset the budget nor count a round twice. Every record is signed with the client's
Ed25519 key (``ledger_key.pem``, mode 0600, created on first use); ``ledger_key.pub`` is
what an auditor needs to run ``fedistill audit verify``. ``node_secret`` (mode 0600) seeds
the node's DP randomness (common/privacy/secrets.py); it never leaves the directory.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch
from torch import nn

from common.crypto.keys import (
    LEDGER_KEY_FILE,
    LEDGER_PUBLIC_KEY_FILE,
    key_fingerprint,
    ledger_signer,
    load_or_create_private_key,
)
from common.privacy.ledger import PrivacyLedger
from common.privacy.planner import NoisePlan
from common.privacy.secrets import NODE_SECRET_FILE, load_or_create_secret

log = logging.getLogger(__name__)


class ClientState:
    """The files of one client: ``student.pt``, ``plans.json``, ``ledger.jsonl``, the
    ledger's key pair ``ledger_key.pem`` / ``ledger_key.pub`` and ``node_secret``."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        key = load_or_create_private_key(
            self.dir / LEDGER_KEY_FILE, self.dir / LEDGER_PUBLIC_KEY_FILE
        )
        self.ledger = PrivacyLedger(self.dir / "ledger.jsonl", signer=ledger_signer(key))
        self.key_fingerprint = key_fingerprint(key.public_key())
        self.secret = load_or_create_secret(self.dir / NODE_SECRET_FILE)

    # ---------------------------------------------------------------- student
    def load_student(self, model: nn.Module) -> bool:
        """Load the saved weights into ``model``; False when there are none yet.

        A file that does not load (torn, foreign, another family's) is moved aside and
        the student starts again from its public initialisation: a bad file must not
        stop the node for good, and the ledger, not the student, holds the ε spent.
        """
        path = self.dir / "student.pt"
        if not path.exists():
            return False
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as exc:  # torch.load raises many types for a bad file
            aside = path.with_name(f"student.pt.unreadable-{time.time_ns()}")
            os.replace(path, aside)
            log.error("%s does not load (%s: %s); kept as %s, the student starts again "
                      "from its initial weights (the ledger and its ε are unchanged)",
                      path, type(exc).__name__, str(exc)[:200], aside.name)
            return False
        return True

    def save_student(self, model: nn.Module) -> None:
        _atomic_torch_save(model.state_dict(), self.dir / "student.pt")

    # ---------------------------------------------------------------- non-DP training
    def trained_without_dp(self) -> bool:
        """Whether private data was ever used without DP (then no finite ε holds)."""
        return (self.dir / "trained-without-dp").exists()

    def mark_trained_without_dp(self) -> None:
        _atomic_write_text(self.dir / "trained-without-dp",
                           "private data was used without DP: ε is infinite\n")

    # ---------------------------------------------------------------- noise plans
    def plan(self, run_id: str) -> NoisePlan | None:
        plans = self._plans()
        return NoisePlan(**plans[run_id]) if run_id in plans else None

    def save_plan(self, run_id: str, plan: NoisePlan) -> None:
        plans = self._plans()
        plans[run_id] = plan.__dict__
        _atomic_write_text(self.dir / "plans.json", json.dumps(plans, indent=2))

    def _plans(self) -> dict[str, dict]:
        path = self.dir / "plans.json"
        return json.loads(path.read_text()) if path.exists() else {}


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _atomic_torch_save(obj: object, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
