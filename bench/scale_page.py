"""Benchmark 4's section of docs/BENCHMARKS.md and its plot, from ``scale.json``.

Called by :mod:`bench.render`; it needs only the standard library and matplotlib.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.pages import text


def _fmt(v: Any, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def _page_env(env: dict[str, Any]) -> str:
    return (
        f"Environment: {env.get('cpu_count')} CPUs, {env.get('memory_total_mb', 0) / 1024:.1f} "
        f"GiB memory, torch {env.get('torch')}, opacus {env.get('opacus')}, flwr "
        f"{env.get('flwr')}, Python {env.get('python')}, niceness {env.get('niceness')}."
    )


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The page's table: one row per (clients, public batch)."""
    lines = [
        "| clients | public batch | rounds | s/round | s/round per client | CPU s/round "
        "| client CPU s per client | peak RSS MiB | peak PSS MiB | processes | wall s "
        "| load | all replied |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        load = (r.get("load_average_1m") or {}).get("mean")
        state = "yes" if r["ok"] and r["all_replied"] else f"no ({r.get('error', 'replies')})"
        lines.append(
            f"| {r['clients']:,} | {r['public_batch']:,} | {r['rounds']} | "
            f"{_fmt(r['s_per_round'], ',.1f')} | {_fmt(r['s_per_round_per_client'], '.3f')} | "
            f"{_fmt(r.get('cpu_s_per_round'), '.1f')} | "
            f"{_fmt(r.get('client_cpu_s_per_client'), '.3f')} | "
            f"{_fmt(r['peak_rss_mb'], ',.0f')} | {_fmt(r['peak_pss_mb'], ',.0f')} | "
            f"{_fmt(r['peak_processes'], 'd')} | {r['wall_s']:,.0f} | {_fmt(load, '.1f')} | "
            f"{state} |"
        )
    return lines


def growth_lines(g: dict[str, Any]) -> list[str]:
    """Growth with clients and with the public batch, in words."""
    lines = []
    for s in g.get("steps", []):
        cpu = (
            f", CPU time ×{s['cpu_x']} ({s['cpu_x_over_clients_x']} of linear)"
            if "cpu_x" in s
            else ""
        )
        lines.append(
            f"- {s['from']:,} → {s['to']:,} clients (×{s['clients_x']:g}): s/round "
            f"×{s['time_x']} ({s['time_x_over_clients_x']} of linear){cpu}; peak PSS "
            f"×{s['pss_x']}, peak RSS ×{s['rss_x']}."
        )
    fits = []
    if "time_fit" in g:
        f = g["time_fit"]
        if f["fixed_s"] >= 0:
            fits.append(f"s/round ≈ {f['fixed_s']:.1f} + {f['s_per_client']:.3f}·N")
        else:  # wall time grew faster than clients somewhere: no fixed part to show
            fits.append(
                f"s/round ≈ {f['s_per_client']:.3f}·N (fitted fixed part {f['fixed_s']:.1f} s)"
            )
    if "cpu_fit" in g:
        f = g["cpu_fit"]
        fits.append(f"CPU s/round ≈ {f['fixed_s']:.1f} + {f['s_per_client']:.3f}·N")
    if "pss_fit" in g:
        f = g["pss_fit"]
        fits.append(f"peak PSS ≈ {f['fixed_mb']:,.0f} MiB + {f['mb_per_client']:.3f} MiB·N")
    if fits:
        lines.append(
            f"- Least squares over the clients sweep (public batch {g['base_public_batch']}): "
            + "; ".join(fits)
            + "."
        )
    p = g.get("public_batch")
    if p:
        per = (
            f"; each 1,000 more public rows add {p['s_per_1000_rows_per_client']:.3f} s "
            "per client to a round"
            if "s_per_1000_rows_per_client" in p
            else ""
        )
        cpu = f", CPU time ×{p['cpu_x']}" if "cpu_x" in p else ""
        lines.append(
            f"- Public batch {p['from']:,} → {p['to']:,} (×{p['batch_x']:g}) at "
            f"{p['clients']} clients: s/round ×{p['time_x']}{cpu}; peak PSS ×{p['pss_x']}"
            f"{per}."
        )
    return lines


def memory_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Where the largest run's memory sits, by process kind."""
    done = [r for r in rows if r.get("by_process")]
    if not done:
        return []
    big = max(done, key=lambda r: (r["clients"], r["public_batch"]))
    kinds = sorted(big["by_process"].items(), key=lambda kv: -kv[1]["peak_pss_mb"])
    parts = [
        f"`{k}` {v['peak_pss_mb']:,.0f} MiB ({v['cpu_s']:,.0f} CPU s)"
        for k, v in kinds[:5]
        if v["peak_pss_mb"] >= 1
    ]
    return [
        f"Peak PSS by process kind in the {big['clients']:,}-client run (each kind's own "
        f"peak, summed over its processes; CPU seconds over the whole run): "
        + ", ".join(parts)
        + "."
    ]


def plot(data: dict[str, Any], path: Path) -> None:
    """Time and memory against clients (log-log), with the public-batch sweep beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in data["rows"] if r["ok"]]
    base = data["settings"]["base_public_batch"]
    sweep = sorted((r for r in rows if r["public_batch"] == base), key=lambda r: r["clients"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    xs = [r["clients"] for r in sweep]
    ax = axes[0]
    ax.plot(xs, [r["s_per_round"] for r in sweep], "o-", label="s/round (wall)")
    if all(r.get("cpu_s_per_round") is not None for r in sweep):
        ax.plot(xs, [r["cpu_s_per_round"] for r in sweep], "s-", label="CPU s/round")
    if sweep:
        y0 = sweep[0]["s_per_round"]
        ax.plot(xs, [y0 * x / xs[0] for x in xs], "k--", lw=0.8, label="linear from first")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("clients")
    ax.set_title(f"time per round (public batch {base})", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(xs, [r["peak_rss_mb"] for r in sweep], "o-", label="peak RSS sum")
    ax.plot(xs, [r["peak_pss_mb"] for r in sweep], "s-", label="peak PSS sum")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("clients")
    ax.set_ylabel("MiB")
    ax.set_title("peak memory of the whole simulation", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[2]
    nb = data["settings"]["batch_clients"]
    pb = sorted((r for r in rows if r["clients"] == nb), key=lambda r: r["public_batch"])
    ax.plot(
        [r["public_batch"] for r in pb],
        [r["s_per_round"] for r in pb],
        "o-",
        label="s/round (wall)",
    )
    if all(r.get("cpu_s_per_round") is not None for r in pb):
        ax.plot(
            [r["public_batch"] for r in pb],
            [r["cpu_s_per_round"] for r in pb],
            "s-",
            label="CPU s/round",
        )
    ax.set_xlabel("public batch (rows)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"public batch at {nb} clients", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def section(
    data: dict[str, Any] | None, plot_dir: Path | None, plot_prefix: str = "", name: str = "scale"
) -> list[str]:
    """Markdown lines of the page's scale section (and its plot)."""
    if not data or data.get("settings", {}).get("quick") or not data.get("rows"):
        return [
            "*Not yet measured* — run `python -m bench.scale` (time per round and peak "
            "memory of the whole simulation at 10, 100 and 1000 clients, and their growth "
            "with clients and public-batch size).",
            "",
        ]
    t = data["target"]
    # each row keeps the command that measured it (runs merged with --merge)
    commands = list(dict.fromkeys(r.get("command") or data["command"] for r in data["rows"]))
    lines = [
        text("BENCHMARKS/scale_method.md"),
        f"Source: `bench/results/{name}.json`, rows measured by "
        + "; ".join(f"`{c}`" for c in commands)
        + f" ({data.get('wall_seconds', 0) / 60:.0f} min of runs in all).  ",
        _page_env(data["environment"]),
        "",
        *table(data["rows"]),
        "",
        "**Growth.**",
        "",
        *growth_lines(data["growth"]),
        "",
        *memory_lines(data["rows"]),
        "",
    ]
    for note in data.get("notes", []):
        lines += [note, ""]
    lines += [
        f'**Target** (issue "Benchmarks", item 4): {t["clients"]:,} clients in one '
        f"simulation on this machine (2 cores, {t['machine_memory_mb'] / 1024:.0f} GiB).",
        "",
        f"**Target met: {'yes' if t['met'] else 'no'}** — {t['detail']}.",
        "",
    ]
    if plot_dir is not None:
        png = f"bench_{name}.png"
        plot(data, plot_dir / png)
        lines += [f"![scale: time and memory against clients]({plot_prefix}{png})", ""]
    return lines
