"""Knowledge codec: soft labels on the public batch, as numpy arrays on the wire.

Knowledge is an (m, C) matrix of probabilities (rows on the simplex) for the m public
examples of a round. It crosses the network both ways (teacher → clients, students →
coordinator) as a small dict of numpy arrays, in one of :data:`ENCODINGS`:

============ ============================================== ==============================
encoding     arrays                                         round-trip error (per entry)
============ ============================================== ==============================
``float32``  ``probs`` float32 (m, C)                        ~1e-7
``float16``  ``probs`` float16 (m, C)                        ≤ 1e-3 (half precision, then
                                                             rows renormalised)
``int8``     ``codes`` uint8 (m, C), ``scale`` float32 (m,)  < 1/255 (see below)
``topk``     ``indices`` int16/int32 (m, k),                 top-k entries ≤ 1e-3 (float16
             ``values`` float16 (m, k)                       rounding); the other C - k
                                                             share the remaining mass
                                                             equally (maximum entropy)
``votes``    ``votes`` uint8 (ceil(m·b / 8),), the class of  the row's most likely class
             each row in b = ceil(log2 C) bits, packed       only, as a one-hot row
============ ============================================== ==============================

``votes`` is a reply encoding (PATE-style hard votes): a client says only which class
its student picks, one bit per public example for two classes, and the mean of the
replies is each class's share of the votes. The teacher's own knowledge, which the
students distil from, still goes down as float16 probabilities: see
:func:`downlink_encoding`.

Every decoder returns float32 rows clipped to [0, 1] and renormalised to sum to 1, so
downstream code can rely on the simplex. ``topk`` uses int16 indices up to 32767 classes
and int32 beyond; a ``topk`` larger than C keeps all C classes.

``int8`` scheme (8-bit codes that keep rows on the simplex). Per row, let
``K = floor(255 / max_j p_j)`` (≥ 255) and choose integer codes ``n_j`` with
``|n_j - K p_j| < 1`` and ``Σ_j n_j = K`` by largest-remainder rounding; every code fits
in a byte because ``K p_j ≤ 255``. The row's ``scale`` is ``1 / Σ_j n_j`` and decoding is
``n_j · scale``, so an honest row sums to 1 exactly and each entry is off by less than
``1/K ≤ 1/255``. The row-sum check on decode then catches a forged ``scale``.

:func:`decode_knowledge` is the coordinator's gate for untrusted replies: for any input
whatsoever it either returns valid knowledge or raises :class:`KnowledgeError` with a
reason fit for the log; nothing else escapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from common.errors import ConfigError, KnowledgeError

__all__ = ["ENCODINGS", "decode_knowledge", "downlink_encoding", "encode_knowledge",
           "payload_nbytes", "sent_rows"]

ENCODINGS: tuple[str, ...] = ("float32", "float16", "int8", "topk", "votes")

# Keys and accepted dtypes of each encoding's arrays.
_LAYOUT: dict[str, dict[str, tuple[np.dtype[Any], ...]]] = {
    "float32": {"probs": (np.dtype(np.float32),)},
    "float16": {"probs": (np.dtype(np.float16),)},
    "int8": {"codes": (np.dtype(np.uint8),), "scale": (np.dtype(np.float32),)},
    "topk": {
        "indices": (np.dtype(np.int16), np.dtype(np.int32)),
        "values": (np.dtype(np.float16),),
    },
    "votes": {"votes": (np.dtype(np.uint8),)},
}
_ENCODE_ATOL = 1e-3  # how far from the simplex a row handed to the encoder may be


# ---------------------------------------------------------------------------- encode
def encode_knowledge(probs: np.ndarray, encoding: str, *, topk: int = 2) -> dict[str, np.ndarray]:
    """Encode an (m, C) matrix of probabilities for the wire.

    Parameters
    ----------
    probs : np.ndarray
        (m, C), every row on the probability simplex (within 1e-3; rows are
        renormalised before encoding).
    encoding : str
        One of :data:`ENCODINGS`.
    topk : int
        Entries kept per row by ``"topk"``, >= 1; values above C keep all C (default: 2).

    Raises
    ------
    ConfigError
        Unknown encoding or bad ``topk``.
    ValueError
        ``probs`` is not a finite (m, C) matrix on the simplex.
    """
    if encoding not in ENCODINGS:
        raise ConfigError(f"Unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}.")
    p = _simplex_rows(probs)  # float64 (m, C), rows sum to 1
    if encoding == "float32":
        return {"probs": p.astype(np.float32)}
    if encoding == "float16":
        return {"probs": p.astype(np.float16)}
    if encoding == "int8":
        return _encode_int8(p)
    if encoding == "votes":
        return _encode_votes(p)
    return _encode_topk(p, topk)


def downlink_encoding(encoding: str) -> str:
    """The encoding of the teacher's knowledge sent to the clients for a reply
    ``encoding``: the same, except that votes go up only (the students distil from the
    teacher's probabilities, which cost no privacy and are sent once to each client)."""
    return "float16" if encoding == "votes" else encoding


def sent_rows(probs: np.ndarray, encoding: str) -> np.ndarray:
    """The rows a reply in ``encoding`` tells the coordinator: one-hot votes for votes,
    the probabilities otherwise (the masked sum of secure aggregation takes these)."""
    if encoding != "votes":
        return probs
    return np.eye(probs.shape[1], dtype=probs.dtype)[np.asarray(probs).argmax(axis=1)]


def _vote_bits(num_classes: int) -> int:
    return max(1, (num_classes - 1).bit_length())


def _simplex_rows(probs: np.ndarray) -> np.ndarray:
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"probs must be a non-empty (m, C) matrix, found shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or arr.min() < 0:
        raise ValueError("probs must be finite and non-negative")
    sums = arr.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1)))
    if abs(sums[worst] - 1) > _ENCODE_ATOL:
        raise ValueError(f"row {worst} of probs sums to {sums[worst]:.6g}, expected 1")
    return arr / sums[:, None]


