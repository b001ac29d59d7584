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
not rerun) and prints a table. The rows and their growth are :mod:`bench.scale_rows`;
the section of docs/BENCHMARKS.md is :mod:`bench.scale_page` (called by
``bench/render.py``). The process-tree sampler is :mod:`simulations.proctree`'s. Not a
test: it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.scale_rows import (
    TABLE_HEADER,
    TARGET_CLIENTS,
    build_row,
    configurations,
    evaluate_target,
    format_row,
    growth,
    merge_rows,
)
from simulations.proctree import TreeSampler

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "bench" / "results"
RUNS = ROOT / "runs" / "bench-scale"
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
