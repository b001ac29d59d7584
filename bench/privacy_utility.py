"""Benchmark 3, privacy-utility: test accuracy at ε ∈ {1, 3, 8, ∞} per dataset and method.

    python -m bench.privacy_utility [--presets default,sst2] [--epsilons 1,3,8,inf]
        [--methods dp-fedavg,centralized-dp,local-only] [--workers N] [--device auto]
        [--budget-s S] [--set key=value ...] [--out bench/results/privacy_utility.json]
    python -m bench.privacy_utility --collect      # re-read FD rows, no training
    python -m bench.privacy_utility --quick        # smoke: 2 tiny cells, runs/ output

Methods and where their numbers come from:

- **federated distillation** (FD): not run here. Its rows come from
  ``bench/results/<preset>.json``, written by
  ``python -m bench.results --preset P --seeds 0
  --methods federated-distillation,non-private-fd --set epsilon=E`` (Flower simulation):
  method ``federated-distillation`` with ``privacy.budget == E`` for a finite ε, method
  ``non-private-fd`` for ε=∞. A cell without such a row shows as *not run*.
- **DP-FedAvg**, **centralized DP-SGD**, **local-only**: ``simulations/baselines.py`` run
  in this process tree (one worker process per cell, in parallel) with the preset's
  ``FedConfig`` and ``epsilon=E``; at ε=∞ the non-private counterpart: ``fedavg``,
  ``centralized``, and local-only with DP off (``run_baseline`` has no such name, so the
  baselines' own ``local_only`` loop is called with ``dp=False``).

"The" accuracy of a method is the test accuracy of the model a participant ends up with,
i.e. ``final.student_accuracy_mean`` of every summary: for FD the mean over the clients'
students (after distillation), for DP-FedAvg/FedAvg the global model, for centralized the
one pooled student, for local-only the mean over the clients' own students. FD's server
teacher (``final.teacher_accuracy``) is shown beside it, but the targets are judged on
the students' mean. Targets (issue "Benchmarks", item 3): at ε=8, FD within 3 points of
non-private FD; FD ahead of DP-FedAvg at every finite ε.

The script needs torch and opacus but not flwr: presets are read with
``common.config.load_toml`` so that it also runs on a machine without Flower
(``bench/run_privacy_utility.sh`` runs it on a GPU machine). The pure parts
(reading FD rows, the targets, the page section) import neither torch nor the project.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.privacy_utility_grid import (
    BASELINES,
    GAP_POINTS,
    INF,
    PRESETS,
    baseline_cells,
    cell_key,
    eps_key,
    evaluate_targets,
    fd_cells,
    grid,
    parse_eps,
    settings_eps,
)
from bench.privacy_utility_page import cell_text, verdict
from common.environment import environment

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
OUT = RESULTS / "privacy_utility.json"
QUICK_OUT = ROOT / "runs" / "privacy_utility_quick.json"

# Rough relative cost, to start the slowest cells first.
_COST = {"local-only": 4, "dp-fedavg": 3, "centralized-dp": 2, "local-only-nodp": 2,
         "fedavg": 1, "centralized": 1}



# ------------------------------------------------------------------------ running
def preset_config(preset: str, sets: list[str], out_dir: str, device: str) -> Any:
    """The preset's FedConfig without simulations.cli (which imports Flower)."""
    from common.config import FedConfig, load_toml, parse_assignments

    values = load_toml(ROOT / "simulations" / "presets" / f"{preset}.toml")
    values.update(parse_assignments(sets))
    values["out-dir"] = out_dir
    values["device"] = device
    return FedConfig.from_mapping(values)


_WORKER_DEVICE: str | None = None


def _worker_init(counter: Any = None, cuda_workers: int = 0) -> None:
    """One torch thread per worker; with ``--device mixed`` the first ``cuda_workers``
    workers to start train on CUDA and the others on the CPU (cells go to whichever
    worker is free, so neither side waits for the other)."""
    global _WORKER_DEVICE
    import torch

    torch.set_num_threads(1)
    if counter is not None:
        with counter.get_lock():
            index = counter.value
            counter.value += 1
        _WORKER_DEVICE = "cuda" if index < cuda_workers else "cpu"


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """One baseline cell in a worker process; returns its table row (or an error row)."""
    from simulations import baselines

    start = time.monotonic()
    row = {k: cell[k] for k in ("preset", "method", "run", "epsilon", "epsilon_key", "seed")}
    row["device"] = _WORKER_DEVICE or cell["device"]
    try:
        eps = cell["epsilon"]
        sets = [*cell["sets"], f"seed={cell['seed']}"]
        if eps is not None:
            sets.append(f"epsilon={eps}")
        with tempfile.TemporaryDirectory(prefix="pu-") as tmp:
            cfg = preset_config(cell["preset"], sets, tmp, row["device"])
            console = _quiet_console()
            if cell["run"] == "local-only-nodp":
                summary = _local_only_nonprivate(cfg, baselines)
            else:
                summary = baselines.run_baseline(cell["run"], cfg, console=console)
        final, privacy = summary["final"], summary["privacy"]
        row.update({
            "dataset": summary["dataset"], "rounds": summary["rounds"],
            "clients": summary["clients"], "students": summary["students"],
            "accuracy": final["student_accuracy_mean"],
            "ensemble_accuracy": final.get("ensemble_accuracy"),
            "student_accuracy": final["student_accuracy"],
            "dp": privacy["dp"], "epsilon_max": privacy["epsilon_max"],
        })
    except Exception as exc:  # noqa: BLE001 - one failed cell must not lose the others
        row["error"] = f"{type(exc).__name__}: {exc}"
    row["seconds"] = round(time.monotonic() - start, 1)
    return row


