"""Knowledge codec: round trips within each encoding's documented error, and a decoder
that rejects every bad payload with KnowledgeError (fuzzed with 12,500 inputs)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.distill.codec import (
    ENCODINGS,
    decode_knowledge,
    downlink_encoding,
    encode_knowledge,
    payload_nbytes,
    sent_rows,
)
from common.errors import ConfigError, KnowledgeError

# Documented round-trip error per entry (see the table in common/distill/codec.py).
TOLERANCE = {"float32": 1e-6, "float16": 1e-3, "int8": 1 / 255 + 1e-6, "topk": 1e-3}


def _probs(m: int, c: int, seed: int = 0, alpha: float = 0.5) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.full(c, alpha), size=m)


def _decode(arrays: Mapping[str, Any], encoding: str, m: int, c: int) -> np.ndarray:
    return decode_knowledge(arrays, encoding, num_rows=m, num_classes=c)


def _check_topk(probs: np.ndarray, decoded: np.ndarray, k: int) -> None:
    """Top-k entries survive (to float16); the rest share the remaining mass equally."""
    m, c = probs.shape
    for row in range(m):
        top = np.argsort(-probs[row], kind="stable")[:k]
        assert np.abs(decoded[row, top] - probs[row, top]).max() <= TOLERANCE["topk"]
        rest = np.setdiff1d(np.arange(c), top)
        if rest.size:
            expected = (1.0 - decoded[row, top].sum()) / rest.size
            np.testing.assert_allclose(decoded[row, rest], expected, atol=1e-6)


# ------------------------------------------------------------------ round trips
ROUND_TRIPS = [
    pytest.param(enc, m, c, alpha, id=f"{enc}-{m}x{c}-alpha{alpha}")
    for enc in ENCODINGS
    for (m, c, alpha) in [(1, 2, 1.0), (16, 10, 0.3), (7, 100, 0.05), (5, 1000, 1.0)]
]


@pytest.mark.parametrize(("encoding", "m", "c", "alpha"), ROUND_TRIPS)
def test_round_trip_within_documented_error(encoding: str, m: int, c: int, alpha: float) -> None:
    probs = _probs(m, c, alpha=alpha)
    decoded = _decode(encode_knowledge(probs, encoding, topk=3), encoding, m, c)
    assert decoded.dtype == np.float32 and decoded.shape == (m, c)
    np.testing.assert_allclose(decoded.sum(axis=1), 1.0, atol=1e-5)
    assert decoded.min() >= 0
    _check_decoded(encoding, probs, decoded, min(3, c))


def _check_decoded(encoding: str, probs: np.ndarray, decoded: np.ndarray, k: int) -> None:
    if encoding == "topk":
        _check_topk(probs, decoded, k)
    elif encoding == "votes":  # the most likely class, one-hot
        np.testing.assert_array_equal(decoded, np.eye(probs.shape[1])[probs.argmax(axis=1)])
    else:
        assert np.abs(decoded - probs).max() <= TOLERANCE[encoding]


def test_int8_rows_sum_to_one_exactly_and_error_below_one_code() -> None:
    probs = _probs(200, 1000, alpha=0.01)  # very peaked rows: the hard case for 8 bits
    arrays = encode_knowledge(probs, "int8")
    codes, scale = arrays["codes"].astype(np.float64), arrays["scale"].astype(np.float64)
    np.testing.assert_allclose((codes * scale[:, None]).sum(axis=1), 1.0, atol=1e-6)
    assert np.all(codes.max(axis=1) >= 254)  # the byte's range is used
    decoded = _decode(arrays, "int8", 200, 1000)
    assert np.abs(decoded - probs).max() < 1 / 255


def test_one_hot_rows_are_exact() -> None:
    probs = np.eye(4)[[0, 3, 1]]
    for encoding in ENCODINGS:
        decoded = _decode(encode_knowledge(probs, encoding, topk=1), encoding, 3, 4)
        np.testing.assert_array_equal(decoded, probs)


@pytest.mark.parametrize(
    ("encoding", "expected"),
    [
        pytest.param("float32", {"probs": ("float32", (8, 10))}, id="float32"),
        pytest.param("float16", {"probs": ("float16", (8, 10))}, id="float16"),
        pytest.param("int8", {"codes": ("uint8", (8, 10)), "scale": ("float32", (8,))}, id="int8"),
        pytest.param(
            "topk", {"indices": ("int16", (8, 2)), "values": ("float16", (8, 2))}, id="topk"
        ),
        pytest.param("votes", {"votes": ("uint8", (4,))}, id="votes"),  # 8 rows x 4 bits
    ],
)
def test_layout_and_size(encoding: str, expected: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    arrays = encode_knowledge(_probs(8, 10), encoding)
    assert {k: (str(v.dtype), v.shape) for k, v in arrays.items()} == expected
    size = {"float32": 8 * 10 * 4, "float16": 8 * 10 * 2, "int8": 80 + 32, "topk": 8 * 2 * 4,
            "votes": 4}
    assert payload_nbytes(arrays) == size[encoding]


def test_votes_cost_one_bit_per_row_for_two_classes() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]] * 1350)[:4049]
    arrays = encode_knowledge(probs, "votes")
    assert payload_nbytes(arrays) == 507  # ceil(4049 / 8)
    assert payload_nbytes(encode_knowledge(probs, "float16")) == 4049 * 2 * 2
    np.testing.assert_array_equal(_decode(arrays, "votes", 4049, 2).argmax(1), probs.argmax(1))


def test_votes_go_up_only_and_the_secure_sum_takes_them_one_hot() -> None:
    assert downlink_encoding("votes") == "float16"
    assert [downlink_encoding(e) for e in ENCODINGS if e != "votes"] == [
        e for e in ENCODINGS if e != "votes"]
    probs = np.array([[0.3, 0.7, 0.0], [0.5, 0.2, 0.3]])
    np.testing.assert_array_equal(sent_rows(probs, "votes"), [[0, 1, 0], [1, 0, 0]])
    assert sent_rows(probs, "float16") is probs


def test_votes_with_padding_bits_set_are_rejected() -> None:
    # 3 rows of 1 bit: the byte's 5 high bits are padding and an honest encoder zeroes them
    with pytest.raises(KnowledgeError, match="non-zero padding bits"):
        decode_knowledge({"votes": np.array([0b00001010], np.uint8)}, "votes", num_rows=3,
                         num_classes=2)
    decoded = decode_knowledge({"votes": np.array([0b00000010], np.uint8)}, "votes",
                               num_rows=3, num_classes=2)
    np.testing.assert_array_equal(decoded.argmax(1), [0, 1, 0])


def test_topk_uses_int32_indices_beyond_int16() -> None:
    probs = _probs(2, 40_000, alpha=1.0)
    arrays = encode_knowledge(probs, "topk", topk=4)
    assert arrays["indices"].dtype == np.int32
    _check_topk(probs, _decode(arrays, "topk", 2, 40_000), 4)


def test_encoder_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="Unknown encoding 'bf16'"):
        encode_knowledge(_probs(2, 3), "bf16")
    with pytest.raises(ConfigError, match="topk must be an integer >= 1, found 0"):
        encode_knowledge(_probs(2, 3), "topk", topk=0)
    assert encode_knowledge(_probs(2, 3), "topk", topk=4)["indices"].shape == (2, 3)
    with pytest.raises(ValueError, match="row 1 of probs sums to 2"):
        encode_knowledge(np.array([[0.5, 0.5], [1.0, 1.0]]), "float32")


def test_decoder_rejects_bad_caller_arguments() -> None:
    arrays = encode_knowledge(_probs(2, 3), "float32")
    with pytest.raises(ConfigError, match="num_rows.*0"):
        decode_knowledge(arrays, "float32", num_rows=0, num_classes=3)


# ------------------------------------------------------------- invalid payloads
def _f32(rows: list[list[float]]) -> dict[str, Any]:
    return {"probs": np.array(rows, dtype=np.float32)}


GOOD = [[0.2, 0.3, 0.5]] * 4

INVALID = [
    pytest.param("float32", [1, 2], "payload must be a mapping", id="not-a-mapping"),
    pytest.param("float32", {}, r"missing \['probs'\]", id="missing-key"),
    pytest.param("float32", {**_f32(GOOD), "x": np.zeros(1)}, r"unexpected \['x'\]", id="extra"),
    pytest.param(
        "float32", {"probs": GOOD}, "'probs' must be a numpy array, found list", id="list"
    ),
    pytest.param(
        "float32", {"probs": np.array(GOOD)}, "dtype float64, expected float32", id="float64"
    ),
    pytest.param(
        "float32", {"probs": np.array(GOOD, dtype=object)}, "dtype object", id="object-dtype"
    ),
    pytest.param(
        "float32", {"probs": np.array(1.0, np.float32)}, r"shape \(\), expected", id="0-d"
    ),
    pytest.param("float32", _f32(GOOD[:3]), r"shape \(3, 3\), expected \(4, 3\)", id="rows"),
    pytest.param("float32", _f32([[0.2, 0.3, 0.5, 0.0]] * 4), r"shape \(4, 4\)", id="columns"),
    pytest.param("float32", _f32([*GOOD[:2], [np.nan, 0.5, 0.5], GOOD[3]]), "non-finite", id="nan"),
    pytest.param("float32", _f32([*GOOD[:3], [np.inf, 0, 0]]), "non-finite", id="inf"),
    pytest.param(
        "float32", _f32([*GOOD[:3], [0.6, 0.5, -0.1]]), r"-0.1 at column 2", id="negative"
    ),
    pytest.param("float32", _f32([*GOOD[:3], [3e38, 0, 0]]), "outside", id="huge"),
    pytest.param(
        "float32",
        _f32([*GOOD[:3], [0.42, 0.5, 0.5]]),
        r"row 3 sums to 1.42, expected 1 ± 0.01",
        id="row-sum",
    ),
    pytest.param("bf16", _f32(GOOD), "unknown encoding 'bf16'", id="unknown-encoding"),
    pytest.param(
        "int8",
        {"codes": np.full((4, 3), 100, np.uint8), "scale": np.full(4, 0.01, np.float32)},
        r"row 0 sums to 3, expected 1",
        id="int8-forged-scale",
    ),
    pytest.param(
        "int8",
        {"codes": np.full((4, 3), 1, np.uint8), "scale": np.array([1, 1, 1, 0], np.float32)},
        r"'scale' of row 3 is 0.0, expected > 0",
        id="int8-zero-scale",
    ),
    pytest.param(
        "int8",
        {"codes": np.full((4, 3), 1, np.int8), "scale": np.ones(4, np.float32)},
        "'codes' has dtype int8, expected uint8",
        id="int8-signed-codes",
    ),
    pytest.param(
        "topk",
        {"indices": np.array([[0, 0]] * 4, np.int16), "values": np.full((4, 2), 0.4, np.float16)},
        r"row 0 repeats a class index: \[0, 0\]",
        id="topk-duplicate",
    ),
    pytest.param(
        "topk",
        {"indices": np.array([[0, 3]] * 4, np.int16), "values": np.full((4, 2), 0.4, np.float16)},
        "row 0 has class index 3, expected 0..2",
        id="topk-out-of-range",
    ),
    pytest.param(
        "topk",
        {"indices": np.array([[-1, 0]] * 4, np.int32), "values": np.full((4, 2), 0.4, np.float16)},
        "class index -1",
        id="topk-negative-index",
    ),
    pytest.param(
        "topk",
        {"indices": np.array([[0, 1]] * 4, np.int16), "values": np.full((4, 2), 0.9, np.float16)},
        r"top-2 values sum to 1.8",
        id="topk-mass-above-one",
    ),
    pytest.param(
        "topk",
        {"indices": np.zeros((4, 0), np.int16), "values": np.zeros((4, 0), np.float16)},
        "top-k width is 0",
        id="topk-empty",
    ),
    pytest.param(
        "topk",
        {"indices": np.array([[0, 1]] * 4, np.int64), "values": np.full((4, 2), 0.4, np.float16)},
        "dtype int64, expected int16 or int32",
        id="topk-int64",
    ),
    # 4 rows of 2 bits (3 classes) fill one byte; the first row votes 0b11 = class 3
    pytest.param("votes", {"votes": np.array([0b11], np.uint8)}, "votes for class 3",
                 id="votes-class-out-of-range"),
    pytest.param("votes", {"votes": np.zeros(2, np.uint8)}, r"shape \(2,\), expected \(1,\)",
                 id="votes-too-long"),
    pytest.param("votes", {"votes": np.zeros(1, np.int8)}, "dtype int8, expected uint8",
                 id="votes-int8"),
    pytest.param("votes", {"probs": np.full((4, 3), 1 / 3, np.float32)}, "missing",
                 id="votes-as-probs"),
]


@pytest.mark.parametrize(("encoding", "payload", "reason"), INVALID)
def test_invalid_payload_is_rejected_with_a_reason(
    encoding: str, payload: Any, reason: str
) -> None:
    with pytest.raises(KnowledgeError, match=reason) as info:
        decode_knowledge(payload, encoding, num_rows=4, num_classes=3)
    assert info.value.reason == str(info.value)


def test_payload_nbytes_rejects_non_arrays() -> None:
    with pytest.raises(KnowledgeError, match="'probs' must be a numpy array"):
        payload_nbytes({"probs": [1.0]})


# ---------------------------------------------------------------------- fuzzing
# Hypothesis chooses the structure of each case (which kind, which mutation, dtype,
# shape, keys) and a seed; numpy fills the arrays from the seed with a mix of ordinary
# and hostile values. Drawing elements one by one through hypothesis was 4x slower.
FUZZ_EXAMPLES_PER_ENCODING = 2500  # x 5 encodings = 12,500 decoder inputs
KEYS = ["probs", "codes", "scale", "indices", "values", "votes", "x"]
DTYPES = [
    np.float16,
    np.float32,
    np.float64,
    np.uint8,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.bool_,
    np.complex64,
    np.object_,
]
SPECIALS = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, 1.5, -1e-3, 1e-45, 7e4, 3e38, -3e38, 1e300]


def _hostile_array(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """An array of ``dtype``: uniform [0, 1) values, some special, some huge."""
    if dtype is np.object_:
        return np.full(shape, rng.choice([None, "0.5", 0.5]), dtype=object)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        low, high = (0, 3) if rng.random() < 0.5 else (int(info.min), int(info.max))
        return rng.integers(low, high, size=shape, endpoint=True).astype(dtype)
    values = rng.random(shape)
    mask = rng.random(shape) < rng.choice([0.0, 0.05, 0.5])
    values[mask] = rng.choice(SPECIALS, size=int(mask.sum()))
    with np.errstate(all="ignore"):
        return values.astype(dtype)


def _hostile_value(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> Any:
    """Mostly arrays; sometimes not an array at all."""
    choice = rng.integers(10)
    if choice == 0:
        return rng.random(shape).tolist()
    if choice == 1:
        return rng.choice([None, "probs", 3.0, b"\x00"])
    return _hostile_array(rng, shape, dtype)


def _mutate(
    rng: np.random.Generator, arrays: dict[str, np.ndarray], op: str, dtype: type, new_key: str
) -> Any:
    """A valid payload with one thing broken: a value, a dtype, a shape or a key."""
    out: dict[str, Any] = dict(arrays)
    key = str(rng.choice(sorted(out)))
    value = out[key].copy()
    if op == "poke":
        flat = value.reshape(-1)
        pos = rng.integers(flat.size, size=rng.integers(1, 3))
        if np.issubdtype(value.dtype, np.integer):
            info = np.iinfo(value.dtype)
            flat[pos] = rng.integers(int(info.min), int(info.max), endpoint=True)
        else:
            with np.errstate(all="ignore"):
                flat[pos] = rng.choice(SPECIALS)
        out[key] = value
    elif op == "cast":
        with np.errstate(all="ignore"):  # float -> int casts of NaN are part of the point
            out[key] = value.astype(dtype)
    elif op == "reshape":
        out[key] = [value.T, value[:-1], value[None], value.reshape(-1), value[..., :0]][
            rng.integers(5)
        ]
    elif op == "drop":
        del out[key]
    elif op == "rename":
        out[new_key] = out.pop(key)
    elif op == "replace":
        out[key] = _hostile_value(rng, value.shape, dtype)
    elif op == "add":
        out[new_key] = _hostile_value(rng, value.shape, dtype)
    else:  # "scale": a plausible-looking but wrong magnitude
        with np.errstate(all="ignore"):
            out[key] = (value * rng.choice([0, 2, 1e5, -1])).astype(value.dtype)
    return out


def _probs_from(rng: np.random.Generator, m: int, c: int) -> np.ndarray:
    probs = rng.dirichlet(np.full(c, rng.choice([0.01, 0.3, 1.0, 10.0])), size=m)
    if rng.random() < 0.2:  # exact zeros and ones, as a confident teacher sends
        probs = np.eye(c)[rng.integers(c, size=m)]
    return probs


@st.composite
def fuzz_cases(draw: st.DrawFn, encoding: str) -> tuple[Any, int, int, np.ndarray | None, int]:
    """(payload, m, C, probs if the payload is an honest encoding of them, top-k)."""
    m, c = draw(st.integers(1, 6)), draw(st.integers(1, 8))
    k = draw(st.integers(1, c))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["valid", "mutated", "mutated", "random"]))
    dtype = draw(st.sampled_from(DTYPES))
    if kind == "random":
        keys = draw(st.lists(st.sampled_from(KEYS), max_size=3, unique=True))
        shapes = [(m, c), (m,), (m, k), (), (c, m), (m, c, 1), (0, c)]
        payload: Any = {
            key: _hostile_value(rng, shapes[draw(st.integers(0, len(shapes) - 1))], dtype)
            for key in keys
        }
        if draw(st.booleans()) and not keys:
            payload = _hostile_value(rng, (m, c), dtype)  # not even a mapping
        return payload, m, c, None, k
    probs = _probs_from(rng, m, c)
    arrays = encode_knowledge(probs, encoding, topk=k)
    if kind == "valid":
        return arrays, m, c, probs, k
    op = draw(
        st.sampled_from(["poke", "cast", "reshape", "drop", "rename", "replace", "add", "scale"])
    )
    return _mutate(rng, arrays, op, dtype, draw(st.sampled_from(KEYS))), m, c, None, k


def _fuzz(encoding: str, tally: dict[str, int]) -> Callable[..., None]:
    @settings(
        max_examples=FUZZ_EXAMPLES_PER_ENCODING,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )
    @given(case=fuzz_cases(encoding))
    def check(case: tuple[Any, int, int, np.ndarray | None, int]) -> None:
        payload, m, c, probs, k = case
        try:
            decoded = decode_knowledge(payload, encoding, num_rows=m, num_classes=c)
        except KnowledgeError:
            tally["rejected"] += 1
            assert probs is None, "an honest encoding was rejected"
            return
        tally["accepted"] += 1
        # Anything accepted is valid knowledge, whatever came in.
        assert decoded.dtype == np.float32 and decoded.shape == (m, c)
        assert np.all(decoded >= 0) and np.all(decoded <= 1)
        np.testing.assert_allclose(decoded.sum(axis=1), 1.0, atol=1e-5)
        if probs is not None:
            _check_decoded(encoding, probs, decoded, k)

    return check


@pytest.mark.filterwarnings("error::RuntimeWarning")  # e.g. an overflow in the decoder
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_fuzz_decoder_raises_only_knowledge_error(encoding: str) -> None:
    tally = {"accepted": 0, "rejected": 0}
    start = time.perf_counter()
    _fuzz(encoding, tally)()
    seconds = time.perf_counter() - start
    # The fuzzing really ran, and exercised both outcomes.
    assert sum(tally.values()) >= FUZZ_EXAMPLES_PER_ENCODING
    assert min(tally.values()) >= FUZZ_EXAMPLES_PER_ENCODING // 10
    print(f"fuzz {encoding}: {tally} in {seconds:.1f} s")  # shown with -s
