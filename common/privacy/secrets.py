"""The node's secret, and the DP randomness derived from it.

The amplification by subsampling behind every ε this project reports assumes that
nobody but the node can tell which examples a DP-SGD step sampled, and the Gaussian
mechanism assumes nobody can recompute the noise. Seeds made of values the coordinator
knows (the run seed, the round) break both. So each node holds a 32-byte secret from the
operating system's CSPRNG (``node_secret``, mode 0600, beside its ledger key) and derives
one seed per purpose and DP event from it with HMAC-SHA256:

    seed = first 8 bytes of HMAC-SHA256(secret, "fedistill/dp/<purpose>|<context>|<n>")

A client's DP event is named by its index in the node's ledger ("ledger-record", n):
unique for every DP step the node ever takes on its data, across rounds, runs and
restarts, so no two events share batches or noise (their independence is what the
composition behind ε assumes), and the same in a rerun that starts from the same ledger.
Same secret and same config give a bit-identical rerun; a different secret gives other
batches and other noise; without the secret the seeds are as good as random. Public
randomness (model init, partitions, public shuffles) keeps the public run seed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from common.errors import CryptoError

__all__ = ["NODE_SECRET_FILE", "DpSeeds", "derive_seed", "fresh_seeds", "load_or_create_secret"]

NODE_SECRET_FILE = "node_secret"
SECRET_BYTES = 32
_DOMAIN = "fedistill/dp"


def load_or_create_secret(path: str | os.PathLike[str]) -> bytes:
    """The secret at ``path``, created (mode 0600, never overwritten) on first use.

    Raises
    ------
    CryptoError
        When the file is readable by others than its owner, or is not a secret this
        function wrote (wrong length).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # O_EXCL: two processes starting at once never end up with two secrets
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_secret(path)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_bytes(SECRET_BYTES))
        fh.flush()
        os.fsync(fh.fileno())
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise CryptoError(
            f"{path} is readable by others (mode {mode:o}): a node secret must be mode 0600. "
            f"Run `chmod 600 {path}`, or delete it to start a new secret (the node's DP "
            "randomness then changes; its ledger is unaffected)."
        )
    data = path.read_bytes()
    if len(data) != SECRET_BYTES:
        raise CryptoError(f"{path} holds {len(data)} bytes, not a {SECRET_BYTES}-byte node "
                          "secret; restore it or delete it to start a new one.")
    return data


def derive_seed(secret: bytes, purpose: str, context: str, counter: int) -> int:
    """A 63-bit seed for ``purpose`` at ``counter`` in ``context`` (the module docstring)."""
    if len(secret) < 16:
        raise CryptoError(f"a node secret must have at least 16 bytes, found {len(secret)}")
    message = f"{_DOMAIN}/{purpose}|{context}|{counter}".encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # torch seeds are signed 64-bit


@dataclass(frozen=True)
class DpSeeds:
    """The seeds of one DP-SGD call: Poisson sampling and Gaussian noise, kept apart."""

    sampling: int
    noise: int

    @classmethod
    def derive(cls, secret: bytes, context: str, counter: int) -> DpSeeds:
        return cls(derive_seed(secret, "poisson-sampling", context, counter),
                   derive_seed(secret, "gaussian-noise", context, counter))

    @classmethod
    def for_ledger_record(cls, secret: bytes, index: int) -> DpSeeds:
        """The seeds of the DP event recorded at ``index`` of the node's ledger."""
        return cls.derive(secret, "ledger-record", index)


def fresh_seeds() -> DpSeeds:
    """Seeds from a new secret that nobody keeps: for in-process experiments (baselines,
    benchmarks, audits) that stand in for a node but have no node directory."""
    return DpSeeds.derive(secrets.token_bytes(SECRET_BYTES), "in-process", 0)
