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

from bench.pages import text
from common.environment import environment

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
OUT = RESULTS / "privacy_utility.json"
QUICK_OUT = ROOT / "runs" / "privacy_utility_quick.json"

INF = math.inf
EPSILONS = (1.0, 3.0, 8.0, INF)
PRESETS = ("default", "sst2")
# Method label -> (baseline run at a finite ε, its non-private counterpart run at ε=∞).
BASELINES = {
    "dp-fedavg": ("dp-fedavg", "fedavg"),
    "centralized-dp": ("centralized-dp", "centralized"),
    "local-only": ("local-only", "local-only-nodp"),
}
FD_PRIVATE, FD_NONPRIVATE = "federated-distillation", "non-private-fd"
LABELS = {
    "fd-students": "federated distillation, students (mean)",
    "fd-teacher": "federated distillation, server teacher",
    "dp-fedavg": "DP-FedAvg, global model (ε=∞: FedAvg)",
    "centralized-dp": "centralized DP-SGD (ε=∞: non-private)",
    "local-only": "local-only, students (mean) (ε=∞: no DP)",
}
GAP_POINTS = 3.0  # FD at ε=8 within this many points of non-private FD
TARGET_EPSILON = 8.0
# Rough relative cost, to start the slowest cells first.
_COST = {"local-only": 4, "dp-fedavg": 3, "centralized-dp": 2, "local-only-nodp": 2,
         "fedavg": 1, "centralized": 1}


# ------------------------------------------------------------------------ pure parts
def eps_key(eps: float | None) -> str:
    """ε as a JSON-safe key: ``"1"``, ``"8"``, ``"inf"``."""
    return "inf" if eps is None or math.isinf(eps) else f"{eps:g}"


def parse_eps(text: str) -> float:
    return INF if text.strip().lower() in ("inf", "∞", "none") else float(text)


def settings_eps(settings: dict[str, Any]) -> tuple[float, ...]:
    """The ε grid of a result file (stored with ``null`` for ∞: JSON has no infinity)."""
    return tuple(INF if e is None else float(e) for e in settings["epsilons"])


def _same_experiment(row: dict[str, Any], config: dict[str, Any], seed: int) -> bool:
    return row.get("seed") == seed and all(
        row.get(k) == config.get(k) for k in ("dataset", "rounds", "clients")
        if config.get(k) is not None)


def fd_cells(rows: list[dict[str, Any]], preset: str, config: dict[str, Any], seed: int,
             epsilons: tuple[float, ...] = EPSILONS) -> dict[str, dict[str, Any]]:
    """FD cells of one preset, by ε key, from ``bench/results/<preset>.json``'s rows.

    A row counts when its seed is ``seed`` and its dataset, rounds and clients are those
    of ``config`` (the baselines' preset settings): a run with other settings is not the
    same experiment. Finite ε: method ``federated-distillation`` with DP on and
    ``privacy.budget == ε``; ε=∞: method ``non-private-fd``. The last matching row wins.
    """
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        if not _same_experiment(row, config, seed):
            continue
        privacy, final = row.get("privacy") or {}, row.get("final") or {}
        if row.get("method") == FD_NONPRIVATE:
            eps = INF
        elif row.get("method") == FD_PRIVATE and privacy.get("dp") and privacy.get("budget"):
            eps = float(privacy["budget"])
        else:
            continue
        if eps not in epsilons:
            continue
        out[eps_key(eps)] = {
            "preset": preset, "method": row["method"], "epsilon": None if eps == INF else eps,
            "seed": seed, "students": row.get("students"),
            "student_accuracy_mean": final.get("student_accuracy_mean"),
            "teacher_accuracy": final.get("teacher_accuracy"),
            "ensemble_accuracy": final.get("ensemble_accuracy"),
            "epsilon_max": privacy.get("epsilon_max"),
            "source": f"bench/results/{preset}.json",
        }
    return out