def _quiet_console() -> Any:
    from rich.console import Console

    return Console(quiet=True)


def _local_only_nonprivate(cfg: Any, baselines: Any) -> dict[str, Any]:
    """Local-only without DP: the baselines' own loop with ``dp=False``."""
    import torch

    from common.task import client_partitions, prepare_task

    start = time.monotonic()
    torch.manual_seed(cfg.seed)
    task = prepare_task(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len)
    parts = client_partitions(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len,
                              cfg.num_clients, cfg.partition, cfg.alpha)
    result = baselines.local_only(cfg, task, parts, dp=False)
    result["epsilon"] = {k: INF for k in result["epsilon"]}  # no DP step was taken
    return baselines.baseline_summary("local-only", cfg, result, time.monotonic() - start)


def plan(presets: list[str], epsilons: list[float], methods: list[str], seed: int,
         sets: list[str], device: str) -> list[dict[str, Any]]:
    """Every baseline cell, slowest first."""
    cells = []
    for preset in presets:
        for method in methods:
            private, public = BASELINES[method]
            for eps in epsilons:
                run = public if math.isinf(eps) else private
                cells.append({"preset": preset, "method": method, "run": run,
                              "epsilon": None if math.isinf(eps) else eps,
                              "epsilon_key": eps_key(eps), "seed": seed, "sets": sets,
                              "device": device})
    return sorted(cells, key=lambda c: (-_COST[c["run"]], c["preset"] != "default"))


def preset_settings(preset: str, sets: list[str]) -> dict[str, Any]:
    """The settings a cell depends on, and the test set's majority-class accuracy (the
    floor a classifier that learned nothing reaches)."""
    import numpy as np

    from common.data import load_dataset

    cfg = preset_config(preset, sets, "unused", "cpu")
    try:
        labels = np.asarray(load_dataset(cfg.dataset, seed=cfg.seed).test.labels)
        majority = float(np.bincount(labels).max() / len(labels))
    except Exception:  # noqa: BLE001 - a reference line only; the data may be absent
        majority = None
    return {"dataset": cfg.dataset, "rounds": cfg.rounds, "clients": cfg.num_clients,
            "students": cfg.students, "partition": cfg.partition, "alpha": cfg.alpha,
            "dp_epochs": cfg.dp_epochs, "dp_batch_size": cfg.dp_batch_size,
            "delta": cfg.delta, "accountant": cfg.accountant,
            "majority_class_accuracy": majority}


def load_preset_results(presets: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for p in presets:
        path = RESULTS / f"{p}.json"
        if path.exists():
            out[p] = json.loads(path.read_text())
    return out


def assemble(data: dict[str, Any]) -> dict[str, Any]:
    """Snapshot the FD cells and the targets into ``data`` (from the results.py files)."""
    settings = data["settings"]
    results = load_preset_results(settings["presets"])
    args = {p: (results.get(p, {}).get("rows", []), p, settings["configs"][p],
                settings["seed"], settings_eps(settings)) for p in settings["presets"]}
    data["fd"] = {p: fd_cells(*a) for p, a in args.items()}
    data["baselines_from_results_py"] = {p: baseline_cells(*a) for p, a in args.items()}
    data["targets"] = evaluate_targets(grid(data))
    return data


def _json_eps(values: list[float]) -> list[float | None]:
    return [None if math.isinf(e) else e for e in values]


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=False))
    tmp.replace(path)


