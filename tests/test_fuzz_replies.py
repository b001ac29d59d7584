"""Fuzzing the gates for untrusted replies: the soft-label decoders, array records, reply
metrics, and ``validate_content`` on whole replies.

Property: whatever comes in, each gate either accepts it and returns valid data, or says
why not: ``decode_knowledge``, ``from_array_record`` and ``read_metrics`` raise
:class:`KnowledgeError` with a non-empty reason, ``validate_content`` returns a
:class:`Rejection` with one. No other exception escapes, and accepted soft labels are
float32 (m, C) with entries in [0, 1] and rows on the simplex.

Hypothesis draws each case's shape (m, C) and a seed; everything else (encoding, which
attacks, the arrays' contents) comes from a numpy generator on that seed, because each
extra hypothesis draw cost more than the check itself. A failure still shrinks to the
smallest shape and replays from its seed. The database is off: every run generates
fresh inputs, and each test counts its inputs and asserts that all of them ran and that
both outcomes (accepted, rejected) occurred.

Generated inputs (``max_examples``; 10,000 in all):

====================================================  ======
decode_knowledge, targeted attacks (5 encodings x 600)   3,000
validate_content, whole replies                          3,000
from_array_record, forged Array bytes and records        1,500
read_metrics, forged metric records                      1,500
client_meta, SecAgg+'s visible metadata and weight       1,000
====================================================  ======

tests/test_codec.py fuzzes the decoders with another 10,000 generic mutations.
"""

from __future__ import annotations

import io
import math
import pickle
import warnings
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common import Code, FitRes, Parameters, Status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.distill.codec import ENCODINGS, decode_knowledge, encode_knowledge
from common.errors import KnowledgeError
from common.protocol import (
    INFO,
    METRICS,
    REPLY_METRICS,
    SOFT_LABELS,
    TEST_SOFT_LABELS,
    from_array_record,
    read_metrics,
    to_array_record,
)
from coordinator.replies import Rejection, ValidReply, validate_content
from coordinator.secure import client_meta

DECODE_EXAMPLES_PER_ENCODING = 600
VALIDATE_EXAMPLES = 3000
ARRAY_RECORD_EXAMPLES = 1500
METRICS_EXAMPLES = 1500
SECURE_META_EXAMPLES = 1000
TOTAL_EXAMPLES = (
    len(ENCODINGS) * DECODE_EXAMPLES_PER_ENCODING
    + VALIDATE_EXAMPLES
    + ARRAY_RECORD_EXAMPLES
    + METRICS_EXAMPLES
    + SECURE_META_EXAMPLES
)

# Documented round-trip error per entry (the table in common/distill/codec.py).
TOLERANCE = {"float32": 1e-6, "float16": 1e-3, "int8": 1 / 255 + 1e-6, "topk": 1e-3}

M_MAX, C_MAX = 5, 7
SPECIALS = [
    math.nan, math.inf, -math.inf, -0.0, 0.0, 0.5, 1.0, 1.02, -0.02, -1e-3, 1e-45, 6e-8,
    65504.0, 7e4, 3.4e38, 1e300,
]  # fmt: skip
OTHER_DTYPES = [
    np.dtype(t)
    for t in ("<f8", "<f4", "<f2", "i1", "u1", "<i2", "<u2", "<i4", "<i8", "?", "<c8", ">f4",
              ">f2", ">i2", "<U3", "S2", "<M8[s]")
] + [np.dtype([("a", "<f4")]), np.dtype(object)]  # fmt: skip
KEYS = ["probs", "codes", "scale", "indices", "values", "x", "", "PROBS"]
NON_ARRAYS: list[Any] = [None, 0.5, "probs", b"\x00", [[0.5, 0.5]], (1,), np.float32(0.5)]


