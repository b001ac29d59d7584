"""DP-SGD on a private partition with Opacus: Poisson sampling, per-sample clipping, noise.

The privacy event of a call is fixed *before* training by :func:`steps_per_epoch` and the
caller's noise multiplier, so the caller can record it in the ledger first (a crash then
over-counts nothing and loses nothing: the budget is spent as soon as it is recorded).
This function then takes exactly that many optimizer steps and reports the steps that
Opacus' own accountant saw, as a cross-check.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from opacus.utils.batch_memory_manager import BatchMemoryManager
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from common.errors import ConfigError
from common.training.adapters import add_adapters, merge_adapters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DpTrainResult:
    """What one DP-SGD call did: the mechanism's parameters and the losses seen."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    losses: tuple[float, ...]


def steps_per_epoch(num_examples: int, expected_batch_size: int) -> tuple[float, int]:
    """Sample rate q and steps per epoch of a Poisson loader (Opacus: q = 1/len(loader))."""
    if num_examples <= 0:
        raise ConfigError(f"Cannot train with DP on {num_examples} examples.")
    batch = min(expected_batch_size, num_examples)
    n_batches = math.ceil(num_examples / batch)
    return 1.0 / n_batches, n_batches


def dp_train(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: int,
    steps: int,
    lr: float,
    optimizer: str = "sgd",
    trainable: str = "all",
    grad_sample_mode: str = "hooks",
    max_physical_batch_size: int = 256,
    device: torch.device,
    seed: int = 0,
    adapter_rank: int = 4,
) -> DpTrainResult:
    """Train ``model`` in place with DP-SGD for exactly ``steps`` logical steps.

    ``trainable="head"`` freezes everything but the model's last linear layer: fewer
    dimensions for the same noise (Yu et al. 2021, "Differentially private fine-tuning").
    ``trainable="adapters"`` trains rank-``adapter_rank`` LoRA updates of the body's
    linear layers and the head, then folds them into the weights (common/training/adapters).
    """
    q, _ = steps_per_epoch(len(x), expected_batch_size)
    if steps <= 0:
        return DpTrainResult(noise_multiplier, q, 0, ())
    work = copy.deepcopy(model).to(device).train()
    set_trainable(work, trainable, adapter_rank)
    params = [p for p in work.parameters() if p.requires_grad]
    opt = _make_optimizer(optimizer, params, lr)
    loader = DataLoader(
        TensorDataset(x, y),
        batch_size=min(expected_batch_size, len(x)),
        generator=torch.Generator().manual_seed(seed),
    )
    with warnings.catch_warnings():
        # Opacus warns that secure RNG is off (it is, as in every Opacus example: torch's
        # CSPRNG is not shipped) and torch that hooks fire on inputs without gradients.
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
        warnings.filterwarnings("ignore", message=".*[Ff]ull backward hook.*")
        engine = PrivacyEngine(accountant="rdp")
        private = engine.make_private(
            module=work,
            optimizer=opt,
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            poisson_sampling=True,
            grad_sample_mode=grad_sample_mode,
            criterion=nn.CrossEntropyLoss(),
        )
    if grad_sample_mode == "ghost":
        gm, dp_opt, criterion, dp_loader = private
    else:
        gm, dp_opt, dp_loader = private
        criterion = nn.CrossEntropyLoss()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ff]ull backward hook.*")
        losses = _run_steps(gm, dp_opt, criterion, dp_loader, steps, max_physical_batch_size,
                            device)
    seen = sum(s for _, _, s in engine.accountant.history)
    if seen != steps:
        log.warning("dp_train: Opacus counted %s steps, %s planned", seen, steps)
    trained = _unwrap(gm)
    merge_adapters(trained)  # no-op unless trainable == "adapters"
    model.load_state_dict(trained.state_dict())
    return DpTrainResult(noise_multiplier, q, steps, tuple(losses))


def _run_steps(gm, dp_opt, criterion, dp_loader, steps, max_physical, device) -> list[float]:
    """Iterate the Poisson loader until ``steps`` logical steps have been taken."""
    losses: list[float] = []
    taken = 0
    with BatchMemoryManager(
        data_loader=dp_loader, max_physical_batch_size=max_physical, optimizer=dp_opt
    ) as mem_loader:
        while taken < steps:
            for xb, yb in mem_loader:
                xb, yb = xb.to(device), yb.to(device)
                loss = criterion(gm(xb), yb)
                dp_opt.zero_grad(set_to_none=True)
                loss.backward()
                dp_opt.step()
                if not dp_opt._is_last_step_skipped:  # a BatchMemoryManager sub-step
                    taken += 1
                    losses.append(float(loss.detach()))
                if taken >= steps:
                    break
    return losses


def _unwrap(gm: nn.Module) -> nn.Module:
    """The plain module inside Opacus' wrapper (its keys have no ``_module.`` prefix)."""
    return gm._module if hasattr(gm, "_module") else gm


def set_trainable(model: nn.Module, trainable: str, adapter_rank: int = 4) -> None:
    """Freeze ``model`` but for what ``trainable`` names (``adapters`` adds the adapters).

    ``embedding`` trains the token embedding and the head: on rotten-tomatoes that is
    where a non-private fine-tune finds the private signal (docs/RESULTS.md).
    """
    if trainable == "all":
        return
    if trainable == "adapters":
        if adapter_rank < 1:
            raise ConfigError(f"dp-adapter-rank={adapter_rank} must be >= 1.")
        add_adapters(model, adapter_rank)
        return
    if trainable not in ("head", "embedding"):
        raise ConfigError(
            f"dp-trainable={trainable!r} is not one of all, head, adapters, embedding."
        )
    parts = ["head"] if trainable == "head" else ["tok_emb", "head"]
    modules = [getattr(model, name, None) for name in parts]
    if not all(isinstance(m, nn.Module) for m in modules):
        raise ConfigError(f"dp-trainable={trainable!r} needs a model with "
                          f"{' and '.join(f'`{n}`' for n in parts)}; "
                          f"{type(model).__name__} lacks one. Use dp-trainable='all'.")
    for p in model.parameters():
        p.requires_grad_(False)
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(True)


def _make_optimizer(name: str, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    raise ConfigError(f"dp-optimizer={name!r} is not one of sgd, adamw.")
