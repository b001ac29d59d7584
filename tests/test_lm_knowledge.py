"""Language modelling as a task kind (common/task_kinds.py NEXT_TOKENS, TOKEN_WINDOWS).

The knowledge is each public window's next-token distribution at every position, sent
top-k sparse with the left-out mass: its codec refuses every malformed reply with a reason
(never raises anything else), the mean and weighted mean average over the union of the
clients' supports (against a numpy reference built by hand), the rules and encodings that
do not fit are refused with a config error, the tokenizer never reads a private text, and
the DP step on next tokens adds Gaussian noise of the planned size.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, MetricRecord, RecordDict
from tokenizers import Tokenizer
from torch import nn

from client.private_data import load_private_dir
from common.config import FedConfig
from common.data import Split, encode_stream, load_dataset
from common.distill.next_tokens import (
    MASS_TOLERANCE,
    TokenCrossEntropy,
    decode_next_tokens,
    encode_next_tokens,
    next_token_loss,
    perplexity,
    token_accuracy,
)
from common.errors import ConfigError, DataError, KnowledgeError
from common.privacy.secrets import DpSeeds
from common.protocol import INFO, METRICS, SOFT_LABELS, to_array_record
from common.task import check_fits, prepare_task
from common.task_kinds import TOKEN_WINDOWS
from common.training import dp_train
from coordinator.aggregation import aggregator_from_config
from coordinator.replies import Rejection, ValidReply, validate_content

M, T, V, K = 3, 4, 10, 3
CPU = torch.device("cpu")


def _probs(seed: int = 0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(scale=2.0, size=(M, T, V))
    e = np.exp(logits)
    return (e / e.sum(axis=2, keepdims=True)).astype(np.float32)


def _decode(payload: object, encoding: str = "float32", **kw: object) -> np.ndarray:
    return decode_next_tokens(payload, encoding, num_rows=M, num_classes=T * V,  # type: ignore[arg-type]
                              positions=T, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------- codec and validation
def test_every_token_kept_round_trips_exactly() -> None:
    probs = _probs()
    decoded = _decode(encode_next_tokens(probs, "float32", topk=V))
    assert decoded.dtype == np.float32 and decoded.shape == (M, T * V)
    np.testing.assert_allclose(decoded.reshape(M, T, V), probs, atol=1e-6)


@pytest.mark.parametrize("encoding,atol", [("float32", 1e-6), ("float16", 1e-3)])
def test_top_k_keeps_the_largest_and_spreads_the_rest(encoding: str, atol: float) -> None:
    probs = _probs()
    payload = encode_next_tokens(probs, encoding, topk=K)
    assert payload["indices"].shape == (M, T, K) and payload["rest"].shape == (M, T)
    decoded = _decode(payload, encoding).reshape(M, T, V)
    np.testing.assert_allclose(decoded.sum(axis=2), 1.0, atol=1e-6)
    order = np.argsort(-probs, axis=2)
    top, others = order[..., :K], order[..., K:]
    np.testing.assert_allclose(np.take_along_axis(decoded, top, 2),
                               np.take_along_axis(probs, top, 2), atol=atol)
    rest = 1 - np.take_along_axis(probs, top, 2).sum(axis=2)  # (M, T)
    spread = np.take_along_axis(decoded, others, 2)
    np.testing.assert_allclose(spread, np.repeat(rest[..., None] / (V - K), V - K, 2),
                               atol=atol)


def _payload(**changes: np.ndarray) -> dict[str, np.ndarray]:
    return {**encode_next_tokens(_probs(), "float32", topk=K), **changes}


def _edited(key: str, where: tuple[int, ...], value: float) -> dict[str, np.ndarray]:
    payload = _payload()
    arr = payload[key].copy()
    arr[where] = value
    return {**payload, key: arr}


def _repeated() -> dict[str, np.ndarray]:
    payload = _payload()
    indices = payload["indices"].copy()
    indices[1, 2, 1] = indices[1, 2, 0]
    return {**payload, "indices": indices}


def _inflated() -> dict[str, np.ndarray]:
    payload = _payload()
    return {**payload, "rest": payload["rest"] + np.float32(2 * MASS_TOLERANCE)}


def _drained() -> dict[str, np.ndarray]:
    payload = _payload()
    return {**payload, "probs": payload["probs"] * np.float32(0.5)}


GOOD = _payload()
MALFORMED = [
    ("index = vocabulary", _edited("indices", (0, 1, 2), V), "outside"),
    ("negative index", _edited("indices", (2, 0, 0), -1), "outside"),
    ("repeated index", _repeated(), "repeats a token"),
    ("nan probability", _edited("probs", (1, 1, 1), math.nan), "non-finite"),
    ("inf rest", _edited("rest", (0, 3), math.inf), "non-finite"),
    ("negative probability", _edited("probs", (0, 0, 2), -0.01), "negative"),
    ("negative rest", _edited("rest", (2, 2), -0.05), "negative|mass"),
    ("mass above one", _inflated(), "mass"),
    ("mass below one", _drained(), "mass"),
    ("one row short", _payload(indices=GOOD["indices"][:-1]), "'indices' has shape"),
    ("one position short", _payload(rest=GOOD["rest"][:, :-1]), "'rest' has shape"),
    ("probs not matching indices", _payload(probs=GOOD["probs"][..., :-1]), "'probs' has shape"),
    ("k above the vocabulary", _payload(indices=np.zeros((M, T, V + 1), np.int32),
                                        probs=np.zeros((M, T, V + 1), np.float32)), "1 <= k"),
    ("flat indices", _payload(indices=GOOD["indices"].reshape(-1)), "'indices' has shape"),
    ("int64 indices", _payload(indices=GOOD["indices"].astype(np.int64)), "dtype"),
    ("float indices", _payload(indices=GOOD["indices"].astype(np.float32)), "dtype"),
    ("float64 probs", _payload(probs=GOOD["probs"].astype(np.float64)), "dtype"),
    ("float16 rest", _payload(rest=GOOD["rest"].astype(np.float16)), "dtype"),
    ("a list", _payload(probs=GOOD["probs"].tolist()), "numpy array"),  # type: ignore[arg-type]
    ("a key missing", {k: v for k, v in GOOD.items() if k != "rest"}, "exactly the keys"),
    ("an extra key", {**GOOD, "x": GOOD["rest"]}, "exactly the keys"),
    ("dense probabilities", {"probs": _probs()}, "exactly the keys"),
    ("not a mapping", list(GOOD.values()), "mapping"),
]


@pytest.mark.parametrize("payload,why", [(p, w) for _, p, w in MALFORMED],
                         ids=[label for label, _, _ in MALFORMED])
def test_a_malformed_reply_is_refused_with_a_reason(payload: object, why: str) -> None:
    _decode(GOOD)  # the unedited payload passes
    with pytest.raises(KnowledgeError, match=why):
        _decode(payload)


def test_encodings_without_a_dtype_of_probabilities_are_refused() -> None:
    with pytest.raises(ConfigError, match="does not apply to next tokens"):
        encode_next_tokens(_probs(), "int8")
    with pytest.raises(KnowledgeError, match="unknown next-token encoding"):
        _decode(GOOD, "topk")


def _reply(payload: dict[str, np.ndarray]) -> RecordDict:
    content = RecordDict()
    content[SOFT_LABELS] = to_array_record(payload)
    content[METRICS] = MetricRecord({"epsilon": 1.5, "num-examples": 1, "declined": 0,
                                     "dp-steps": 3, "noise-multiplier": 1.1})
    content[INFO] = ConfigRecord({"student": "gpt", "reason": "", "client-id": "client-1"})
    return content


def test_the_coordinator_rejects_a_bad_reply_and_keeps_a_good_one() -> None:
    def check(payload: dict[str, np.ndarray]) -> ValidReply | Rejection:
        def decode(arrays: object, encoding: str, *, num_rows: int,
                   num_classes: int) -> np.ndarray:
            return decode_next_tokens(arrays, encoding, num_rows=num_rows,  # type: ignore[arg-type]
                                      num_classes=num_classes, positions=T)
        return validate_content(_reply(payload), 7, encoding="float16", num_rows=M,
                                num_classes=T * V, num_test=None, decode=decode)

    good = check(encode_next_tokens(_probs(), "float16", topk=K))
    assert isinstance(good, ValidReply) and good.probs.shape == (M, T * V)
    payload = encode_next_tokens(_probs(), "float16", topk=K)
    payload["indices"][0, 0, 0] = 10_000
    bad = check(payload)
    assert isinstance(bad, Rejection) and bad.node_id == 7 and "outside" in bad.reason


# ---------------------------------------------------------------- aggregation
def _sparse(support: list[int], values: list[float]) -> dict[str, np.ndarray]:
    """One window of one position whose top-k is ``support`` with ``values``."""
    rest = np.float32(1 - sum(values))
    return {"indices": np.asarray(support, np.int32).reshape(1, 1, -1),
            "probs": np.asarray(values, np.float32).reshape(1, 1, -1),
            "rest": np.full((1, 1), rest, np.float32)}


def _by_hand(support: list[int], values: list[float]) -> np.ndarray:
    """The same distribution written out: the rest on each token outside the support."""
    row = np.full(V, (1 - sum(values)) / (V - len(support)))
    row[support] = values
    return row


CLIENTS = [([0, 1], [0.6, 0.3]), ([5, 6], [0.5, 0.4]), ([1, 5], [0.7, 0.2])]  # 3 supports
COUNTS = [1, 3, 6]


@pytest.mark.parametrize("rule,weights", [("mean", [1 / 3] * 3),
                                          ("weighted-mean", [0.1, 0.3, 0.6])])
def test_the_mean_runs_over_the_union_of_supports(rule: str, weights: list[float]) -> None:
    replies = [decode_next_tokens(_sparse(*c), "float32", num_rows=1, num_classes=V,
                                  positions=1) for c in CLIENTS]
    aggregate = aggregator_from_config(FedConfig(aggregation=rule), simplex=False)(
        replies, COUNTS)
    expected = sum(w * _by_hand(*c) for w, c in zip(weights, CLIENTS, strict=True))
    np.testing.assert_allclose(aggregate[0], expected, atol=1e-6)
    union = {0, 1, 5, 6}
    outside = [v for v in range(V) if v not in union]
    assert aggregate[0, sorted(union)].min() > aggregate[0, outside].max()
    assert aggregate[0].sum() == pytest.approx(1.0, abs=1e-6)


def _lm_cfg(**changes: object) -> FedConfig:
    base = dict(dataset="python-docs", partition="iid", teacher_family="gpt",
                students="gpt", aggregation="mean", vocab_size=128, max_len=32)
    return FedConfig(**{**base, **changes})  # type: ignore[arg-type]


REFUSED = [
    ({"aggregation": "median"}, "aggregation='median' does not apply to next-tokens"),
    ({"aggregation": "trimmed-mean"}, "aggregation='trimmed-mean' does not apply"),
    ({"aggregation": "dsfl"}, "aggregation='dsfl' does not apply"),
    ({"aggregation": "norm-filter"}, "aggregation='norm-filter' does not apply"),
    ({"encoding": "int8"}, "encoding='int8' does not apply to next-tokens"),
    ({"encoding": "topk"}, "encoding='topk' does not apply to next-tokens"),
    ({"partition": "natural"}, "partition='natural' does not fit token-windows.*iid"),
    ({"attack": "flip"}, "attack='flip' poisons class probabilities"),
    ({"secure_aggregation": True}, "secure-aggregation=true sums dense vectors"),
]


@pytest.mark.parametrize("changes,message", REFUSED, ids=[m.split(" ")[0] for _, m in REFUSED])
def test_choices_that_do_not_fit_next_tokens_are_refused_naming_the_fix(
        changes: dict, message: str) -> None:
    cfg = _lm_cfg(**changes)
    task = prepare_task(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len)
    with pytest.raises(ConfigError, match=message):
        check_fits(cfg, task, "gpt")


def test_a_classifier_family_cannot_read_token_windows() -> None:
    cfg = _lm_cfg()
    task = prepare_task(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len)
    with pytest.raises(ConfigError, match="'transformer' does not read token-windows"):
        check_fits(cfg, task, "transformer")
    check_fits(cfg, task, "lstm-lm")


# ---------------------------------------------------------------- loss and metrics
def test_the_loss_is_the_mean_kl_per_position_times_t_squared() -> None:
    torch.manual_seed(0)
    student, temperature = torch.randn(M, T, V), 2.0
    target = torch.as_tensor(_probs(1))
    q = torch.log_softmax(student / temperature, dim=-1).numpy().astype(np.float64)
    p = target.numpy().astype(np.float64)
    expected = (p * (np.log(p) - q)).sum(axis=2).mean() * temperature**2
    got = next_token_loss(student, target.reshape(M, T * V), temperature)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_perplexity_and_token_accuracy_against_known_values() -> None:
    y = np.random.default_rng(0).integers(0, V, size=(M, T))
    uniform = np.full((M, T * V), 1 / V)
    assert perplexity(y, uniform) == pytest.approx(V)  # a uniform guess: V choices
    sure = np.eye(V)[y]  # (M, T, V), certain of the truth
    assert perplexity(y, sure) == pytest.approx(1.0)
    assert token_accuracy(y, sure) == 1.0 and token_accuracy(y, 1 - sure) < 1.0


# ---------------------------------------------------------------- inputs
def test_the_tokenizer_never_reads_a_private_text() -> None:
    roles = load_dataset("python-docs", seed=0)
    garbage = Split(tuple("§¤ unseen ☃ " * 20 for _ in roles.private.texts), None)
    other = dataclasses.replace(roles, private=garbage)
    assert (TOKEN_WINDOWS.prepare(roles, 128, 32).fingerprint
            == TOKEN_WINDOWS.prepare(other, 128, 32).fingerprint)


def test_windows_share_no_token_and_targets_are_the_next_tokens() -> None:
    task = prepare_task("python-docs", 0, 128, 32)
    assert torch.equal(task.private_x[:, 1:], task.private_y[:, :-1])
    assert task.private_y.shape == (len(task.private_x), 32)
    # stride T + 1: the private windows laid end to end are the private stream's prefix
    tok = Tokenizer.from_str(task.tokenizer_json)
    stream = encode_stream(tok, list(load_dataset("python-docs", seed=0).private.texts or ()))
    n = len(task.private_x)
    assert len(stream) // 33 == n
    windows = stream[: n * 33].reshape(n, 33)
    assert torch.equal(windows[:, :-1], task.private_x)
    assert torch.equal(windows[:, 1:], task.private_y)


# ---------------------------------------------------------------- the DP step
class _ZeroLM(nn.Module):
    """Next-token logits from an all-zero input: its gradient is 0, so an update is noise."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.lm_head = nn.Linear(width, V, bias=False)
        nn.init.zeros_(self.lm_head.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(x)  # (B, T, V)


def test_dp_sgd_on_next_tokens_adds_noise_of_sigma_clip_over_batch() -> None:
    d, n, batch, sigma, clip = 300, 64, 16, 1.3, 0.05
    x, y = torch.zeros(n, T, d), torch.randint(0, V, (n, T))

    def run(noise_seed: int) -> torch.Tensor:
        model = _ZeroLM(d)
        dp_train(model, x, y, noise_multiplier=sigma, max_grad_norm=clip,
                 expected_batch_size=batch, steps=1, lr=1.0, trainable="all", device=CPU,
                 seeds=DpSeeds(1, noise_seed), criterion=TokenCrossEntropy())
        return model.lm_head.weight.detach().clone()

    first, again, other = run(2), run(2), run(3)
    assert float(first.std()) == pytest.approx(sigma * clip / batch, rel=0.05)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_a_deployed_node_reads_its_own_text_files_as_windows(tmp_path: Path) -> None:
    task = prepare_task("python-docs", 0, 128, 32)
    with pytest.raises(DataError, match="no .txt file"):
        load_private_dir(tmp_path, task, dataset="python-docs", seed=0, max_len=32)
    (tmp_path / "a.txt").write_text("Return the number of items in a container.\n" * 3)
    (tmp_path / "b.txt").write_text("Open file and return a stream.\n" * 4)
    x, y = load_private_dir(tmp_path, task, dataset="python-docs", seed=0, max_len=32)
    assert x.shape == y.shape == (len(x), 32) and len(x) >= 7
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert int(x.max()) < task.vocab_size
