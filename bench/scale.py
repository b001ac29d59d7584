"""Benchmark 4: how far one simulation scales on this machine, in time and in memory.

    python -m bench.scale [--clients 10,100,1000] [--public-batch 100,2000] [--quick]
        [--rounds 2] [--large-clients 1000 --large-rounds 1] [--merge] [--timeout S]

Each configuration is a real run of the project's Flower App through
:func:`simulations.runner.run_simulation` (``flwr run`` against a private simulation
SuperLink: real ServerApp, real ClientApps in Ray workers with one CPU each, real Opacus
DP-SGD), with a light but complete round (:data:`LIGHT`): one CNN ``tiny`` student per
client, one distillation epoch on the public batch, DP-SGD for one pass over the client's
private shard (rotten-tomatoes, ``iid``: 6,692 private examples shared by all clients), a
``tiny`` teacher pre-trained for one epoch. Students are evaluated on the test set only in
the last round (a coordinator rule that no setting turns off).

- **Time per round** is the coordinator's own ``seconds`` of each round in the run's
  ``metrics.jsonl``, not the wall clock: the mean of the rounds after the first (round 1
  also pays each Ray worker's first ClientApp call: tokenizer training, data encoding), or
  round 1 alone for runs of ``--large-rounds`` rounds (1 by default, from
  ``--large-clients`` clients on: a 1000-client round is long, and there the first call's
  cost is small beside it). The wall time of the whole run is reported beside it.
- **CPU time per round**: user + system seconds of every process of the run between two
  round records, by kind (Ray ClientApp actors, the ``flwr-simulation`` process that hosts
  the ServerApp and the Simulation Engine, the rest). On a shared machine it is much
  steadier than wall time; the 1-minute load average during each run is kept too.
- **Peak memory** is the largest sum, over all processes that the run starts (SuperLink,
  ``flwr run``, SuperExec, ``flwr-simulation``, Ray's daemons and workers), of their
  resident set (RSS) and of their proportional set (PSS: shared pages split between the
  processes that map them), sampled from /proc every 0.5 s by a thread of this script.
  The RSS sum counts every shared library once per process, so it over-states what the
  machine needs; PSS does not. This script's own process is not counted.

Ray's workers are started at this script's niceness (``RAY_worker_niceness=0``): Ray's
default (+15) hands their CPU to any neighbour on a shared machine.

The clients sweep runs at the first ``--public-batch`` value; the public-batch sweep runs
at ``--batch-clients`` clients (when that count is in ``--clients``). Growth is reported
as least-squares lines (seconds, CPU seconds and MiB per client) and as each step's
growth over the growth in clients (1.0 = linear).

Writes ``bench/results/scale.json`` (``--merge`` keeps the rows of configurations
not rerun), prints a table, and renders its section of docs/BENCHMARKS.md
(:func:`section`, called by ``bench/render.py``; the page code needs only the
standard library and matplotlib). Not a test: it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "bench" / "results"
RUNS = ROOT / "runs" / "bench-scale"
MIB = 2**20
TARGET_CLIENTS = 1000  # the issue: 1000 clients in one simulation on a 2-core, 24 GB machine
# The light but real configuration (every other key keeps its FedConfig default: DP on,
# ε budget 8, hooks, dp-trainable head, float16 knowledge, weighted-mean aggregation).
LIGHT: dict[str, Any] = {
    "dataset": "rotten-tomatoes",
    "partition": "iid",  # 406 movies: the natural partition cannot make 1000 clients
    "students": "cnn",
    "student-size": "tiny",
    "student-distill-epochs": 1,
    "teacher-family": "transformer",
    "teacher-size": "tiny",
    "teacher-epochs": 1,
    "teacher-distill-epochs": 1,
    "teacher-anchor-epochs": 1,
    "dp-epochs": 1.0,
    "evaluate-every": 10_000,  # only the last round evaluates the students
    "round-timeout": 7200.0,  # a 1000-client round must not hit the 900 s default
    "device": "cpu",
}


# --------------------------------------------------------------------------- sampling
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(parent pid, session id, CPU ticks user+system) of ``pid``; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp sid ...
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[3]), int(fields[11]) + int(fields[12])


def _proc_table() -> dict[int, tuple[int, int, int]]:
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                table[int(entry.name)] = st
    return table


def rss_bytes(pid: int) -> int:
    """Resident set of ``pid`` (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def pss_bytes(pid: int) -> int:
    """Proportional set of ``pid`` from ``smaps_rollup`` (0 when unreadable or gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


def process_kind(pid: int) -> str:
    """A short name for grouping: the Python script, Ray's process title, or the binary."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    args = [a.decode(errors="replace") for a in argv if a]
    if not args:
        return "?"
    if args[0].startswith("ray::"):  # ray::ClientAppActor.run, ray::IDLE, ray::DashboardAgent
        return args[0].split()[0].split(".")[0]
    name = Path(args[0].split()[0]).name
    if name.startswith("python"):
        rest = iter(args[1:])
        for a in rest:
            if a == "-c":
                return "python -c"
            if a == "-m":
                return next(rest, "python -m")
            if not a.startswith("-"):
                return Path(a).name
    return name


@dataclass
class TreeSampler:
    """Samples a process tree from a thread: summed RSS and PSS (peaks), and CPU seconds.

    The tree is every descendant of ``root`` plus every process in a session that one of
    them ever led (Ray's daemons run in sessions of their own and outlive their parent);
    ``root`` itself is counted only with ``include_root``. CPU time is each process's
    user+system ticks as last seen, so a process that exits keeps what it used up to its
    last sample. Use as a context manager; :meth:`sample` may also be called directly.
    """

    root: int = field(default_factory=os.getpid)
    interval: float = 0.5
    include_root: bool = False
    peak_rss: int = 0
    peak_pss: int = 0
    peak_procs: int = 0
    samples: int = 0
    load: list[float] = field(default_factory=list)  # 1-minute load average per sample
    series: list[tuple[float, int, int, int]] = field(default_factory=list)  # t, rss, pss, n
    kind_peak_rss: dict[str, int] = field(default_factory=dict)
    kind_peak_pss: dict[str, int] = field(default_factory=dict)
    _ticks: dict[int, tuple[str, int]] = field(default_factory=dict)  # pid -> (kind, ticks)
    _kinds: dict[int, str] = field(default_factory=dict)  # pid -> last readable kind
    _sessions: set[int] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = field(default_factory=time.monotonic)

    def members(self, table: dict[int, tuple[int, int, int]] | None = None) -> set[int]:
        table = _proc_table() if table is None else table
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        tree, frontier = {self.root}, [self.root]
        while frontier:
            for child in children.get(frontier.pop(), ()):
                if child not in tree:
                    tree.add(child)
                    frontier.append(child)
        self._sessions |= {p for p in tree if p != self.root and table[p][1] == p}
        tree |= {pid for pid, (_, sid, _) in table.items() if sid in self._sessions}
        if not self.include_root:
            tree.discard(self.root)
        return tree

    def sample(self) -> tuple[int, int, int]:
        """One sample: (RSS sum, PSS sum, process count); updates peaks and CPU ticks."""
        with self._lock:
            table = _proc_table()
            pids = self.members(table)
            rss_kind: dict[str, int] = {}
            pss_kind: dict[str, int] = {}
            own = process_kind(self.root)
            counted = 0
            for pid in pids:
                # Read every time: a fork becomes another program at exec, and a Ray
                # worker's title changes (ray::IDLE -> ray::ClientAppActor).
                kind = process_kind(pid)
                if kind == "?":  # exiting: its cmdline is gone, its ticks still count
                    kind = self._kinds.get(pid, kind)
                self._kinds[pid] = kind
                if pid != self.root and kind == own:
                    continue  # a fork of the driver not yet exec'd: its pages are the driver's
                self._ticks[pid] = (kind, table[pid][2])
                counted += 1
                r, p = rss_bytes(pid), pss_bytes(pid)
                rss_kind[kind] = rss_kind.get(kind, 0) + r
                pss_kind[kind] = pss_kind.get(kind, 0) + p
            rss, pss = sum(rss_kind.values()), sum(pss_kind.values())
            for kind in rss_kind:
                self.kind_peak_rss[kind] = max(self.kind_peak_rss.get(kind, 0), rss_kind[kind])
                self.kind_peak_pss[kind] = max(self.kind_peak_pss.get(kind, 0), pss_kind[kind])
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.peak_procs = max(self.peak_procs, counted)
            self.samples += 1
            self.load.append(os.getloadavg()[0])
            t = time.monotonic() - self._t0
            if not self.series or t - self.series[-1][0] >= 5.0:  # a coarse trace
                self.series.append((round(t, 1), rss, pss, counted))
            return rss, pss, counted

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) used by the tree so far, as last sampled."""
        with self._lock:
            return sum(t for _, t in self._ticks.values()) / CLK_TCK

    def cpu_by_kind(self) -> dict[str, float]:
        with self._lock:
            out: dict[str, float] = {}
            for kind, t in self._ticks.values():
                out[kind] = out.get(kind, 0.0) + t / CLK_TCK
            return out

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a process vanishing mid-read is normal
                self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeSampler:
        self._t0 = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="tree-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> dict[str, Any]:
        """Peaks (MiB), CPU seconds, per-kind breakdown, load and a coarse trace."""
        kinds = sorted(self.kind_peak_pss, key=lambda k: -self.kind_peak_pss[k])
        cpu = self.cpu_by_kind()
        return {
            "peak_rss_mb": round(self.peak_rss / MIB, 1),
            "peak_pss_mb": round(self.peak_pss / MIB, 1),
            "peak_processes": self.peak_procs,
            "samples": self.samples,
            "cpu_s": round(self.cpu_seconds(), 1),
            "by_kind": {
                k: {
                    "peak_rss_mb": round(self.kind_peak_rss[k] / MIB, 1),
                    "peak_pss_mb": round(self.kind_peak_pss[k] / MIB, 1),
                    "cpu_s": round(cpu.get(k, 0.0), 1),
                }
                for k in kinds
            },
            "load_average_1m": {
                "mean": round(sum(self.load) / len(self.load), 2),
                "max": round(max(self.load), 2),
            }
            if self.load
            else None,
            "trace": [
                {"t": t, "rss_mb": round(r / MIB, 1), "pss_mb": round(p / MIB, 1), "processes": n}
                for t, r, p, n in self.series
            ],
        }


# --------------------------------------------------------------------------- rows
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


# --------------------------------------------------------------------------- page
METHOD_TEXT = """\
**Method.** `bench/scale.py` runs the project's Flower App end to end for each
configuration: `simulations/runner.py` starts a private simulation SuperLink and `flwr run`
(real ServerApp, real ClientApps in Ray workers, one CPU each, so two run at a time on
this machine; real Opacus DP-SGD). The round is light but complete: rotten-tomatoes, `iid`
partition of the 6,692 private examples (the natural partition has only 406 movies),
every client a CNN `tiny` student with one distillation epoch on the public batch and
DP-SGD for one pass over its shard (ε budget 8, `hooks`, head only), a Transformer `tiny`
teacher pre-trained for one epoch. Every client is sampled every round. Students are
evaluated on the 2,616 test texts only in the last round, a rule of the coordinator that
no setting turns off; the rounds measured here are such last rounds.