def _encode_int8(p: np.ndarray) -> dict[str, np.ndarray]:
    # K = floor(255 / max p) per row, so that K p_j <= 255 fits a byte.
    big_k = np.floor(255.0 / p.max(axis=1))  # (m,)
    target = p * big_k[:, None]  # (m, C), each row sums to K
    codes = np.floor(target)
    remainder = target - codes
    # Largest-remainder rounding: add one unit to the entries with the largest
    # remainders until each row sums to K. A stable sort keeps ties deterministic.
    missing = np.clip(np.rint(big_k - codes.sum(axis=1)), 0, p.shape[1]).astype(np.int64)
    order = np.argsort(-remainder, axis=1, kind="stable")  # (m, C)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(p.shape[1])[None, :].repeat(len(p), 0), axis=1)
    codes += rank < missing[:, None]
    codes = np.clip(codes, 0, 255).astype(np.uint8)
    scale = (1.0 / codes.sum(axis=1, dtype=np.float64)).astype(np.float32)
    return {"codes": codes, "scale": scale}


def _encode_topk(p: np.ndarray, k: int) -> dict[str, np.ndarray]:
    num_classes = p.shape[1]
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"topk must be an integer >= 1, found {k!r}")
    k = min(k, num_classes)  # one run config serves every task: k >= C keeps all classes
    # Indices of the k largest per row, largest first (stable: lower index wins ties).
    idx = np.argsort(-p, axis=1, kind="stable")[:, :k]  # (m, k)
    index_dtype = np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32
    values = np.take_along_axis(p, idx, axis=1)
    return {"indices": idx.astype(index_dtype), "values": values.astype(np.float16)}


def _encode_votes(p: np.ndarray) -> dict[str, np.ndarray]:
    bits = _vote_bits(p.shape[1])
    classes = p.argmax(axis=1)  # the lowest index wins a tie
    planes = (classes[:, None] >> np.arange(bits)) & 1  # (m, b), least significant first
    return {"votes": np.packbits(planes.astype(np.uint8).reshape(-1), bitorder="little")}


