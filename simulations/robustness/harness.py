"""The harness: the clean run, the replay, the real confirmation runs, and the files."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.environment import environment
from simulations.robustness.page import write_page
from simulations.robustness.replay import NO_ATTACK, Cell, cell_grid, replay, teacher_scores
from simulations.robustness.verdict import (
    accuracy_table,
    best_robust_rule,
    replay_verdict,
    target_check,
)

if TYPE_CHECKING:
    from common.config import FedConfig


DEFAULT_WORK_DIR = Path("runs") / "robustness"
DEFAULT_DOC = Path("docs") / "ROBUSTNESS.md"
DEFAULT_JSON = Path("bench") / "results" / "robustness.json"


# ---------------------------------------------------------------------------- running
def _read_teacher_accuracy(run_dir: Path) -> list[float]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [float(r["teacher_accuracy"]) for r in sorted(records, key=lambda r: r["round"])]


def _run_real(cfg: FedConfig, say: Callable[[str], None], num_cpus: int) -> float:
    """One real Flower simulation into ``cfg.out_dir``; returns its wall seconds."""
    from simulations.cli_common import fresh_out_dir
    from simulations.report import finalize_summary
    from simulations.runner import run_simulation

    out = Path(cfg.out_dir)
    fresh_out_dir(out)
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


def _write(result: dict[str, Any], doc: Path, json_path: Path, say: Callable[[str], None]) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    write_page(doc, result)
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
    from common.training import predict_logits
    from coordinator.teacher import teacher_config, teacher_task

    path = Path(run_dir) / "teacher.pt"
    if not path.exists():
        return {"balanced_accuracy": None, "top_class_share": None}
    task = teacher_task(cfg)
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