def baseline_cells(rows: list[dict[str, Any]], preset: str, config: dict[str, Any],
                   seed: int, epsilons: tuple[float, ...] = EPSILONS
                   ) -> dict[str, dict[str, float]]:
    """Baseline accuracies {method: {ε key: accuracy}} from ``bench/results.py`` rows.

    ``results.py`` runs the same ``run_baseline`` on the same preset settings, so its rows
    fill cells this script has not run (same seed/dataset/rounds/clients rule as
    :func:`fd_cells`): a DP baseline at ``privacy.budget == ε``, and at ε=∞ ``fedavg`` and
    ``centralized``. Local-only without DP exists only in this script's own runs.
    """
    out: dict[str, dict[str, float]] = {m: {} for m in BASELINES}
    for row in rows:
        if not _same_experiment(row, config, seed):
            continue
        privacy, final = row.get("privacy") or {}, row.get("final") or {}
        acc = final.get("student_accuracy_mean")
        for method, (private, public) in BASELINES.items():
            if row.get("method") == private and privacy.get("dp") and privacy.get("budget"):
                eps = float(privacy["budget"])
            elif row.get("method") == public and not privacy.get("dp"):
                eps = INF
            else:
                continue
            if eps in epsilons and acc is not None:
                out[method][eps_key(eps)] = acc
    return out


def grid(data: dict[str, Any], preset_results: dict[str, dict[str, Any]] | None = None,
         borrowed: set[tuple[str, str, str]] | None = None) -> dict[str, Any]:
    """{preset: {method: {ε key: accuracy or None}}} for every table row of LABELS.

    FD cells, and baseline cells this script has not run itself, are re-read from
    ``preset_results`` (``{preset: results.py file}``) when a preset's file is given,
    else taken from the snapshot in ``data["fd"]`` / ``data["baselines_from_results_py"]``.
    ``borrowed`` collects the (preset, method, ε key) of baseline cells so filled.
    """
    settings = data["settings"]
    keys = [eps_key(e) for e in settings_eps(settings)]
    out: dict[str, Any] = {}
    for preset in settings["presets"]:
        config = settings["configs"].get(preset, {})
        if preset_results is not None and preset in preset_results:
            rows = preset_results[preset].get("rows", [])
            fd = fd_cells(rows, preset, config, settings["seed"], settings_eps(settings))
            other = baseline_cells(rows, preset, config, settings["seed"],
                                   settings_eps(settings))
        else:
            fd = data.get("fd", {}).get(preset, {})
            other = data.get("baselines_from_results_py", {}).get(preset, {})
        table: dict[str, dict[str, float | None]] = {
            "fd-students": {k: (fd.get(k) or {}).get("student_accuracy_mean") for k in keys},
            "fd-teacher": {k: (fd.get(k) or {}).get("teacher_accuracy") for k in keys},
        }
        for method in BASELINES:
            table[method] = {k: None for k in keys}
        for row in data.get("rows", []):
            if row.get("preset") == preset and row.get("method") in BASELINES \
                    and "accuracy" in row and row["epsilon_key"] in keys:
                table[row["method"]][row["epsilon_key"]] = row["accuracy"]
        for method, cells in other.items():
            for k, acc in cells.items():
                if k in keys and table[method][k] is None:
                    table[method][k] = acc
                    if borrowed is not None:
                        borrowed.add((preset, method, k))
        out[preset] = table
    return out