class HostileKey:
    """A key that cannot be compared with anything."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no comparing me")

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return "HostileKey()"


class HostileMapping(Mapping[Any, Any]):
    """A mapping whose items cannot be read."""

    def __init__(self, data: dict[Any, Any]) -> None:
        self._data = data

    def __getitem__(self, key: Any) -> Any:
        raise RuntimeError(f"no reading {key}")

    def __iter__(self) -> Iterator[Any]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


settings_fuzz = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _simplex(rng: np.random.Generator, m: int, c: int) -> np.ndarray:
    """Random (m, C) rows on the simplex, including the awkward ones."""
    kind = rng.integers(5)
    if kind == 0:  # confident: one-hot rows
        return np.eye(c)[rng.integers(c, size=m)]
    if kind == 1:  # uniform rows (every entry tied)
        return np.full((m, c), 1.0 / c)
    probs = rng.dirichlet(np.full(c, rng.choice([0.01, 0.3, 1.0, 30.0])), size=m)
    if kind == 2:  # tiny non-zero entries, below float16's smallest subnormal
        probs = probs + 1e-30
        probs /= probs.sum(axis=1, keepdims=True)
    return probs


def _check_knowledge(out: Any, m: int, c: int) -> None:
    assert isinstance(out, np.ndarray) and type(out) is np.ndarray
    assert out.dtype == np.float32 and out.shape == (m, c)
    assert np.all(out >= 0) and np.all(out <= 1)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)


def _check_round_trip(probs: np.ndarray, out: np.ndarray, encoding: str, k: int) -> None:
    if encoding == "votes":  # the most likely class (the lowest of tied ones), one-hot
        np.testing.assert_array_equal(out, np.eye(probs.shape[1])[probs.argmax(axis=1)])
        return
    if encoding != "topk":
        assert np.abs(out - probs).max() <= TOLERANCE[encoding]
        return
    for row in range(len(probs)):
        top = np.argsort(-probs[row], kind="stable")[:k]
        assert np.abs(out[row, top] - probs[row, top]).max() <= TOLERANCE["topk"]


# ------------------------------------------------------------- targeted payload attacks
def _cast(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "OUSM" or dtype.names:
        out = np.empty(value.shape, dtype=dtype)
        flat = out.reshape(-1)
        for i, v in enumerate(value.reshape(-1).tolist()):
            flat[i] = {"O": v, "U": str(v)[:3], "S": b"0.", "M": 0}.get(dtype.kind, (v,))
        return out
    with np.errstate(all="ignore"):  # NaN -> int casts are part of the point
        return value.astype(dtype)


def _reshape(rng: np.random.Generator, value: np.ndarray) -> np.ndarray:
    if value.ndim == 0:
        return value.reshape(1)
    options: list[Callable[[np.ndarray], np.ndarray]] = [
        lambda v: v.reshape(-1)[:1].reshape(()),  # 0-d
        lambda v: v.reshape(-1),  # 1-d
        lambda v: v[None],  # 3-d
        lambda v: v[..., None],
        lambda v: v[:0],  # no rows
        lambda v: v[..., :0],  # no columns
        lambda v: v[:-1],  # a row short
        lambda v: np.concatenate([v, v[:1]]),  # a row too many
        lambda v: np.concatenate([v, v[..., :1]], axis=-1) if v.ndim else v,  # extra column
        lambda v: v[..., :-1],  # a column short
        lambda v: v.T,
    ]
    return options[rng.integers(len(options))](value)


def _attack(
    rng: np.random.Generator, arrays: dict[str, np.ndarray], encoding: str, c: int, op: str
) -> Any:
    """Break a valid payload in one way; ``arrays`` may already be broken."""
    if not isinstance(arrays, dict) or not arrays:
        return arrays
    try:
        with warnings.catch_warnings():  # complex -> real casts, np.matrix, ...
            warnings.simplefilter("ignore")
            return _attack_dict(rng, arrays, encoding, c, op)
    except (ValueError, TypeError, IndexError, OverflowError):  # the generator's own limits
        return arrays


def _attack_dict(
    rng: np.random.Generator, arrays: dict[Any, Any], encoding: str, c: int, op: str
) -> Any:
    out: dict[Any, Any] = dict(arrays)
    key = list(out)[rng.integers(len(out))]
    value = out[key]
    if not isinstance(value, np.ndarray):
        return out
    value = value.copy()
    if op == "drop":
        del out[key]
    elif op == "extra":
        out[KEYS[rng.integers(len(KEYS))] + "_"] = value
    elif op == "rename":
        new_keys = [KEYS[rng.integers(len(KEYS))], 0, None, ("probs",), 10**5000, HostileKey()]
        out[new_keys[rng.integers(len(new_keys))]] = out.pop(key)
    elif op == "not-mapping":
        return [value, list(out.items()), None, "payload", value.tolist(), HostileMapping(out)][
            rng.integers(6)
        ]
    elif op == "non-array":
        out[key] = NON_ARRAYS[rng.integers(len(NON_ARRAYS))]
    elif op == "subclass":  # masked arrays and matrices are ndarrays too
        matrix = value.ndim <= 2 and rng.random() < 0.5
        out[key] = np.asmatrix(value) if matrix else np.ma.masked_less(value, 0)
    elif op == "dtype":
        out[key] = _cast(value, OTHER_DTYPES[rng.integers(len(OTHER_DTYPES))])
    elif op == "shape":
        out[key] = _reshape(rng, value)
    elif op == "poke" and value.size and value.dtype.kind in "iufcb":
        flat = value.reshape(-1)
        pos = rng.integers(flat.size, size=rng.integers(1, 4))
        with np.errstate(all="ignore"):
            if value.dtype.kind in "iu":
                info = np.iinfo(value.dtype)
                flat[pos] = rng.choice([info.min, info.max, -1, c, c + 1, 0])
            else:
                flat[pos] = rng.choice(SPECIALS)
        out[key] = value
    elif op == "encoding-specific":
        out = _specific(rng, out, encoding, c)
    return out


def _specific(rng: np.random.Generator, out: dict[Any, Any], encoding: str, c: int) -> Any:
    """Attacks that need to know the encoding: forged scales, bad top-k indices, ..."""
    with np.errstate(all="ignore"):
        if encoding in ("float32", "float16") and isinstance(out.get("probs"), np.ndarray):
            p = out["probs"].astype(np.float64)
            if p.ndim == 2 and p.size:
                choice = rng.integers(4)
                if choice == 0:  # one row's mass scaled: sums 0.5, 0.98, 1.02 or 2
                    p[rng.integers(len(p))] *= rng.choice([0.0, 0.5, 0.98, 1.005, 1.02, 2.0])
                elif choice == 1:  # mass moved so that an entry goes negative
                    row = rng.integers(len(p))
                    p[row, 0] -= 0.3
                    p[row, -1] += 0.3
                elif choice == 2:
                    p[:] = 0.0
                else:  # every entry above one
                    p += 1.0
                out["probs"] = p.astype(out["probs"].dtype)
        elif encoding == "int8" and isinstance(out.get("scale"), np.ndarray):
            if rng.random() < 0.6:  # forged scale, on one row or all
                factor = rng.choice([0.0, -1.0, 0.5, 0.995, 1.005, 2.0, 1e10, math.nan, math.inf])
                scale = out["scale"].astype(np.float64)
                if scale.size and rng.random() < 0.5:
                    scale.reshape(-1)[rng.integers(scale.size)] *= factor
                else:
                    scale = scale * factor
                if rng.random() < 0.2:
                    scale = np.full_like(scale, rng.choice([1e-45, 3.4e38, 1 / 255]))
                out["scale"] = scale.astype(np.float32)
            elif isinstance(out.get("codes"), np.ndarray):  # codes all 0, all 255, random
                codes = out["codes"]
                fill = rng.choice([0, 255, -1])
                out["codes"] = (
                    rng.integers(0, 256, size=codes.shape).astype(codes.dtype)
                    if fill < 0
                    else np.full_like(codes, fill)
                )
        elif encoding == "topk" and isinstance(out.get("indices"), np.ndarray):
            idx = out["indices"].astype(np.int64)
            vals = out.get("values")
            choice = rng.integers(5)
            if choice == 0 and idx.size:  # out of range
                bad = rng.choice([-1, c, c + 1, 32767, -32768, 2**31 - 1])
                idx.reshape(-1)[rng.integers(idx.size)] = bad
                dtype = np.int32 if abs(bad) > 32767 else out["indices"].dtype
                out["indices"] = idx.astype(dtype)
            elif choice == 1 and idx.ndim == 2 and idx.shape[1] >= 1:  # repeated index
                idx = np.concatenate([idx, idx[:, :1]], axis=1)
                out["indices"] = idx.astype(out["indices"].dtype)
                if isinstance(vals, np.ndarray) and vals.ndim == 2:
                    out["values"] = np.concatenate([vals, vals[:, :1] * 0], axis=1)
            elif choice == 2 and isinstance(vals, np.ndarray):  # kept mass above one
                out["values"] = np.full_like(vals, rng.choice([0.6, 0.9, 1.0, 1.1]))
            elif choice == 3 and isinstance(vals, np.ndarray):  # negative kept values
                out["values"] = (-np.abs(vals.astype(np.float64))).astype(vals.dtype)
            else:  # wider than C: every class once, then some again
                idx = np.tile(np.arange(c), (max(idx.shape[0], 1), 2))
                out["indices"] = idx.astype(np.int16)
                out["values"] = np.full(idx.shape, 1 / (2 * c), np.float16)
    return out


ATTACKS = [
    "drop", "extra", "rename", "not-mapping", "non-array", "subclass", "dtype", "shape",
    "poke", "poke", "encoding-specific", "encoding-specific", "encoding-specific",
]  # fmt: skip


# Hypothesis draws only (m, C, seed); every further choice comes from the seed.
CASES = st.tuples(st.integers(1, M_MAX), st.integers(1, C_MAX), st.integers(0, 2**32 - 1))


def _pick(rng: np.random.Generator, options: list[Any]) -> Any:
    return options[rng.integers(len(options))]


def _ops(rng: np.random.Generator, options: list[str], max_ops: int) -> list[str]:
    """No attack 1 time in 4, else 1 to ``max_ops`` of ``options``."""
    if rng.random() < 0.25:
        return []
    return [_pick(rng, options) for _ in range(rng.integers(1, max_ops + 1))]


def _payload(encoding: str, m: int, c: int, seed: int) -> tuple[Any, str, int, Any]:
    """(payload, encoding to decode it as, k, probs if it is an honest encoding)."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, c + 2))  # k > C keeps all C
    ops = _ops(rng, ATTACKS, 3)
    probs = _simplex(rng, m, c)
    payload: Any = encode_knowledge(probs, encoding, topk=k)
    for op in ops:
        payload = _attack(rng, payload, encoding, c, op)
    decode_as = encoding
    if rng.random() < 0.05:  # the payload of one encoding, read as another
        decode_as = _pick(rng, [*ENCODINGS, "int4", "", "FLOAT32"])
    honest = probs if not ops and decode_as == encoding else None
    return payload, decode_as, min(k, c), honest


