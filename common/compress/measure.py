"""What a compressed model costs and keeps: parameters, file size, latency, accuracy.

Latency is end to end on raw text (tokenize -> model -> logits), in milliseconds per
call, p50 and p95 over ``reps`` calls after a warm-up, with the thread count fixed by
the caller. Every model sees the same texts in the same order.
"""

from __future__ import annotations

import gzip
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from common.compress.text_model import TextModel


@dataclass(frozen=True)
class LatencySettings:
    """How latency is sampled: calls per batch size, warm-up calls, and the CPU threads."""

    reps_batch1: int = 200
    reps_batch32: int = 30
    warmup: int = 5
    threads: int = 1


def _numel(value: object) -> int:
    if isinstance(value, Tensor):
        # integer buffers (position ids, a vocabulary remap) are lookup tables, not weights
        return 0 if value.dtype in (torch.int32, torch.int64) else value.numel()
    if isinstance(value, tuple | list):
        return sum(_numel(v) for v in value)
    return 0


def weight_count(module: nn.Module) -> int:
    """Weights in the saved state (quantized packed weights included, index buffers not)."""
    return sum(_numel(v) for v in module.state_dict().values())


def saved_bytes(module: nn.Module) -> tuple[int, int]:
    """Bytes of ``torch.save(state_dict)``, and of the same file gzip-compressed (where
    unstructured zeros show up)."""
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    raw = buffer.getvalue()
    return len(raw), len(gzip.compress(raw, compresslevel=6))


def _batches(texts: Sequence[str], batch: int, reps: int) -> list[list[str]]:
    return [[texts[(i * batch + j) % len(texts)] for j in range(batch)] for i in range(reps)]


def latency_ms(model: TextModel, texts: Sequence[str], batch: int, reps: int,
               warmup: int, device: torch.device | None = None) -> tuple[float, float]:
    """p50 and p95 milliseconds of one call on ``batch`` texts."""
    times = []
    for i, chunk in enumerate(_batches(texts, batch, reps + warmup)):
        start = time.perf_counter()
        with torch.inference_mode():
            ids = model.tokenize(chunk)
            if device is not None:
                ids = ids.to(device)
            model.module(ids).float().cpu()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def test_accuracy(model: TextModel, texts: Sequence[str], labels: Tensor,
                  batch: int = 64, device: torch.device | None = None) -> float:
    """Accuracy on ``texts``, batched by length so that a batch pads little."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    predicted = np.empty(len(texts), dtype=np.int64)
    for start in range(0, len(texts), batch):
        rows = order[start:start + batch]
        with torch.inference_mode():
            ids = model.tokenize([texts[i] for i in rows])
            logits = model.module(ids if device is None else ids.to(device))
        predicted[rows] = logits.float().argmax(1).cpu().numpy()
    return float((predicted == labels.numpy()).mean())


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters(), torch.empty(0)).device


def _latencies(model: TextModel, texts: Sequence[str], settings: LatencySettings,
               where: str, device: torch.device | None) -> dict[str, float]:
    row = {}
    for batch, reps in ((1, settings.reps_batch1), (32, settings.reps_batch32)):
        p50, p95 = latency_ms(model, texts, batch, reps, settings.warmup, device)
        row[f"{where}_b{batch}_p50_ms"], row[f"{where}_b{batch}_p95_ms"] = p50, p95
    return row


def measure(model: TextModel, texts: Sequence[str], labels: Tensor,
            settings: LatencySettings) -> dict[str, float]:
    """One row of the table: weights, MB (raw and gzip), latency at batch 1 and 32 (CPU,
    and GPU where one is present and the model runs there), and test accuracy."""
    raw, packed = saved_bytes(model.module)
    row = {"weights": weight_count(model.module), "size_mb": raw / 1e6,
           "gzip_mb": packed / 1e6}
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        device = _device(model.module)
        if device.type == "cpu":  # a half-precision model lives on the GPU only
            row.update(_latencies(model, texts, settings, "cpu", None))
            row["accuracy"] = test_accuracy(model, texts, labels)
        if torch.cuda.is_available() and not _quantized(model.module):
            gpu = model.with_module(model.module.to("cuda"))
            row.update(_latencies(gpu, texts, settings, "gpu", torch.device("cuda")))
            if device.type != "cpu":
                row["accuracy"] = test_accuracy(gpu, texts, labels, device=device)
            model.module.to(device)
    finally:
        torch.set_num_threads(threads)
    return row


def _quantized(module: nn.Module) -> bool:
    return any("quantized" in type(m).__module__ for m in module.modules())
