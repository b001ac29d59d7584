"""Secure aggregation: Flower's real SecAgg+ workflow and client mod, in one process.

The coordinator's :func:`run_secure_round` drives the real ``SecAggPlusWorkflow``; an
in-process Grid (simulations/inprocess.py) hands each message to the real ClientApp of
``client/app.py`` (its ``secaggplus_mod`` included) with one Context per node.
A recording mod inside the SecAgg+ mod keeps each client's soft labels before masking,
so the secure aggregate is compared with the plain weighted mean of the same replies.
The whole path through Flower's Simulation Engine, with clients dropping out, is in
tests/test_simulation_images.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

import client.app as client_app
from client.attacks import attack_mod
from common.config import FedConfig
from common.distill.codec import downlink_encoding, encode_knowledge
from common.errors import ConfigError
from common.protocol import RoundPlan
from common.task import prepare_task
from coordinator.secure import MODULUS, run_secure_round, secagg_settings
from simulations.inprocess import InProcessGrid, restore_task_identity, set_task_identity

RUN_ID = 7


def _recording_app(sent: dict[str, Any]) -> ClientApp:
    """client/app.py's ClientApp plus a mod that keeps each reply before it is masked
    (after the attack mod: what a malicious client would send)."""

    def record(msg: Message, context: Context, call_next: Any) -> Message:
        reply = call_next(msg, context)
        fitres = compat.recorddict_to_fitres(reply.content, keep_input=True)
        sent[context.node_config["partition-id"]] = (
            parameters_to_ndarrays(fitres.parameters), fitres.num_examples)
        return reply

    app = ClientApp(mods=[client_app._secaggplus_when_asked, record, attack_mod])
    app.train()(client_app.train)
    return app


@pytest.fixture(autouse=True)
def _task_identity():
    """This process plays the coordinator, node 0, of run RUN_ID."""
    saved = set_task_identity(RUN_ID)
    yield
    restore_task_identity(saved)


def _secure_round(tmp_path: Path, num_nodes: int, **overrides: Any):
    cfg = FedConfig(num_clients=num_nodes, partition="dirichlet", public_batch_size=60, max_len=24,
                    vocab_size=1500, students="cnn", student_distill_epochs=1, dp_epochs=0.25,
                    secure_aggregation=True, out_dir=str(tmp_path), **overrides)
    task = prepare_task(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len)
    rng = np.random.default_rng(0)
    indices = np.sort(rng.choice(len(task.public_x), size=cfg.public_batch_size, replace=False))
    knowledge = encode_knowledge(rng.dirichlet(np.ones(task.num_classes), size=len(indices)),
                                 downlink_encoding(cfg.encoding))
    plan = RoundPlan(1, "run-secure", 1, task.fingerprint, evaluate=True)
    sent: dict[int, Any] = {}
    grid = InProcessGrid(_recording_app(sent), cfg.to_run_config(), num_nodes, RUN_ID)
    server = Context(run_id=RUN_ID, node_id=0, node_config={}, state=RecordDict(),
                     run_config=cfg.to_run_config())
    shapes = [(len(indices), task.num_classes), (len(task.test_x), task.num_classes)]
    outcome = run_secure_round(grid, server, cfg, grid.get_node_ids(), plan, indices,
                               knowledge, shapes)
    return outcome, sent, shapes


def _plain_weighted_mean(sent: dict[int, Any], keep: list[int], which: int,
                         shape: tuple[int, int]) -> np.ndarray:
    total = sum(float(sent[k][1]) for k in keep)
    acc = sum(float(sent[k][1]) * np.asarray(sent[k][0][which], dtype=np.float64) for k in keep)
    return (acc / total).reshape(shape)


@pytest.mark.slow
def test_secure_aggregate_equals_plain_weighted_mean(tmp_path: Path) -> None:
    outcome, sent, shapes = _secure_round(tmp_path, num_nodes=4)
    assert outcome is not None and outcome.dropped == 0
    assert len(outcome.clients) == 4 and len(sent) == 4
    counts = {sent[k][1] for k in sent}
    assert len(counts) > 1, "partitions of different sizes make the weighting matter"
    for which, got in ((0, outcome.aggregate), (1, outcome.test_aggregate)):
        want = _plain_weighted_mean(sent, sorted(sent), which, shapes[which])
        err = float(np.abs(got - want).max())
        assert err <= 1e-5, err
    # The unweighted mean differs by far more: the weights really were applied.
    unweighted = np.mean([np.asarray(sent[k][0][0]) for k in sent], axis=0).reshape(shapes[0])
    assert float(np.abs(outcome.aggregate - unweighted).max()) > 1e-4
    # What the coordinator learns besides the sums: each client's count and metrics.
    assert {meta.weight for _, meta in outcome.clients} == counts
    assert all(0 < meta.epsilon <= 8.0 for _, meta in outcome.clients)
    assert all(meta.ledger is not None and meta.ledger.records == 1
               for _, meta in outcome.clients) and not outcome.invalid


@pytest.mark.slow
def test_secure_votes_are_one_hot_and_sum_to_the_vote_share(tmp_path: Path) -> None:
    outcome, sent, shapes = _secure_round(tmp_path, num_nodes=3, encoding="votes")
    assert outcome is not None and len(outcome.clients) == 3
    for k in sent:  # each client's masked vector holds its votes, not its probabilities
        rows = np.asarray(sent[k][0][0]).reshape(shapes[0])
        assert set(np.unique(rows)) <= {0.0, 1.0} and np.all(rows.sum(axis=1) == 1)
    want = _plain_weighted_mean(sent, sorted(sent), 0, shapes[0])
    assert float(np.abs(outcome.aggregate - want).max()) <= 1e-5


@pytest.mark.slow
def test_dropout_mid_round_is_tolerated(tmp_path: Path) -> None:
    # Client 0 trains, then raises before sending its masked vector: it has shared its
    # keys, so SecAgg+ must rebuild its pairwise masks from the others' shares.
    outcome, sent, shapes = _secure_round(tmp_path, num_nodes=5, attack="raise",
                                          attack_fraction=0.2)
    assert outcome is not None and outcome.dropped == 1
    assert sorted(meta.client_id for _, meta in outcome.clients) == [
        f"client-{k}" for k in (1, 2, 3, 4)]
    assert 0 not in sent  # the recorder sits inside train's caller: client 0 never replied
    want = _plain_weighted_mean(sent, [1, 2, 3, 4], 0, shapes[0])
    assert float(np.abs(outcome.aggregate - want).max()) <= 1e-5


@pytest.mark.slow
def test_malformed_masked_vector_is_refused_as_a_dropout(tmp_path: Path) -> None:
    outcome, sent, shapes = _secure_round(tmp_path, num_nodes=5, attack="shape",
                                          attack_fraction=0.2)
    assert outcome is not None and outcome.dropped == 1
    want = _plain_weighted_mean(sent, [1, 2, 3, 4], 0, shapes[0])
    assert float(np.abs(outcome.aggregate - want).max()) <= 1e-5


def test_quantization_range_is_chosen_below_the_modulus() -> None:
    cfg = FedConfig(secure_aggregation=True)
    for n in (2, 3, 10, 100, 1000, 5000):
        s = secagg_settings(cfg, n)
        assert n * s.quantization_range < MODULUS
        assert 2 * n * s.quantization_range >= MODULUS // 2  # not needlessly coarse


def test_neighbourhood_is_a_count_capped_at_the_clients() -> None:
    cfg = FedConfig(secure_aggregation=True)  # 11 neighbours by default
    assert secagg_settings(cfg, 3).num_shares == 1.0  # fewer clients: all of them
    assert secagg_settings(cfg, 10).num_shares == 1.0
    assert secagg_settings(cfg, 100).num_shares == 11
    assert secagg_settings(cfg.replace(secagg_num_shares=0.5), 100).num_shares == 0.5


def test_overflowing_quantization_range_is_refused_with_the_reason() -> None:
    cfg = FedConfig(secure_aggregation=True, secagg_quantization_range=2**22)
    assert secagg_settings(cfg, 1000).quantization_range == 2**22
    with pytest.raises(ConfigError, match=r"overflow the 2\^32 modulus \(1100 × 4194304 = "):
        secagg_settings(cfg, 1100)


def test_too_many_clients_for_the_precision_is_refused() -> None:
    with pytest.raises(ConfigError, match="too coarse"):
        secagg_settings(FedConfig(secure_aggregation=True), 2**17)


def test_single_client_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least 2 clients"):
        secagg_settings(FedConfig(secure_aggregation=True), 1)


@pytest.mark.parametrize("rule", ["median", "trimmed-mean", "dsfl"])
def test_robust_rules_need_the_replies_secure_aggregation_hides(rule: str) -> None:
    with pytest.raises(ConfigError, match="secure-aggregation=true hides"):
        FedConfig(secure_aggregation=True, aggregation=rule)


@pytest.mark.parametrize("key,value", [("secagg-threshold", 1.5), ("secagg-num-shares", 0),
                                       ("secagg-max-weight", 0)])
def test_bad_secagg_values_are_refused(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=key):
        FedConfig.from_mapping({"secure-aggregation": True, key: value})


def test_overhead_benchmark_measures_both_arms_on_a_tiny_federation() -> None:
    """bench/secagg_overhead.py on 3 clients: both arms run and agree (no timing)."""
    from bench import secagg_overhead as bench
    row = bench.measure(3, rows=20, repeats=1)
    assert row["secure_s"] > 0 and row["plain_s"] > 0
    assert row["max_abs_error_secure"] <= 1e-5
    assert row["uplink_bytes_per_client"]["secure_masked"] == (1 + 40) * 8
    text = "\n".join(bench.section({"command": "c", "wall_seconds": 1.0, "rows": [row],
                                    "settings": {"rows": 20, "repeats": 1},
                                    "environment": {"cpus": 2, "torch": "t", "flwr": "f"}}))
    assert "| 3 |" in text