def _decoder_fuzz(encoding: str, tally: dict[str, int]) -> Callable[[], None]:
    @settings(settings_fuzz, max_examples=DECODE_EXAMPLES_PER_ENCODING)
    @given(case=CASES)
    def check(case: tuple[int, int, int]) -> None:
        m, c, seed = case
        payload, decode_as, k, honest = _payload(encoding, m, c, seed)
        try:
            out = decode_knowledge(payload, decode_as, num_rows=m, num_classes=c)
        except KnowledgeError as exc:
            tally["rejected"] += 1
            assert isinstance(exc.reason, str) and exc.reason.strip()
            assert honest is None, f"an honest {encoding} payload was rejected: {exc.reason}"
            return
        tally["accepted"] += 1
        _check_knowledge(out, m, c)
        if honest is not None:
            _check_round_trip(honest, out, encoding, k)

    return check


@pytest.mark.filterwarnings("error::RuntimeWarning")  # an overflow inside a decoder
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_fuzz_decoders_accept_valid_or_raise_knowledge_error(encoding: str) -> None:
    tally = {"accepted": 0, "rejected": 0}
    _decoder_fuzz(encoding, tally)()
    assert sum(tally.values()) >= DECODE_EXAMPLES_PER_ENCODING
    assert min(tally.values()) >= DECODE_EXAMPLES_PER_ENCODING // 20  # both outcomes seen
    print(f"decode {encoding}: {tally}")  # shown with -s


