"""``fedistill robustness``: the teacher's test accuracy per rule × attack × fraction.

One real Flower simulation with ``save-replies=true`` and no attack records every round's
validated replies and the pre-trained teacher. Every cell of the grid then *replays*
those rounds in this process: the replies of the first partition ids (the clients a real
run with ``attack-fraction`` makes malicious, :func:`client.attacks.is_malicious`) are
replaced by :func:`client.attacks.poison` exactly as a malicious client does (same seed,
same wire encoding), the cell's rule aggregates them, and the coordinator's own teacher
update (``coordinator.teacher.update_teacher``) trains the teacher, which is then evaluated
on the test set. The torch RNG (dropout) is put where the coordinator's was, so the
no-attack cell of the configured rule reproduces the recorded run.

What a replay cannot show: the honest replies come from a clean run, so in a real
attacked run the honest students would also learn from the damaged teacher. A replay
understates the damage that compounds across rounds. ``--confirm`` therefore reruns the
headline cell (strongest attack, 30 % malicious) through the real pipeline with the plain
mean and with the best robust rule; ``--confirm-attacks`` adds attacks whose damage
compounds over rounds (``collude`` pushes the test set's minority class on this data),
and the headline is the attack that hurts the plain mean most in the real pipeline.

Cells whose aggregates give the teacher the same training targets from the same starting
teacher share one update: same inputs, same seeds, same result.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

if TYPE_CHECKING:
    from common.config import FedConfig

NO_ATTACK = "none"
DEFAULT_ATTACKS = ("flip", "noise", "wrong-onehot", "collude")
DEFAULT_FRACTIONS = (0.1, 0.3)
# Round 1 is replayed exactly (the honest replies there depend only on the round-0
# teacher), and the default grid of one round fits about 15 min on 2 quiet cores;
# --rounds 0 replays every recorded round (about 5x that for the default preset).
DEFAULT_ROUNDS = 1
EXCLUDED_RULES = ("dsfl",)  # a sharpening of the mean, not a defence
NON_ROBUST_RULES = ("mean", "weighted-mean")
TARGET_FRACTION = 0.3  # the target: 30 % malicious clients ...
TARGET_POINTS = 0.03  # ... cost the best robust rule at most 3 points of accuracy
DEFAULT_WORK_DIR = Path("runs") / "robustness"
DEFAULT_DOC = Path("docs") / "ROBUSTNESS.md"
DEFAULT_JSON = Path("benchmarks") / "results" / "robustness.json"
ROUND_FILE = re.compile(r"round-(\d+)\.npz$")
CLIENT_ID = re.compile(r"client-(\d+)$")


# ---------------------------------------------------------------------------- the grid
@dataclass(frozen=True, order=True)
class Cell:
    """One entry of the table: a rule facing an attack by a share of the clients."""

    rule: str
    attack: str
    fraction: float

    @property
    def label(self) -> str:
        if self.attack == NO_ATTACK:
            return f"{self.rule}/none"
        return f"{self.rule}/{self.attack}@{self.fraction:g}"


def default_rules() -> list[str]:
    """Every registered aggregation rule but DS-FL, read at run time."""
    from coordinator.aggregation import AGGREGATORS

    return [name for name in AGGREGATORS if name not in EXCLUDED_RULES]


def cell_grid(
    rules: Sequence[str], attacks: Sequence[str], fractions: Sequence[float]
) -> list[Cell]:
    """Per rule: one no-attack cell, then every attack at every fraction."""
    cells: list[Cell] = []
    for rule in rules:
        cells.append(Cell(rule, NO_ATTACK, 0.0))
        cells += [Cell(rule, a, float(f)) for a in attacks if a != NO_ATTACK for f in fractions]
    return cells


# ---------------------------------------------------------------------------- replies
@dataclass(frozen=True)
class RecordedRound:
    """One round's validated replies as ``save-replies`` kept them."""

    round: int
    indices: np.ndarray  # (m,) rows of the public set
    probs: np.ndarray  # (K, m, C) float32
    counts: np.ndarray  # (K,)
    client_ids: tuple[str, ...]


def load_recorded_rounds(run_dir: Path) -> list[RecordedRound]:
    """Every ``replies/round-NNN.npz`` of a run, in round order."""
    from common.errors import ConfigError

    folder = Path(run_dir) / "replies"
    files = sorted(
        (int(m.group(1)), p) for p in folder.glob("round-*.npz") if (m := ROUND_FILE.search(p.name))
    )
    if not files:
        raise ConfigError(
            f"{folder} holds no round-NNN.npz: replay needs a run made with "
            "--set save-replies=true (plain aggregation, not secure)."
        )
    rounds = []
    for rnd, path in files:
        with np.load(path, allow_pickle=False) as data:
            rounds.append(
                RecordedRound(
                    rnd,
                    data["indices"].astype(np.int64),
                    data["probs"].astype(np.float32),
                    data["counts"].astype(np.int64),
                    tuple(str(c) for c in data["client_ids"]),
                )
            )
    return rounds


def malicious_mask(client_ids: Sequence[str], num_clients: int, fraction: float) -> np.ndarray:
    """Which replies a run with ``attack-fraction=fraction`` would have poisoned.

    Client ``client-P`` is malicious when :func:`client.attacks.is_malicious` says so for
    partition id P: the first ``round(fraction * num_clients)`` ids. Ids that name no
    partition fall back to the first ``round(fraction * K)`` replies in their order.
    """
    from client.attacks import is_malicious

    ids = [CLIENT_ID.match(c) for c in client_ids]
    if all(ids):
        return np.array(
            [is_malicious(int(m.group(1)), num_clients, fraction) for m in ids], dtype=bool
        )
    mask = np.zeros(len(client_ids), dtype=bool)
    mask[: round(fraction * len(client_ids))] = True
    return mask


def poison_replies(
    probs: np.ndarray,
    mask: np.ndarray,
    attack: str,
    *,
    rnd: int,
    seed: int,
    encoding: str,
    topk: int,
) -> np.ndarray:
    """Honest replies (K, m, C) with the masked ones poisoned as a malicious client does.

    Same seed as client/app.py (``seed * 1000 + round``) and the same trip through the
    wire encoding, so the coordinator sees what it would have decoded.
    """
    from client.attacks import poison
    from common.distill.codec import decode_knowledge, encode_knowledge

    out = probs.copy()
    if attack == NO_ATTACK:
        return out
    _, m, c = probs.shape
    for k in np.flatnonzero(mask):
        bad = poison(probs[k], attack, seed=seed * 1000 + rnd)
        out[k] = decode_knowledge(
            encode_knowledge(bad, encoding, topk=topk), encoding, num_rows=m, num_classes=c
        )
    return out


