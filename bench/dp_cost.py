"""Benchmark 1: what DP-SGD costs a student in training speed and memory.

    python -m bench.dp_cost [--batches 64,256] [--repeats 4] [--device cpu]

For each student family (Transformer, LSTM, CNN; size ``tiny``, vocab 6000, T=40 on real
rotten-tomatoes token ids) and each batch size, three trainers are built side by side in
ONE process: non-private SGD, and Opacus DP-SGD with ``hooks`` and with ``ghost``
clipping, set up exactly as :func:`common.training.dp.dp_train` sets them up. Their
training steps are timed in alternating blocks (the order rotates every repeat), so a
neighbour's load on a shared machine hits every mode alike; the reported throughput ratio
is the median, over repeats, of each mode's samples/s divided by the non-private samples/s
of the same repeat. Absolute numbers vary from machine to machine; the ratios are the
result.

Peak memory is measured apart from timing, one (family, mode, batch) at a time, so the
three trainers never share a footprint:

- CPU: a fresh subprocess per configuration (no allocator arena or cache left by another
  mode). It loads the token ids, resets the kernel's resident-set high-water mark
  (``/proc/self/clear_refs``), builds the model and the Opacus wrapper and runs a few
  steps; the cost is ``VmHWM - RSS before the build``: weights, gradients, optimizer
  state, activations, per-sample gradients and every transient in between, as the kernel
  saw them. torch has no CPU allocator statistics and ``tracemalloc`` does not see
  torch's allocations.
- CUDA: in process, ``torch.cuda.max_memory_allocated`` minus the allocation before the
  build, after ``reset_peak_memory_stats``.

Writes ``bench/results/dp_cost.json`` and prints a table. Not a test: it asserts
nothing about time.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from common.config import DP_TRAINABLE
from common.environment import environment, print_environment
from common.models import ModelConfig, build_model, count_parameters

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "bench" / "results"
FAMILIES: tuple[str, ...] = ("transformer", "lstm", "cnn")
MODES: tuple[str, ...] = ("non-private", "hooks", "ghost")
DP_MODES: tuple[str, ...] = ("hooks", "ghost")
# The default student of the run config (pyproject [tool.flwr.app.config]).
DEFAULT_STUDENT = {"family": "transformer", "size": "tiny", "vocab_size": 6000, "max_len": 40}
# Issue 8's target for the default student on CPU, with the better of the two DP modes.
TARGET = {"throughput_ratio_min": 0.6, "memory_ratio_max": 1.4}
# Same optimizer and DP settings as the run config's defaults (dp-lr, max-grad-norm).
LR, MOMENTUM, MAX_GRAD_NORM, NOISE_MULTIPLIER = 0.05, 0.9, 1.0, 1.0
POOL_ROWS = 2048  # token-id rows kept from the private set (batches are drawn from them)


# --------------------------------------------------------------------------- data
def load_token_pool(seed: int = 0, rows: int = POOL_ROWS) -> tuple[Tensor, Tensor]:
    """Real token ids and labels of the default task's private set (not random ids:
    padding and sequence lengths shape the LSTM's and the attention's work)."""
    from common.task import prepare_task

    task = prepare_task("rotten-tomatoes", seed, DEFAULT_STUDENT["vocab_size"],
                        DEFAULT_STUDENT["max_len"])
    return task.private_x[:rows].clone(), task.private_y[:rows].clone()


def make_batches(x: Tensor, y: Tensor, batch: int, count: int, device: torch.device,
                 seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """``count`` fixed-size batches, already on the device.

    Fixed sizes (instead of the Poisson loader's variable ones) make every mode process
    exactly the same rows; sampling costs the same in every DP mode and is not the step.
    """
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        idx = torch.randint(len(x), (batch,), generator=gen)
        out.append((x[idx].to(device), y[idx].to(device)))
    return out


# --------------------------------------------------------------------------- trainers
@dataclass
class Trainer:
    """One mode's model and optimizer; ``step`` is one full training step on a batch."""

    family: str
    mode: str
    params: int
    step: Callable[[Tensor, Tensor], None]


def student_config(family: str, num_classes: int = 2) -> ModelConfig:
    """The default student's shape (tiny, vocab 6000, T=40) for ``family``."""
    return ModelConfig(family=family, size=DEFAULT_STUDENT["size"],
                       vocab_size=DEFAULT_STUDENT["vocab_size"], num_classes=num_classes,
                       max_len=DEFAULT_STUDENT["max_len"])


def build_trainer(family: str, mode: str, batch: int, x: Tensor, y: Tensor,
                  device: torch.device, seed: int = 0, trainable: str = "all") -> Trainer:
    """A trainer for ``mode``, the DP ones wrapped as ``dp_train`` wraps them.

    ``make_private`` gets a loader of the pool at ``batch`` (Poisson, as in dp_train), so
    the optimizer's expected batch size and clipping match; the step itself is fed fixed
    batches (see :func:`make_batches`). ``trainable`` freezes the rest of the model in
    every mode alike, as ``dp_train`` does (``head``: the clients' default DP step).
    """
    from common.training.dp import set_trainable

    torch.manual_seed(seed)
    model = build_model(student_config(family)).to(device).train()
    set_trainable(model, trainable)
    params = count_parameters(model, trainable_only=True)
    opt: Any = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR,
                               momentum=MOMENTUM)
    criterion: Any = nn.CrossEntropyLoss()
    module: Any = model
    if mode in DP_MODES:
        from opacus import PrivacyEngine

        loader = DataLoader(TensorDataset(x, y), batch_size=batch)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
            engine = PrivacyEngine(accountant="rdp")
            private = engine.make_private(
                module=model, optimizer=opt, data_loader=loader,
                noise_multiplier=NOISE_MULTIPLIER, max_grad_norm=MAX_GRAD_NORM,
                poisson_sampling=True, grad_sample_mode=mode, criterion=nn.CrossEntropyLoss(),
            )
        if mode == "ghost":
            module, opt, criterion, _ = private
        else:
            module, opt, _ = private
    elif mode != "non-private":
        raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")

    def step(xb: Tensor, yb: Tensor) -> None:
        loss = criterion(module(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return Trainer(family, mode, params, step)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_block(trainer: Trainer, batches: list[tuple[Tensor, Tensor]], steps: int,
               device: torch.device) -> float:
    """Samples/s over ``steps`` steps, after one untimed step (caches, lazy init)."""
    trainer.step(*batches[0])
    _sync(device)
    start = time.perf_counter()
    rows = 0
    for i in range(steps):
        xb, yb = batches[(i + 1) % len(batches)]
        trainer.step(xb, yb)
        rows += len(xb)
    _sync(device)
    return rows / (time.perf_counter() - start)


def measure_throughput(family: str, batch: int, x: Tensor, y: Tensor, device: torch.device,
                       *, repeats: int, steps: int,
                       trainable: str = "all") -> dict[str, dict[str, Any]]:
    """Samples/s of every mode, alternating; ratios are taken within each repeat."""
    batches = make_batches(x, y, batch, 4, device)
    trainers = {m: build_trainer(family, m, batch, x, y, device, trainable=trainable)
                for m in MODES}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ff]ull backward hook.*")
        for t in trainers.values():  # first steps allocate optimizer state, grad samples
            t.step(*batches[0])
        runs: dict[str, list[float]] = {m: [] for m in MODES}
        for r in range(repeats):
            order = MODES[r % len(MODES):] + MODES[:r % len(MODES)]
            for mode in order:
                runs[mode].append(time_block(trainers[mode], batches, steps, device))
    out: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        ratios = [a / b for a, b in zip(runs[mode], runs["non-private"], strict=True)]
        out[mode] = {
            "params": trainers[mode].params,
            "samples_per_s": statistics.median(runs[mode]),
            "samples_per_s_runs": [round(v, 2) for v in runs[mode]],
            "throughput_ratio": statistics.median(ratios),
            "throughput_ratio_range": [min(ratios), max(ratios)],
            # cross-check: best block against best block (noise from neighbours only
            # ever slows a block down, so the fastest block is the least disturbed)
            "throughput_ratio_best": max(runs[mode]) / max(runs["non-private"]),
        }
    del trainers, batches
    gc.collect()
    return out


# --------------------------------------------------------------------------- memory
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child(family: str, mode: str, batch: int, data: str, steps: int,
                 trainable: str = "all") -> dict[str, Any]:
    """Runs in a fresh process: the bytes one configuration's training adds to the RSS."""
    x, y = torch.load(data)
    batches = make_batches(x, y, batch, 2, torch.device("cpu"))
    with warnings.catch_warnings():
        # Touch the code paths first, on a throwaway trainer and a 2-row batch: the first
        # step maps tens of MiB of library code into the RSS, the same for every mode,
        # which is no part of the step's working memory and would flatten the ratios.
        warnings.filterwarnings("ignore", message=".*[Ff]ull backward hook.*")
        warm = build_trainer(family, mode, 2, x, y, torch.device("cpu"), trainable=trainable)
        warm.step(x[:2], y[:2])
        del warm
    gc.collect()
    reset = _reset_hwm()
    before = _rss_bytes()
    hwm_before = _hwm_bytes()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ff]ull backward hook.*")
        trainer = build_trainer(family, mode, batch, x, y, torch.device("cpu"),
                                trainable=trainable)
        for i in range(steps):
            trainer.step(*batches[i % len(batches)])
    peak = _hwm_bytes()
    return {"peak_bytes": peak - before, "process_peak_bytes": peak, "hwm_reset": reset,
            "valid": reset or peak > hwm_before}