# ------------------------------------------------------------------- forged records
def _npy(arr: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()


def _forged_array(rng: np.random.Generator, like: np.ndarray) -> Array:
    """An Array whose bytes are not what its metadata says (as a hostile client sends)."""
    if like.dtype.hasobject:  # np.save refuses these without pickle
        like = np.zeros(like.shape, np.float32)
    dtype, shape = str(like.dtype), tuple(like.shape)
    kind = rng.integers(9)
    if kind == 0:
        data = rng.bytes(int(rng.integers(0, 64)))  # garbage
    elif kind == 1:
        good = _npy(like)
        data = good[: rng.integers(0, len(good))]  # truncated
    elif kind == 2:
        buf = io.BytesIO()
        np.savez(buf, probs=like)  # a zip archive: np.load returns an NpzFile
        data = buf.getvalue()
    elif kind == 3:
        data = _npy(np.array([{"probs": 1}, None], dtype=object), allow_pickle=True)
    elif kind == 4:
        data = pickle.dumps(like)
    elif kind == 5:  # a header that promises far more data than is sent
        data = _npy_header("<f8", (int(rng.choice([10**6, 10**12, 2**40])),)) + b"\x00" * 8
    elif kind == 6:  # an npy of another array altogether (metadata lies)
        data = _npy(np.zeros(like.shape, OTHER_DTYPES[rng.integers(len(OTHER_DTYPES) - 1)]))
    elif kind == 7:
        data = _npy(like)
        return Array(dtype=dtype, shape=shape, stype=["torch", "", "numpy"][rng.integers(3)],
                     data=data)  # fmt: skip
    else:
        data = b""
    return Array(dtype=dtype, shape=shape, stype="numpy.ndarray", data=data)


def _array_record(rng: np.random.Generator, payload: Any) -> tuple[Any, bool]:
    """(the reply's record for ``payload``, whether it is a faithful serialisation)."""
    if not isinstance(payload, dict):  # not an ArrayRecord at all
        return ConfigRecord({"payload": type(payload).__name__}), False
    record, faithful = ArrayRecord(), True
    for i, (key, value) in enumerate(payload.items()):
        name = key if isinstance(key, str) else f"key-{i}"  # ArrayRecord keys are str
        faithful &= isinstance(key, str)
        if isinstance(value, np.ndarray) and rng.random() < 0.15:
            record[name], faithful = _forged_array(rng, value), False
            continue
        try:  # what Flower's own serialisation does with it
            record[name] = Array(np.ascontiguousarray(value))
        except Exception:  # object arrays, non-arrays: Flower cannot send them
            record[name], faithful = _forged_array(rng, np.zeros((1, 1), np.float32)), False
    return record, faithful


def _array_record_content(m: int, c: int, seed: int) -> tuple[RecordDict, bool]:
    """(content, whether its soft-labels record is honest)."""
    rng = np.random.default_rng(seed)
    encoding = _pick(rng, list(ENCODINGS))
    payload = encode_knowledge(_simplex(rng, m, c), encoding, topk=int(rng.integers(1, c + 1)))
    content = RecordDict()
    kind = _pick(rng, ["honest", "forged", "forged", "missing", "other-record"])
    if kind == "honest":
        content[SOFT_LABELS] = to_array_record(payload)
    elif kind == "forged":
        content[SOFT_LABELS] = ArrayRecord(
            {key: _forged_array(rng, value) for key, value in payload.items()}
        )
    elif kind == "other-record":
        content[SOFT_LABELS] = _pick(
            rng, [ConfigRecord({"probs": "0.5"}), MetricRecord({"probs": 0.5})]
        )
    return content, kind == "honest"


def _array_record_fuzz(tally: dict[str, int]) -> Callable[[], None]:
    @settings(settings_fuzz, max_examples=ARRAY_RECORD_EXAMPLES)
    @given(case=CASES)
    def check(case: tuple[int, int, int]) -> None:
        content, honest = _array_record_content(*case)
        try:
            arrays = from_array_record(content, SOFT_LABELS)
        except KnowledgeError as exc:
            tally["rejected"] += 1
            assert exc.reason.strip() and not honest, exc.reason
            return
        tally["accepted"] += 1
        assert isinstance(arrays, dict)
        assert all(isinstance(k, str) and type(v) is np.ndarray for k, v in arrays.items())

    return check


def test_fuzz_from_array_record_returns_arrays_or_raises_knowledge_error() -> None:
    tally = {"accepted": 0, "rejected": 0}
    _array_record_fuzz(tally)()
    assert sum(tally.values()) >= ARRAY_RECORD_EXAMPLES
    assert min(tally.values()) >= ARRAY_RECORD_EXAMPLES // 20
    print(f"from_array_record: {tally}")


# ------------------------------------------------------------------- metric records
# Values a MetricRecord accepts but a reply must not carry, and values that only get in
# by writing past the record's type check (a different deserialiser, a future change).
BAD_METRIC_VALUES: list[Any] = [
    math.nan, math.inf, -math.inf, -1, -1e-9, -(2**63), 10**30, 10**400, 10**5000, 1e308,
    [], [1.0], [1, 2],
]  # fmt: skip
UNCHECKED_METRIC_VALUES: list[Any] = [
    "1.5", "", None, True, 1 + 2j, b"\x01", np.float64(math.nan), np.float32(1.0),
    np.int64(3), Decimal("1.5"), Decimal("NaN"), Fraction(1, 2), {"epsilon": 1.0},
    np.array([1.0]),
]  # fmt: skip


def _metrics(rng: np.random.Generator) -> dict[str, int | float]:
    return {
        "epsilon": float(rng.choice([0.0, rng.uniform(0, 10)])),
        "num-examples": int(rng.integers(1, 10_000)),
        "declined": int(rng.integers(0, 2)),
        "dp-steps": int(rng.integers(0, 100)),
        "noise-multiplier": float(rng.uniform(0, 3)),
    }


def _as_text(value: Any) -> str:
    try:
        return str(value)
    except ValueError:  # an int past 4,300 digits
        return "1e5000"


def _metric_record(rng: np.random.Generator, ops: list[str]) -> Any:
    values: dict[str, Any] = _metrics(rng)
    unchecked: dict[str, Any] = {}
    for op in ops:
        key = REPLY_METRICS[rng.integers(len(REPLY_METRICS))]
        if op == "drop":
            values.pop(key, None)
        elif op == "bad-value":
            values[key] = BAD_METRIC_VALUES[rng.integers(len(BAD_METRIC_VALUES))]
        elif op == "zero":
            values[key] = [0, 0.0, 0.5][rng.integers(3)]
        elif op == "extra":
            values[key + "-x"] = 1.0
        elif op == "unchecked":
            unchecked[key] = UNCHECKED_METRIC_VALUES[rng.integers(len(UNCHECKED_METRIC_VALUES))]
        elif op == "strings":  # the same keys, as a ConfigRecord of strings
            return ConfigRecord({k: _as_text(v) for k, v in values.items()})
    record = MetricRecord(values)
    record.__dict__["_data"].update(unchecked)  # past MetricRecord's type check
    return record


METRIC_OPS = ["drop", "bad-value", "bad-value", "zero", "extra", "unchecked", "unchecked",
              "strings"]  # fmt: skip


def _metric_content(seed: int) -> tuple[RecordDict, bool]:
    """(content, whether its metrics are acceptable)."""
    rng = np.random.default_rng(seed)
    ops = _ops(rng, METRIC_OPS, 3)
    content = RecordDict()
    if rng.random() >= 0.05:  # 1 in 20: no metrics record at all
        content[METRICS] = _metric_record(rng, ops)
    honest = METRICS in content and all(op in ("extra", "zero") for op in ops)
    return content, honest


def _metrics_fuzz(tally: dict[str, int]) -> Callable[[], None]:
    @settings(settings_fuzz, max_examples=METRICS_EXAMPLES)
    @given(seed=st.integers(0, 2**32 - 1))
    def check(seed: int) -> None:
        content, honest = _metric_content(seed)
        try:
            metrics = read_metrics(content)
        except KnowledgeError as exc:
            tally["rejected"] += 1
            assert exc.reason.strip() and not honest, exc.reason
            return
        tally["accepted"] += 1
        assert set(metrics) == set(REPLY_METRICS)
        for value in metrics.values():
            assert type(value) is float and math.isfinite(value) and value >= 0

    return check


def test_fuzz_read_metrics_returns_finite_floats_or_raises_knowledge_error() -> None:
    tally = {"accepted": 0, "rejected": 0}
    _metrics_fuzz(tally)()
    assert sum(tally.values()) >= METRICS_EXAMPLES
    assert min(tally.values()) >= METRICS_EXAMPLES // 20
    print(f"read_metrics: {tally}")


@pytest.mark.parametrize(
    "value", [10**30, 10**400, -(2**63), 2**63], ids=["1e30", "1e400", "-2^63", "2^63"]
)
@pytest.mark.parametrize("key", ["epsilon", "num-examples"])
def test_huge_integer_metrics_do_not_raise(key: str, value: int) -> None:
    """Regression (found by this fuzzer): MetricRecord takes Python ints of any size, and
    ``np.isfinite(10**30)`` raised TypeError, which escaped ``validate_content``. Now an
    int that fits a float is read as one; a bigger or negative one is a Rejection."""
    content = RecordDict()
    content[SOFT_LABELS] = to_array_record(encode_knowledge(np.eye(2), "float32"))
    metrics = {"epsilon": 1.0, "num-examples": 10, "declined": 0, "dp-steps": 1,
               "noise-multiplier": 1.0}  # fmt: skip
    metrics[key] = value
    content[METRICS] = MetricRecord(metrics)
    result = validate_content(content, 7, encoding="float32", num_rows=2, num_classes=2,
                              num_test=None)  # fmt: skip
    if value > 0 and key == "num-examples" and value < 2**1024:
        assert isinstance(result, ValidReply)  # large but finite: a count, however odd
    elif value > 0 and key == "epsilon" and value < 2**1024:
        assert isinstance(result, ValidReply) and result.epsilon == float(value)
    else:
        assert isinstance(result, Rejection) and key in result.reason


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({10**5000: np.eye(1, 3, dtype=np.float32)}, id="int-key-without-repr"),
        pytest.param({HostileKey(): np.eye(1, 3, dtype=np.float32)}, id="key-eq-raises"),
        pytest.param(HostileMapping({"probs": np.eye(1, 3, dtype=np.float32)}), id="getitem"),
    ],
)
def test_hostile_payload_keys_are_a_knowledge_error(payload: Any) -> None:
    """Regression (found by this fuzzer; each raised ValueError or RuntimeError before
    the fix): a payload key whose repr fails (an int past 4,300 digits) or whose
    ``__eq__`` raises, and a mapping whose items cannot be read."""
    with pytest.raises(KnowledgeError, match="cannot be read|unexpected.*without a repr"):
        decode_knowledge(payload, "float32", num_rows=1, num_classes=3)


