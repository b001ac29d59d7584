"""LoRA adapters for DP fine-tuning (dp-trainable = "adapters").

Opacus must compute the adapters' per-sample gradients exactly (checked against each
example's own gradient, in float64), the merged model must compute the same function as
the adapted one, and a DP run must change only the adapters' layers and the head.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from opacus import GradSampleModule, PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common.config import FedConfig
from common.errors import ConfigError
from common.models import ModelConfig, build_model
from common.privacy.secrets import DpSeeds
from common.training import dp_train
from common.training.adapters import LoRALinear, add_adapters, merge_adapters

V, C, T, B = 23, 2, 10, 6
CPU = torch.device("cpu")


def _student(family: str = "transformer") -> nn.Module:
    torch.manual_seed(0)
    return build_model(
        ModelConfig(family=family, vocab_size=V, num_classes=C, max_len=16, dropout=0.0)
    )


def _batch(n: int = B, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (n,), generator=gen)
    ids = 3 + y.unsqueeze(1) * 8 + torch.randint(0, 8, (n, T), generator=gen)
    return ids, y


def _perturbed_adapters(model: nn.Module, rank: int = 2) -> nn.Module:
    """Adapters with non-zero ``up`` weights (fresh ones are an exact no-op)."""
    add_adapters(model, rank)
    gen = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            with torch.no_grad():
                m.up.weight.copy_(0.1 * torch.randn(m.up.weight.shape, generator=gen))
    return model


def test_adapters_wrap_the_body_linears_and_leave_only_adapters_and_head_trainable() -> None:
    model = _student()
    n = add_adapters(model, 4)
    assert n == 12  # 2 blocks x (q, k, v, out, fc_in, fc_out)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(
        ".down." in t or ".up." in t or t.startswith("head.") for t in trainable
    )
    assert isinstance(model.head, nn.Linear) and not isinstance(model.head, LoRALinear)
    with pytest.raises(ValueError, match="already"):
        add_adapters(model, 4)


def test_fresh_adapters_are_a_no_op_and_merging_keeps_the_function_and_the_keys() -> None:
    x, _ = _batch()
    plain = _student().eval()
    keys = set(plain.state_dict())
    adapted = copy.deepcopy(plain)
    add_adapters(adapted, 4)
    torch.testing.assert_close(adapted.eval()(x), plain(x))  # up = 0 at the start
    adapted = _perturbed_adapters(copy.deepcopy(plain), 2).eval()
    before = adapted(x)
    assert not torch.allclose(before, plain(x))
    merge_adapters(adapted)
    assert set(adapted.state_dict()) == keys
    assert not any(isinstance(m, LoRALinear) for m in adapted.modules())
    torch.testing.assert_close(adapted(x), before, rtol=1e-5, atol=1e-5)


def _per_example(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    rows = [
        torch.autograd.grad(nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params)
        for i in range(len(y))
    ]
    return [torch.stack(g) for g in zip(*rows, strict=True)]


def test_opacus_per_sample_gradients_of_the_adapters_equal_the_per_example_reference() -> None:
    model = _perturbed_adapters(_student()).double().train()
    x, y = _batch()
    reference = _per_example(copy.deepcopy(model), x, y)
    assert all(g.abs().sum() > 0 for g in reference)
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    nn.functional.cross_entropy(gsm(x), y).backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(params) == len(reference)
    for (name, p), ref in zip(params, reference, strict=True):
        assert p.grad_sample is not None, name
        torch.testing.assert_close(p.grad_sample, ref, rtol=1e-7, atol=1e-9, msg=name)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all(
        getattr(dict(model.named_parameters())[n], "grad_sample", None) is None for n in frozen
    )


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_clipped_adapter_gradient_equals_the_clipped_per_example_mean(mode: str) -> None:
    model = _perturbed_adapters(_student()).double().train()
    x, y = _batch()
    reference = _per_example(copy.deepcopy(model), x, y)
    norms = torch.cat([g.flatten(1) for g in reference], 1).norm(dim=1)
    max_norm = float((norms.min() + norms.max()) / 2)  # some clipped, some not
    factor = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    expected = [torch.einsum("b,b...->...", factor, g) / len(y) for g in reference]
    params = [p for p in model.parameters() if p.requires_grad]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        private = PrivacyEngine().make_private(
            module=model,
            optimizer=torch.optim.SGD(params, lr=0.0),
            data_loader=DataLoader(TensorDataset(x, y), batch_size=len(y)),
            noise_multiplier=0.0,
            max_grad_norm=max_norm,
            poisson_sampling=False,
            grad_sample_mode=mode,
            criterion=nn.CrossEntropyLoss(),
        )
    gm, opt = private[0], private[1]
    criterion = private[2] if mode == "ghost" else nn.CrossEntropyLoss()
    criterion(gm(x), y).backward()
    opt.step()
    for p, ref in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad, ref, rtol=1e-6, atol=1e-9)


def _dp_changed(
    model: nn.Module, trainable: str, *, seed: int, steps: int, **kwargs: object
) -> set[str]:
    """Run a short DP-SGD of ``model`` in place; the state-dict keys whose tensors moved."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _batch(64, seed=seed)
    dp_train(
        model,
        x,
        y,
        noise_multiplier=0.5,
        max_grad_norm=1.0,
        expected_batch_size=16,
        steps=steps,
        lr=0.5,
        trainable=trainable,
        device=CPU,
        seeds=DpSeeds(seed, seed + 1),
        **kwargs,
    )
    after = model.state_dict()
    assert set(after) == set(before)  # adapters are folded back: same keys
    return {k for k in before if not torch.equal(before[k], after[k])}


@pytest.mark.parametrize("family", ["transformer", "lstm", "cnn"])
def test_dp_train_with_adapters_changes_only_linear_weights_and_the_head(family: str) -> None:
    model = _student(family)
    changed = _dp_changed(
        model, "adapters", seed=2, steps=6, adapter_rank=2, grad_sample_mode="ghost"
    )
    assert any(k.startswith("head.") for k in changed)
    body_linears = {
        f"{n}.weight" for n, m in model.named_modules() if type(m) is nn.Linear and n != "head"
    }
    assert changed <= body_linears | {"head.weight", "head.bias"}
    if family == "transformer":
        assert body_linears & changed  # the adapters reached the body
    else:  # no plain nn.Linear in the body: adapters = the head alone
        assert not body_linears & changed


def test_config_accepts_adapters_and_refuses_a_bad_rank() -> None:
    assert FedConfig(dp_trainable="adapters", dp_adapter_rank=8).dp_adapter_rank == 8
    with pytest.raises(ConfigError, match="dp_adapter_rank|dp-adapter-rank"):
        FedConfig(dp_adapter_rank=0)
    with pytest.raises(ConfigError, match="adapters"):
        FedConfig(dp_trainable="lora")


@pytest.mark.parametrize("family", ["transformer", "lstm", "cnn"])
def test_dp_train_with_the_embedding_trainable_changes_only_the_embedding_and_the_head(
    family: str,
) -> None:
    changed = _dp_changed(_student(family), "embedding", seed=4, steps=4, grad_sample_mode="hooks")
    assert "tok_emb.weight" in changed and "head.weight" in changed
    assert all(k.startswith(("tok_emb.", "head.")) for k in changed), changed


def test_a_model_without_an_embedding_is_refused_for_the_embedding_trainable() -> None:
    from common.training.dp import set_trainable

    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="tok_emb"):
        set_trainable(model, "embedding")