def teacher_scores(model: Any, x: Any, y: Any, *, device: Any) -> tuple[float, float]:
    """Test accuracy (as ``common.training.evaluate_accuracy``) and balanced accuracy.

    Balanced accuracy is the mean per-class recall: a teacher that predicts one class
    scores 1/C whatever the class shares, where its accuracy is that class's share.
    """
    from common.training import predict_logits

    pred = predict_logits(model, x, device=device).argmax(dim=1)
    y = y.cpu()
    accuracy = float((pred == y).float().mean())
    recalls = [float((pred[y == c] == c).float().mean()) for c in y.unique().tolist()]
    return accuracy, float(np.mean(recalls))


def training_targets(aggregate: np.ndarray, teacher_targets: str) -> np.ndarray:
    """What the teacher update consumes of an aggregate: its arg-max, or all of it."""
    if teacher_targets == "hard":
        return aggregate.argmax(axis=1).astype(np.int64)
    return np.ascontiguousarray(aggregate, dtype=np.float32)


def _chain(previous: str, rnd: int, targets: np.ndarray) -> str:
    digest = hashlib.sha256(previous.encode())
    digest.update(rnd.to_bytes(4, "little"))
    digest.update(targets.tobytes())
    return digest.hexdigest()[:24]


# ---------------------------------------------------------------------------- replay
@dataclass
class CellResult:
    cell: Cell
    accuracy_by_round: list[float] = field(default_factory=list)  # after each replayed round
    balanced_by_round: list[float] = field(default_factory=list)  # mean per-class recall
    changed_labels: list[float] = field(default_factory=list)  # vs the rule without attack

    @property
    def accuracy(self) -> float:
        return self.accuracy_by_round[-1]

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.cell.rule,
            "attack": self.cell.attack,
            "fraction": self.cell.fraction,
            "accuracy": self.accuracy,
            "accuracy_by_round": self.accuracy_by_round,
            "balanced_accuracy": self.balanced_by_round[-1],
            "balanced_accuracy_by_round": self.balanced_by_round,
            "changed_labels": self.changed_labels,
        }


@dataclass
class Replay:
    rounds: list[int]
    round0_accuracy: float
    results: list[CellResult]
    updates: int  # teacher updates computed (cells sharing targets share one)
    cell_rounds: int  # cells × rounds
    seconds: float
    update_seconds: float  # spent in teacher updates and their evaluations
    cpu_seconds: float  # process CPU time of the whole replay (all threads)
    pretraining_reproduced: bool | None  # round-0 teacher rebuilt bit for bit (RNG check)


def replay(
    cfg: FedConfig,
    run_dir: Path,
    cells: Sequence[Cell],
    *,
    rounds: int = 0,
    say: Callable[[str], None] = print,
) -> Replay:
    """Replay the recorded rounds of ``run_dir`` (the first ``rounds``; 0 = all) per cell."""
    import torch

    from common.device import resolve_device
    from common.models import build_model
    from common.task import prepare_task
    from common.training import train_supervised
    from coordinator.aggregation import aggregator_from_config
    from coordinator.teacher import teacher_config, update_teacher

    start, cpu_start = time.monotonic(), time.process_time()
    recorded = load_recorded_rounds(run_dir)
    if rounds:
        recorded = recorded[:rounds]
    device = resolve_device(cfg.device)
    task = prepare_task(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len)
    round0 = torch.load(Path(run_dir) / "teacher-round0.pt", map_location="cpu", weights_only=True)

    # The coordinator seeds torch, builds and pre-trains the teacher, and from then on
    # only the teacher updates draw from torch's RNG (dropout), as many draws per round
    # whatever the targets. Rebuilding round 0 puts the RNG where the coordinator's was.
    torch.manual_seed(cfg.seed)
    teacher = build_model(teacher_config(cfg, task))
    reproduced = None
    if not cfg.teacher_checkpoint:
        say(
            f"re-running the teacher's pre-training ({cfg.teacher_epochs} epochs) to put "
            "torch's RNG where the coordinator's was"
        )
        train_supervised(
            teacher,
            task.teacher_x,
            task.teacher_y,
            epochs=cfg.teacher_epochs,
            lr=cfg.teacher_lr,
            device=device,
            seed=cfg.seed,
        )
        reproduced = all(
            torch.equal(v, round0[k].to(v.device)) for k, v in teacher.state_dict().items()
        )
    rng_state = torch.get_rng_state()
    teacher.load_state_dict(round0)
    acc0, _ = teacher_scores(teacher, task.test_x, task.test_y, device=device)
    say(
        f"round-0 teacher: test accuracy {acc0:.4f}; replaying rounds "
        f"{[r.round for r in recorded]} for {len(cells)} cells"
    )

    rule_cfgs = {rule: cfg.replace(aggregation=rule) for rule in {c.rule for c in cells}}
    rules = {rule: aggregator_from_config(rc) for rule, rc in rule_cfgs.items()}
    states: dict[str, dict[str, torch.Tensor]] = {"round0": round0}
    position = {cell: "round0" for cell in cells}
    results = {cell: CellResult(cell) for cell in cells}
    updates, update_seconds = 0, 0.0
    for rr in recorded:
        public_x = task.public_x[torch.as_tensor(rr.indices)]
        poisoned: dict[tuple[str, float], np.ndarray] = {}
        clean_labels: dict[str, np.ndarray] = {}
        pending: dict[str, tuple[str, FedConfig, np.ndarray]] = {}
        moved: dict[Cell, str] = {}
        for cell in cells:
            attack_key = (cell.attack, cell.fraction)
            if attack_key not in poisoned:
                mask = malicious_mask(rr.client_ids, cfg.num_clients, cell.fraction)
                poisoned[attack_key] = poison_replies(
                    rr.probs,
                    mask,
                    cell.attack,
                    rnd=rr.round,
                    seed=cfg.seed,
                    encoding=cfg.encoding,
                    topk=cfg.topk,
                )
            aggregate = rules[cell.rule](list(poisoned[attack_key]), list(rr.counts))
            if cell.rule not in clean_labels:
                clean = rules[cell.rule](list(rr.probs), list(rr.counts))
                clean_labels[cell.rule] = clean.argmax(axis=1)
            results[cell].changed_labels.append(
                float((aggregate.argmax(axis=1) != clean_labels[cell.rule]).mean())
            )
            key = _chain(position[cell], rr.round, training_targets(aggregate, cfg.teacher_targets))
            pending.setdefault(key, (position[cell], rule_cfgs[cell.rule], aggregate))
            moved[cell] = key

        new_states: dict[str, dict[str, torch.Tensor]] = {}
        accuracy: dict[str, tuple[float, float]] = {}
        after_rng = None
        for n, (key, (previous, rule_cfg, aggregate)) in enumerate(pending.items(), 1):
            t0 = time.monotonic()
            teacher.load_state_dict(states[previous])
            torch.set_rng_state(rng_state)
            update_teacher(rule_cfg, task, teacher, public_x, aggregate, rr.round, device)
            after = torch.get_rng_state()
            if after_rng is not None and not torch.equal(after, after_rng):
                say("warning: teacher updates drew different amounts of randomness")
            after_rng = after
            new_states[key] = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
            accuracy[key] = teacher_scores(teacher, task.test_x, task.test_y, device=device)
            update_seconds += time.monotonic() - t0
            updates += 1
            say(
                f"round {rr.round}: update {n}/{len(pending)} ({rule_cfg.aggregation}) "
                f"accuracy {accuracy[key][0]:.4f} in {time.monotonic() - t0:.1f}s "
                f"[{time.monotonic() - start:.0f}s total]"
            )
        rng_state = after_rng if after_rng is not None else rng_state
        states = new_states
        for cell in cells:
            position[cell] = moved[cell]
            results[cell].accuracy_by_round.append(accuracy[moved[cell]][0])
            results[cell].balanced_by_round.append(accuracy[moved[cell]][1])

    return Replay(
        rounds=[r.round for r in recorded],
        round0_accuracy=acc0,
        results=[results[c] for c in cells],
        updates=updates,
        cell_rounds=len(cells) * len(recorded),
        seconds=time.monotonic() - start,
        update_seconds=update_seconds,
        cpu_seconds=time.process_time() - cpu_start,
        pretraining_reproduced=reproduced,
    )


