"""Data-parallel training with ``torch.distributed`` (DDP): gloo on CPU, nccl on GPUs.

Every process holds a replica; each global batch is split across the processes, and
DDP all-reduces (averages) the gradients in ``backward``. Each process scales its loss by
``world * local / global`` so that the average equals the gradient of the global batch's
mean loss, whatever the split: training with N processes follows the single-process
run with the same global batch up to float summation order (tests/test_ddp.py checks
the loss curves). Launch with ``torchrun --nproc_per_node N -m common.training.ddp`` (a
synthetic check) or call :func:`spawn_train` (the coordinator, when it has >1 GPU).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class DataParallelSettings:
    """The optimisation every process agrees on (the global batch, not a local one)."""

    epochs: int = 1
    lr: float = 1e-3
    global_batch: int = 32
    seed: int = 0
    max_grad_norm: float = 1.0


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train_data_parallel(model: nn.Module, x: Tensor, y: Tensor, settings: DataParallelSettings,
                        device: torch.device) -> list[float]:
    """Cross-entropy training on this process's share of every global batch; returns the
    global batch's mean loss per step (the same list on every process)."""
    rank, world = _rank_world()
    model.to(device).train()
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(settings.seed)  # same order on every process
    losses = []
    for _ in range(settings.epochs):
        for idx in torch.randperm(len(x), generator=gen).split(settings.global_batch):
            local = idx[rank::world]
            out = net(x[local].to(device))
            summed = nn.functional.cross_entropy(out, y[local].to(device), reduction="sum")
            # DDP averages over processes: world * sum_local / global -> the global mean
            (summed * world / len(idx)).backward()
            nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            total = summed.detach().clone()
            if world > 1:
                dist.all_reduce(total)
            losses.append(float(total) / len(idx))
    return losses


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def _worker(rank: int, world: int, port: int, model: nn.Module, x: Tensor, y: Tensor,
            settings: DataParallelSettings, device_type: str, result: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device(device_type, rank) if device_type == "cuda" else torch.device("cpu")
    dist.init_process_group(backend_for(device), rank=rank, world_size=world)
    # spawn hands every process the same shared-memory tensors: each needs its own copy,
    # or both would step one set of weights
    model = copy.deepcopy(model)
    try:
        losses = train_data_parallel(model, x, y, settings, device)
        if rank == 0:
            torch.save({"state": model.cpu().state_dict(), "losses": losses}, result)
    finally:
        dist.destroy_process_group()


def spawn_train(model: nn.Module, x: Tensor, y: Tensor, settings: DataParallelSettings, *,
                world: int, device_type: str = "cpu") -> list[float]:
    """Train ``model`` in ``world`` spawned processes (one per GPU, or CPU processes with
    gloo) and load the result back into it; returns the per-step global losses."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        result = str(Path(tmp) / "result.pt")
        mp.spawn(_worker, nprocs=world, join=True,
                 args=(world, _free_port(), model, x, y, settings, device_type, result))
        saved = torch.load(result, map_location="cpu", weights_only=True)
    model.load_state_dict(saved["state"])
    return saved["losses"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ the torchrun check


def synthetic_problem(seed: int = 0, n: int = 512, dim: int = 16, classes: int = 4,
                      hidden: int = 64) -> tuple[nn.Module, Tensor, Tensor]:
    """A small deterministic problem: a two-layer MLP on Gaussian blobs."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=gen) * 2
    y = torch.randint(0, classes, (n,), generator=gen)
    x = centres[y] + torch.randn(n, dim, generator=gen)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, classes))
    return model, x, y


def main() -> None:
    parser = argparse.ArgumentParser(description="DDP training on a synthetic problem; "
                                     "run under torchrun (or alone for one process).")
    parser.add_argument("--out", type=Path, required=True, help="JSON of losses (rank 0).")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per process: the comparison is about processes
    launched = "WORLD_SIZE" in os.environ
    if launched:
        dist.init_process_group("gloo")
    model, x, y = synthetic_problem(n=args.examples, dim=args.dim, hidden=args.hidden)
    settings = DataParallelSettings(epochs=args.epochs, global_batch=args.global_batch)
    start = time.perf_counter()
    losses = train_data_parallel(model, x, y, settings, torch.device("cpu"))
    seconds = time.perf_counter() - start
    rank, world = _rank_world()
    if rank == 0:
        args.out.write_text(json.dumps({"world": world, "losses": losses,
                                        "seconds": seconds}) + "\n")
    if launched:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
