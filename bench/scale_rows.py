"""Benchmark 4's rows and growth: one row per run, how time, CPU and memory grow with the
clients and the public batch, and the issue's target (pure functions of the runs' records,
used by :mod:`bench.scale` to measure and by :mod:`bench.scale_page` to show).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

TARGET_CLIENTS = 1000  # the issue: 1000 clients in one simulation on a 2-core, 24 GB machine


def configurations(
    clients: Sequence[int], public_batches: Sequence[int], batch_clients: int
) -> list[tuple[int, int]]:
    """(clients, public batch) pairs: the clients sweep at the first public batch, and the
    public-batch sweep at ``batch_clients`` when that count is one of ``clients``."""
    pairs = {(n, public_batches[0]) for n in clients}
    if batch_clients in clients:
        pairs |= {(batch_clients, m) for m in public_batches}
    return sorted(pairs)


CPU_GROUPS = ("clients", "server+engine", "other")


def cpu_group(kind: str) -> str:
    """Ray's ClientApp actors, the ``flwr-simulation`` process (ServerApp and Simulation
    Engine in one process), or everything else (SuperLink, CLI, Ray's daemons)."""
    if kind.startswith("ray::ClientAppActor"):
        return "clients"
    return "server+engine" if kind == "flwr-simulation" else "other"


def build_row(
    *,
    clients: int,
    public_batch: int,
    rounds: int,
    records: list[dict[str, Any]],
    wall_s: float,
    memory: dict[str, Any],
    cpu_marks: dict[int, dict[str, float]] | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """One table row from a run's ``metrics.jsonl`` records and its samples.

    *s/round* is the mean ``seconds`` of the rounds after the first (round 1 also pays the
    Ray workers' first call), or round 1's when it is the only one. ``cpu_marks`` maps a
    round to the tree's CPU seconds per process kind when its record appeared (round 0:
    start-up and teacher pre-training); a round's CPU time is the difference to the
    previous mark, which a neighbour's load disturbs much less than wall time.
    """
    done = [r for r in records if r.get("round", 0) >= 1]
    secs = [float(r["seconds"]) for r in done]
    measured = done[1:] or done
    s_round = (sum(float(r["seconds"]) for r in measured) / len(measured)) if measured else None
    marks = cpu_marks or {}

    def cpu_of(rnd: int) -> dict[str, float] | None:
        if rnd not in marks or rnd - 1 not in marks:
            return None
        out = dict.fromkeys(CPU_GROUPS, 0.0)
        for kind in set(marks[rnd]) | set(marks[rnd - 1]):
            out[cpu_group(kind)] += marks[rnd].get(kind, 0.0) - marks[rnd - 1].get(kind, 0.0)
        return out

    per_round = [cpu_of(r["round"]) for r in done]
    cpu_measured = [cpu_of(r["round"]) for r in measured]
    cpu_mean: dict[str, float] | None = None
    if cpu_measured and all(c is not None for c in cpu_measured):
        cpu_mean = {g: sum(c[g] for c in cpu_measured if c) / len(cpu_measured) for g in CPU_GROUPS}
    evaluated = [r["round"] for r in done if "ensemble_accuracy" in r]
    replies = [int(r.get("replies", 0)) for r in done]
    pretrain = next((float(r["seconds"]) for r in records if r.get("round") == 0), None)
    cpu_total = sum(cpu_mean.values()) if cpu_mean else None
    row: dict[str, Any] = {
        "clients": clients,
        "public_batch": public_batch,
        "rounds": rounds,
        "rounds_done": len(done),
        "measured_rounds": [r["round"] for r in measured],
        "evaluated_rounds": evaluated,
        "round_seconds": [round(x, 2) for x in secs],
        "first_round_s": round(secs[0], 2) if secs else None,
        "s_per_round": round(s_round, 2) if s_round is not None else None,
        "s_per_round_per_client": round(s_round / clients, 4) if s_round is not None else None,
        "cpu_round_seconds": [
            None if c is None else {g: round(v, 1) for g, v in c.items()} for c in per_round
        ],
        "cpu_s_per_round": round(cpu_total, 1) if cpu_total is not None else None,
        "cpu_s_per_round_per_client": (
            round(cpu_total / clients, 4) if cpu_total is not None else None
        ),
        "client_cpu_s_per_client": (round(cpu_mean["clients"] / clients, 4) if cpu_mean else None),
        "server_engine_cpu_s_per_round": (
            round(cpu_mean["server+engine"], 1) if cpu_mean else None
        ),
        "teacher_pretrain_s": round(pretrain, 2) if pretrain is not None else None,
        "replies": replies,
        "all_replied": bool(replies) and all(n == clients for n in replies),
        "peak_rss_mb": memory.get("peak_rss_mb"),
        "peak_pss_mb": memory.get("peak_pss_mb"),
        "peak_processes": memory.get("peak_processes"),
        "memory_samples": memory.get("samples"),
        "memory_trace": memory.get("trace", []),
        "cpu_s": memory.get("cpu_s"),
        "by_process": memory.get("by_kind", {}),
        "load_average_1m": memory.get("load_average_1m"),
        "wall_s": round(wall_s, 1),
        "ok": error is None and len(done) == rounds,
    }
    if error is not None:
        row["error"] = error
    return row


def _line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float] | None:
    """Least-squares (intercept, slope); None for fewer than two distinct x."""
    if len(set(xs)) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
    return my - slope * mx, slope


def _steps(sweep: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each step of the clients sweep: how much time, CPU and memory grew, and the growth
    of time over the growth in clients (1.0 = linear, below 1 = fixed costs amortised)."""
    out = []
    for a, b in zip(sweep, sweep[1:], strict=False):
        k = b["clients"] / a["clients"]
        step = {
            "from": a["clients"],
            "to": b["clients"],
            "clients_x": round(k, 2),
            "time_x": round(b["s_per_round"] / a["s_per_round"], 2),
            "time_x_over_clients_x": round(b["s_per_round"] / a["s_per_round"] / k, 3),
            "rss_x": round(b["peak_rss_mb"] / a["peak_rss_mb"], 2),
            "pss_x": round(b["peak_pss_mb"] / a["peak_pss_mb"], 2),
        }
        if a.get("cpu_s_per_round") and b.get("cpu_s_per_round"):
            cx = b["cpu_s_per_round"] / a["cpu_s_per_round"]
            step.update({"cpu_x": round(cx, 2), "cpu_x_over_clients_x": round(cx / k, 3)})
        out.append(step)
    return out


def growth(
    rows: list[dict[str, Any]], base_public_batch: int, batch_clients: int
) -> dict[str, Any]:
    """How time and memory grow with clients (at the base public batch) and public batch."""
    sweep = sorted(
        (
            r
            for r in rows
            if r["ok"] and r["public_batch"] == base_public_batch and r["s_per_round"] is not None
        ),
        key=lambda r: r["clients"],
    )
    out: dict[str, Any] = {"base_public_batch": base_public_batch, "steps": _steps(sweep)}
    xs = [float(r["clients"]) for r in sweep]
    fit = _line(xs, [r["s_per_round"] for r in sweep])
    if fit:
        out["time_fit"] = {"fixed_s": round(fit[0], 2), "s_per_client": round(fit[1], 4)}
    if sweep and all(r.get("cpu_s_per_round") is not None for r in sweep):
        cfit = _line(xs, [r["cpu_s_per_round"] for r in sweep])
        if cfit:
            out["cpu_fit"] = {"fixed_s": round(cfit[0], 2), "s_per_client": round(cfit[1], 4)}
    mfit = _line(xs, [r["peak_pss_mb"] for r in sweep])
    if mfit:
        out["pss_fit"] = {"fixed_mb": round(mfit[0], 1), "mb_per_client": round(mfit[1], 4)}
    pb = sorted(
        (
            r
            for r in rows
            if r["ok"] and r["clients"] == batch_clients and r["s_per_round"] is not None
        ),
        key=lambda r: r["public_batch"],
    )
    if len(pb) >= 2:
        lo, hi = pb[0], pb[-1]
        bx = [float(r["public_batch"]) for r in pb]
        tfit = _line(bx, [r["s_per_round"] for r in pb])
        entry: dict[str, Any] = {
            "clients": batch_clients,
            "batches": [r["public_batch"] for r in pb],
            "from": lo["public_batch"],
            "to": hi["public_batch"],
            "batch_x": round(hi["public_batch"] / lo["public_batch"], 2),
            "time_x": round(hi["s_per_round"] / lo["s_per_round"], 2),
            "rss_x": round(hi["peak_rss_mb"] / lo["peak_rss_mb"], 2),
            "pss_x": round(hi["peak_pss_mb"] / lo["peak_pss_mb"], 2),
        }
        if tfit:  # seconds a round gains per 1000 more public rows, per client
            entry["s_per_1000_rows_per_client"] = round(tfit[1] * 1000 / batch_clients, 4)
        if all(r.get("cpu_s_per_round") is not None for r in pb):
            cfit = _line(bx, [r["cpu_s_per_round"] for r in pb])
            entry["cpu_x"] = round(hi["cpu_s_per_round"] / lo["cpu_s_per_round"], 2)
            if cfit:
                entry["cpu_s_per_1000_rows_per_client"] = round(cfit[1] * 1000 / batch_clients, 4)
        out["public_batch"] = entry
    return out


def evaluate_target(rows: list[dict[str, Any]], memory_total_mb: float) -> dict[str, Any]:
    """The issue's target: a simulation of 1000 clients runs to the end on this machine."""
    big = [r for r in rows if r["clients"] >= TARGET_CLIENTS]
    done = [r for r in big if r["ok"] and r["all_replied"]]
    best = max(done, key=lambda r: r["clients"], default=None)
    met = best is not None and (best["peak_pss_mb"] or 0) < memory_total_mb
    if best is not None:
        detail = (
            f"{best['clients']:,} clients ran {best['rounds_done']} round(s), every client "
            f"replying; {best['s_per_round']:,.0f} s/round, peak {best['peak_pss_mb']:,.0f} MiB "
            f"PSS ({best['peak_rss_mb']:,.0f} MiB RSS) of {memory_total_mb:,.0f} MiB"
        )
    elif big:
        detail = "; ".join(
            f"{r['clients']} clients: {r.get('error', 'not every client replied')}" for r in big
        )
    else:
        detail = f"not run ({TARGET_CLIENTS} clients not in --clients)"
    return {
        "clients": TARGET_CLIENTS,
        "machine_memory_mb": round(memory_total_mb),
        "met": met,
        "detail": detail,
    }


def merge_rows(
    old: Iterable[dict[str, Any]], new: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Rows of ``old`` whose configuration was not rerun, plus every row of ``new``."""
    new = list(new)
    done = {(r["clients"], r["public_batch"]) for r in new}
    kept = [r for r in old if (r["clients"], r["public_batch"]) not in done]
    return sorted(kept + new, key=lambda r: (r["clients"], r["public_batch"]))


TABLE_HEADER = (
    f"{'clients':>8}{'public':>7}{'rounds':>7}{'s/round':>9}{'s/rnd/cl':>9}"
    f"{'CPU s/rnd':>10}{'CPU/cl':>8}{'cl CPU/cl':>10}{'srv CPU':>8}{'round 1':>9}"
    f"{'RSS MiB':>9}{'PSS MiB':>9}{'procs':>6}{'wall s':>8}{'load':>6}  ok"
)


def format_row(r: dict[str, Any]) -> str:
    """One console line (the same columns as :data:`TABLE_HEADER`)."""

    def f(v: Any, spec: str) -> str:
        return "—" if v is None else format(v, spec)

    return (
        f"{r['clients']:>8}{r['public_batch']:>7}{r['rounds']:>7}"
        f"{f(r['s_per_round'], '.2f'):>9}{f(r['s_per_round_per_client'], '.3f'):>9}"
        f"{f(r.get('cpu_s_per_round'), '.1f'):>10}"
        f"{f(r.get('cpu_s_per_round_per_client'), '.3f'):>8}"
        f"{f(r.get('client_cpu_s_per_client'), '.3f'):>10}"
        f"{f(r.get('server_engine_cpu_s_per_round'), '.1f'):>8}"
        f"{f(r['first_round_s'], '.1f'):>9}{f(r['peak_rss_mb'], '.0f'):>9}"
        f"{f(r['peak_pss_mb'], '.0f'):>9}{f(r['peak_processes'], 'd'):>6}"
        f"{r['wall_s']:>8.0f}{f((r.get('load_average_1m') or {}).get('mean'), '.1f'):>6}"
        f"  {'yes' if r['ok'] and r['all_replied'] else 'NO'}"
    )