# ---------------------------------------------------------------------------- verdicts
def accuracy_table(
    results: Sequence[dict[str, Any]], metric: str = "accuracy"
) -> dict[tuple[str, str, float], float]:
    return {
        (r["rule"], r["attack"], float(r["fraction"])): float(r[metric])
        for r in results
        if metric in r
    }


def target_fraction(fractions: Sequence[float]) -> float:
    """The issue's 30 %, or the largest fraction run when 30 % is not among them."""
    return TARGET_FRACTION if TARGET_FRACTION in fractions else max(fractions)


def strongest_attack(
    table: dict[tuple[str, str, float], float],
    attacks: Sequence[str],
    fraction: float,
    rule: str = "mean",
) -> str:
    """The attack that leaves ``rule`` (the plain mean) the lowest accuracy at ``fraction``."""
    scored = [
        (table[(rule, a, fraction)], i, a)
        for i, a in enumerate(attacks)
        if a != NO_ATTACK and (rule, a, fraction) in table
    ]
    if not scored:
        raise ValueError(f"no {rule} cell at fraction {fraction}")
    return min(scored)[2]


def best_robust_rule(
    table: dict[tuple[str, str, float], float], rules: Sequence[str], attack: str, fraction: float
) -> str:
    """The robust rule (not a plain mean) with the highest accuracy at that cell."""
    scored = [
        (-table[(r, attack, fraction)], i, r)
        for i, r in enumerate(rules)
        if r not in NON_ROBUST_RULES and (r, attack, fraction) in table
    ]
    if not scored:
        raise ValueError("no robust rule in the grid")
    return min(scored)[2]


def target_check(
    no_attack: float, robust: float, mean: float, points: float = TARGET_POINTS
) -> dict[str, Any]:
    """The issue's target: robust within ``points`` of the no-attack run, the mean not."""
    tolerance = 1e-9  # accuracies are ratios of counts; keep 3.0 points "within 3 points"
    robust_drop, mean_drop = no_attack - robust, no_attack - mean
    robust_ok = robust_drop <= points + tolerance
    mean_outside = mean_drop > points + tolerance
    return {
        "no_attack": no_attack,
        "robust": robust,
        "mean": mean,
        "points": points,
        "robust_drop": robust_drop,
        "mean_drop": mean_drop,
        "robust_within": robust_ok,
        "mean_outside": mean_outside,
        "met": bool(robust_ok and mean_outside),
    }


def replay_verdict(
    results: Sequence[dict[str, Any]],
    rules: Sequence[str],
    attacks: Sequence[str],
    fractions: Sequence[float],
    reference_rule: str,
) -> dict[str, Any] | None:
    """Strongest attack, best robust rule and the target, from the replay's cells."""
    table = accuracy_table(results)
    if "mean" not in rules or not any(a != NO_ATTACK for a in attacks) or not fractions:
        return None
    fraction = target_fraction(fractions)
    attack = strongest_attack(table, attacks, fraction)
    try:
        best = best_robust_rule(table, rules, attack, fraction)
    except ValueError:
        return None
    ref_rule = reference_rule if (reference_rule, NO_ATTACK, 0.0) in table else "mean"
    check = target_check(
        table[(ref_rule, NO_ATTACK, 0.0)],
        table[(best, attack, fraction)],
        table[("mean", attack, fraction)],
    )
    balanced = accuracy_table(results, "balanced_accuracy")
    cells = [(ref_rule, NO_ATTACK, 0.0), (best, attack, fraction), ("mean", attack, fraction)]
    return {
        "attack": attack,
        "fraction": fraction,
        "best_rule": best,
        "reference_rule": ref_rule,
        **check,
        # the same cells in balanced accuracy (not the metric; see the doc)
        "balanced": (
            target_check(*(balanced[c] for c in cells))
            if all(c in balanced for c in cells)
            else None
        ),
    }


# ---------------------------------------------------------------------------- markdown
def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _balanced_line(check: dict[str, Any] | None, where: str) -> list[str]:
    if not check:
        return []
    return [
        "",
        f"The same comparison in balanced accuracy (not the issue's metric; it does not "
        f"reward a teacher for collapsing onto the majority class), {where}: the best robust "
        f"rule is {_below(check['robust_drop'])} no attack (within 3 points: "
        f"{_yes(check['robust_within'])}), the mean {_below(check['mean_drop'])} (more than 3 "
        f"points below: {_yes(check['mean_outside'])}); met on that metric: "
        f"{_yes(check['met'])}.",
    ]


def _first_rounds(n: int) -> str:
    return "the first recorded round" if n == 1 else f"the first {n} recorded rounds in order"


def _rounds(n: int) -> str:
    return f"{n} round" if n == 1 else f"{n} rounds"


def _below(drop: float) -> str:
    """A drop in accuracy (a fraction) as words: "2.9 points below", "0.4 points above"."""
    points = round(100 * drop, 1)
    if points == 0:
        return "level with"
    return f"{abs(points):.1f} points {'below' if points > 0 else 'above'}"


