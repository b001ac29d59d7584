"""Next-token knowledge: each public window's next-token distributions, sent sparse.

For language modelling a party's knowledge about one public window of T tokens is the
distribution of the next token at each of its T positions: T rows over the vocabulary
V. Dense, a round's knowledge would be m × T × V numbers; on the wire it is top-k sparse
per position::

    {"indices": int32 (m, T, k),   # the k most likely next tokens, any order, distinct
     "probs":   float16/32 (m, T, k),  # their probabilities
     "rest":    float16/32 (m, T)}     # the mass of the V - k tokens left out

``encoding`` (float16 or float32) is the dtype of ``probs`` and ``rest``; ``k`` is the run's
``topk``. :func:`decode_next_tokens` is the coordinator's gate for untrusted replies: it
returns a checked dense float32 (m, T·V) matrix or raises :class:`KnowledgeError` with a
reason for the log, for any input whatsoever.

Decoded, the left-out mass ``rest`` is spread uniformly over the V - k tokens outside the
support. Why spread rather than drop it: a student whose true next token is outside every
client's top-k must still be told it is possible (dropping it would push its probability
to zero, and the KL target would no longer be a distribution); and uniform is the least
informative way to place mass the client chose not to describe. The mean of such dense
rows is the mean over the union of the clients' supports, each client's left-out mass
included, so the mean and the weighted mean need no sparse special case.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.distill.losses import kd_loss, soften
from common.errors import ConfigError, KnowledgeError

__all__ = ["MASS_TOLERANCE", "NEXT_TOKEN_ENCODINGS", "TEST_TOPK", "TokenCrossEntropy",
           "decode_next_tokens", "encode_next_tokens", "next_token_loss", "next_token_rows",
           "perplexity", "token_accuracy"]

NEXT_TOKEN_ENCODINGS: tuple[str, ...] = ("float16", "float32")
KEYS = ("indices", "probs", "rest")
_DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16)}
# A position's kept probabilities plus its rest must sum to 1 within this: float16 keeps
# ~3 decimal digits per entry, and k + 1 rounded entries add up to ~k·5e-4 of error.
MASS_TOLERANCE = 2e-2
# k of the test-set knowledge a client sends in evaluate rounds (float16 there): the
# ensemble's perplexity is that of these sparsified distributions.
TEST_TOPK = 16


def encode_next_tokens(probs: np.ndarray, encoding: str, *,
                       topk: int = TEST_TOPK) -> dict[str, np.ndarray]:
    """(m, T, V) next-token distributions as top-``topk`` sparse arrays for the wire.

    Raises
    ------
    ConfigError
        An encoding other than float16 / float32, or ``topk`` < 1.
    ValueError
        ``probs`` is not a finite (m, T, V) array.
    """
    if encoding not in NEXT_TOKEN_ENCODINGS:
        raise ConfigError(f"encoding={encoding!r} does not apply to next tokens: use one of "
                          f"{', '.join(NEXT_TOKEN_ENCODINGS)} (the dtype of the top-k "
                          "probabilities; the payload is always sparse).")
    if topk < 1:
        raise ConfigError(f"topk={topk} must be >= 1.")
    arr = torch.as_tensor(np.asarray(probs, dtype=np.float32))
    if arr.dim() != 3 or min(arr.shape) < 1:
        raise ValueError(f"next-token probabilities must be (m, T, V), found {tuple(arr.shape)}")
    if not torch.isfinite(arr).all():
        raise ValueError("next-token probabilities must be finite")
    k = min(topk, arr.shape[2])
    values, indices = torch.topk(arr, k, dim=2)  # (m, T, k) each
    dtype = _DTYPES[encoding]
    kept = values.numpy().astype(dtype)
    # the rest from the *rounded* kept values, so that the sent row sums to 1 as sent
    rest = np.clip(1.0 - kept.astype(np.float64).sum(axis=2), 0.0, 1.0).astype(dtype)
    return {"indices": indices.numpy().astype(np.int32), "probs": kept, "rest": rest}


def decode_next_tokens(arrays: Mapping[str, np.ndarray], encoding: str, *, num_rows: int,
                       num_classes: int, positions: int,
                       tolerance: float = MASS_TOLERANCE) -> np.ndarray:
    """Check and decode next-token knowledge received from the network.

    ``num_classes`` is the row width T·V and ``positions`` the window's T (so V is
    ``num_classes // positions``). Returns dense float32 (num_rows, T·V), each position's
    V entries a distribution (the rest spread over the tokens outside its support).

    Raises
    ------
    KnowledgeError
        Wrong keys, types, dtypes or shapes; an index outside [0, V) or repeated within a
        position; a non-finite or negative probability; a position whose mass is not 1
        within ``tolerance`` (above 1 + tolerance: probability from nowhere).
    ConfigError
        Bad ``num_rows`` / ``num_classes`` / ``positions`` (the caller's own bug).
    """
    vocab = _check_sizes(num_rows, num_classes, positions)
    if not isinstance(encoding, str) or encoding not in NEXT_TOKEN_ENCODINGS:
        raise KnowledgeError(f"unknown next-token encoding {encoding!r}; expected one of "
                             f"{NEXT_TOKEN_ENCODINGS}")
    indices, kept, rest = _the_arrays(arrays, encoding)
    k = _check_shapes(indices, kept, rest, num_rows, positions, vocab)
    _check_indices(indices, vocab)
    kept64, rest64 = kept.astype(np.float64), rest.astype(np.float64)
    _check_mass(kept64, rest64, tolerance)
    return _dense(indices, kept64, rest64, vocab, k).reshape(num_rows, positions * vocab)


def _check_sizes(num_rows: int, num_classes: int, positions: int) -> int:
    for name, value in (("num_rows", num_rows), ("num_classes", num_classes),
                        ("positions", positions)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, found {value!r}")
    if num_classes % positions:
        raise ConfigError(f"num_classes={num_classes} must be positions={positions} × vocab")
    return num_classes // positions


def _the_arrays(arrays: object, encoding: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The payload's three arrays with the expected dtypes, or a KnowledgeError."""
    if not isinstance(arrays, Mapping):
        raise KnowledgeError(f"payload must be a mapping of arrays, found {type(arrays).__name__}")
    try:
        keys = sorted(k if isinstance(k, str) else repr(k)[:40] for k in arrays.keys())
        values = [arrays[key] for key in KEYS] if keys == sorted(KEYS) else None
    except Exception as exc:  # a hostile Mapping: nothing to salvage
        raise KnowledgeError(f"payload cannot be read: {type(exc).__name__}") from exc
    if values is None:
        raise KnowledgeError(f"a next-token payload must have exactly the keys {list(KEYS)}; "
                             f"found {keys}")
    expected = (np.dtype(np.int32), _DTYPES[encoding], _DTYPES[encoding])
    out = []
    for key, value, dtype in zip(KEYS, values, expected, strict=True):
        if not isinstance(value, np.ndarray):
            raise KnowledgeError(f"'{key}' must be a numpy array, found {type(value).__name__}")
        value = np.asarray(value)  # drop ndarray subclasses
        if value.dtype != dtype:
            raise KnowledgeError(f"'{key}' has dtype {value.dtype}, expected {dtype}")
        out.append(value)
    return out[0], out[1], out[2]


def _check_shapes(indices: np.ndarray, kept: np.ndarray, rest: np.ndarray, num_rows: int,
                  positions: int, vocab: int) -> int:
    if indices.ndim != 3 or indices.shape[:2] != (num_rows, positions):
        raise KnowledgeError(f"'indices' has shape {indices.shape}, expected "
                             f"({num_rows}, {positions}, k)")
    k = indices.shape[2]
    if not 1 <= k <= vocab:
        raise KnowledgeError(f"'indices' keeps k={k} tokens per position; 1 <= k <= {vocab}")
    if kept.shape != indices.shape:
        raise KnowledgeError(f"'probs' has shape {kept.shape}, expected {indices.shape}")
    if rest.shape != (num_rows, positions):
        raise KnowledgeError(f"'rest' has shape {rest.shape}, expected {(num_rows, positions)}")
    return k


def _check_indices(indices: np.ndarray, vocab: int) -> None:
    bad = (indices < 0) | (indices >= vocab)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise KnowledgeError(f"'indices' has {int(indices[where])} at {where}, outside "
                             f"[0, {vocab})")
    ordered = np.sort(indices, axis=2)
    repeated = ordered[..., 1:] == ordered[..., :-1]
    if repeated.any():  # one token counted twice would double its probability
        where = tuple(int(i) for i in np.argwhere(repeated)[0][:2])
        raise KnowledgeError(f"'indices' repeats a token at position {where}")


def _check_mass(kept: np.ndarray, rest: np.ndarray, tolerance: float) -> None:
    for key, value in (("probs", kept), ("rest", rest)):
        bad = ~np.isfinite(value)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise KnowledgeError(f"'{key}' has a non-finite value {value[where]} at {where}")
        if (value < 0).any():
            where = tuple(int(i) for i in np.argwhere(value < 0)[0])
            raise KnowledgeError(f"'{key}' has a negative value {value[where]:.4g} at {where}")
    mass = kept.sum(axis=2) + rest  # (m, T)
    off = np.abs(mass - 1.0)
    worst = np.unravel_index(int(np.argmax(off)), off.shape)
    if off[worst] > tolerance:
        raise KnowledgeError(f"position {tuple(int(i) for i in worst)} has mass "
                             f"{mass[worst]:.4g} (top-k + rest); it must be 1 ± {tolerance:g}")


def _dense(indices: np.ndarray, kept: np.ndarray, rest: np.ndarray, vocab: int,
           k: int) -> np.ndarray:
    """(m, T, V): the kept probabilities where sent, the rest spread over the others."""
    spread = rest / (vocab - k) if vocab > k else np.zeros_like(rest)  # (m, T)
    dense = np.repeat(spread[..., None], vocab, axis=2)  # (m, T, V)
    np.put_along_axis(dense, indices.astype(np.int64), kept, axis=2)
    dense /= dense.sum(axis=2, keepdims=True)  # exactly 1 per position after rounding
    return dense.astype(np.float32)


# ---------------------------------------------------------------- model side
def next_token_rows(outputs: Tensor, temperature: float) -> Tensor:
    """(B, T, V) logits -> (B, T, V) next-token distributions softened at ``temperature``
    (the codec sparsifies them; kept 3-D so that it sees T)."""
    return soften(outputs, temperature)


def next_token_loss(student: Tensor, target: Tensor, temperature: float) -> Tensor:
    """Hinton's KD loss per position: T² · KL(target ‖ softmax(student / T)), averaged over
    every position of every window. ``target`` is dense (B, T·V) or (B, T, V)."""
    return kd_loss(student, target.reshape(student.shape), temperature)


class TokenCrossEntropy(nn.Module):
    """Cross-entropy of next-token logits (B, T, V) against token ids (B, T), averaged over
    the tokens: per window, so under Opacus each window's gradient is its mean token loss
    (the unit of privacy is one window)."""

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def _positions(targets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Targets (N, T) and rows as (N, T, V), whether rows come (N, T, V) or (N, T·V)."""
    y = np.asarray(targets).astype(np.int64)
    probs = np.asarray(rows, dtype=np.float64).reshape(y.shape[0], y.shape[1], -1)
    return y, probs


def perplexity(targets: np.ndarray, rows: np.ndarray) -> float:
    """exp of the mean negative log-probability of the true next tokens (lower is better).

    A zero probability is floored at 1e-12 (so a sparsified ensemble gives a finite, very
    large number rather than ∞)."""
    y, probs = _positions(targets, rows)
    true = np.take_along_axis(probs, y[..., None], axis=2)[..., 0]  # (N, T)
    return float(np.exp(-np.log(np.maximum(true, 1e-12)).mean()))


def token_accuracy(targets: np.ndarray, rows: np.ndarray) -> float:
    """Share of positions whose most likely next token is the true one."""
    y, probs = _positions(targets, rows)
    return float((probs.argmax(axis=2) == y).mean())
