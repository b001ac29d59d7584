"""Forecasting as a task kind (common/task_kinds.py FORECASTS, WINDOWS).

The knowledge is each public window's forecast, a float vector: its codec refuses every
malformed reply with a reason (never raises anything else), the coordinate-wise rules
aggregate it without the simplex's renormalisation (against numpy references), the
simplex-only rules and encodings are refused with a config error, clients hold time
blocks that share no row, the scaling never reads the private segment, and the DP step
on forecasts adds Gaussian noise of the planned size.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, MetricRecord, RecordDict
from torch import nn

from common.config import FedConfig
from common.data.partition import time_blocks
from common.data.roles import forecast_roles
from common.distill.forecasts import FORECAST_BOUND, decode_forecasts, encode_forecasts
from common.errors import ConfigError, KnowledgeError
from common.models import ForecastMSELoss, build_model
from common.privacy.secrets import DpSeeds
from common.protocol import INFO, METRICS, SOFT_LABELS, to_array_record
from common.task import check_fits, client_partitions, model_config, prepare_task, task_for
from common.task_kinds import FORECASTS
from common.training import dp_train
from coordinator.aggregation import aggregator_from_config
from coordinator.replies import Rejection, ValidReply, validate_content
from simulations.reference import seasonal_naive_reference

M, H = 5, 4
CPU = torch.device("cpu")


def _forecasts(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(M, H)).astype(np.float32)


# ---------------------------------------------------------------- codec and validation
@pytest.mark.parametrize("encoding,atol", [("float32", 0.0), ("float16", 2e-3)])
def test_forecasts_round_trip(encoding: str, atol: float) -> None:
    rows = _forecasts()
    decoded = decode_forecasts(encode_forecasts(rows, encoding), encoding, num_rows=M,
                               num_classes=H)
    assert decoded.dtype == np.float32 and decoded.shape == (M, H)
    np.testing.assert_allclose(decoded, rows, atol=atol)


def _with(value: float) -> dict[str, np.ndarray]:
    rows = _forecasts()
    rows[2, 1] = value
    return {"forecasts": rows}


MALFORMED = [
    ("nan", _with(math.nan), "non-finite"),
    ("inf", _with(math.inf), "non-finite"),
    ("beyond the bound", _with(FORECAST_BOUND + 1), "beyond"),
    ("far below the bound", _with(-1e4), "beyond"),
    ("one row short", {"forecasts": _forecasts()[:-1]}, "shape"),
    ("one step short", {"forecasts": _forecasts()[:, :-1]}, "shape"),
    ("a flat vector", {"forecasts": _forecasts().reshape(-1)}, "shape"),
    ("float64", {"forecasts": _forecasts().astype(np.float64)}, "dtype"),
    ("int", {"forecasts": _forecasts().astype(np.int32)}, "dtype"),
    ("probabilities' key", {"probs": _forecasts()}, "exactly the key"),
    ("an extra key", {"forecasts": _forecasts(), "x": _forecasts()}, "exactly the key"),
    ("a list", {"forecasts": _forecasts().tolist()}, "numpy array"),
    ("not a mapping", [_forecasts()], "mapping"),
]


@pytest.mark.parametrize("payload,why", [(p, w) for _, p, w in MALFORMED],
                         ids=[label for label, _, _ in MALFORMED])
def test_a_malformed_forecast_is_refused_with_a_reason(payload: object, why: str) -> None:
    with pytest.raises(KnowledgeError, match=why):
        decode_forecasts(payload, "float32", num_rows=M, num_classes=H)  # type: ignore[arg-type]


def test_simplex_encodings_are_refused_for_forecasts() -> None:
    with pytest.raises(ConfigError, match="does not apply to forecasts"):
        encode_forecasts(_forecasts(), "int8")
    with pytest.raises(KnowledgeError, match="unknown forecast encoding"):
        decode_forecasts({"forecasts": _forecasts()}, "topk", num_rows=M, num_classes=H)


def _reply(payload: dict[str, np.ndarray]) -> RecordDict:
    content = RecordDict()
    content[SOFT_LABELS] = to_array_record(payload)
    content[METRICS] = MetricRecord({"epsilon": 1.5, "num-examples": 1, "declined": 0,
                                     "dp-steps": 3, "noise-multiplier": 1.1})
    content[INFO] = ConfigRecord({"student": "forecast-mlp", "reason": "",
                                  "client-id": "client-1"})
    return content


def test_the_coordinator_rejects_a_bad_forecast_reply_and_keeps_a_good_one() -> None:
    def check(payload: dict[str, np.ndarray]) -> ValidReply | Rejection:
        return validate_content(_reply(payload), 7, encoding="float16", num_rows=M,
                                num_classes=H, num_test=None, decode=FORECASTS.decode)

    good = check(encode_forecasts(_forecasts(), "float16"))
    assert isinstance(good, ValidReply) and good.probs.shape == (M, H)
    bad = check({"forecasts": np.full((M, H), np.nan, dtype=np.float16)})
    assert isinstance(bad, Rejection) and bad.node_id == 7 and "non-finite" in bad.reason


# ---------------------------------------------------------------- aggregation
REPLIES = [_forecasts(k) - 0.5 * k for k in range(5)]  # rows far off the simplex
COUNTS = [10, 20, 30, 40, 1000]


def _sorted_mean(cut: int) -> np.ndarray:
    stacked = np.sort(np.stack(REPLIES).astype(np.float64), axis=0)
    return stacked[cut:len(REPLIES) - cut].mean(axis=0)


RULES = [
    ("mean", {}, np.mean(np.stack(REPLIES).astype(np.float64), axis=0)),
    ("weighted-mean", {},
     np.tensordot(np.asarray(COUNTS) / sum(COUNTS), np.stack(REPLIES).astype(np.float64), 1)),
    ("median", {}, np.median(np.stack(REPLIES).astype(np.float64), axis=0)),
    ("trimmed-mean", {"trim_fraction": 0.2}, _sorted_mean(1)),
]


@pytest.mark.parametrize("rule,params,expected", RULES, ids=[r[0] for r in RULES])
def test_forecast_aggregates_match_numpy_without_renormalising(
        rule: str, params: dict, expected: np.ndarray) -> None:
    cfg = FedConfig(aggregation=rule, **params)
    aggregate = aggregator_from_config(cfg, simplex=False)(REPLIES, COUNTS)
    assert aggregate.dtype == np.float32
    np.testing.assert_allclose(aggregate, expected, rtol=1e-5, atol=1e-6)
    assert (aggregate < 0).any()  # the simplex's clipping would have removed these


def test_the_median_bounds_a_wild_minority_of_forecasts() -> None:
    wild = [*REPLIES[:3], np.full((M, H), 40.0, np.float32), np.full((M, H), -40.0, np.float32)]
    aggregate = aggregator_from_config(FedConfig(aggregation="median"), simplex=False)(
        wild, [1] * 5)
    assert np.abs(aggregate).max() < 5


def _forecast_cfg(**changes: object) -> FedConfig:
    base = dict(dataset="seattle-temps", partition="time-blocks", teacher_family="forecaster",
                students="forecast-mlp", aggregation="mean")
    return FedConfig(**{**base, **changes})  # type: ignore[arg-type]


REFUSED = [
    ({"aggregation": "dsfl"}, "aggregation='dsfl' does not apply to forecasts"),
    ({"aggregation": "norm-filter"}, "aggregation='norm-filter' does not apply to forecasts"),
    ({"encoding": "int8"}, "encoding='int8' does not apply to forecasts"),
    ({"encoding": "topk"}, "encoding='topk' does not apply to forecasts"),
    ({"partition": "iid"}, "partition='iid' does not fit windows.*time-blocks"),
    ({"attack": "flip"}, "attack='flip' poisons class probabilities"),
    ({"secure_aggregation": True}, "secure-aggregation=true quantizes values in"),
]


@pytest.mark.parametrize("changes,message", REFUSED, ids=[m.split(" ")[0] for _, m in REFUSED])
def test_choices_that_assume_probabilities_are_refused_naming_the_fix(
        changes: dict, message: str) -> None:
    cfg = _forecast_cfg(**changes)
    task = prepare_task(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len)
    with pytest.raises(ConfigError, match=message):
        check_fits(cfg, task, "forecast-mlp")


# ---------------------------------------------------------------- inputs and roles
def test_time_blocks_share_no_row_of_the_series() -> None:
    task = prepare_task("seattle-temps", 0, 6000, 40)
    span = task.private_x.shape[1] + task.private_y.shape[1]  # rows a window touches
    parts = client_partitions("seattle-temps", 0, 6000, 40, 3, "time-blocks", 0.5)
    rows = [set(range(int(p.min()), int(p.max()) + span)) for p in parts]  # stride 1
    for a in range(3):
        assert np.array_equal(parts[a], np.arange(parts[a][0], parts[a][-1] + 1))  # contiguous
        for b in range(a + 1, 3):
            assert not rows[a] & rows[b]
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
    # public-seed order: which client holds the oldest stretch depends on the seed only
    orders = {tuple(int(b[0]) for b in time_blocks(100, 3, gap=5, seed=s)) for s in range(6)}
    assert len(orders) > 1


def test_scaling_never_reads_the_private_segment() -> None:
    """Changing every private row changes no public, teacher or test window."""
    t = np.arange(600, dtype=np.float64)
    series = np.sin(2 * np.pi * t / 24)[:, None] + 5.0
    other = series.copy()
    other[:300] = 1e3 * np.random.default_rng(0).normal(size=(300, 1))  # the private rows
    roles = [forecast_roles("s", s, ["v"], input_len=48, horizon=12,
                            fractions=(0.5, 0.2, 0.1, 0.2)) for s in (series, other)]
    for role in ("public", "teacher", "test"):
        np.testing.assert_array_equal(roles[0].role(role).features,
                                      roles[1].role(role).features)
    assert roles[0].info["scaler"] == roles[1].info["scaler"]


@pytest.mark.parametrize("family", ["forecaster", "forecast-mlp"])
def test_an_untrained_forecast_model_forecasts_as_seasonal_naive(family: str) -> None:
    cfg = _forecast_cfg(students=family)
    task = task_for(cfg, prepare_task(cfg.dataset, 0, cfg.vocab_size, cfg.max_len), family)
    mc = model_config(cfg, task, family, "tiny")
    assert (mc.max_len, mc.horizon, mc.n_out, mc.season) == (96, 24, 1, 24)
    assert 0.01 < mc.output_scale < 0.1  # seattle-temps: what seasonal naive misses is small
    model = build_model(mc).eval()
    with torch.no_grad():
        forecasts = FORECASTS.from_outputs(model(task.test_x), 1.0).numpy()
    reference = seasonal_naive_reference(cfg)["seasonal_naive_mse"]
    assert FORECASTS.scores(task.test_y.numpy(), forecasts)["mse"] == pytest.approx(reference)


# ---------------------------------------------------------------- the DP step on forecasts
class _Zero(nn.Module):
    """A linear forecaster of zero windows: its gradient is 0, so an update is noise."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.head = nn.Linear(width, 3, bias=False)
        nn.init.zeros_(self.head.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x).unsqueeze(-1)  # (B, 3 steps, 1 target)


