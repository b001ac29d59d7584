"""The compression table, the target verdicts and the Pareto plot, from measured rows.

Targets (issue #20), judged against the first row (the teacher as shipped): A, ≥ 4x
smaller *and* ≥ 2x faster at batch 1 on the CPU with ≤ 1 point accuracy loss; B, ≥ 10x
smaller with ≤ 3 points. A target is met by a measured row or missed, with the gap of
the row that came closest; it is never relaxed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Target:
    name: str
    smaller: float  # at least this many times smaller (file size)
    faster: float  # at least this many times faster (CPU, batch 1, p50); 1 = no demand
    points: float  # at most this many accuracy points lost


TARGETS = (Target("A: >= 4x smaller, >= 2x faster at batch 1 (CPU), <= 1 point", 4, 2, 1),
           Target("B: >= 10x smaller, <= 3 points", 10, 1, 3))


def ratios(base: dict[str, Any], row: dict[str, Any]) -> dict[str, float]:
    return {"smaller": base["size_mb"] / row["size_mb"],
            "faster": base["cpu_b1_p50_ms"] / row["cpu_b1_p50_ms"],
            "points": 100 * (base["accuracy"] - row["accuracy"])}


def _shortfall(target: Target, r: dict[str, float]) -> float:
    """How far a row is from the target (0 = met): the largest relative gap."""
    return max(0.0, 1 - r["smaller"] / target.smaller, 1 - r["faster"] / target.faster,
               (r["points"] - target.points) / 100)


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each target, the best row that meets it, else the closest row and its gap."""
    base, out = rows[0], []
    for target in TARGETS:
        scored = [(_shortfall(target, ratios(base, r)), -ratios(base, r)["smaller"], r)
                  for r in rows[1:] if "cpu_b1_p50_ms" in r]
        if not scored:
            continue
        gap, _, row = min(scored, key=lambda s: (s[0], s[1]))
        r = ratios(base, row)
        out.append({"target": target.name, "met": gap == 0, "recipe": row["recipe"],
                    "smaller": r["smaller"], "faster": r["faster"], "points": r["points"]})
    return out


def seed_ratios(runs: list[list[dict[str, Any]]]) -> dict[str, dict[str, list[float]]]:
    """Per recipe measured in every run (one run per students' seed, each against its own
    first row): the ratios of each run, in run order."""
    common = [r["recipe"] for r in runs[0][1:]
              if all(any(x["recipe"] == r["recipe"] for x in rows) for rows in runs)] \
        if runs else []
    out: dict[str, dict[str, list[float]]] = {}
    for recipe in common:
        per = [ratios(rows[0], next(x for x in rows if x["recipe"] == recipe))
               for rows in runs]
        out[recipe] = {k: [p[k] for p in per] for k in ("smaller", "faster", "points")}
    return out


def seed_verdicts(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each target judged on the mean over the seeds (size, speed and points alike), the
    best recipe that meets it, else the closest and its gap."""
    from common.metrics import mean_interval

    per_seed = seed_ratios(runs)
    means = {recipe: {k: sum(v) / len(v) for k, v in r.items()}
             for recipe, r in per_seed.items()}
    out = []
    for target in TARGETS if means else ():
        gap, _, recipe = min((_shortfall(target, m), -m["smaller"], recipe)
                             for recipe, m in means.items())
        _, low, high = mean_interval(per_seed[recipe]["points"])
        out.append({"target": target.name, "met": gap == 0, "recipe": recipe,
                    "seeds": len(runs), **means[recipe], "points_low": low,
                    "points_high": high})
    return out


def seed_table(runs: list[list[dict[str, Any]]]) -> list[str]:
    """Mean over the seeds per recipe: ratios, points lost with the 95% interval, and
    each seed's points."""
    from common.metrics import mean_interval

    lines = ["| recipe | seeds | x smaller | x faster b1 (min–max) | points lost, mean "
             "[95% interval] | per seed |", "|---|---|---|---|---|---|"]
    for recipe, r in seed_ratios(runs).items():
        mean, low, high = mean_interval(r["points"])
        lines.append(f"| `{recipe}` | {len(r['points'])} | "
                     f"{sum(r['smaller']) / len(runs):.1f} | "
                     f"{sum(r['faster']) / len(runs):.2f} ({min(r['faster']):.2f}–"
                     f"{max(r['faster']):.2f}) | {mean:+.2f} [{low:+.2f}, {high:+.2f}] | "
                     + ", ".join(f"{p:+.2f}" for p in r["points"]) + " |")
    return lines


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00"


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The Markdown table: one line per recipe, ratios against the first row."""
    gpu = any("gpu_b1_p50_ms" in r for r in rows)
    head = ["recipe", "weights (M)", "file MB", "gzip MB", "x smaller",
            "CPU b1 p50/p95 ms", "x faster b1", "CPU b32 p50/p95 ms", "test acc", "Δ points"]
    head += ["GPU b1 / b32 p50 ms"] if gpu else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        r = ratios(rows[0], row) if "cpu_b1_p50_ms" in row else {}
        cells = [f"`{row['recipe']}`", _fmt(row["weights"] / 1e6, 2), _fmt(row["size_mb"]),
                 _fmt(row["gzip_mb"]), _fmt(rows[0]["size_mb"] / row["size_mb"]),
                 f"{_fmt(row.get('cpu_b1_p50_ms'))} / {_fmt(row.get('cpu_b1_p95_ms'))}",
                 _fmt(r.get("faster"), 2),
                 f"{_fmt(row.get('cpu_b32_p50_ms'), 0)} / {_fmt(row.get('cpu_b32_p95_ms'), 0)}",
                 _fmt(row["accuracy"], 4), _fmt(-r["points"] + 0.0 if r else None, 2)]
        if gpu:
            cells.append(f"{_fmt(row.get('gpu_b1_p50_ms'))} / "
                         f"{_fmt(row.get('gpu_b32_p50_ms'))}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def verdict_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for v in verdicts(rows):
        state = "**met**" if v["met"] else "**missed**"
        lines.append(f"- Target {v['target']}: {state} by `{v['recipe']}` "
                     f"({v['smaller']:.1f}x smaller, {v['faster']:.2f}x faster at batch 1, "
                     f"{v['points']:+.2f} points lost)" if v["met"] else
                     f"- Target {v['target']}: {state}; closest `{v['recipe']}`: "
                     f"{v['smaller']:.1f}x smaller, {v['faster']:.2f}x faster at batch 1, "
                     f"{v['points']:+.2f} points lost")
    return lines


def pareto_plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Accuracy against file size and against batch-1 CPU latency, one point per recipe,
    the Pareto front (no other row both smaller/faster and more accurate) joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in rows if "cpu_b1_p50_ms" in r]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, key, label in ((axes[0], "size_mb", "file size (MB, log)"),
                           (axes[1], "cpu_b1_p50_ms", "CPU latency, batch 1, p50 (ms, log)")):
        for r in measured:
            ax.scatter(r[key], 100 * r["accuracy"], s=25)
            ax.annotate(r["recipe"], (r[key], 100 * r["accuracy"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
        front = _front(measured, key)
        ax.plot([r[key] for r in front], [100 * r["accuracy"] for r in front], "k--", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _front(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    ordered = sorted(rows, key=lambda r: (r[key], -r["accuracy"]))
    front, best = [], -1.0
    for r in ordered:
        if r["accuracy"] > best:
            front.append(r)
            best = r["accuracy"]
    return front