- *s/round* is the coordinator's own `seconds` of the measured round in `metrics.jsonl`
  (send, every client's work, validation, aggregation, the teacher's update and test):
  the mean of the rounds after the first, or round 1 when the run has one round. Round 1
  also pays each Ray worker's first call (tokenizer training, data encoding: about 10 s of
  CPU per worker), which is small beside a 1000-client round and large beside a
  10-client one. *Wall s* is the whole run: SuperLink and Ray start-up, teacher
  pre-training, every round, shutdown.
- *CPU s/round* is the CPU time (user + system) that the run's processes used during the
  measured round, read from `/proc` at each round's end; *client CPU per client* counts
  only the Ray ClientApp actors. On a shared machine a neighbour's load stretches the
  wall-clock numbers; CPU time is much steadier, and the mean 1-minute load average
  during each run is shown beside it (this machine has 2 cores).
- *Peak RSS / PSS* is the largest sum, over every process of the run (SuperLink, `flwr
  run`, SuperExec, the `flwr-simulation` process that hosts the ServerApp and the
  Simulation Engine, Ray's daemons and workers), of the resident set and of the
  proportional set, sampled every 0.5 s. RSS counts each shared library once per process
  and so over-states what the run needs; PSS splits shared pages between the processes
  that map them.

Ray's workers run at the script's own niceness (`RAY_worker_niceness=0`; Ray's default
puts them 15 below the driver, which on a shared machine hands their CPU to neighbours).
"""


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
        METHOD_TEXT,
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


# --------------------------------------------------------------------------- runs
def memory_total_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_config(clients: int, public_batch: int, rounds: int, out: Path) -> Any:
    """The FedConfig of one configuration (LIGHT + clients, public batch, rounds)."""
    from common.config import FedConfig

    return FedConfig.from_mapping(
        {
            **LIGHT,
            "num-clients": clients,
            "public-batch-size": public_batch,
            "rounds": rounds,
            "out-dir": str(out),
        }
    )


def run_one(
    clients: int,
    public_batch: int,
    *,
    rounds: int,
    runs_dir: Path,
    timeout: float,
    keep: bool,
    interval: float = 0.5,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """One simulation, sampled; a failure becomes a row with ``error`` (the sweep goes on)."""
    from simulations.runner import run_simulation

    out = runs_dir / f"c{clients}-pb{public_batch}"
    if out.exists():
        shutil.rmtree(out)  # the coordinator would resume an old checkpoint
    cfg = run_config(clients, public_batch, rounds, out)
    error = None
    marks: dict[int, dict[str, float]] = {}
    sampler = TreeSampler(interval=interval)

    def on_record(r: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            sampler.sample()
        marks[int(r["round"])] = sampler.cpu_by_kind()
        log(
            f"    round {r['round']}: {r['seconds']:.1f} s"
            + (f", {r['replies']}/{r['sampled']} replies" if "replies" in r else "")
        )

    start = time.monotonic()
    with sampler as mem:
        try:
            run_simulation(cfg, num_cpus=1, on_record=on_record, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - reported in the row, not raised
            error = f"{type(exc).__name__}: {exc}"
            log(f"    failed: {error}")
    wall = time.monotonic() - start
    metrics = out / "metrics.jsonl"
    records = (
        [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
        if metrics.exists()
        else []
    )
    if not keep:
        shutil.rmtree(out / "clients", ignore_errors=True)  # ~1.8 MB of student per client
    return build_row(
        clients=clients,
        public_batch=public_batch,
        rounds=rounds,
        records=records,
        wall_s=wall,
        memory=mem.summary(),
        cpu_marks=marks,
        error=error,
    )


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def rounds_for(clients: int, rounds: int, large_clients: int, large_rounds: int) -> int:
    return large_rounds if clients >= large_clients else rounds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", default="10,100,1000")
    parser.add_argument(
        "--public-batch",
        default="100,2000",
        help="the first value is the clients sweep's public batch",
    )
    parser.add_argument(
        "--batch-clients", type=int, default=100, help="clients of the public-batch sweep"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--large-clients",
        type=int,
        default=1000,
        help="from this many clients on, run --large-rounds rounds instead",
    )
    parser.add_argument("--large-rounds", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=5400.0, help="seconds per simulation")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="4 clients, public batch 100, 2 rounds (a check, not a result)",
    )
    parser.add_argument(
        "--merge", action="store_true", help="keep the rows of --out for configurations not rerun"
    )
    parser.add_argument(
        "--keep-runs",
        action="store_true",
        help="keep the clients' state folders under runs/bench-scale",
    )
    parser.add_argument("--runs-dir", default=str(RUNS))
    parser.add_argument(
        "--out",
        default=None,
        help="default bench/results/scale.json (--quick: runs/bench-scale/scale_quick.json)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.public_batch, args.batch_clients, args.rounds = "4", "100", 4, 2
    clients, batches = _ints(args.clients), _ints(args.public_batch)
    out = Path(
        args.out
        or (Path(args.runs_dir) / "scale_quick.json" if args.quick else RESULTS / "scale.json")
    )

    import torch

    from common.environment import environment, print_environment

    # Ray starts its workers (the ClientApps) at niceness +15 over the driver; on a shared
    # machine that hands the clients' CPU to any neighbour. Run them at this script's own
    # niceness instead (Ray's worker_niceness setting; the project's CLI keeps Ray's).
    os.environ.setdefault("RAY_worker_niceness", "0")
    env = {
        **environment(torch.device("cpu")),
        "memory_total_mb": round(memory_total_mb()),
        "niceness": os.nice(0),
        "ray_worker_niceness": os.environ["RAY_worker_niceness"],
    }
    print_environment(env)
    pairs = configurations(clients, batches, args.batch_clients)
    plan = [
        (n, m, rounds_for(n, args.rounds, args.large_clients, args.large_rounds)) for n, m in pairs
    ]
    print(
        "configurations (clients, public batch, rounds): " + ", ".join(map(str, plan)), flush=True
    )
    old = json.loads(out.read_text()) if args.merge and out.exists() else {}
    command = " ".join(
        ["python -m bench.scale", *(argv if argv is not None else sys.argv[1:])]
    )
    commands = list(dict.fromkeys([*old.get("commands", []), command]))  # unique, in order
    new: list[dict[str, Any]] = []
    start = time.perf_counter()

    def save() -> dict[str, Any]:
        rows = merge_rows(old.get("rows", []), new)
        result = {
            "benchmark": "scale",
            "command": command if len(commands) == 1 else " && ".join(commands),
            "commands": commands,
            "environment": env,
            "settings": {
                "run_config": LIGHT,
                "rounds": args.rounds,
                "large_clients": args.large_clients,
                "large_rounds": args.large_rounds,
                "clients": sorted({r["clients"] for r in rows}),
                "public_batches": sorted({r["public_batch"] for r in rows}),
                "base_public_batch": batches[0],
                "batch_clients": args.batch_clients,
                "client_resources_num_cpus": 1,
                "sampler_interval_s": 0.5,
                "quick": args.quick,
            },
            "rows": rows,
            "notes": old.get("notes", []),
            "growth": growth(rows, batches[0], args.batch_clients),
            "target": evaluate_target(rows, env["memory_total_mb"]),
            "wall_seconds": round(time.perf_counter() - start + old.get("wall_seconds", 0.0), 1),
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        return result

    for n, m, rounds in plan:
        known = [
            r
            for r in new + old.get("rows", [])
            if r.get("ok")
            and r["clients"] < n
            and r["public_batch"] == m
            and r.get("s_per_round_per_client")
        ]
        if known:
            ref = max(known, key=lambda r: r["clients"])
            est = (
                ref["s_per_round_per_client"] * n * rounds
                + ref["wall_s"]
                - sum(ref["round_seconds"])
            )
            print(
                f"  {n} clients, public batch {m}: about {est / 60:.0f} min expected "
                f"(from {ref['clients']} clients at today's load)",
                flush=True,
            )
        print(f"  {n} clients, public batch {m}, {rounds} round(s) ...", flush=True)
        row = run_one(
            n,
            m,
            rounds=rounds,
            runs_dir=Path(args.runs_dir),
            timeout=args.timeout,
            keep=args.keep_runs,
            log=lambda s: print(s, flush=True),
        )
        row["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        row["command"] = command
        new.append(row)
        save()
        print(TABLE_HEADER)
        print(format_row(row), flush=True)
    result = save()
    print(TABLE_HEADER)
    for r in result["rows"]:
        print(format_row(r))
    g = result["growth"]
    for s in g["steps"]:
        print(
            f"{s['from']} -> {s['to']} clients (x{s['clients_x']:g}): time x{s['time_x']} "
            f"({s['time_x_over_clients_x']} of linear), CPU x{s.get('cpu_x')} "
            f"({s.get('cpu_x_over_clients_x')} of linear); PSS x{s['pss_x']}"
        )
    if "public_batch" in g:
        p = g["public_batch"]
        print(
            f"public batch {p['from']} -> {p['to']} at {p['clients']} clients: "
            f"time x{p['time_x']}, CPU x{p.get('cpu_x')}, PSS x{p['pss_x']}"
        )
    print(
        f"target ({TARGET_CLIENTS} clients): met={result['target']['met']}: "
        f"{result['target']['detail']}"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