# ---------------------------------------------------------------------------- decode
def decode_knowledge(
    arrays: Mapping[str, np.ndarray],
    encoding: str,
    *,
    num_rows: int,
    num_classes: int,
    atol: float = 1e-2,
) -> np.ndarray:
    """Validate and decode knowledge received from the network.

    Parameters
    ----------
    arrays : Mapping[str, np.ndarray]
        The payload, exactly the keys of ``encoding``.
    encoding : str
        One of :data:`ENCODINGS` (an unknown name is a bad reply: KnowledgeError).
    num_rows, num_classes : int
        The shape (m, C) the coordinator asked for.
    atol : float
        Tolerance for entries outside [0, 1] and row sums away from 1 (default: 1e-2).

    Returns
    -------
    np.ndarray
        float32 (m, C); entries in [0, 1] and rows renormalised to sum to 1.

    Raises
    ------
    KnowledgeError
        For any invalid payload, with a reason naming the key, row or value.
    ConfigError
        Only for bad ``num_rows`` / ``num_classes`` / ``atol`` (the caller's own bug).
    """
    _check_decode_args(num_rows, num_classes, atol)
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        raise KnowledgeError(f"unknown encoding {encoding!r}; expected one of {ENCODINGS}")
    payload = _checked_payload(arrays, encoding)
    with np.errstate(all="ignore"):  # values are checked explicitly, not via warnings
        if encoding in ("float32", "float16"):
            probs = _decode_dense(payload["probs"], num_rows, num_classes)
        elif encoding == "int8":
            probs = _decode_int8(payload["codes"], payload["scale"], num_rows, num_classes)
        elif encoding == "votes":
            probs = _decode_votes(payload["votes"], num_rows, num_classes)
        else:
            probs = _decode_topk(payload["indices"], payload["values"], num_rows, num_classes, atol)
        return _finish(probs, atol)