def test_dp_sgd_on_forecasts_adds_noise_of_sigma_clip_over_batch() -> None:
    d, n, batch, sigma, clip = 3000, 64, 16, 1.3, 0.05
    x, y = torch.zeros(n, d), torch.randn(n, 3, 1)

    def run(noise_seed: int) -> torch.Tensor:
        model = _Zero(d)
        dp_train(model, x, y, noise_multiplier=sigma, max_grad_norm=clip,
                 expected_batch_size=batch, steps=1, lr=1.0, trainable="all", device=CPU,
                 seeds=DpSeeds(1, noise_seed), criterion=ForecastMSELoss())
        return model.head.weight.detach().clone()

    first, again, other = run(2), run(2), run(3)
    assert float(first.std()) == pytest.approx(sigma * clip / batch, rel=0.05)
    assert torch.equal(first, again) and not torch.equal(first, other)


@pytest.mark.parametrize("family", ["forecaster", "forecast-mlp"])
def test_centred_windows_make_a_forecast_follow_the_level(family: str) -> None:
    """With center-windows the learned part reads the window's shape only: lifting the
    whole window by c lifts the forecast by c (the seasonal-naive term), nothing else."""
    cfg = _forecast_cfg(students=family, center_windows=True)
    task = task_for(cfg, prepare_task(cfg.dataset, 0, cfg.vocab_size, cfg.max_len), family)
    model = build_model(model_config(cfg, task, family, "tiny")).eval()
    torch.manual_seed(0)
    for p in model.parameters():  # away from the seasonal-naive start
        nn.init.normal_(p, std=0.05)
    x = task.test_x[:8]
    with torch.no_grad():
        lifted, base = model(x + 1.5), model(x)
    torch.testing.assert_close(lifted, base + 1.5, rtol=0, atol=1e-4)
    raw = build_model(model_config(_forecast_cfg(students=family), task, family, "tiny")).eval()
    raw.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert (raw(x + 1.5) - raw(x) - 1.5).abs().max() > 1e-3  # raw levels move it
