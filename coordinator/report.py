"""What the coordinator writes: one ``metrics.jsonl`` line per round and ``summary.json``."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.config import FedConfig


def append_metrics(out: Path, record: dict[str, Any]) -> None:
    """Append one round's record, durably (a reader may be tailing the file)."""
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def save_round_replies(out: Path, rnd: int, indices: np.ndarray, probs: Sequence[np.ndarray],
                       counts: Sequence[int], client_ids: Sequence[str]) -> Path:
    """Keep one round's decoded replies (``save-replies``) for replaying its aggregation.

    The robustness harness (simulations/robustness/) replays these honest replies with
    attackers and rules of its choice. Plain mode only: under secure aggregation the
    coordinator never holds a single client's soft labels.
    """
    folder = out / "replies"
    folder.mkdir(exist_ok=True)
    path = folder / f"round-{rnd:03d}.npz"
    np.savez_compressed(path, indices=indices, probs=np.stack(probs).astype(np.float32),
                        counts=np.asarray(counts, dtype=np.int64),
                        client_ids=np.asarray(client_ids))
    return path


def rewrite_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    """On resume, make ``metrics.jsonl`` hold exactly the checkpointed rounds.

    A crash between appending a round's line and saving its checkpoint would otherwise
    leave that round in the file twice once it is run again after the restart.
    """
    tmp = out / "metrics.jsonl.tmp"
    with tmp.open("w") as fh:
        fh.writelines(json.dumps(r, sort_keys=True) + "\n" for r in history)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out / "metrics.jsonl")


def build_summary(cfg: FedConfig, history: list[dict[str, Any]],
                  task: str = "classification") -> dict[str, Any]:
    """The run's summary in the form every baseline also writes (README, summary.json).

    Scores are named by the task's metric (``metric``): ``teacher_accuracy`` ... for
    classification, ``teacher_mse`` ... (and ``_mae``) for forecasting."""
    rounds = [r for r in history if r["round"] > 0]
    last = rounds[-1] if rounds else history[-1]
    name = history[0].get("metric", "accuracy")
    evaluated = [r for r in rounds if f"ensemble_{name}" in r]
    final_eval = evaluated[-1] if evaluated else {}
    eps: dict[str, float] = {}
    for r in rounds:  # the latest ε each client reported
        eps.update(r.get("epsilon", {}))
    return {
        "task": task,
        "metric": name,
        "method": "federated-distillation" if cfg.private_training else "public-only",
        "dataset": cfg.dataset,
        "rounds": len(rounds),
        "clients": cfg.num_clients,
        "clients_took_part": len(eps),  # a client that replied in any round reported its ε
        "students": cfg.students,
        "aggregation": cfg.aggregation,
        "encoding": cfg.encoding,
        "seed": cfg.seed,
        "final": _final(history[0], last, final_eval, name),
        "privacy": {
            "dp": cfg.dp and cfg.private_training,
            "delta": cfg.delta,
            "budget": cfg.epsilon,
            "accountant": cfg.accountant,
            "epsilon_per_client": eps,
            "epsilon_max": max(eps.values()) if eps else 0.0,
            "source": "reported by clients",
        },
        "communication": {
            "bytes_up": sum(r.get("bytes_up", 0) for r in rounds),
            "bytes_down": sum(r.get("bytes_down", 0) for r in rounds),
        },
        "wall_seconds": sum(r.get("seconds", 0.0) for r in history),
    }


def _final(first: dict[str, Any], last: dict[str, Any], final_eval: dict[str, Any],
           name: str) -> dict[str, Any]:
    """The final scores: the teacher's (and its round-0 main score), the ensemble's and the
    students' of the last evaluate round."""
    final = {f"teacher_{name}_initial": first[f"teacher_{name}"],
             f"student_{name}_mean": final_eval.get(f"student_{name}_mean"),
             f"student_{name}": final_eval.get(f"student_{name}", {})}
    for key in last:
        if key.startswith("teacher_") and key != "teacher_update":
            final[key] = last[key]
    for key in (k for k in final_eval if k.startswith("ensemble_")):
        final[key] = final_eval[key]
    final.setdefault(f"ensemble_{name}", None)
    return final


def write_summary(out: Path, cfg: FedConfig, history: list[dict[str, Any]],
                  task: str = "classification") -> dict[str, Any]:
    summary = build_summary(cfg, history, task)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary
