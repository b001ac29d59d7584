"""Malicious and faulty clients, for robustness tests and the attack harness.

A client whose partition id falls in the first ``attack-fraction`` of the federation
replaces its honest soft labels with one of these. Poisoning attacks return valid
probabilities (they pass validation and must be bounded by robust aggregation);
faults return malformed payloads or raise (they must be rejected with a reason while the
round goes on).
"""

from __future__ import annotations

import numpy as np

from common.config import ATTACKS

POISONING = ATTACKS[1:5]  # flip, noise, wrong-onehot, collude
FAULTS = ATTACKS[5:]  # nan, shape, raise


class InjectedFault(RuntimeError):
    """Raised by a client configured with ``attack = "raise"``."""


def is_malicious(partition_id: int, num_partitions: int, fraction: float) -> bool:
    """The first ``round(fraction * num_partitions)`` clients are the malicious ones."""
    return partition_id < round(fraction * num_partitions)


def poison(probs: np.ndarray, kind: str, *, seed: int) -> np.ndarray:
    """Replace honest soft labels (m, C) by an attack's, still on the simplex."""
    m, c = probs.shape
    rng = np.random.default_rng(seed)
    if kind == "flip":  # label-flipped: the class order reversed
        return probs[:, ::-1].copy()
    if kind == "noise":  # uniform noise on the simplex
        return rng.dirichlet(np.ones(c), size=m).astype(np.float32)
    if kind == "wrong-onehot":  # confident and wrong: all mass on another class
        wrong = (probs.argmax(1) + rng.integers(1, c, size=m)) % c
        return np.eye(c, dtype=np.float32)[wrong]
    if kind == "collude":  # every malicious client pushes class 0
        return np.eye(c, dtype=np.float32)[np.zeros(m, dtype=int)]
    raise ValueError(f"{kind!r} is not a poisoning attack; choose one of {POISONING}")


def corrupt(arrays: dict[str, np.ndarray], kind: str) -> dict[str, np.ndarray]:
    """Turn a valid encoded payload into a malformed one (or raise, for ``raise``)."""
    if kind == "raise":
        raise InjectedFault("injected client failure (attack = 'raise')")
    if kind == "nan":
        return {k: np.full(v.shape, np.nan, dtype=np.float32) for k, v in arrays.items()}
    if kind == "shape":
        return {k: v[:-1] for k, v in arrays.items()}
    raise ValueError(f"{kind!r} is not a fault; choose one of {FAULTS}")