def measure_memory_cpu(family: str, mode: str, batch: int, data: Path, steps: int,
                       threads: int, trainable: str = "all") -> dict[str, Any]:
    """Peak memory of one configuration, in its own subprocess (see the module doc)."""
    cmd = [sys.executable, "-m", "bench.dp_cost", "--memory-child", family, mode,
           str(batch), str(Path(data).resolve()), "--memory-steps", str(steps),
           "--threads", str(threads), "--trainable", trainable]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child {family}/{mode}/{batch} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_memory_cuda(family: str, mode: str, batch: int, x: Tensor, y: Tensor,
                        device: torch.device, steps: int,
                        trainable: str = "all") -> dict[str, Any]:
    """Peak allocated CUDA memory of one configuration, relative to before its build."""
    batches = make_batches(x, y, batch, 2, device)
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ff]ull backward hook.*")
        trainer = build_trainer(family, mode, batch, x, y, device, trainable=trainable)
        for i in range(steps):
            trainer.step(*batches[i % len(batches)])
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del trainer, batches
    gc.collect()
    torch.cuda.empty_cache()
    return {"peak_bytes": peak - before, "process_peak_bytes": peak, "hwm_reset": True,
            "valid": True}


# --------------------------------------------------------------------------- run
def run_dp_cost(*, device: torch.device, families: tuple[str, ...], batches: tuple[int, ...],
                repeats: int, steps: int, memory_steps: int, threads: int,
                x: Tensor, y: Tensor, log: Callable[[str], None] = print,
                trainable: str = "all") -> list[dict[str, Any]]:
    """Every (family, batch, mode) row: throughput, peak memory and their ratios."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pool.pt"
        torch.save((x, y), data)
        for family in families:
            for batch in batches:
                t0 = time.perf_counter()
                thr = measure_throughput(family, batch, x, y, device, repeats=repeats,
                                         steps=steps, trainable=trainable)
                mem = {}
                for mode in MODES:
                    if device.type == "cuda":
                        mem[mode] = measure_memory_cuda(family, mode, batch, x, y, device,
                                                        memory_steps, trainable)
                    else:
                        mem[mode] = measure_memory_cpu(family, mode, batch, data,
                                                       memory_steps, threads, trainable)
                base_mem = mem["non-private"]["peak_bytes"]
                for mode in MODES:
                    row = {"family": family, "batch_size": batch, "mode": mode, **thr[mode],
                           **mem[mode], "memory_ratio": mem[mode]["peak_bytes"] / base_mem}
                    rows.append(row)
                    log(format_row(row))
                log(f"  ({family} B={batch}: {time.perf_counter() - t0:.0f} s)")
    return rows


def format_row(row: dict[str, Any]) -> str:
    """One table line for the console."""
    return (f"{row['family']:<12}{row['batch_size']:>6}  {row['mode']:<12}"
            f"{row['samples_per_s']:>10.0f}{row['throughput_ratio']:>8.2f}x"
            f"{row['peak_bytes'] / 2**20:>10.1f}{row['memory_ratio']:>8.2f}x")


TABLE_HEADER = (f"{'family':<12}{'batch':>6}  {'mode':<12}{'samples/s':>10}{'ratio':>9}"
                f"{'peak MiB':>10}{'ratio':>9}")


def evaluate_target(rows: list[dict[str, Any]], device: torch.device) -> dict[str, Any]:
    """Issue 8's target for the default student: met at every measured batch size?

    The better mode is the DP mode with the higher throughput ratio at each batch size.
    """
    per_batch = []
    for batch in sorted({r["batch_size"] for r in rows}):
        cands = [r for r in rows if r["family"] == DEFAULT_STUDENT["family"]
                 and r["batch_size"] == batch and r["mode"] in DP_MODES]
        if not cands:
            continue
        best = max(cands, key=lambda r: r["throughput_ratio"])
        per_batch.append({
            "batch_size": batch, "better_mode": best["mode"],
            "throughput_ratio": best["throughput_ratio"], "memory_ratio": best["memory_ratio"],
            "throughput_met": best["throughput_ratio"] >= TARGET["throughput_ratio_min"],
            "memory_met": best["memory_ratio"] <= TARGET["memory_ratio_max"],
        })
    met = bool(per_batch) and all(p["throughput_met"] and p["memory_met"] for p in per_batch)
    return {**TARGET, "student": DEFAULT_STUDENT, "applies_to": "cpu",
            "evaluated_on": str(device), "per_batch": per_batch, "met": met}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--batches", default="64,256")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per block")
    parser.add_argument("--memory-steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: the machine is shared; compare like with like)")
    parser.add_argument("--trainable", default="all", choices=DP_TRAINABLE,
                        help="what every mode trains (head: the clients' default DP step)")
    parser.add_argument("--out", default="", help="default: results/dp_cost[-TRAINABLE].json")
    parser.add_argument("--memory-child", nargs=4, metavar=("FAMILY", "MODE", "BATCH", "DATA"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        family, mode, batch, data = args.memory_child
        print(json.dumps(memory_child(family, mode, int(batch), data, args.memory_steps,
                                      args.trainable)))
        return
    from common.device import resolve_device

    device = resolve_device(args.device)
    env = environment(device)
    print_environment(env)
    start = time.perf_counter()
    x, y = load_token_pool()
    print(TABLE_HEADER, flush=True)
    rows = run_dp_cost(device=device, families=tuple(args.families.split(",")),
                       batches=tuple(int(b) for b in args.batches.split(",")),
                       repeats=args.repeats, steps=args.steps, memory_steps=args.memory_steps,
                       threads=args.threads, x=x, y=y,
                       log=lambda s: print(s, flush=True), trainable=args.trainable)
    target = {**evaluate_target(rows, device), "trainable": args.trainable}
    wall = time.perf_counter() - start
    result = {
        "benchmark": "dp_cost",
        "command": " ".join(["python -m bench.dp_cost", *(argv or sys.argv[1:])]),
        "environment": env,
        "settings": {"student": DEFAULT_STUDENT, "families": args.families.split(","),
                     "batches": [int(b) for b in args.batches.split(",")],
                     "repeats": args.repeats, "steps_per_block": args.steps,
                     "memory_steps": args.memory_steps, "optimizer": f"SGD lr={LR} m={MOMENTUM}",
                     "noise_multiplier": NOISE_MULTIPLIER, "max_grad_norm": MAX_GRAD_NORM,
                     "trainable": args.trainable,
                     "memory_method": ("cuda max_memory_allocated" if device.type == "cuda"
                                       else "subprocess VmHWM - RSS before build")},
        "rows": rows,
        "target": target,
        "wall_seconds": round(wall, 1),
    }
    tag = "" if args.trainable == "all" else f"-{args.trainable}"
    out = Path(args.out or RESULTS / f"dp_cost{tag}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    for p in target["per_batch"]:
        print(f"target (default student, B={p['batch_size']}, {p['better_mode']}): throughput "
              f"{p['throughput_ratio']:.2f}x (>= {TARGET['throughput_ratio_min']}: "
              f"{p['throughput_met']}), memory {p['memory_ratio']:.2f}x "
              f"(<= {TARGET['memory_ratio_max']}: {p['memory_met']})")
    print(f"target met: {target['met']}; wrote {out} in {wall:.0f} s")


if __name__ == "__main__":
    main()