def test_zip_array_is_rejected_by_from_array_record() -> None:
    """Regression (found by this fuzzer): ``Array.numpy`` returns an ``NpzFile`` for zip
    bytes, which ``from_array_record`` passed on as if it were an array."""
    buf = io.BytesIO()
    np.savez(buf, probs=np.eye(2, dtype=np.float32))
    zipped = Array(dtype="float32", shape=(2, 2), stype="numpy.ndarray", data=buf.getvalue())
    content = RecordDict()
    content[SOFT_LABELS] = ArrayRecord({"probs": zipped})
    with pytest.raises(KnowledgeError, match="'probs'.*NpzFile"):
        from_array_record(content, SOFT_LABELS)


# ----------------------------------------------------- SecAgg+'s visible metadata
INFO_KEYS = ("client-id", "student", "reason", "test-accuracy")
BAD_WEIGHTS: list[Any] = [0, -1, 2**63, 10**30, 1.5, math.nan, "7", None, True]


def _secure_meta(seed: int) -> tuple[FitRes, bool]:
    """A SecAgg+ FitRes whose metrics and weight a client chose; (it, whether honest)."""
    rng = np.random.default_rng(seed)
    ops = _ops(rng, METRIC_OPS[:-1], 3)  # a FitRes has no ConfigRecord to swap in
    values = dict(_metric_record(rng, ops).__dict__["_data"])
    values.update({"client-id": "client-1", "student": "cnn", "reason": "",
                   "test-accuracy": float(rng.uniform(0, 1))})
    hostile_info = rng.random() < 0.3
    if hostile_info:  # what SecAgg+ leaves in plain is the client's to forge
        key = INFO_KEYS[rng.integers(len(INFO_KEYS))]
        pool = [*INFO_VALUES, *BAD_METRIC_VALUES, *UNCHECKED_METRIC_VALUES]
        values[key] = pool[rng.integers(len(pool))]
    weight: Any = int(rng.integers(1, 10_000))
    bad_weight = rng.random() < 0.2
    if bad_weight:
        weight = BAD_WEIGHTS[rng.integers(len(BAD_WEIGHTS))]
    fitres = FitRes(Status(Code.OK, ""), Parameters([], ""), weight, values)
    return fitres, not (hostile_info or bad_weight) and all(op in ("extra", "zero")
                                                            for op in ops)