def _rule_table(
    head: list[str],
    rules: Sequence[str],
    cols: Sequence[tuple[str, float]],
    values: dict[tuple[str, str, float], float],
) -> list[str]:
    """A markdown table: one row per rule, one column per (attack, fraction)."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rule in rules:
        row = [f"`{rule}`"] + [_pct(values.get((rule, a, f))) for a, f in cols]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _class0(setup: dict[str, Any]) -> str:
    share = setup.get("class0_share")
    return "" if share is None else f" ({_pct(share)}% of the test set)"


def _confirm_lines(confirm: dict[str, Any], preset: str) -> list[str]:
    """The real-pipeline section: every run, each attack's check, the headline."""
    per_attack = confirm.get("per_attack") or [
        {
            "attack": confirm["attack"],
            "best_rule": confirm["best_rule"],
            "check": confirm["check"],
            "balanced": confirm.get("balanced"),
        }
    ]
    names = ", ".join(f"`{c['attack']}`" for c in per_attack)
    lines = [
        f"Real Flower simulations of the `{preset}` preset, `attack-fraction="
        f"{confirm['fraction']:g}`, attacks {names}: the honest students here do learn "
        "from the attacked teacher. *final balanced* and *largest predicted class* are of "
        "the run's final `teacher.pt` on the test set (100% = the teacher predicts one "
        "class only).",
        "",
        "| run | aggregation | attack | teacher accuracy by round (%) | final | drop (points) "
        "| final balanced | largest predicted class (%) | wall min |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in confirm["runs"]:
        by_round = " → ".join(_pct(a) for a in run["accuracy_by_round"])
        drop = 100 * (confirm["no_attack"] - run["accuracy"])
        attack = run["attack"]
        if attack != NO_ATTACK:
            attack += f" {100 * run['fraction']:g}%"
        lines.append(
            f"| `{run['dir']}` | `{run['aggregation']}` | {attack} | {by_round} | "
            f"{_pct(run['accuracy'])} | {drop:+.1f} | {_pct(run.get('balanced_accuracy'))} "
            f"| {_pct(run.get('top_class_share'))} | {run['seconds'] / 60:.1f} |"
        )
    lines.append("")
    for c in per_attack:
        check = c["check"]
        lines.append(
            f"- `{c['attack']}`: the best robust rule ({c['best_rule']}) ends "
            f"{_below(check['robust_drop'])} the clean run (within 3 points: "
            f"{_yes(check['robust_within'])}); the plain mean ends {_below(check['mean_drop'])} "
            f"(more than 3 points below: {_yes(check['mean_outside'])})."
        )
    check = confirm["check"]
    if len(per_attack) > 1:
        lines += [
            "",
            f"Strongest attack in the real pipeline (lowest final accuracy of the "
            f"plain mean): **{confirm['attack']}**.",
        ]
    lines += [
        "",
        f"**Target met in the real pipeline: {_yes(check['met'])}** (best robust "
        f"rule {confirm['best_rule']}, attack {confirm['attack']}).",
    ]
    lines += _balanced_line(confirm.get("balanced"), "real pipeline")
    for run in (r for r in confirm["runs"] if r.get("top_class_share") == 1.0):
        lines += [
            "",
            f"The final teacher of `{run['dir']}` (`{run['aggregation']}`, {run['attack']}) "
            "predicts one class for every test example: its accuracy is that class's "
            "share of the test set, so accuracy understates the damage there.",
        ]
    return lines


def render_markdown(result: dict[str, Any]) -> str:
    """docs/ROBUSTNESS.md from the JSON result (every statement computed from it)."""
    rp, setup, env = result["replay"], result["setup"], result["environment"]
    rules, attacks, fractions = setup["rules"], setup["attacks"], setup["fractions"]
    table = accuracy_table(rp["cells"])
    changed = {
        (r["rule"], r["attack"], float(r["fraction"])): r["changed_labels"] for r in rp["cells"]
    }
    cols = [(NO_ATTACK, 0.0)] + [(a, float(f)) for a in attacks for f in fractions]
    head = ["rule"] + ["no attack" if a == NO_ATTACK else f"{a} {100 * f:g}%" for a, f in cols]
    n_test = setup["test_examples"]
    se = 100 * (0.25 / n_test) ** 0.5 if n_test else float("nan")
    verdict = result.get("verdict")
    timing = result["timing"]
    majority = setup.get("majority_share")
    majority_text = ""
    if majority:
        majority_text = (
            f" The test set's most common class is {_pct(majority)}% of it: a teacher that "
            f"predicts only that class scores {_pct(majority)} accuracy."
        )
    parts = (
        f"the replay {rp['seconds'] / 60:.1f} min, the confirmation runs "
        f"{timing['confirm_seconds'] / 60:.1f} min"
    )
    if timing.get("clean_run_reused"):
        wall = (
            f"{timing['total_seconds'] / 60:.1f} min for this call ({parts}); the clean "
            f"simulation it reused took {timing['simulation_seconds'] / 60:.1f} min"
        )
    else:
        wall = (
            f"{timing['total_seconds'] / 60:.1f} min in all (the clean simulation "
            f"{timing['simulation_seconds'] / 60:.1f} min, {parts})"
        )
    lines = [
        "# Robustness of the aggregation rules",
        "",
        "Teacher test accuracy (%) when a share of the clients poison their soft labels, per "
        "aggregation rule. Produced by `simulations/robustness.py`; every number and every "
        "conclusion below is computed from `benchmarks/results/robustness.json`.",
        "",
        f"Command: `{result['command']}`  ",
        f"Environment: torch {env['torch']}, flwr {env['flwr']}, opacus {env['opacus']}, "
        f"Python {env['python']}, {env['cpus']} CPU(s) (load average {env['load_average']} "
        f"at the start), torch threads {env.get('torch_threads', '?')}, device {env['device']}.  ",
        f"Seed: {setup['seed']}. Wall time: {wall}.",
        "",
        "## How it is measured: a replay",
        "",
        f"1. One real Flower simulation of the `{setup['preset']}` preset "
        f"({setup['num_clients']} clients, {setup['recorded_rounds']} rounds, public batch "
        f"m = {setup['public_batch_size']}, {setup['dataset']}, encoding {setup['encoding']}) "
        "runs with no attack and `save-replies=true`: every round's validated replies and "
        f"the pre-trained teacher are kept (`{setup['clean_run']}`).",
        "2. Each cell starts from that round-0 teacher and replays "
        f"{_first_rounds(len(rp['rounds']))}: the replies of the clients a real "
        "run with that `attack-fraction` makes malicious (the first partition ids, "
        "`client/attacks.py is_malicious`) are replaced by `poison(...)` exactly as a "
        "malicious client does (same seed, same wire encoding); the cell's rule aggregates "
        "them; the coordinator's own teacher update (`update_teacher`: the aggregate's "
        f"arg-max as pseudo-labels (teacher-targets = {setup['teacher_targets']}), then one "
        "anchor epoch on its labeled set) trains the teacher; it is evaluated on the "
        f"{n_test} test examples.",
        "3. torch's RNG is put where the coordinator's was (the round-0 pre-training is "
        "re-run for it), so the no-attack cell of the configured rule "
        f"(`{setup['aggregation']}`) should reproduce the recorded run; the check is below.",
        "",
        "**What a replay understates.** The honest replies come from the clean run. In a "
        "real attacked run the honest students would also distil from the damaged teacher "
        "in the next round, so damage compounds across rounds; the replay shows only the "
        "direct effect of the poisoned replies on the teacher, round after round. Round 1 "
        "is not approximated (there the honest clients learn from the untouched round-0 "
        "teacher, as in an attacked run); later rounds are a lower bound on the damage. "
        "The confirmation runs below go through the real pipeline.",
        "",
        f"## Teacher accuracy (%) after {_rounds(len(rp['rounds']))} replayed",
        "",
        f"Round-0 teacher: {_pct(rp['round0_accuracy'])}. Attacks: `flip` reverses the "
        "class order, `noise` sends uniform noise on the simplex, `wrong-onehot` puts all "
        "mass on a wrong class, `collude` has every attacker push class 0"
        f"{_class0(setup)}. Fractions are of the {setup['num_clients']} clients.",
        "",
        *_rule_table(head, rules, cols, table),
    ]
    if len(rp["rounds"]) > 1:
        first = {
            (r["rule"], r["attack"], float(r["fraction"])): r["accuracy_by_round"][0]
            for r in rp["cells"]
        }
        lines += [
            "",
            f"After round {rp['rounds'][0]} alone (the exact part of the replay):",
            "",
            *_rule_table(head, rules, cols, first),
        ]
    lines += [
        "",
        f"One test example is {100 / n_test:.2f} points; the standard error of one accuracy "
        f"is about {se:.1f} points (one seed), so differences under about "
        f"{2 * se:.0f} points are noise.{majority_text}",
        "",
    ]
    balanced = accuracy_table(rp["cells"], "balanced_accuracy")
    if balanced:
        lines += [
            "Balanced accuracy (%, the mean of the per-class recalls: a teacher that predicts "
            "one class scores 50 on two classes, whatever the class shares), same cells:",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]
        for rule in rules:
            row = [f"`{rule}`"] + [_pct(balanced.get((rule, a, f))) for a, f in cols]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    lines += [
        "Share of the public batch (%) whose pseudo-label the attack changed (against the "
        "same rule without attack, mean over the replayed rounds):",
        "",
        "| " + " | ".join(head[:1] + head[2:]) + " |",
        "|" + "---|" * (len(head) - 1),
    ]
    for rule in rules:
        row = [f"`{rule}`"] + [
            _pct(float(np.mean(changed[(rule, a, f)]))) if (rule, a, f) in changed else "—"
            for a, f in cols[1:]
        ]
        lines.append("| " + " | ".join(row) + " |")

    lines += ["", "## The target", ""]
    if verdict is None:
        lines.append("Not evaluated: the grid lacks the plain mean, an attack or a robust rule.")
    else:
        frac = f"{100 * verdict['fraction']:g}%"
        lines += [
            "The issue's target: *with 30% malicious clients running the strongest attack, "
            "the best robust rule keeps teacher accuracy within 3 points of the no-attack "
            "run, while the plain mean does not.*",
            "",
            f"- Strongest attack (lowest plain-mean accuracy at {frac}): "
            f"**{verdict['attack']}** (mean: {_pct(verdict['mean'])}).",
            f"- Best robust rule at that cell: **{verdict['best_rule']}** "
            f"({_pct(verdict['robust'])}).",
            f"- No attack (`{verdict['reference_rule']}`, the configured rule, replayed): "
            f"{_pct(verdict['no_attack'])}.",
            f"- Replay: {verdict['best_rule']} is {_below(verdict['robust_drop'])} no attack "
            f"(within 3 points: {_yes(verdict['robust_within'])}); the mean is "
            f"{_below(verdict['mean_drop'])} (more than 3 points below: "
            f"{_yes(verdict['mean_outside'])}). "
            f"**Target met in the replay: {_yes(verdict['met'])}.**",
        ]
        clean = setup.get("clean_run_accuracy_by_round") or []
        if len(clean) > 1:
            lines.append(
                f"- For scale: without attack the recorded teacher moved between "
                f"{_pct(min(clean[1:]))} and {_pct(max(clean[1:]))} over rounds 1–"
                f"{len(clean) - 1}, and one accuracy's standard error is about {se:.1f} points."
            )
        lines += _balanced_line(verdict.get("balanced"), "replay")
        if verdict["fraction"] != TARGET_FRACTION:
            lines.append(f"- The grid had no 30% cell; the largest fraction, {frac}, stood in.")
    confirm = result.get("confirm")
    lines += ["", "## Confirmation through the real pipeline", ""]
    if not confirm:
        lines.append("Not run (`--confirm` runs it: two more real simulations).")
    else:
        lines += _confirm_lines(confirm, setup["preset"])
    fid = result["fidelity"]
    lines += ["", "## Checks", ""]
    if fid["recorded"]:
        lines.append(
            f"- Replay against the recorded run (no attack, `{setup['aggregation']}`): "
            f"replayed {' → '.join(_pct(a) for a in fid['replayed'])}, recorded "
            f"{' → '.join(_pct(a) for a in fid['recorded'])}; largest difference "
            f"{100 * fid['max_difference']:.2f} points."
        )
    if rp["pretraining_reproduced"] is not None:
        lines.append(
            "- The re-run pre-training rebuilt the round-0 teacher bit for bit: "
            f"{_yes(rp['pretraining_reproduced'])} (if not, float rounding differs "
            "between processes; the RNG draws are the same)."
        )
    lines += [
        f"- Cost: {len(rp['cells'])} cells × {_rounds(len(rp['rounds']))} = "
        f"{rp['cell_rounds']} cell-rounds took {rp['updates']} teacher updates (cells whose "
        f"targets coincide share one): {timing['seconds_per_update']:.1f} s wall per update "
        f"with its evaluation, {timing['seconds_per_cell']:.1f} s wall per cell on average, "
        f"{rp['cpu_seconds'] / 60:.1f} CPU-minutes for the whole replay (the wall time "
        "depends on what else ran on the machine; the CPU time much less).",
        "",
        "## Rerun",
        "",
        "```",
        result["command"],
        "```",
        "",
        "Without `--replies-from DIR` the command first makes the clean run itself (as "
        f"`fedistill simulate --preset {setup['preset']} --set save-replies=true` does). "
        "`--rounds N` replays the first N "
        f"recorded rounds (default {DEFAULT_ROUNDS}; 0 = all); `--attacks`, `--fractions`, "
        "`--rules` narrow the grid; `--confirm` adds the two real attacked simulations "
        "(plain mean, best robust rule), `--confirm-attacks A,B` two more per attack.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- running
def environment() -> dict[str, Any]:
    from importlib.metadata import version

    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "flwr": version("flwr"),
        "opacus": version("opacus"),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
        "load_average": round(load, 1),
    }


def _read_teacher_accuracy(run_dir: Path) -> list[float]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [float(r["teacher_accuracy"]) for r in sorted(records, key=lambda r: r["round"])]


def _run_real(cfg: FedConfig, say: Callable[[str], None], num_cpus: int) -> float:
    """One real Flower simulation into ``cfg.out_dir``; returns its wall seconds."""
    from simulations.cli import _fresh_out_dir
    from simulations.report import finalize_summary
    from simulations.runner import run_simulation

    out = Path(cfg.out_dir)
    _fresh_out_dir(out)
    say(
        f"real simulation: aggregation={cfg.aggregation} attack={cfg.attack} "
        f"attack-fraction={cfg.attack_fraction} save-replies={cfg.save_replies} → {out}"
    )
    t0 = time.monotonic()

    def on_record(record: dict[str, Any]) -> None:
        say(
            f"  round {record['round']}: teacher {record['teacher_accuracy']:.4f} "
            f"[{time.monotonic() - t0:.0f}s]"
        )

    summary = run_simulation(cfg, num_cpus=num_cpus, on_record=on_record)
    finalize_summary(out.resolve(), summary)
    return time.monotonic() - t0


def run_robustness(
    cfg: FedConfig,
    *,
    preset: str,
    command: str,
    replies_from: Path | None,
    rounds: int,
    rules: Sequence[str],
    attacks: Sequence[str],
    fractions: Sequence[float],
    confirm: bool,
    work_dir: Path,
    doc: Path,
    json_path: Path,
    num_cpus: int = 1,
    say: Callable[[str], None] = print,
    reuse_runs: bool = False,
    confirm_extra: Sequence[str] = (),
) -> dict[str, Any]:
    """The whole harness: clean run (or reuse), replay grid, verdict, confirm, write.

    The JSON and the Markdown are written once the replay is done and again after the
    confirmation runs, so hours of replay survive a failed confirmation. With
    ``reuse_runs`` a finished real run of exactly the configuration a step needs, in its
    directory under ``work_dir``, is used instead of running it again.
    """
    from common.config import FedConfig as _FedConfig
    from common.config import load_toml

    start = time.monotonic()
    env = environment()
    clean_reused = replies_from is not None
    if replies_from is not None:
        run_dir = Path(replies_from)
        cfg = _FedConfig.from_mapping(load_toml(run_dir / "run_config.toml"))
        say(f"reusing the clean run in {run_dir} (its run_config.toml is the configuration)")
        simulation_seconds = _recorded_wall_seconds(run_dir)
    else:
        run_dir = work_dir / f"{preset}-clean"
        clean = cfg.replace(
            save_replies=True,
            attack=NO_ATTACK,
            attack_fraction=0.0,
            secure_aggregation=False,
            out_dir=str(run_dir),
        )
        seconds = finished_run_seconds(clean) if reuse_runs else None
        if seconds is not None and (run_dir / "teacher-round0.pt").exists():
            say(f"reusing the finished clean run in {run_dir} (same configuration)")
            simulation_seconds, clean_reused = seconds, True
        else:
            simulation_seconds = _run_real(clean, say, num_cpus)
        cfg = clean
    cells = cell_grid(rules, attacks, fractions)
    result_replay = replay(cfg, run_dir, cells, rounds=rounds, say=say)
    cells_json = [r.to_json() for r in result_replay.results]
    verdict = replay_verdict(cells_json, rules, attacks, fractions, cfg.aggregation)
    recorded = _read_teacher_accuracy(run_dir)
    replayed_ref = next(
        (
            r.accuracy_by_round
            for r in result_replay.results
            if r.cell == Cell(cfg.aggregation, NO_ATTACK, 0.0)
        ),
        [],
    )
    recorded_cut = recorded[1 : 1 + len(result_replay.rounds)] if replayed_ref else []
    diffs = [abs(a - b) for a, b in zip(replayed_ref, recorded_cut, strict=False)]
    result = {
        "benchmark": "robustness",
        "command": command,
        "environment": env,
        "setup": {
            "preset": preset,
            "dataset": cfg.dataset,
            "seed": cfg.seed,
            "num_clients": cfg.num_clients,
            "recorded_rounds": cfg.rounds,
            "public_batch_size": cfg.public_batch_size,
            "encoding": cfg.encoding,
            "aggregation": cfg.aggregation,
            "teacher_targets": cfg.teacher_targets,
            "trim_fraction": cfg.trim_fraction,
            "filter_ratio": getattr(cfg, "filter_ratio", None),
            "rules": list(rules),
            "attacks": list(attacks),
            "fractions": list(fractions),
            "clean_run": str(run_dir),
            "clean_run_accuracy_by_round": recorded,
            **_test_facts(cfg),
        },
        "replay": {
            "rounds": result_replay.rounds,
            "round0_accuracy": result_replay.round0_accuracy,
            "cells": cells_json,
            "updates": result_replay.updates,
            "cell_rounds": result_replay.cell_rounds,
            "seconds": result_replay.seconds,
            "cpu_seconds": result_replay.cpu_seconds,
            "pretraining_reproduced": result_replay.pretraining_reproduced,
        },
        "verdict": verdict,
        "confirm": None,
        "fidelity": {
            "replayed": replayed_ref,
            "recorded": recorded_cut,
            "max_difference": max(diffs) if diffs else None,
        },
        "timing": {
            "total_seconds": time.monotonic() - start,
            "simulation_seconds": simulation_seconds,
            "clean_run_reused": clean_reused,
            "confirm_seconds": 0.0,
            "seconds_per_update": result_replay.update_seconds / max(result_replay.updates, 1),
            "seconds_per_cell": result_replay.seconds / max(len(cells), 1),
        },
    }
    _write(result, doc, json_path, say)
    if confirm and verdict is None:
        say("--confirm skipped: the grid gives no strongest attack / best robust rule")
    elif confirm:
        t0 = time.monotonic()
        result["confirm"] = confirm_runs(
            cfg,
            verdict,
            run_dir,
            recorded,
            simulation_seconds,
            preset=preset,
            work_dir=work_dir,
            num_cpus=num_cpus,
            say=say,
            reuse_runs=reuse_runs,
            attacks=confirm_attacks(verdict, cells_json, rules, confirm_extra),
        )
        result["timing"]["confirm_seconds"] = time.monotonic() - t0
        result["timing"]["total_seconds"] = time.monotonic() - start
        _write(result, doc, json_path, say)
    return result


def confirm_attacks(
    verdict: dict[str, Any],
    cells: Sequence[dict[str, Any]],
    rules: Sequence[str],
    extra: Sequence[str],
) -> list[tuple[str, str]]:
    """(attack, best robust rule in the replay) for the replay's strongest attack and ``extra``.

    The replay ranks attacks by their direct effect on one teacher update; an attack that
    hurts more only by compounding over rounds (``collude`` pushing one class) shows in
    the real pipeline alone, hence ``--confirm-attacks``.
    """
    table = accuracy_table(cells)
    pairs = [(verdict["attack"], verdict["best_rule"])]
    for attack in extra:
        if attack not in (a for a, _ in pairs):
            pairs.append((attack, best_robust_rule(table, rules, attack, verdict["fraction"])))
    return pairs


def confirm_runs(
    cfg: FedConfig,
    verdict: dict[str, Any],
    run_dir: Path,
    recorded: list[float],
    clean_seconds: float,
    *,
    preset: str,
    work_dir: Path,
    num_cpus: int,
    say: Callable[[str], None],
    reuse_runs: bool = False,
    attacks: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """Real simulations of each confirmed attack with the plain mean and its best robust rule.

    The headline (``attack``, ``best_rule``, ``check``) is the attack that leaves the plain
    mean the lowest final accuracy in the real pipeline; ``per_attack`` keeps every check.
    """
    fraction = verdict["fraction"]
    pairs = list(attacks) or [(verdict["attack"], verdict["best_rule"])]
    clean = {
        "dir": str(run_dir),
        "aggregation": cfg.aggregation,
        "attack": NO_ATTACK,
        "fraction": 0.0,
        "accuracy": recorded[-1],
        "accuracy_by_round": recorded[1:],
        "seconds": clean_seconds,
    }
    runs = [clean]
    for attack, best in pairs:
        for rule in ("mean", best):
            out = work_dir / f"{preset}-{attack}-{100 * fraction:g}-{rule}"
            runs.append(_confirm_run(cfg, attack, fraction, rule, out, num_cpus, say, reuse_runs))
    for run in runs:
        run.update(final_teacher_scores(cfg, Path(run["dir"])))
    per_attack = [
        _attack_check(clean, runs[1 + 2 * i : 3 + 2 * i], attack, best)
        for i, (attack, best) in enumerate(pairs)
    ]
    headline = min(per_attack, key=lambda c: c["mean_accuracy"])
    return {
        "attack": headline["attack"],
        "fraction": fraction,
        "best_rule": headline["best_rule"],
        "no_attack": recorded[-1],
        "runs": runs,
        "check": headline["check"],
        "balanced": headline["balanced"],
        "per_attack": per_attack,
    }


def _confirm_run(
    cfg: FedConfig,
    attack: str,
    fraction: float,
    rule: str,
    out: Path,
    num_cpus: int,
    say: Callable[[str], None],
    reuse_runs: bool,
) -> dict[str, Any]:
    """One real attacked simulation (or a finished one of the same configuration)."""
    real = cfg.replace(
        attack=attack,
        attack_fraction=fraction,
        aggregation=rule,
        save_replies=False,
        out_dir=str(out),
    )
    seconds = finished_run_seconds(real) if reuse_runs else None
    reused = seconds is not None
    if reused:
        say(f"reusing the finished run in {out} (same configuration)")
    else:
        seconds = _run_real(real, say, num_cpus)
    by_round = _read_teacher_accuracy(out)
    return {
        "dir": str(out),
        "aggregation": rule,
        "attack": attack,
        "fraction": fraction,
        "accuracy": by_round[-1],
        "accuracy_by_round": by_round[1:],
        "seconds": seconds,
        "reused": reused,
    }


def _attack_check(
    clean: dict[str, Any], pair: list[dict[str, Any]], attack: str, best: str
) -> dict[str, Any]:
    """The target for one attack: its mean run and best-rule run against the clean run."""
    mean, robust = pair
    balanced = None
    if all(r.get("balanced_accuracy") is not None for r in (clean, mean, robust)):
        balanced = target_check(
            clean["balanced_accuracy"], robust["balanced_accuracy"], mean["balanced_accuracy"]
        )
    return {
        "attack": attack,
        "best_rule": best,
        "mean_accuracy": mean["accuracy"],
        "check": target_check(clean["accuracy"], robust["accuracy"], mean["accuracy"]),
        "balanced": balanced,
    }


_OTHER_SECTION = re.compile(r"<!-- ([\w-]+):begin -->.*?<!-- \1:end -->\n?", re.S)


def write_page(doc: Path, page: str) -> None:
    """Write ``page`` to ``doc``, keeping the sections other generators own there (between
    ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``, e.g. bench/faults.py's) at its end."""
    old = doc.read_text() if doc.exists() else ""
    kept = [m.group(0) for m in _OTHER_SECTION.finditer(old)]
    if kept:
        page = page.rstrip("\n") + "\n\n" + "".join(k if k.endswith("\n") else k + "\n"
                                                 for k in kept)
    doc.write_text(page)


def _write(result: dict[str, Any], doc: Path, json_path: Path, say: Callable[[str], None]) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    doc.parent.mkdir(parents=True, exist_ok=True)
    write_page(doc, render_markdown(result))
    say(f"wrote {doc} and {json_path} ({result['timing']['total_seconds'] / 60:.1f} min)")


def _recorded_wall_seconds(run_dir: Path) -> float:
    """The wall time ``summary.json`` of an earlier clean run recorded (0 when absent)."""
    try:
        return float(json.loads((Path(run_dir) / "summary.json").read_text())["wall_seconds"])
    except (OSError, KeyError, TypeError, ValueError):
        return 0.0


def _test_facts(cfg: FedConfig) -> dict[str, Any]:
    """Test-set size and the share of its most common class (a constant teacher's score)."""
    from common.task import prepare_task

    y = prepare_task(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len).test_y.numpy()
    counts = np.bincount(y)
    share = float(counts.max() / len(y)) if len(y) else None
    class0 = float(counts[0] / len(y)) if len(y) else None  # the class `collude` pushes
    return {"test_examples": len(y), "majority_share": share, "class0_share": class0}


def final_teacher_scores(cfg: FedConfig, run_dir: Path) -> dict[str, float | None]:
    """Balanced accuracy and largest predicted-class share of a run's final ``teacher.pt``."""
    import torch

    from common.models import build_model
    from common.task import prepare_task
    from common.training import predict_logits
    from coordinator.teacher import teacher_config

    path = Path(run_dir) / "teacher.pt"
    if not path.exists():
        return {"balanced_accuracy": None, "top_class_share": None}
    task = prepare_task(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len)
    teacher = build_model(teacher_config(cfg, task))
    teacher.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    device = torch.device("cpu")
    _, balanced = teacher_scores(teacher, task.test_x, task.test_y, device=device)
    pred = predict_logits(teacher, task.test_x, device=device).argmax(dim=1).numpy()
    return {
        "balanced_accuracy": balanced,
        "top_class_share": float(np.bincount(pred).max() / len(pred)),
    }


def finished_run_seconds(cfg: FedConfig) -> float | None:
    """Wall seconds of a finished run of exactly ``cfg`` in ``cfg.out_dir``, else None."""
    from common.config import FedConfig as _FedConfig
    from common.config import load_toml
    from common.errors import ConfigError

    out = Path(cfg.out_dir)
    try:
        saved = _FedConfig.from_mapping(load_toml(out / "run_config.toml"))
    except (ConfigError, OSError):
        return None
    if saved.replace(out_dir="") != cfg.replace(out_dir=""):
        return None
    seconds = _recorded_wall_seconds(out)
    return seconds if seconds > 0 and (out / "teacher.pt").exists() else None


def _split(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def register_robustness_command(app: typer.Typer) -> None:
    """Add ``fedistill robustness`` to the CLI (simulations/cli.py)."""

    @app.command()
    def robustness(
        preset: Annotated[str, typer.Option(help="A preset in simulations/presets.")] = "default",
        set_: Annotated[
            list[str] | None, typer.Option("--set", help="key=value override of the preset.")
        ] = None,
        replies_from: Annotated[
            Path | None, typer.Option(help="Reuse a clean run made with --set save-replies=true.")
        ] = None,
        rounds: Annotated[
            int,
            typer.Option(
                help="Replay the first N recorded rounds (0 = all; each round costs about as "
                "much again as the first)."
            ),
        ] = DEFAULT_ROUNDS,
        attacks: Annotated[str, typer.Option(help="Comma-separated attacks.")] = ",".join(
            DEFAULT_ATTACKS
        ),
        fractions: Annotated[
            str, typer.Option(help="Comma-separated shares of malicious clients.")
        ] = ",".join(f"{f:g}" for f in DEFAULT_FRACTIONS),
        rules: Annotated[
            str,
            typer.Option(help="Comma-separated rules (default: every registered one but dsfl)."),
        ] = "",
        confirm: Annotated[
            bool,
            typer.Option(
                help="Also run the strongest attack at 30% for real (mean, best robust rule)."
            ),
        ] = False,
        confirm_attacks_: Annotated[
            str,
            typer.Option(
                "--confirm-attacks",
                help="With --confirm: also run these attacks for real (comma-separated); "
                "the headline is the one that hurts the plain mean most there.",
            ),
        ] = "",
        work_dir: Annotated[Path, typer.Option(help="Where the real runs go.")] = (
            DEFAULT_WORK_DIR
        ),
        doc: Annotated[Path, typer.Option(help="The Markdown report.")] = DEFAULT_DOC,
        json_out: Annotated[Path, typer.Option("--json", help="The JSON result.")] = (DEFAULT_JSON),
        num_cpus: Annotated[int, typer.Option(help="CPUs per simulated client.")] = 1,
        threads: Annotated[
            int,
            typer.Option(
                help="torch threads for the replay (0 = torch's default, as the coordinator: "
                "bit-exact; 1 is much faster on a busy machine, within float rounding)."
            ),
        ] = 0,
        reuse_runs: Annotated[
            bool,
            typer.Option(
                "--reuse-runs",
                help="Use finished real runs of the same configuration in --work-dir "
                "instead of running them again.",
            ),
        ] = False,
        render: Annotated[
            bool, typer.Option("--render", help="Only rewrite --doc from --json; run nothing.")
        ] = False,
    ) -> None:
        """Teacher accuracy per aggregation rule × attack × fraction (docs/ROBUSTNESS.md)."""
        from client.attacks import POISONING
        from common.errors import ConfigError
        from coordinator.aggregation import AGGREGATORS
        from simulations.cli import console, resolve_config

        if render:
            write_page(doc, render_markdown(json.loads(json_out.read_text())))
            console.print(f"wrote {doc} from {json_out}")
            return
        attack_list = _split(attacks)
        bad = [a for a in attack_list if a not in POISONING]
        if bad:
            raise ConfigError(
                f"--attacks {bad} are not poisoning attacks; choose from {', '.join(POISONING)}."
            )
        try:
            fraction_list = [float(f) for f in _split(fractions)]
        except ValueError as exc:
            raise ConfigError(f"--fractions {fractions!r}: {exc}") from None
        if not fraction_list or not all(0 < f < 0.5 for f in fraction_list):
            raise ConfigError(f"--fractions {fractions!r} must be shares in (0, 0.5).")
        rule_list = _split(rules) or default_rules()
        unknown = [r for r in rule_list if r not in AGGREGATORS]
        if unknown:
            raise ConfigError(f"--rules {unknown} unknown; choose from {', '.join(AGGREGATORS)}.")
        if rounds < 0:
            raise ConfigError(f"--rounds {rounds} must be >= 0 (0 = all).")
        cfg = resolve_config(preset, None, set_ or [], None)
        parts = ["fedistill robustness", f"--preset {preset}"]
        parts += [f"--set {shlex.quote(s)}" for s in set_ or []]
        if replies_from:
            parts.append(f"--replies-from {replies_from}")
        if rounds != DEFAULT_ROUNDS:
            parts.append(f"--rounds {rounds}")
        if attacks != ",".join(DEFAULT_ATTACKS):
            parts.append(f"--attacks {attacks}")
        if fraction_list != list(DEFAULT_FRACTIONS):
            parts.append(f"--fractions {fractions}")
        if rules:
            parts.append(f"--rules {rules}")
        extra = _split(confirm_attacks_)
        if [a for a in extra if a not in attack_list]:
            raise ConfigError(
                f"--confirm-attacks {extra} must be among --attacks ({', '.join(attack_list)})."
            )
        if confirm:
            parts.append("--confirm")
        if extra:
            parts.append(f"--confirm-attacks {','.join(extra)}")
        if reuse_runs:
            parts.append("--reuse-runs")
        if threads:
            import torch

            torch.set_num_threads(threads)
            parts.append(f"--threads {threads}")
        run_robustness(
            cfg,
            preset=preset,
            command=" ".join(parts),
            replies_from=replies_from,
            rounds=rounds,
            rules=rule_list,
            attacks=attack_list,
            fractions=fraction_list,
            confirm=confirm,
            work_dir=work_dir,
            doc=doc,
            json_path=json_out,
            num_cpus=num_cpus,
            say=lambda text: console.print(text, markup=False, highlight=False),
            reuse_runs=reuse_runs,
            confirm_extra=extra,
        )
