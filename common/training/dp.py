"""DP-SGD on a private partition with Opacus: Poisson sampling, per-sample clipping, noise.

The privacy event of a call is fixed *before* training by :func:`steps_per_epoch` and the
caller's noise multiplier, so the caller can record it in the ledger first (a crash then
over-counts nothing and loses nothing: the budget is spent as soon as it is recorded).
This function then takes exactly that many optimizer steps and reports what Opacus
itself ran (σ, q and steps from its accountant, C from its optimizer), so the caller can
check the recorded event against it before anything leaves the node.

The Poisson sampling and the noise each draw from their own generator, seeded from the
node's secret (:class:`common.privacy.secrets.DpSeeds`), never from torch's global
generator or the public run seed: whoever can recompute the batches or the noise gets
neither the amplification by subsampling nor the Gaussian mechanism's guarantee.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from opacus.utils.batch_memory_manager import BatchMemoryManager
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from common.errors import ConfigError
from common.privacy.planner import sample_rate_and_steps
from common.privacy.secrets import DpSeeds
from common.training.adapters import add_adapters, merge_adapters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DpTrainResult:
    """What one DP-SGD call did: the mechanism's parameters and the losses seen."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    losses: tuple[float, ...]
    max_grad_norm: float = 0.0


def steps_per_epoch(num_examples: int, expected_batch_size: int) -> tuple[float, int]:
    """Sample rate q and steps per epoch of a Poisson loader (Opacus: q = 1/len(loader))."""
    return sample_rate_and_steps(num_examples, expected_batch_size, 1.0)


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
    seeds: DpSeeds,
    adapter_rank: int = 4,
    criterion: nn.Module | None = None,
) -> DpTrainResult:
    """Train ``model`` in place with DP-SGD for exactly ``steps`` logical steps.

    ``trainable="head"`` freezes everything but the model's last linear layer: fewer
    dimensions for the same noise (Yu et al. 2021, "Differentially private fine-tuning").
    ``trainable="adapters"`` trains rank-``adapter_rank`` LoRA updates of the body's
    linear layers and the head, then folds them into the weights (common/training/adapters).
    ``seeds`` come from the node's secret (sampling and noise; see the module docstring).
    ``criterion`` is the task's loss (cross-entropy on class ids by default); ghost
    clipping needs one that gives a loss per example when its reduction is "none".
    """
    q, _ = steps_per_epoch(len(x), expected_batch_size)
    if steps <= 0:
        return DpTrainResult(noise_multiplier, q, 0, (), max_grad_norm)
    work = copy.deepcopy(model).to(device).train()
    set_trainable(work, trainable, adapter_rank)
    params = [p for p in work.parameters() if p.requires_grad]
    opt = _make_optimizer(optimizer, params, lr)
    loader = DataLoader(
        TensorDataset(x, y),
        batch_size=min(expected_batch_size, len(x)),
        generator=torch.Generator().manual_seed(seeds.sampling),  # Opacus' Poisson sampler
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
            noise_generator=torch.Generator(device=device).manual_seed(seeds.noise),
            grad_sample_mode=grad_sample_mode,
            criterion=criterion or nn.CrossEntropyLoss(),
        )
    if grad_sample_mode == "ghost":
        gm, dp_opt, criterion, dp_loader = private
    else:
        gm, dp_opt, dp_loader = private
        criterion = criterion or nn.CrossEntropyLoss()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ff]ull backward hook.*")
        losses = _run_steps(gm, dp_opt, criterion, dp_loader, steps, max_physical_batch_size,
                            device)
    ran = _what_opacus_ran(engine, dp_opt, steps)
    trained = _unwrap(gm)
    merge_adapters(trained)  # no-op unless trainable == "adapters"
    model.load_state_dict(trained.state_dict())
    return DpTrainResult(ran.noise_multiplier, ran.sample_rate, ran.steps, tuple(losses),
                         ran.max_grad_norm)


def _what_opacus_ran(engine: PrivacyEngine, dp_opt, planned_steps: int) -> DpTrainResult:
    """σ, q and steps from Opacus' accountant and C from its optimizer: what was run.

    One (σ, q) pair is expected; several would mean the mechanism changed mid-call, and
    the caller's single recorded event could not describe it.
    """
    history = engine.accountant.history
    pairs = {(sigma, q) for sigma, q, _ in history}
    if len(pairs) != 1:
        raise ConfigError(f"dp_train: Opacus ran {sorted(pairs)} as (σ, q); expected one "
                          f"pair for {planned_steps} planned steps")
    (sigma, q), = pairs
    return DpTrainResult(float(sigma), float(q), sum(s for _, _, s in history), (),
                         float(dp_opt.max_grad_norm))


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
    if trainable == "bias":
        _train_biases_and_head(model)
        return
    if trainable not in ("head", "embedding"):
        raise ConfigError(
            f"dp-trainable={trainable!r} is not one of all, head, adapters, embedding, bias."
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


def _train_biases_and_head(model: nn.Module) -> None:
    """BitFit (Ben Zaken et al. 2022; under DP, Bu et al. 2024): every bias and the head."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Module):
        raise ConfigError(f"dp-trainable='bias' needs a model with a `head`; "
                          f"{type(model).__name__} lacks one.")
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith(".bias") or name.startswith("head."))


def _make_optimizer(name: str, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    raise ConfigError(f"dp-optimizer={name!r} is not one of sgd, adamw.")