def _secure_meta_fuzz(tally: dict[str, int]) -> Callable[[], None]:
    @settings(settings_fuzz, max_examples=SECURE_META_EXAMPLES)
    @given(seed=st.integers(0, 2**32 - 1))
    def check(seed: int) -> None:
        fitres, honest = _secure_meta(seed)
        meta = client_meta(fitres)  # never raises: a reply or a reason
        if isinstance(meta, str):
            tally["rejected"] += 1
            assert meta.strip() and not honest, meta
            return
        tally["accepted"] += 1
        assert math.isfinite(meta.epsilon) and meta.epsilon >= 0
        assert isinstance(meta.weight, int) and meta.weight >= 0
        assert meta.test_accuracy is None or 0 <= meta.test_accuracy <= 1
        assert all(isinstance(x, str) and len(x) <= 256
                   for x in (meta.client_id, meta.student, meta.reason))

    return check


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_fuzz_secure_metadata_is_a_reply_or_a_reason() -> None:
    tally = {"accepted": 0, "rejected": 0}
    _secure_meta_fuzz(tally)()
    assert min(tally.values()) >= SECURE_META_EXAMPLES // 20
    print(f"client_meta: {tally}")


# --------------------------------------------------------------- whole replies
INFO_VALUES: list[Any] = ["client-3", "", "é\x00", 7, -1.5, True, b"\xff", ["a", "b"], [1, 2]]


