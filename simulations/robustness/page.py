"""docs/ROBUSTNESS.md, rendered from the JSON result of ``fedistill robustness``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.metrics import mean_interval
from simulations.robustness.replay import (
    DEFAULT_ROUNDS,
    NO_ATTACK,
    NON_ROBUST_RULES,
    TARGET_FRACTION,
    TARGET_POINTS,
)
from simulations.robustness.verdict import accuracy_table

if TYPE_CHECKING:
    pass


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
        f"The same comparison in balanced accuracy (the target asks for both: balanced "
        f"accuracy does not reward a teacher for collapsing onto the majority class), "
        f"{where}: the best robust "
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


def _beyond_lines(table: dict[tuple[str, str, float], float], rules: list[str],
                  attacks: list[str], fractions: list[float],
                  verdict: dict[str, Any]) -> list[str]:
    """Above the target's share of attackers: each robust rule's worst attack, replayed."""
    above = [float(f) for f in fractions if float(f) > verdict["fraction"]]
    if not above:
        return []
    lines = ["", f"Above {100 * verdict['fraction']:g}% (replay; no attack "
             f"{_pct(verdict['no_attack'])}):", ""]
    for fraction in above:
        for rule in (r for r in rules if r not in NON_ROBUST_RULES):
            cells = [(table[(rule, a, fraction)], a) for a in attacks
                     if (rule, a, fraction) in table]
            if not cells:
                continue
            worst, attack = min(cells)
            drop = verdict["no_attack"] - worst
            lines.append(f"- {100 * fraction:g}%, `{rule}`: worst attack `{attack}`, "
                         f"{_pct(worst)} ({_below(drop)} no attack; "
                         f"{'holds' if drop <= TARGET_POINTS else 'breaks'} at 3 points).")
    return lines


def seed_headline(result: dict[str, Any]) -> dict[str, Any] | None:
    """One study's real-pipeline headline: clean, plain mean and best rule, both metrics."""
    confirm = result.get("confirm")
    if not confirm:
        return None
    acc, bal = confirm["check"], confirm.get("balanced") or {}
    return {"seed": result["setup"]["seed"], "attack": confirm["attack"],
            "fraction": confirm["fraction"], "best_rule": confirm["best_rule"],
            **{k: acc[k] for k in ("no_attack", "mean", "robust")},
            **{f"{k}_balanced": bal.get(k) for k in ("no_attack", "mean", "robust")}}


def _both(row: dict[str, Any], key: str) -> str:
    return f"{_pct(row[key])} / {_pct(row[key + '_balanced'])}"


def _drop_text(seeds: list[dict[str, Any]], key: str, suffix: str) -> str:
    mean, lo, hi = mean_interval([100 * (s["no_attack" + suffix] - s[key + suffix])
                                  for s in seeds])
    return f"{mean:.1f} [{lo:.1f}, {hi:.1f}]"


def _seed_lines(seeds: list[dict[str, Any]]) -> list[str]:
    """The headline cells of whole studies run with other seeds (`--seed-results`)."""
    lines = [
        "", "## The headline cells over seeds", "",
        "Each seed is a whole study (its own clean run, replay and the two real attacked "
        "runs of its strongest attack at 30%); accuracy / balanced accuracy (%) of the final "
        "teacher:", "",
        "| seed | strongest attack | clean | plain mean | best robust rule | that rule |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {s['seed']} | {s['attack']} {100 * s['fraction']:g}% | "
              f"{_both(s, 'no_attack')} | {_both(s, 'mean')} | `{s['best_rule']}` | "
              f"{_both(s, 'robust')} |" for s in seeds]
    complete = [s for s in seeds if s["mean_balanced"] is not None]
    if len(complete) > 1:
        lines += [
            "",
            f"Points lost against the clean run, mean over the {len(complete)} seeds [95% "
            f"interval]: the plain mean {_drop_text(complete, 'mean', '')} accuracy and "
            f"{_drop_text(complete, 'mean', '_balanced')} balanced accuracy; the best robust "
            f"rule {_drop_text(complete, 'robust', '')} and "
            f"{_drop_text(complete, 'robust', '_balanced')}.",
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
        "aggregation rule. Produced by `simulations/robustness/`; every number and every "
        "conclusion below is computed from `bench/results/robustness.json`.",
        "",
        f"Command: `{result['command']}`  ",
        f"Environment: torch {env['torch']}, flwr {env['flwr']}, opacus {env['opacus']}, "
        f"Python {env['python']}, {env.get('cpu_count', env.get('cpus'))} CPU(s) (load "
        f"average {env.get('load_average_1m', env.get('load_average'))} "
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
        "them; the coordinator's own teacher update (`guarded_update`: distillation on the "
        f"aggregate, teacher-targets = {setup['teacher_targets']}, then the anchor on its "
        "labeled set; an update that would collapse the teacher onto one class is rolled "
        f"back) trains the teacher; it is evaluated on the {n_test} test examples.",
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
        f"{_class0(setup)}, `adaptive` knows the rule: a wrong one-hot (the boundary value) "
        "against the mean, median and trimmed mean, and against `norm-filter` a step "
        "towards it that keeps its distance to the teacher's labels inside the filter's "
        "bound as it estimates it (`client/attacks.py adaptive`). Fractions are of the "
        f"{setup['num_clients']} clients.",
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
            "The issue's target: *with 30% malicious clients running the strongest attack "
            "(adaptive included), the best robust rule keeps the final teacher within 3 "
            "points of the clean run on both accuracy and balanced accuracy, while the plain "
            "mean loses more than 3 points.*",
            "",
            f"- Strongest attack (lowest plain-mean accuracy and balanced accuracy, averaged, "
            f"at {frac}): "
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
        lines += _beyond_lines(table, rules, attacks, fractions, verdict)
        if verdict["fraction"] != TARGET_FRACTION:
            lines.append(f"- The grid had no 30% cell; the largest fraction, {frac}, stood in.")
    confirm = result.get("confirm")
    lines += ["", "## Confirmation through the real pipeline", ""]
    if not confirm:
        lines.append("Not run (`--confirm` runs it: two more real simulations).")
    else:
        lines += _confirm_lines(confirm, setup["preset"])
    if result.get("seeds"):
        lines += _seed_lines(result["seeds"])
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




# The faults table (bench/faults.py) lives in the same page between these markers; it
# has its own generator, so rewriting the attack study keeps it.
FAULTS_BEGIN, FAULTS_END = "<!-- faults:begin -->", "<!-- faults:end -->"


def write_page(doc: Path, result: dict[str, Any]) -> None:
    """Write the attack study to ``doc``, keeping the faults section already there."""
    kept = ""
    if doc.exists():
        old = doc.read_text()
        start, end = old.find(FAULTS_BEGIN), old.find(FAULTS_END)
        if 0 <= start < end:
            kept = "\n" + old[start:end + len(FAULTS_END)] + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(render_markdown(result) + kept)