def _check_decode_args(num_rows: int, num_classes: int, atol: float) -> None:
    for name, value in (("num_rows", num_rows), ("num_classes", num_classes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, found {value!r}")
    if not isinstance(atol, int | float) or isinstance(atol, bool) or not 0 <= atol < 1:
        raise ConfigError(f"atol must be a number in [0, 1), found {atol!r}")


def _checked_payload(arrays: object, encoding: str) -> dict[str, np.ndarray]:
    """Keys exactly as the encoding's, values plain ndarrays of an accepted dtype."""
    if not isinstance(arrays, Mapping):
        raise KnowledgeError(f"payload must be a mapping of arrays, found {type(arrays).__name__}")
    layout = _LAYOUT[encoding]
    try:
        keys = list(arrays.keys())
        missing = sorted(k for k in layout if k not in keys)
        extra = sorted(_key_repr(k) for k in keys if k not in layout)
    except Exception as exc:  # a hostile Mapping or key (__eq__ raises); nothing to salvage
        raise KnowledgeError(f"payload keys cannot be read: {type(exc).__name__}") from exc
    if missing or extra:
        raise KnowledgeError(
            f"{encoding} payload must have keys {sorted(layout)}; "
            f"missing {missing}, unexpected [{', '.join(extra)}]"
        )
    payload: dict[str, np.ndarray] = {}
    for key, dtypes in layout.items():
        try:
            value = arrays[key]
        except Exception as exc:  # a hostile Mapping whose items cannot be read
            raise KnowledgeError(f"'{key}' cannot be read: {type(exc).__name__}") from exc
        if not isinstance(value, np.ndarray):
            raise KnowledgeError(f"'{key}' must be a numpy array, found {type(value).__name__}")
        value = np.asarray(value)  # drop ndarray subclasses (matrix, masked, memmap)
        if value.dtype not in dtypes:
            expected = " or ".join(str(d) for d in dtypes)
            raise KnowledgeError(f"'{key}' has dtype {value.dtype}, expected {expected}")
        payload[key] = value
    return payload


def _key_repr(key: object) -> str:
    """A short repr for the log; some keys have none (e.g. ints past 4,300 digits)."""
    try:
        text = repr(key)
    except Exception:
        return f"<{type(key).__name__} without a repr>"
    return text if len(text) <= 40 else f"{text[:37]}..."


def _check_shape(name: str, arr: np.ndarray, shape: tuple[int, ...]) -> None:
    if arr.shape != shape:
        raise KnowledgeError(f"'{name}' has shape {arr.shape}, expected {shape}")


def _check_finite(name: str, arr: np.ndarray) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise KnowledgeError(f"'{name}' has a non-finite value {arr[where]} at {where}")


def _decode_dense(probs: np.ndarray, num_rows: int, num_classes: int) -> np.ndarray:
    _check_shape("probs", probs, (num_rows, num_classes))
    _check_finite("probs", probs)
    return probs.astype(np.float64)


def _decode_int8(
    codes: np.ndarray, scale: np.ndarray, num_rows: int, num_classes: int
) -> np.ndarray:
    _check_shape("codes", codes, (num_rows, num_classes))
    _check_shape("scale", scale, (num_rows,))
    _check_finite("scale", scale)
    if (scale <= 0).any():
        row = int(np.argmax(scale <= 0))
        raise KnowledgeError(f"'scale' of row {row} is {scale[row]}, expected > 0")
    return codes.astype(np.float64) * scale.astype(np.float64)[:, None]


def _decode_topk(
    indices: np.ndarray, values: np.ndarray, num_rows: int, num_classes: int, atol: float
) -> np.ndarray:
    if indices.ndim != 2 or indices.shape[0] != num_rows:
        raise KnowledgeError(f"'indices' has shape {indices.shape}, expected ({num_rows}, k)")
    k = indices.shape[1]
    if not 1 <= k <= num_classes:
        raise KnowledgeError(f"top-k width is {k}, expected 1 <= k <= {num_classes}")
    _check_shape("values", values, (num_rows, k))
    bad = (indices < 0) | (indices >= num_classes)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise KnowledgeError(
            f"row {row} has class index {indices[row, col]}, expected 0..{num_classes - 1}"
        )
    ordered = np.sort(indices, axis=1)
    dup = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
    if dup.any():
        row = int(np.argmax(dup))
        raise KnowledgeError(f"row {row} repeats a class index: {indices[row].tolist()}")
    _check_finite("values", values)
    vals = values.astype(np.float64)
    _check_range("values", vals, atol)
    kept = vals.sum(axis=1)
    if k < num_classes and (kept > 1 + atol).any():
        row = int(np.argmax(kept))
        raise KnowledgeError(
            f"row {row}: top-{k} values sum to {kept[row]:.4g}, more than 1 + {atol:g}"
        )
    probs = np.zeros((num_rows, num_classes))
    if k < num_classes:
        # The mass outside the top k is unknown: spread it uniformly (maximum entropy).
        rest = np.clip(1.0 - kept, 0.0, None) / (num_classes - k)
        probs += rest[:, None]
    np.put_along_axis(probs, indices.astype(np.int64), vals, axis=1)
    return probs


def _decode_votes(votes: np.ndarray, num_rows: int, num_classes: int) -> np.ndarray:
    bits = _vote_bits(num_classes)
    _check_shape("votes", votes, (-(-num_rows * bits // 8),))
    planes = np.unpackbits(votes, bitorder="little")
    if planes[num_rows * bits:].any():  # an honest encoder leaves the padding zero
        raise KnowledgeError("'votes' has non-zero padding bits after the last row")
    classes = planes[:num_rows * bits].reshape(num_rows, bits).astype(np.int64) @ (
        1 << np.arange(bits))
    if (classes >= num_classes).any():
        row = int(np.argmax(classes >= num_classes))
        raise KnowledgeError(
            f"row {row} votes for class {classes[row]}, expected 0..{num_classes - 1}")
    return np.eye(num_classes)[classes]


def _check_range(name: str, probs: np.ndarray, atol: float) -> None:
    bad = (probs < -atol) | (probs > 1 + atol)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise KnowledgeError(
            f"'{name}' row {row} has {probs[row, col]:.4g} at column {col}, "
            f"outside [0, 1] ± {atol:g}"
        )


def _finish(probs: np.ndarray, atol: float) -> np.ndarray:
    """Check range and row sums of decoded float64 (m, C), then snap onto the simplex."""
    _check_range("probabilities", probs, atol)
    sums = probs.sum(axis=1)
    off = np.abs(sums - 1.0)
    if (off > atol).any():
        row = int(np.argmax(off))
        raise KnowledgeError(f"row {row} sums to {sums[row]:.4g}, expected 1 ± {atol:g}")
    clipped = np.clip(probs, 0.0, 1.0)
    return (clipped / clipped.sum(axis=1, keepdims=True)).astype(np.float32)


def payload_nbytes(arrays: Mapping[str, np.ndarray]) -> int:
    """Bytes of array data in an encoded payload (what the soft labels cost on the wire)."""
    total = 0
    for key, value in arrays.items():
        if not isinstance(value, np.ndarray):
            raise KnowledgeError(f"'{key}' must be a numpy array, found {type(value).__name__}")
        total += int(value.nbytes)
    return total