def evaluate_targets(table: dict[str, Any]) -> dict[str, Any]:
    """The issue's two targets per preset, judged on the FD students' mean accuracy.

    ``met`` is True or False when every cell the target needs is there, else None
    (*not decided*: some cell is not run). A target's overall ``met`` is False as soon as
    one preset misses it, True when every preset meets it, else None.
    """
    per: dict[str, Any] = {}
    target = eps_key(TARGET_EPSILON)
    for preset, t in table.items():
        fd, nonpriv = t["fd-students"].get(target), t["fd-students"].get("inf")
        gap = None if fd is None or nonpriv is None else 100.0 * (nonpriv - fd)
        gap_met = None if gap is None else gap <= GAP_POINTS
        ahead = {}
        for k in t["fd-students"]:
            if k == "inf":
                continue
            a, b = t["fd-students"][k], t["dp-fedavg"].get(k)
            ahead[k] = {"fd": a, "dp_fedavg": b,
                        "margin_points": None if a is None or b is None else 100.0 * (a - b),
                        "met": None if a is None or b is None else a > b}
        vals = [v["met"] for v in ahead.values()]
        ahead_met = False if False in vals else (None if None in vals or not vals else True)
        # Information only: the same comparisons with the server teacher.
        tfd, tnp = t["fd-teacher"].get(target), t["fd-teacher"].get("inf")
        per[preset] = {
            "fd_within_gap_at_8": {"fd": fd, "non_private_fd": nonpriv, "gap_points": gap,
                                   "max_gap_points": GAP_POINTS, "met": gap_met,
                                   "teacher_gap_points": None if tfd is None or tnp is None
                                   else 100.0 * (tnp - tfd)},
            "fd_ahead_of_dp_fedavg": {"per_epsilon": ahead, "met": ahead_met},
        }

    def overall(name: str) -> bool | None:
        vals = [p[name]["met"] for p in per.values()]
        return False if False in vals else (None if None in vals or not vals else True)

    return {"accuracy": "final.student_accuracy_mean (FD: the clients' students)",
            "per_preset": per,
            "fd_within_gap_at_8": overall("fd_within_gap_at_8"),
            "fd_ahead_of_dp_fedavg": overall("fd_ahead_of_dp_fedavg")}


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "missed", None: "not decided (cells not run)"}[met]


def _cell(x: float | None) -> str:
    return "not run" if x is None else f"{x:.3f}"