def _print_table(data: dict[str, Any]) -> None:
    table = grid(data)
    keys = [eps_key(e) for e in settings_eps(data["settings"])]
    print(f"{'preset':8} {'method':16} " + " ".join(f"{'ε=' + k:>8}" for k in keys))
    for preset, t in table.items():
        for method, cells in t.items():
            print(f"{preset:8} {method:16} "
                  + " ".join(f"{cell_text(cells.get(k)):>8}" for k in keys))
    t = data["targets"]
    print(f"targets: within {GAP_POINTS:g} points at ε=8: {verdict(t['fd_within_gap_at_8'])}; "
          f"ahead of DP-FedAvg: {verdict(t['fd_ahead_of_dp_fedavg'])}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--epsilons", default="1,3,8,inf")
    parser.add_argument("--methods", default=",".join(BASELINES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mixed")
    parser.add_argument("--workers", type=int, default=0,
                        help="parallel worker processes (default: CPU count - 1)")
    parser.add_argument("--cuda-workers", type=int, default=0,
                        help="with --device mixed: how many workers use CUDA (rest: CPU)")
    parser.add_argument("--budget-s", type=float, default=0.0,
                        help="stop waiting for cells after this many seconds (0: no limit)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--collect", action="store_true",
                        help="no training: re-read the FD rows and recompute the targets")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: default preset, centralized-dp at ε=8 and ∞, "
                             "1 round, 0.2 DP epochs; written under runs/")
    args = parser.parse_args(argv)

    if args.quick:
        args.presets, args.epsilons, args.methods = "default", "8,inf", "centralized-dp"
        args.sets = ["rounds=1", "dp-epochs=0.2", *args.sets]
    out = Path(args.out) if args.out else (QUICK_OUT if args.quick else OUT)

    import torch

    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    epsilons = [parse_eps(e) for e in args.epsilons.split(",")]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    command = "python -m bench.privacy_utility " + " ".join(
        argv if argv is not None else sys.argv[1:])
    old = json.loads(out.read_text()) if out.exists() and not args.quick else {}

    if args.collect:  # no training: the grid's settings, FD and results.py cells, targets
        data = old or {
            "benchmark": "privacy-utility", "command": command.strip(),
            "environment": environment("none (no baseline run)", torch_threads=1),
            "settings": {"presets": presets, "epsilons": _json_eps(epsilons),
                         "methods": list(BASELINES), "seed": args.seed, "sets": args.sets,
                         "quick": args.quick, "workers": 0, "device": None,
                         "configs": {p: preset_settings(p, args.sets) for p in presets}},
            "rows": [], "pending": [], "wall_seconds": 0.0}
        data = assemble(data)
        _write(out, data)
        _print_table(data)
        print(f"wrote {out}")
        return

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    workers = args.workers or max(1, (os.cpu_count() or 2) - 1)
    cuda_workers = 0
    if device == "mixed":
        cuda_workers = min(args.cuda_workers, workers) if torch.cuda.is_available() else 0
        device = f"mixed: {cuda_workers} cuda + {workers - cuda_workers} cpu workers"
    env = environment(device, torch_threads=1)
    print("environment:", json.dumps(env), flush=True)
    cells = plan(presets, epsilons, methods, args.seed, args.sets, device)
    fresh = {cell_key(c) for c in cells}
    kept = [r for r in old.get("rows", []) if cell_key(r) not in fresh]
    all_presets = list(dict.fromkeys([*old.get("settings", {}).get("presets", []), *presets]))
    all_eps = sorted({*(settings_eps(old["settings"]) if old else ()), *epsilons})
    data: dict[str, Any] = {
        "benchmark": "privacy-utility", "command": command.strip(), "environment": env,
        "settings": {"presets": all_presets, "epsilons": _json_eps(all_eps),
                     "methods": list(BASELINES), "seed": args.seed, "sets": args.sets,
                     "quick": args.quick, "workers": workers, "device": device,
                     "configs": {p: preset_settings(p, args.sets) for p in all_presets}},
        "rows": kept, "pending": [], "wall_seconds": 0.0,
    }

    def save(pending: list[dict[str, Any]]) -> None:
        data["pending"] = [{k: c[k] for k in ("preset", "method", "epsilon_key")}
                           for c in pending]
        data["wall_seconds"] = round(time.monotonic() - start, 1)
        _write(out, assemble(dict(data)))

    start = time.monotonic()
    print(f"{len(cells)} cells on {workers} workers, device {device}", flush=True)
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    initargs = (ctx.Value("i", 0), cuda_workers) if device.startswith("mixed") else ()
    pool = ctx.Pool(workers, initializer=_worker_init, initargs=initargs)
    pending = {i: (c, pool.apply_async(run_cell, (c,))) for i, c in enumerate(cells)}
    save([c for c, _ in pending.values()])
    try:
        while pending:
            time.sleep(1.0)
            for i in [i for i, (_, r) in pending.items() if r.ready()]:
                cell, res = pending.pop(i)
                row = res.get()
                data["rows"].append(row)
                what = (f"error {row['error']}" if "error" in row
                        else f"accuracy {row['accuracy']:.3f}")
                print(f"[{time.monotonic() - start:6.1f}s] {cell['preset']} {cell['method']} "
                      f"ε={cell['epsilon_key']} ({cell['run']}): {what} "
                      f"in {row['seconds']:.0f} s", flush=True)
                save([c for c, _ in pending.values()])
            if args.budget_s and time.monotonic() - start > args.budget_s and pending:
                print(f"budget of {args.budget_s:.0f} s spent: {len(pending)} cells left",
                      flush=True)
                break
    finally:
        pool.terminate()
        pool.join()
    save([c for c, _ in pending.values()])
    data = json.loads(out.read_text())
    _print_table(data)
    print(f"wrote {out} ({data['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