def _reply(m: int, c: int, seed: int) -> tuple[RecordDict, str, int | None, bool]:
    """(content, encoding, num_test, whether the whole reply is honest)."""
    rng = np.random.default_rng(seed)
    encoding = _pick(rng, list(ENCODINGS))
    num_test = _pick(rng, [None, None, 1, 3])
    ops = _ops(rng, ATTACKS, 2)
    metric_ops = [] if rng.random() < 0.5 else _ops(rng, METRIC_OPS, 2)
    record_kind = _pick(rng, ["honest"] * 8 + ["missing", "forged"])

    content = RecordDict()
    payload: Any = encode_knowledge(_simplex(rng, m, c), encoding, topk=int(rng.integers(1, c + 1)))
    for op in ops:
        payload = _attack(rng, payload, encoding, c, op)
    faithful = False
    if record_kind == "honest":
        content[SOFT_LABELS], faithful = _array_record(rng, payload)
    elif record_kind == "forged":
        content[SOFT_LABELS] = ArrayRecord({"probs": _forged_array(rng, np.eye(c)[:m])})
    test_ok = num_test is None
    if num_test is not None and rng.random() >= 0.25:  # 1 in 4 misses it
        test_payload: Any = encode_knowledge(_simplex(rng, num_test, c), "float16")
        attacked = rng.random() < 0.25
        if attacked:
            test_payload = _attack(rng, test_payload, "float16", c, _pick(rng, ATTACKS))
        content[TEST_SOFT_LABELS], test_ok = _array_record(rng, test_payload)
        test_ok &= not attacked
    content[METRICS] = _metric_record(rng, metric_ops)
    if rng.random() < 0.5:
        content[INFO] = ConfigRecord(
            {key: INFO_VALUES[rng.integers(len(INFO_VALUES))]
             for key in ("client-id", "student", "reason", "other")[: rng.integers(5)]}
        )  # fmt: skip
    elif rng.random() < 0.5:
        content[INFO] = MetricRecord({"student": 1.0})  # the name, but not a ConfigRecord
    honest = not ops and faithful and test_ok and not metric_ops
    return content, encoding, num_test, honest


def _validate_fuzz(tally: dict[str, int]) -> Callable[[], None]:
    @settings(settings_fuzz, max_examples=VALIDATE_EXAMPLES)
    @given(case=CASES)
    def check(case: tuple[int, int, int]) -> None:
        m, c, seed = case
        content, encoding, num_test, honest = _reply(m, c, seed)
        result = validate_content(content, 11, encoding=encoding, num_rows=m, num_classes=c,
                                  num_test=num_test)  # fmt: skip
        if isinstance(result, Rejection):
            tally["rejected"] += 1
            assert result.node_id == 11
            assert isinstance(result.reason, str) and result.reason.strip()
            assert not honest, f"an honest reply was rejected: {result.reason}"
            return
        tally["accepted"] += 1
        assert isinstance(result, ValidReply) and result.node_id == 11
        _check_knowledge(result.probs, m, c)
        if num_test is None:
            assert result.test_probs is None
        else:
            _check_knowledge(result.test_probs, num_test, c)
        assert math.isfinite(result.epsilon) and result.epsilon >= 0
        assert isinstance(result.num_examples, int) and result.num_examples >= 1
        assert isinstance(result.nbytes, int) and result.nbytes >= 0
        assert all(isinstance(s, str)
                   for s in (result.client_id, result.meta.student, result.meta.reason))

    return check


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_fuzz_validate_content_accepts_valid_or_rejects_with_a_reason() -> None:
    tally = {"accepted": 0, "rejected": 0}
    _validate_fuzz(tally)()
    assert sum(tally.values()) >= VALIDATE_EXAMPLES
    assert min(tally.values()) >= VALIDATE_EXAMPLES // 20
    print(f"validate_content: {tally}")


def test_fuzz_budget_is_at_least_ten_thousand_inputs() -> None:
    assert TOTAL_EXAMPLES == 10_000