def section(data: dict[str, Any] | None, results: dict[str, dict[str, Any]],
            plot_dir: Path | None, plot_prefix: str = "") -> list[str]:
    """Markdown lines of the page's privacy-utility section (and its plot)."""
    if not data or data.get("settings", {}).get("quick"):
        return ["*Not yet measured* — run `python -m bench.privacy_utility` (the "
                "baselines; FD cells come from `bench/results.py`).", ""]
    presets = data["settings"]["presets"]
    borrowed: set[tuple[str, str, str]] = set()
    table = grid(data, {p: results[p] for p in presets if p in results}, borrowed)
    targets = evaluate_targets(table)
    keys = [eps_key(e) for e in settings_eps(data["settings"])]
    head = " | ".join("ε=∞" if k == "inf" else f"ε={k}" for k in keys)
    own = [r for r in data.get("rows", []) if "accuracy" in r]
    lines = [text("benchmarks/privacy_utility_method.md")]
    if own:
        lines += [f"Baselines run by this script: command `{data.get('command')}`, "
                  f"{data.get('wall_seconds', 0):.0f} s on {data['settings'].get('workers')} "
                  "worker processes.  ", _env_line(data["environment"]), ""]
    else:
        lines += ["No baseline cell has been run by this script yet "
                  "(`bench/results/privacy_utility.json` holds only the grid's settings)."
                  "", ""]
    sources = sorted({p for p, _, _ in borrowed} | {p for p in presets if p in results})
    if sources:
        lines += ["FD cells" + (" and the baseline cells marked †" if borrowed else "")
                  + " come from `bench/results.py` runs: "
                  + "; ".join(f"`bench/results/{p}.json` ({_results_env(results[p])})"
                              for p in sources if p in results) + ".", ""]
    steps = [f"`{p}` ε={r['privacy']['budget']:g}: {r['private_step']}"
             for p in presets if p in results for r in results[p].get("rows", [])
             if r["method"] == "federated-distillation" and "private_step" in r
             and r["seed"] == data["settings"].get("seed", 0)]
    if steps:  # the recipe is a choice of each run (docs/RESULTS.md's private-step column)
        lines += ["FD cells' private step: " + "; ".join(steps) + ".", ""]
    lines += [f"| dataset | method | {head} |", "|---|---|" + "---:|" * len(keys)]
    for preset in presets:
        dataset = data["settings"]["configs"].get(preset, {}).get("dataset", preset)
        for method, label in LABELS.items():
            cells = " | ".join(_cell(table[preset][method].get(k))
                               + ("†" if (preset, method, k) in borrowed else "")
                               for k in keys)
            lines.append(f"| {dataset} (`{preset}`) | {label} | {cells} |")
        majority = data["settings"]["configs"].get(preset, {}).get("majority_class_accuracy")
        if majority is not None:
            lines.append(f"| {dataset} (`{preset}`) | *majority class (reference: a model "
                         f"that learned nothing)* | " + " | ".join([f"{majority:.3f}"] * len(keys))
                         + " |")
    floor = [f"`{p}` {m} at ε={'∞' if k == 'inf' else k}" for p in presets
             if (maj := data["settings"]["configs"].get(p, {}).get("majority_class_accuracy"))
             is not None for m in LABELS for k in keys
             if (v := table[p][m].get(k)) is not None and abs(v - maj) < 0.005]
    if floor:
        lines += ["", "No better than predicting the majority class (within 0.5 points of "
                  "it): " + ", ".join(floor) + "."]
    errors = {_cell_key(r): r["error"] for r in data.get("rows", []) if "error" in r}
    pending = {_cell_key(c) for c in data.get("pending", [])}
    missing: dict[tuple[str, str, str], list[str]] = {}
    for preset in presets:
        for method in BASELINES:
            for k in keys:
                if table[preset][method].get(k) is None:
                    key = (preset, method, k)
                    why = (f"error: {errors[key][:80]}" if key in errors else
                           "not finished within the time budget" if key in pending else
                           "not run")
                    missing.setdefault((preset, method, why), []).append(
                        "∞" if k == "inf" else k)
    if missing:
        lines += ["", "Baseline cells without a result: " + "; ".join(
            f"`{p}` {m} at ε={', '.join(ks)} ({why})" for (p, m, why), ks in missing.items())
            + ". Run them with `python -m bench.privacy_utility --presets P --epsilons E "
            "--methods M` (all at once on a GPU machine: `bench/run_privacy_utility.sh`)"
            ", or with `python -m bench.results --methods dp-fedavg,centralized-dp,local-only "
            "--set epsilon=E` (no ε=∞ local-only there)."]
    lines += ["", "**Targets** (computed from the table; students' mean):", ""]
    for preset, p in targets["per_preset"].items():
        g = p["fd_within_gap_at_8"]
        gap = "—" if g["gap_points"] is None else f"{g['gap_points']:+.1f}"
        tgap = "" if g["teacher_gap_points"] is None else (
            f"; teacher gap {g['teacher_gap_points']:+.1f} points, for information")
        lines.append(f"- `{preset}`: FD at ε=8 vs non-private FD: gap {gap} points "
                     f"(≤ {g['max_gap_points']:g} wanted): {_verdict(g['met'])}{tgap}.")
        a = p["fd_ahead_of_dp_fedavg"]
        parts = []
        for k, v in a["per_epsilon"].items():
            m = "—" if v["margin_points"] is None else f"{v['margin_points']:+.1f}"
            short = {True: "met", False: "missed", None: "not run"}[v["met"]]
            parts.append(f"ε={k}: {m} ({short})")
        lines.append(f"- `{preset}`: FD ahead of DP-FedAvg (FD minus DP-FedAvg, points): "
                     + "; ".join(parts) + f": {_verdict(a['met'])}.")
    lines += ["", f"**Target met** — FD within {GAP_POINTS:g} points of non-private FD at "
              f"ε=8: {_verdict(targets['fd_within_gap_at_8'])}; FD ahead of DP-FedAvg at "
              f"every ε: {_verdict(targets['fd_ahead_of_dp_fedavg'])}.", ""]
    missing = [f"`{p}` ε={k}" for p in presets for k in keys
               if table[p]["fd-students"].get(k) is None]
    if missing:
        lines += ["FD cells not run yet: " + ", ".join(missing) + ". Run them with "
                  "`python -m bench.results --preset P --seeds 0 --methods "
                  "federated-distillation --set epsilon=E` (ε=∞: `--methods non-private-fd`)"
                  ", then `make bench-doc`.", ""]
    if plot_dir is not None:
        name = "bench_privacy_utility.png"
        plot(table, data, plot_dir / name)
        lines += [f"![accuracy vs ε]({plot_prefix}{name})", ""]
    return lines


