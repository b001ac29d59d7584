"""Benchmark 3's section of docs/BENCHMARKS.md and its plot (called by :mod:`bench.render`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.pages import text
from bench.privacy_utility_grid import (
    BASELINES,
    GAP_POINTS,
    LABELS,
    cell_key,
    eps_key,
    evaluate_targets,
    grid,
    settings_eps,
)


def verdict(met: bool | None) -> str:
    return {True: "met", False: "missed", None: "not decided (cells not run)"}[met]


def cell_text(x: float | None) -> str:
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
    lines = [text("BENCHMARKS/privacy_utility_method.md")]
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
            cells = " | ".join(cell_text(table[preset][method].get(k))
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
    errors = {cell_key(r): r["error"] for r in data.get("rows", []) if "error" in r}
    pending = {cell_key(c) for c in data.get("pending", [])}
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
                     f"(≤ {g['max_gap_points']:g} wanted): {verdict(g['met'])}{tgap}.")
        a = p["fd_ahead_of_dp_fedavg"]
        parts = []
        for k, v in a["per_epsilon"].items():
            m = "—" if v["margin_points"] is None else f"{v['margin_points']:+.1f}"
            short = {True: "met", False: "missed", None: "not run"}[v["met"]]
            parts.append(f"ε={k}: {m} ({short})")
        lines.append(f"- `{preset}`: FD ahead of DP-FedAvg (FD minus DP-FedAvg, points): "
                     + "; ".join(parts) + f": {verdict(a['met'])}.")
    lines += ["", f"**Target met** — FD within {GAP_POINTS:g} points of non-private FD at "
              f"ε=8: {verdict(targets['fd_within_gap_at_8'])}; FD ahead of DP-FedAvg at "
              f"every ε: {verdict(targets['fd_ahead_of_dp_fedavg'])}.", ""]
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
