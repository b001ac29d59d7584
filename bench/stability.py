"""Stability of the default preset across node secrets and seeds (issue 15).

    python -m bench.stability --runs 10 [--preset default] [--set key=value ...]

Runs the preset ``--runs`` times through Flower's Simulation Engine (``--in-process``:
the same apps over bench/tune.py's in-process grid, without Ray), cycling the seeds 0, 1,
2; each run starts in a fresh directory, so every simulated node draws a new secret and
with it new DP sampling and noise. For each run it records the teacher's initial and
final test accuracy, the rounds whose teacher update was not applied, and the largest
share of the test set the final teacher puts in one class (1.0 = a one-class predictor).
Writes ``bench/results/stability.json``; ``bench/results.py`` renders it into docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.tune import tune
from common.task import prepare_task, task_for
from common.training import predict_logits
from coordinator.teacher import teacher_config
from simulations.cli_common import resolve_config
from simulations.runner import run_simulation

ROOT = Path(__file__).resolve().parent.parent

OUT = ROOT / "bench" / "results" / "stability.json"


def largest_class_share(cfg: Any, run: Path) -> float:
    """Share of the test set the run's final teacher puts in its most predicted class."""
    from common.models import build_model

    task = task_for(cfg, prepare_task(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len),
                    cfg.teacher_family)
    teacher = build_model(teacher_config(cfg, task))
    teacher.load_state_dict(torch.load(run / "teacher.pt", map_location="cpu",
                                       weights_only=True))
    predicted = predict_logits(teacher, task.test_x, device=torch.device("cpu")).argmax(1)
    return float(np.bincount(predicted.numpy(), minlength=task.num_classes).max()
                 / len(predicted))


def one_run(preset: str, seed: int, sets: list[str], run: Path,
            in_process: bool = False) -> dict[str, Any]:
    shutil.rmtree(run, ignore_errors=True)
    cfg = resolve_config(preset, None, [*sets, f"seed={seed}"], run)
    if in_process:  # the same apps over bench/tune.py's in-process grid, without Ray
        tune(preset, [*sets, f"seed={seed}"], run)
    else:
        run_simulation(cfg)
    records = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    return {"seed": seed,
            "teacher_initial": records[0]["teacher_accuracy"],
            "teacher_final": records[-1]["teacher_accuracy"],
            "not_applied": [r["round"] for r in records
                            if r.get("teacher_update", "applied") != "applied"],
            "largest_class_share": largest_class_share(cfg, run)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "stability"))
    parser.add_argument("--out", default=str(OUT), help="the results file")
    parser.add_argument("--in-process", action="store_true",
                        help="run the apps over an in-process grid (bench/tune.py), not "
                             "through Flower's Simulation Engine: the same rounds, faster")
    args = parser.parse_args()
    torch.set_num_threads(1)
    command = (f"python -m bench.stability --preset {args.preset} --runs {args.runs}"
               + "".join(f" --set {s}" for s in args.sets)
               + (" --in-process" if args.in_process else "")
               + (f" --out {Path(args.out).resolve().relative_to(ROOT)}" if Path(args.out).resolve()
                  != OUT else ""))
    rows = []
    for k in range(args.runs):
        rows.append(one_run(args.preset, k % 3, args.sets, Path(args.runs_dir) / f"run-{k}",
                            args.in_process))
        print(json.dumps(rows[-1]), flush=True)
        # after every run: an interrupted series keeps (and the page counts) the runs done
        Path(args.out).write_text(json.dumps(
            {"command": command, "preset": args.preset, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