def _results_env(data: dict[str, Any]) -> str:
    env = data.get("environment") or {}
    return (f"torch {env.get('torch')}, opacus {env.get('opacus')}, flwr {env.get('flwr')}, "
            f"{env.get('torch_threads', env.get('cpus'))} torch thread(s), "
            f"device `{env.get('device')}`")


def _env_line(env: dict[str, Any]) -> str:
    gpu = f", {env['gpu']}" if env.get("gpu") else ""
    return (f"Environment: {env.get('cpu_count')} CPUs ({env.get('torch_threads')} torch "
            f"thread(s) per worker), torch {env.get('torch')}, opacus {env.get('opacus')}, "
            f"flwr {env.get('flwr')}, device `{env.get('device')}`{gpu}, Python "
            f"{env.get('python')}.")


def plot(table: dict[str, Any], data: dict[str, Any], path: Path) -> None:
    """Accuracy vs ε, one panel per dataset; ∞ drawn as the last, separate position."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [eps_key(e) for e in settings_eps(data["settings"])]
    xs = list(range(len(keys)))
    presets = list(table)
    fig, axes = plt.subplots(1, len(presets), figsize=(5.2 * len(presets), 3.9), squeeze=False)
    styles = {"fd-students": ("C0", "o", "-"), "fd-teacher": ("C0", "s", ":"),
              "dp-fedavg": ("C1", "^", "-"), "centralized-dp": ("C2", "D", "-"),
              "local-only": ("C3", "v", "-")}
    short = {"fd-students": "FD students", "fd-teacher": "FD teacher",
             "dp-fedavg": "DP-FedAvg", "centralized-dp": "centralized DP-SGD",
             "local-only": "local-only"}
    for ax, preset in zip(axes[0], presets, strict=True):
        for method, (color, marker, ls) in styles.items():
            ys = [table[preset][method].get(k) for k in keys]
            ys = [math.nan if y is None else y for y in ys]
            ax.plot(xs, ys, color=color, marker=marker, ls=ls, label=short[method])
        majority = data["settings"]["configs"].get(preset, {}).get("majority_class_accuracy")
        if majority is not None:
            ax.axhline(majority, color="grey", ls="--", lw=0.8, label="majority class")
        ax.set_xticks(xs, ["∞" if k == "inf" else k for k in keys])
        ax.set_xlabel("ε (per client, δ=1e-5)")
        ax.set_ylabel("test accuracy")
        dataset = data["settings"]["configs"].get(preset, {}).get("dataset", preset)
        ax.set_title(f"{dataset} (preset {preset})", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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


def _cell_key(c: dict[str, Any]) -> tuple[str, str, str]:
    return c["preset"], c["method"], c["epsilon_key"]


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
                  + " ".join(f"{_cell(cells.get(k)):>8}" for k in keys))
    t = data["targets"]
    print(f"targets: within {GAP_POINTS:g} points at ε=8: {_verdict(t['fd_within_gap_at_8'])}; "
          f"ahead of DP-FedAvg: {_verdict(t['fd_ahead_of_dp_fedavg'])}")


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
    fresh = {_cell_key(c) for c in cells}
    kept = [r for r in old.get("rows", []) if _cell_key(r) not in fresh]
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
