"""The robustness harness (simulations/robustness/) without launching Flower."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch

from client.attacks import attack_seed, poison
from common.config import FedConfig
from simulations.robustness.harness import finished_run_seconds, run_robustness
from simulations.robustness.page import (
    FAULTS_BEGIN,
    FAULTS_END,
    _confirm_lines,
    render_markdown,
    seed_headline,
    write_page,
)
from simulations.robustness.replay import (
    NO_ATTACK,
    Cell,
    cell_grid,
    default_rules,
    malicious_mask,
    poison_replies,
    replay,
    teacher_scores,
)
from simulations.robustness.verdict import (
    best_robust_rule,
    replay_verdict,
    strongest_attack,
    target_check,
)

POS = [
    "good fun",
    "great film",
    "lovely",
    "wonderful acting",
    "a joy",
    "brilliant",
    "moving",
    "charming",
    "superb",
    "delightful",
]
NEG = [
    "boring",
    "dull",
    "awful",
    "a mess",
    "tedious",
    "flat and long",
    "weak",
    "clumsy",
    "forgettable",
    "bad",
]


def _probs(k: int, m: int, c: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(c), size=(k, m)).astype(np.float32)


# ---------------------------------------------------------------------------- poisoning
def test_malicious_are_the_first_partition_ids_whatever_the_reply_order() -> None:
    ids = [f"client-{i}" for i in (7, 2, 0, 9, 1, 5, 3, 8, 6, 4)]
    mask = malicious_mask(ids, num_clients=10, fraction=0.3)
    assert sorted(c for c, bad in zip(ids, mask, strict=True) if bad) == [
        "client-0",
        "client-1",
        "client-2",
    ]
    assert malicious_mask(ids, 10, 0.1).sum() == 1


def test_ids_without_a_partition_fall_back_to_the_first_round_f_k_replies() -> None:
    mask = malicious_mask(["a", "b", "c", "d", "e"], num_clients=5, fraction=0.3)
    assert mask.tolist() == [True, True, False, False, False]  # round(1.5) = 2


@pytest.mark.parametrize("attack", ["flip", "noise", "wrong-onehot", "collude"])
def test_poison_replaces_exactly_the_malicious_replies_as_a_client_does(attack: str) -> None:
    probs = _probs(10, 30, c=3)
    ids = [f"client-{i}" for i in range(10)][::-1]
    mask = malicious_mask(ids, 10, 0.3)
    out = poison_replies(probs, mask, attack, rnd=2, seed=5, encoding="float32", topk=2)
    assert np.array_equal(out[~mask], probs[~mask])
    for k in np.flatnonzero(mask):  # the seed of the client's own attack (attack_mod)
        np.testing.assert_allclose(out[k], poison(probs[k], attack, seed=attack_seed(5, 2)),
                                   atol=1e-6)
    assert probs.shape == out.shape and np.allclose(out.sum(axis=2), 1, atol=1e-5)


def test_poison_goes_through_the_wire_encoding() -> None:
    probs = _probs(4, 20)
    mask = np.array([True, False, False, False])
    out = poison_replies(probs, mask, "noise", rnd=1, seed=0, encoding="float16", topk=2)
    exact = poison(probs[0], "noise", seed=attack_seed(0, 1))
    assert not np.array_equal(out[0], exact)  # float16-rounded, as the coordinator decodes it
    np.testing.assert_allclose(out[0], exact, atol=2e-3)


def test_no_attack_leaves_the_replies_alone() -> None:
    probs = _probs(3, 5)
    out = poison_replies(
        probs, np.ones(3, bool), NO_ATTACK, rnd=1, seed=0, encoding="float16", topk=2
    )
    assert np.array_equal(out, probs) and out is not probs


# ---------------------------------------------------------------------------- grid, verdicts
def test_cell_grid_has_one_no_attack_cell_per_rule() -> None:
    cells = cell_grid(["mean", "median"], ["flip", "noise"], [0.1, 0.3])
    assert len(cells) == 2 * (1 + 2 * 2)
    assert cells[0] == Cell("mean", NO_ATTACK, 0.0)
    assert Cell("median", "noise", 0.3) in cells
    assert sum(c.attack == NO_ATTACK for c in cells) == 2


def test_default_rules_are_the_registry_minus_dsfl() -> None:
    from coordinator.aggregation import AGGREGATORS

    assert default_rules() == [r for r in AGGREGATORS if r != "dsfl"]


@pytest.mark.parametrize(
    ("no_attack", "robust", "mean", "met", "robust_within", "mean_outside"),
    [
        (0.63, 0.62, 0.50, True, True, True),
        (0.63, 0.59, 0.50, False, False, True),  # robust 4 points down
        (0.63, 0.62, 0.61, False, True, False),  # the mean is not hurt enough
        (0.63, 0.60, 0.55, True, True, True),  # exactly 3 points is within
        (0.60, 0.65, 0.50, True, True, True),  # robust above the reference
    ],
)
def test_target_check(
    no_attack: float, robust: float, mean: float, met: bool, robust_within: bool, mean_outside: bool
) -> None:
    check = target_check(no_attack, robust, mean)
    assert (check["met"], check["robust_within"], check["mean_outside"]) == (
        met,
        robust_within,
        mean_outside,
    )
    assert check["robust_drop"] == pytest.approx(no_attack - robust)


def _cells_json(acc: dict[tuple[str, str, float], float]) -> list[dict]:
    return [
        {
            "rule": r,
            "attack": a,
            "fraction": f,
            "accuracy": v,
            "accuracy_by_round": [v],
            "changed_labels": [0.0 if a == NO_ATTACK else 0.1],
        }
        for (r, a, f), v in acc.items()
    ]


ACC = {
    ("mean", NO_ATTACK, 0.0): 0.63,
    ("median", NO_ATTACK, 0.0): 0.62,
    ("weighted-mean", NO_ATTACK, 0.0): 0.64,
    ("mean", "flip", 0.3): 0.55,
    ("mean", "collude", 0.3): 0.45,
    ("median", "flip", 0.3): 0.60,
    ("median", "collude", 0.3): 0.61,
    ("weighted-mean", "flip", 0.3): 0.50,
    ("weighted-mean", "collude", 0.3): 0.40,
    ("norm-filter", NO_ATTACK, 0.0): 0.63,
    ("norm-filter", "flip", 0.3): 0.62,
    ("norm-filter", "collude", 0.3): 0.63,
}


def test_strongest_attack_and_best_robust_rule() -> None:
    assert strongest_attack(ACC, ["flip", "collude"], 0.3) == "collude"
    # collude only moves the majority class's share: balanced accuracy barely drops, and
    # flip, worse on the two metrics together, is the strongest then
    balanced = {("mean", "flip", 0.3): 0.50, ("mean", "collude", 0.3): 0.62}
    assert strongest_attack(ACC, ["flip", "collude"], 0.3, balanced=balanced) == "flip"
    rules = ["mean", "weighted-mean", "median", "norm-filter"]
    assert best_robust_rule(ACC, rules, "collude", 0.3) == "norm-filter"  # not weighted-mean
    assert best_robust_rule(ACC, ["mean", "median"], "collude", 0.3) == "median"


def test_replay_verdict_uses_the_configured_rule_without_attack_as_reference() -> None:
    rules = ["mean", "weighted-mean", "median", "norm-filter"]
    verdict = replay_verdict(_cells_json(ACC), rules, ["flip", "collude"], [0.3], "weighted-mean")
    assert verdict is not None
    assert (verdict["attack"], verdict["best_rule"], verdict["reference_rule"]) == (
        "collude",
        "norm-filter",
        "weighted-mean",
    )
    assert verdict["no_attack"] == 0.64 and verdict["met"]
    assert replay_verdict(_cells_json(ACC), ["median"], ["flip"], [0.3], "mean") is None


def _result(verdict: dict | None, confirm: dict | None = None) -> dict:
    rules, attacks = ["mean", "weighted-mean", "median", "norm-filter"], ["flip", "collude"]
    return {
        "benchmark": "robustness",
        "command": "fedistill robustness --preset default",
        "environment": {
            "torch": "2.x",
            "flwr": "1.42.0",
            "opacus": "1.6.0",
            "python": "3.11",
            "cpus": 2,
            "device": "cpu",
            "load_average": 1.0,
        },
        "setup": {
            "preset": "default",
            "dataset": "rotten-tomatoes",
            "seed": 0,
            "num_clients": 10,
            "recorded_rounds": 5,
            "public_batch_size": 2000,
            "encoding": "float16",
            "aggregation": "weighted-mean",
            "teacher_targets": "hard",
            "rules": rules,
            "attacks": attacks,
            "fractions": [0.3],
            "clean_run": "runs/robustness/default-clean",
            "test_examples": 2616,
        },
        "replay": {
            "rounds": [1],
            "round0_accuracy": 0.586,
            "cells": _cells_json(ACC),
            "updates": 10,
            "cell_rounds": 12,
            "seconds": 120.0,
            "cpu_seconds": 200.0,
            "pretraining_reproduced": True,
        },
        "verdict": verdict,
        "confirm": confirm,
        "fidelity": {"replayed": [0.64], "recorded": [0.64], "max_difference": 0.0},
        "timing": {
            "total_seconds": 600.0,
            "simulation_seconds": 400.0,
            "confirm_seconds": 0.0,
            "seconds_per_update": 11.0,
            "seconds_per_cell": 10.0,
        },
    }


def test_markdown_states_the_computed_verdict_and_the_rerun_command() -> None:
    rules = ["mean", "weighted-mean", "median", "norm-filter"]
    verdict = replay_verdict(_cells_json(ACC), rules, ["flip", "collude"], [0.3], "weighted-mean")
    text = render_markdown(_result(verdict))
    assert "| rule | no attack | flip 30% | collude 30% |" in text
    assert "| `norm-filter` | 63.0 | 62.0 | 63.0 |" in text
    assert "**Target met in the replay: yes.**" in text
    assert "norm-filter is 1.0 points below no attack" in text
    assert "the mean is 19.0 points below" in text
    assert "**collude**" in text and "**norm-filter**" in text
    assert "fedistill robustness --preset default" in text
    assert "understates" in text and "torch 2.x" in text
    assert "Not run (`--confirm`" in text

    bad = dict(verdict, met=False, robust_within=False)
    assert "**Target met in the replay: no.**" in render_markdown(_result(bad))


def test_rewriting_the_page_keeps_the_faults_section(tmp_path: Path) -> None:
    rules = ["mean", "weighted-mean", "median", "norm-filter"]
    verdict = replay_verdict(_cells_json(ACC), rules, ["flip", "collude"], [0.3], "weighted-mean")
    doc = tmp_path / "ROBUSTNESS.md"
    faults = f"{FAULTS_BEGIN}\n## Faults\n| fault | outcome |\n{FAULTS_END}"
    doc.write_text("old study\n\n" + faults + "\n")
    write_page(doc, _result(verdict))
    text = doc.read_text()
    assert "old study" not in text and "**Target met in the replay: yes.**" in text
    assert text.count(faults) == 1
    write_page(tmp_path / "new.md", _result(verdict))  # no faults yet: none invented
    assert FAULTS_BEGIN not in (tmp_path / "new.md").read_text()


def test_markdown_lists_the_confirmation_runs() -> None:
    check = target_check(0.63, 0.62, 0.45)
    confirm = {
        "attack": "collude",
        "fraction": 0.3,
        "best_rule": "norm-filter",
        "no_attack": 0.63,
        "check": check,
        "runs": [
            {
                "dir": "clean",
                "aggregation": "weighted-mean",
                "attack": NO_ATTACK,
                "fraction": 0.0,
                "accuracy": 0.63,
                "accuracy_by_round": [0.6, 0.63],
                "seconds": 300,
            },
            {
                "dir": "m",
                "aggregation": "mean",
                "attack": "collude",
                "fraction": 0.3,
                "accuracy": 0.45,
                "accuracy_by_round": [0.5, 0.45],
                "seconds": 300,
            },
            {
                "dir": "n",
                "aggregation": "norm-filter",
                "attack": "collude",
                "fraction": 0.3,
                "accuracy": 0.62,
                "accuracy_by_round": [0.61, 0.62],
                "seconds": 300,
            },
        ],
    }
    text = render_markdown(_result(None, confirm))
    assert "| `m` | `mean` | collude 30% | 50.0 → 45.0 | 45.0 | +18.0 | — | — | 5.0 |" in text
    assert "**Target met in the real pipeline: yes**" in text


def test_the_headline_cells_of_other_seeds_join_the_page() -> None:
    def study(seed: int, clean: float, mean: float, best: float) -> dict:
        confirm = {"attack": "wrong-onehot", "fraction": 0.3, "best_rule": "median",
                   "check": target_check(clean, best, mean),
                   "balanced": target_check(clean - 0.01, best - 0.01, mean - 0.05)}
        return {"setup": {"seed": seed}, "confirm": confirm}

    seeds = [seed_headline(study(s, 0.75, 0.70 - s / 100, 0.74)) for s in range(3)]
    result = _result(None)
    result["seeds"] = seeds
    text = render_markdown(result)
    assert "| 1 | wrong-onehot 30% | 75.0 / 74.0 | 69.0 / 64.0 | `median` | 74.0 / 73.0 |" in text
    # the plain mean loses 5, 6, 7 points: mean 6.0, t interval 6 ± 4.30 * 1 / sqrt(3)
    assert "the plain mean 6.0 [3.5, 8.5] accuracy" in text
    assert seed_headline({"setup": {"seed": 0}}) is None  # a study without --confirm


# ---------------------------------------------------------------------------- tiny replay
def _tiny_run(tmp_path: Path) -> tuple[FedConfig, Path, list[float]]:
    """A run dir as the coordinator writes it, made by replaying its steps in-process."""
    from common.models import build_model
    from common.task import prepare_task
    from common.training import evaluate_accuracy
    from coordinator.aggregation import aggregator_from_config
    from coordinator.report import save_round_replies
    from coordinator.teacher import pretrain_teacher, teacher_config, update_teacher

    data = tmp_path / "d.jsonl"
    rows = [(t, "pos") for t in POS * 4] + [(t, "neg") for t in NEG * 4]
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = FedConfig(
        dataset=f"jsonl:{data}",
        num_clients=5,
        rounds=2,
        max_len=8,
        vocab_size=200,
        public_batch_size=16,
        teacher_size="tiny",
        teacher_epochs=2,
        teacher_distill_epochs=1,
        device="cpu",
        out_dir=str(run_dir),
        save_replies=True,
    )
    task = prepare_task(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len)
    torch.manual_seed(cfg.seed)  # as coordinator/app.py main()
    teacher = build_model(teacher_config(cfg, task))
    pretrain_teacher(cfg, task, teacher, torch.device("cpu"))
    torch.save(teacher.state_dict(), run_dir / "teacher-round0.pt")
    accuracy = [evaluate_accuracy(teacher, task.test_x, task.test_y, device=torch.device("cpu"))]
    rng = np.random.default_rng(1)
    for rnd in (1, 2):
        indices = np.sort(rng.choice(len(task.public_x), 16, replace=False)).astype(np.int64)
        truth = rng.integers(0, 2, size=16)
        probs = [
            np.where(np.eye(2)[truth] > 0, 0.8, 0.2).astype(np.float32)
            for _ in range(cfg.num_clients)
        ]
        ids = [f"client-{i}" for i in (3, 0, 4, 1, 2)]
        save_round_replies(run_dir, rnd, indices, probs, [10] * 5, ids)
        aggregate = aggregator_from_config(cfg)(probs, [10] * 5)
        update_teacher(
            cfg,
            task,
            teacher,
            task.public_x[torch.as_tensor(indices)],
            aggregate,
            rnd,
            torch.device("cpu"),
        )
        accuracy.append(
            evaluate_accuracy(teacher, task.test_x, task.test_y, device=torch.device("cpu"))
        )
    (run_dir / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"round": r, "teacher_accuracy": a}) + "\n" for r, a in enumerate(accuracy)
        )
    )
    (run_dir / "run_config.toml").write_text(tomli_w.dumps(cfg.to_run_config()))
    return cfg, run_dir, accuracy


def test_replay_of_a_tiny_run_reproduces_it_and_shares_equal_updates(tmp_path: Path) -> None:
    cfg, run_dir, recorded = _tiny_run(tmp_path)
    cells = cell_grid(["mean", "weighted-mean", "median"], ["flip", "collude"], [0.2])
    result = replay(cfg, run_dir, cells, say=lambda _: None)
    assert result.rounds == [1, 2] and result.pretraining_reproduced
    by_cell = {r.cell: r for r in result.results}
    # the configured rule without attack is the recorded run, to the bit
    assert by_cell[Cell("weighted-mean", NO_ATTACK, 0.0)].accuracy_by_round == recorded[1:]
    # equal counts: mean = weighted-mean, so those cells share their teacher updates
    assert result.updates < result.cell_rounds
    assert (
        by_cell[Cell("mean", "flip", 0.2)].accuracy_by_round
        == by_cell[Cell("weighted-mean", "flip", 0.2)].accuracy_by_round
    )
    # one flipper of five: the median keeps every label, the mean keeps them too (0.8 vs 0.2)
    assert by_cell[Cell("median", "flip", 0.2)].changed_labels == [0.0, 0.0]
    assert all(len(r.accuracy_by_round) == 2 for r in result.results)

    one = replay(cfg, run_dir, cells[:1], rounds=1, say=lambda _: None)
    assert one.rounds == [1] and one.cell_rounds == 1


def test_run_robustness_writes_the_doc_and_the_json(tmp_path: Path) -> None:
    cfg, run_dir, _ = _tiny_run(tmp_path)
    doc, out = tmp_path / "ROBUSTNESS.md", tmp_path / "robustness.json"
    result = run_robustness(
        cfg,
        preset="tiny",
        command="fedistill robustness --tiny",
        replies_from=run_dir,
        rounds=1,
        rules=["mean", "median"],
        attacks=["collude"],
        fractions=[0.4],
        confirm=False,
        work_dir=tmp_path,
        doc=doc,
        json_path=out,
        say=lambda _: None,
    )
    saved = json.loads(out.read_text())
    assert saved["benchmark"] == "robustness" and saved["verdict"] == result["verdict"]
    assert saved["fidelity"]["max_difference"] == 0.0 or saved["fidelity"]["replayed"] == []
    assert saved["verdict"]["fraction"] == 0.4  # no 30 % cell: the largest stands in
    text = doc.read_text()
    assert "Target met in the replay:" in text and "fedistill robustness --tiny" in text


def test_confirm_runs_the_mean_and_the_best_rule_and_checks_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--confirm without Flower: each "real run" writes the metrics a run would."""
    import simulations.robustness.harness as rb

    cfg, run_dir, recorded = _tiny_run(tmp_path)
    final = {"mean": recorded[-1] - 0.2, "median": recorded[-1] - 0.01}
    made: list[FedConfig] = []

    def fake_run(real: FedConfig, say, num_cpus: int) -> float:
        made.append(real)
        out = Path(real.out_dir)
        out.mkdir(parents=True)
        acc = final[real.aggregation]
        (out / "metrics.jsonl").write_text(
            "".join(
                json.dumps({"round": r, "teacher_accuracy": a}) + "\n"
                for r, a in enumerate([recorded[0], acc + 0.01, acc])
            )
        )
        # what a finished run also leaves: its config, summary and final teacher
        (out / "run_config.toml").write_text(tomli_w.dumps(real.to_run_config()))
        (out / "summary.json").write_text(json.dumps({"wall_seconds": 12.0}))
        shutil.copy(run_dir / "teacher-round0.pt", out / "teacher.pt")
        return 12.0

    monkeypatch.setattr(rb, "_run_real", fake_run)
    doc, out = tmp_path / "R.md", tmp_path / "r.json"
    result = run_robustness(
        cfg,
        preset="tiny",
        command="fedistill robustness --confirm",
        replies_from=run_dir,
        rounds=1,
        rules=["mean", "median"],
        attacks=["collude"],
        fractions=[0.4],
        confirm=True,
        work_dir=tmp_path / "work",
        doc=doc,
        json_path=out,
        say=lambda _: None,
    )
    assert [(c.aggregation, c.attack, c.attack_fraction) for c in made] == [
        ("mean", "collude", 0.4),
        ("median", "collude", 0.4),
    ]
    assert not any(c.save_replies for c in made)
    confirm = json.loads(out.read_text())["confirm"]
    assert confirm == result["confirm"]
    assert [r["aggregation"] for r in confirm["runs"]] == ["weighted-mean", "mean", "median"]
    assert confirm["check"]["met"] and confirm["no_attack"] == recorded[-1]
    assert "**Target met in the real pipeline: yes**" in doc.read_text()
    assert confirm["runs"][1]["balanced_accuracy"] is not None
    assert 0 < confirm["runs"][1]["top_class_share"] <= 1

    # --reuse-runs: the finished runs of the same configuration are not run again
    def refuse(real: FedConfig, say, num_cpus: int) -> float:
        raise AssertionError(f"ran {real.out_dir} again")

    monkeypatch.setattr(rb, "_run_real", refuse)
    again = run_robustness(
        cfg,
        preset="tiny",
        command="x",
        replies_from=run_dir,
        rounds=1,
        rules=["mean", "median"],
        attacks=["collude"],
        fractions=[0.4],
        confirm=True,
        work_dir=tmp_path / "work",
        doc=doc,
        json_path=out,
        say=lambda _: None,
        reuse_runs=True,
    )
    assert [r["reused"] for r in again["confirm"]["runs"][1:]] == [True, True]
    assert again["confirm"]["check"] == confirm["check"]


def test_markdown_adds_the_exact_first_round_when_several_were_replayed() -> None:
    result = _result(None)
    result["replay"]["rounds"] = [1, 2]
    for cell in result["replay"]["cells"]:
        cell["accuracy_by_round"] = [0.5, cell["accuracy"]]
    text = render_markdown(result)
    assert "After round 1 alone (the exact part of the replay):" in text
    assert "| `norm-filter` | 50.0 | 50.0 | 50.0 |" in text
    assert "| `norm-filter` | 63.0 | 62.0 | 63.0 |" in text


def test_scores_of_a_teacher_that_predicts_one_class() -> None:
    class Constant(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor([[2.0, 0.0]]).repeat(len(x), 1)

    y = torch.tensor([0, 0, 0, 1])
    accuracy, balanced = teacher_scores(
        Constant(), torch.zeros(4, 3), y, device=torch.device("cpu")
    )
    assert accuracy == 0.75 and balanced == 0.5


def test_finished_run_seconds_needs_the_same_configuration(tmp_path: Path) -> None:
    cfg = FedConfig(out_dir=str(tmp_path), attack="flip", attack_fraction=0.3)
    assert finished_run_seconds(cfg) is None  # nothing there
    (tmp_path / "run_config.toml").write_text(
        tomli_w.dumps(cfg.replace(out_dir="/elsewhere/abs").to_run_config())
    )
    (tmp_path / "summary.json").write_text(json.dumps({"wall_seconds": 30.5}))
    (tmp_path / "teacher.pt").write_bytes(b"")
    assert finished_run_seconds(cfg) == 30.5
    assert finished_run_seconds(cfg.replace(attack="noise")) is None


def test_cli_render_rewrites_the_doc_from_the_json(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from simulations.cli import app

    data, doc = tmp_path / "r.json", tmp_path / "R.md"
    data.write_text(json.dumps(_result(None)))
    run = CliRunner().invoke(
        app, ["robustness", "--render", "--json", str(data), "--doc", str(doc)]
    )
    assert run.exit_code == 0, run.output
    assert doc.read_text().startswith("# Robustness of the aggregation rules")


def test_confirm_attacks_runs_each_attack_and_heads_with_the_one_that_hurts_the_mean_most(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--confirm-attacks: the replay's strongest attack is not always the real one."""
    import simulations.robustness.harness as rb

    cfg, run_dir, recorded = _tiny_run(tmp_path)
    clean = recorded[-1]
    final = {
        ("mean", "collude"): clean - 0.02,
        ("median", "collude"): clean - 0.01,
        ("mean", "flip"): clean - 0.2,
        ("median", "flip"): clean - 0.01,
    }
    made: list[tuple[str, str]] = []

    def fake_run(real: FedConfig, say, num_cpus: int) -> float:
        made.append((real.aggregation, real.attack))
        out = Path(real.out_dir)
        out.mkdir(parents=True)
        acc = final[(real.aggregation, real.attack)]
        (out / "metrics.jsonl").write_text(
            "".join(
                json.dumps({"round": r, "teacher_accuracy": a}) + "\n"
                for r, a in enumerate([recorded[0], acc])
            )
        )
        shutil.copy(run_dir / "teacher-round0.pt", out / "teacher.pt")
        return 1.0

    monkeypatch.setattr(rb, "_run_real", fake_run)
    verdict = {"attack": "collude", "fraction": 0.4, "best_rule": "median"}
    cells = [
        {"rule": "median", "attack": "flip", "fraction": 0.4, "accuracy": 0.6},
        {"rule": "trimmed-mean", "attack": "flip", "fraction": 0.4, "accuracy": 0.5},
    ]
    pairs = rb.confirm_attacks(
        verdict, cells, ["mean", "median", "trimmed-mean"], ["flip", "collude"]
    )
    assert pairs == [("collude", "median"), ("flip", "median")]
    confirm = rb.confirm_runs(
        cfg,
        verdict,
        run_dir,
        recorded,
        5.0,
        preset="tiny",
        work_dir=tmp_path / "work",
        num_cpus=1,
        say=lambda _: None,
        attacks=pairs,
    )
    assert made == [
        ("mean", "collude"),
        ("median", "collude"),
        ("mean", "flip"),
        ("median", "flip"),
    ]
    assert [c["attack"] for c in confirm["per_attack"]] == ["collude", "flip"]
    assert not confirm["per_attack"][0]["check"]["met"]  # the mean held under collude
    assert confirm["attack"] == "flip" and confirm["check"]["met"]
    text = _confirm_lines(confirm, "tiny")
    assert any("Strongest attack in the real pipeline" in line and "flip" in line for line in text)
