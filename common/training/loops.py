"""Non-private loops: supervised training, distillation on public data, prediction.

Distillation here touches only public data (the transfer set) and so costs no ε; it runs
on a plain module, never through an Opacus wrapper, so the accountant never sees it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from common.distill.losses import kd_loss
from common.metrics import accuracy


def _batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(order.split(batch_size))


def train_supervised(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 32,
    device: torch.device,
    seed: int = 0,
    weight_decay: float = 0.01,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
) -> list[float]:
    """Plain (non-private) supervised training with ``loss_fn`` (the task's criterion;
    cross-entropy on class ids by default); returns the mean loss per epoch."""
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(epochs):
        total, count = 0.0, 0
        for idx in _batches(len(x), batch_size, gen):
            xb, yb = x[idx].to(device), y[idx].to(device)
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total, count = total + loss.item() * len(idx), count + len(idx)
        history.append(total / max(count, 1))
    return history


def distill(
    model: nn.Module,
    x: Tensor,
    target_probs: Tensor,
    *,
    temperature: float,
    epochs: int,
    lr: float,
    batch_size: int = 64,
    device: torch.device,
    seed: int = 0,
    loss_fn: Callable[[Tensor, Tensor, float], Tensor] = kd_loss,
) -> list[float]:
    """Distil ``model`` towards ``target_probs`` on inputs ``x`` with ``loss_fn`` (the
    task's knowledge's loss; by default Hinton et al. 2015 KD)."""
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(epochs):
        total, count = 0.0, 0
        for idx in _batches(len(x), batch_size, gen):
            xb, pb = x[idx].to(device), target_probs[idx].to(device)
            loss = loss_fn(model(xb), pb, temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total, count = total + loss.item() * len(idx), count + len(idx)
        history.append(total / max(count, 1))
    return history


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: Tensor, *, device: torch.device, batch_size: int = 256
) -> Tensor:
    """Logits for every row of ``x``, computed in eval mode, returned on the CPU."""
    was_training = model.training
    model.to(device).eval()
    out = [
        model(x[i : i + batch_size].to(device)).float().cpu()
        for i in range(0, len(x), batch_size)
    ]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def evaluate_accuracy(
    model: nn.Module, x: Tensor, y: Tensor, *, device: torch.device, batch_size: int = 256
) -> float:
    """Share of rows whose arg-max prediction equals the label."""
    if len(x) == 0:
        return float("nan")
    logits = predict_logits(model, x, device=device, batch_size=batch_size)
    return accuracy(y.cpu().numpy(), logits.numpy())
