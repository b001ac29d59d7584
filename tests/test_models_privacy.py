"""Opacus per-sample gradients of every model family, against a per-example reference.

The reference runs each example through an unwrapped copy of the model on its own,
takes the gradient of its loss, clips it to ``max_grad_norm`` and sums: no Opacus
code is involved. Opacus must reproduce (1) each per-example gradient (hooks), and
(2) the clipped, summed, averaged gradient after ``optimizer.step()`` with no noise,
under hooks and under ghost clipping (plus ghost's per-example norms). float64 keeps
round-off far below the 1e-5 tolerance, so a real mismatch cannot hide in noise.

A short DP-SGD run of each family on a learnable synthetic task must lower its loss.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from opacus import GradSampleModule, PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common.models import FAMILIES, ForecastMSELoss, ModelConfig, build_model


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # tiny tensors: extra intra-op threads only contend on a shared 2-core machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


RTOL = 1e-5
V, C, T, B = 23, 3, 10, 6  # vocabulary, classes, sequence length, batch

# ---------------------------------------------------------------- family table


def _right_padded(gen: torch.Generator, n: int, t: int, vocab: int) -> torch.Tensor:
    """Random ids in [3, vocab) with random lengths in [2, t], right-padded with 0."""
    ids = torch.randint(3, vocab, (n, t), generator=gen)
    lengths = torch.randint(2, t + 1, (n,), generator=gen)
    ids[torch.arange(t).unsqueeze(0) >= lengths.unsqueeze(1)] = 0
    return ids


def _lm_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())


@dataclass(frozen=True)
class Case:
    """One model under test: how to build it, feed it and score it."""

    label: str
    config: dict[str, Any]
    # (generator, batch) -> (model inputs, target)
    batch: Callable[[torch.Generator, int], tuple[tuple[torch.Tensor, ...], torch.Tensor]]
    kind: str  # "cls" | "lm" | "reg": picks the loss
    extra: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        return build_model(ModelConfig(**self.config))

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of each example's loss (what Opacus' "mean" assumes)."""
        if self.kind == "cls":
            return nn.functional.cross_entropy(out, target)
        if self.kind == "lm":
            return _lm_loss(out, target)  # equal T per example: mean of per-example means
        return nn.functional.mse_loss(out, target)

    def criterion(self) -> nn.Module:
        return ForecastMSELoss() if self.kind == "reg" else nn.CrossEntropyLoss()


def _text_cls(gen, n):
    return (_right_padded(gen, n, T, V),), torch.randint(0, C, (n,), generator=gen)


def _lm(gen, n):
    ids = torch.randint(3, V, (n, T + 1), generator=gen)
    return (ids[:, :-1],), ids[:, 1:]


def _seq2seq(gen, n):
    src = _right_padded(gen, n, T, V)
    tgt = torch.randint(3, V, (n, T), generator=gen)
    tgt_in = torch.cat([torch.ones(n, 1, dtype=torch.long), tgt[:, :-1]], dim=1)  # bos = 1
    return (src, tgt_in), tgt


def _forecast(gen, n):
    return (torch.randn(n, T, 3, generator=gen),), torch.randn(n, 2, 2, generator=gen)


def _features(gen, n):
    x = nn.functional.normalize(torch.randn(n, 12, generator=gen), dim=-1)
    return (x,), torch.randint(0, C, (n,), generator=gen)


def _images(gen, n):
    return (torch.randn(n, 1, 8, 8, generator=gen),), torch.randint(0, C, (n,), generator=gen)


_TEXT = dict(vocab_size=V, num_classes=C, max_len=16, dropout=0.0)
CASES = [
    Case("transformer", dict(family="transformer", **_TEXT), _text_cls, "cls"),
    Case(
        "transformer-cls-post-learned",
        dict(family="transformer", pooling="cls", norm="post", positional="learned", **_TEXT),
        _text_cls,
        "cls",
    ),
    Case("gpt", dict(family="gpt", positional="learned", **_TEXT), _lm, "lm"),
    Case("seq2seq", dict(family="seq2seq", **_TEXT), _seq2seq, "lm"),
    Case(
        "forecaster",
        dict(family="forecaster", n_vars=3, horizon=2, n_out=2, max_len=16, dropout=0.0),
        _forecast,
        "reg",
    ),
    Case(
        "forecast-mlp",
        dict(family="forecast-mlp", n_vars=3, horizon=2, n_out=2, max_len=T, dropout=0.0),
        _forecast,
        "reg",
    ),
    Case(
        "vit",
        dict(
            family="vit",
            image_size=8,
            patch_size=2,
            num_classes=C,
            pooling="cls",
            positional="learned",
            dropout=0.0,
        ),
        _images,
        "cls",
    ),
    Case("lstm", dict(family="lstm", n_layers=4, **_TEXT), _text_cls, "cls"),  # 2 LSTM layers
    Case("lstm-lm", dict(family="lstm-lm", **_TEXT), _lm, "lm"),
    Case("cnn", dict(family="cnn", **_TEXT), _text_cls, "cls"),
    Case("image-cnn", dict(family="image-cnn", num_classes=C, channels=1, dropout=0.0,
                           d_model=8), _images, "cls"),
    Case("probe", dict(family="probe", feature_dim=12, num_classes=C), _features, "cls"),
    Case("probe-mlp", dict(family="probe-mlp", feature_dim=12, num_classes=C, dropout=0.0),
         _features, "cls"),
]
CASE_IDS = [c.label for c in CASES]


def test_every_family_has_a_case() -> None:
    # the encoder's per-example gradients: tests/test_pretrained.py, on a tiny checkpoint
    assert {c.config["family"] for c in CASES} == set(FAMILIES) - {"encoder"}


# ---------------------------------------------------------------- reference


def _setup(case: Case, seed: int = 0):
    torch.manual_seed(seed)
    model = case.build().double().train()
    gen = torch.Generator().manual_seed(seed + 1)
    inputs, target = case.batch(gen, B)
    inputs = tuple(x.double() if x.is_floating_point() else x for x in inputs)
    if target.is_floating_point():
        target = target.double()
    return model, inputs, target


def _per_example_grads(case: Case, model: nn.Module, inputs, target) -> list[torch.Tensor]:
    """Gradient of each example's loss on its own: list over parameters of (B, *shape)."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(target.size(0)):
        out = model(*(x[i : i + 1] for x in inputs))
        rows.append(torch.autograd.grad(case.loss(out, target[i : i + 1]), params))
    return [torch.stack(per_param) for per_param in zip(*rows, strict=True)]


def _flat_norms(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten(1) for g in grads], dim=1).norm(dim=1)  # (B,)


def _clipped_mean(grads: list[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    """Opacus' DP-SGD gradient with zero noise: sum of clipped gradients / batch size."""
    factor = (max_norm / (_flat_norms(grads) + 1e-6)).clamp(max=1.0)  # Opacus' 1e-6
    return [torch.einsum("b,b...->...", factor, g) / g.size(0) for g in grads]


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    scale = expected.norm().item()
    err = (actual - expected).norm().item()
    assert err <= RTOL * max(scale, 1e-12), f"{what}: |diff|={err:.3e}, |ref|={scale:.3e}"


# ---------------------------------------------------------------- per-sample gradients


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_hooks_per_sample_gradients_equal_per_example_reference(case: Case) -> None:
    model, inputs, target = _setup(case)
    reference = _per_example_grads(case, copy.deepcopy(model), inputs, target)
    assert all(g.abs().sum() > 0 for g in reference[:3]), "reference gradients are all zero"

    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    case.loss(gsm(*inputs), target).backward()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    for name, p, ref in zip(names, params, reference, strict=True):
        assert p.grad_sample is not None, f"{name}: Opacus produced no per-sample gradient"
        assert p.grad_sample.shape == ref.shape, name
        _assert_close(p.grad_sample, ref, name)


def _private(case: Case, model, inputs, target, mode: str, max_norm: float):
    dataset = TensorDataset(*inputs, target)
    loader = DataLoader(dataset, batch_size=target.size(0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: read .grad, keep weights
    engine = PrivacyEngine()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # secure-RNG and sampling warnings are not at issue
        return engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=0.0,
            max_grad_norm=max_norm,
            poisson_sampling=False,
            grad_sample_mode=mode,
            criterion=case.criterion(),
        )


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_clipped_gradient_equals_clipped_per_example_sum(case: Case, mode: str) -> None:
    model, inputs, target = _setup(case)
    reference = _per_example_grads(case, copy.deepcopy(model), inputs, target)
    norms = _flat_norms(reference)
    # halfway between the smallest and largest norm: some examples clipped, some not
    max_norm = ((norms.min() + norms.max()) / 2).item()
    assert norms.max() > 1.001 * norms.min(), "per-example norms too alike to test clipping"
    expected = _clipped_mean(reference, max_norm)

    private = _private(case, model, inputs, target, mode, max_norm)
    gm, optimizer = private[0], private[1]
    out = gm(*inputs)
    if mode == "ghost":
        criterion = private[2]
        if case.kind == "lm":
            loss = criterion(out.flatten(0, 1), target.flatten(), shape=out.shape[:2])
        else:
            loss = criterion(out, target)
    else:
        loss = case.loss(out, target)
    loss.backward()
    optimizer.step()

    if mode == "ghost":
        _assert_close(gm.per_sample_gradient_norms, norms, "per-example gradient norms")
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    for name, p, ref in zip(names, params, expected, strict=True):
        _assert_close(p.grad, ref, f"{mode} {name}")


# ---------------------------------------------------------------- DP-SGD lowers the loss


def _learnable(family: str, gen: torch.Generator, n: int):
    """A task a tiny model learns in a few dozen noisy steps: (inputs, target)."""
    if family in ("transformer", "lstm", "cnn"):
        # class c draws its tokens from its own third of the vocabulary
        y = torch.randint(0, C, (n,), generator=gen)
        ids = 3 + y.unsqueeze(1) * 6 + torch.randint(0, 6, (n, T), generator=gen)
        lengths = torch.randint(4, T + 1, (n,), generator=gen)
        ids[torch.arange(T).unsqueeze(0) >= lengths.unsqueeze(1)] = 0
        return (ids,), y
    if family in ("gpt", "lstm-lm"):
        # counting: each token is the previous one plus one (mod V, skipping pad/bos/eos)
        start = torch.randint(0, V - 3, (n, 1), generator=gen)
        ids = 3 + (start + torch.arange(T + 1)) % (V - 3)
        return (ids[:, :-1],), ids[:, 1:]
    if family == "seq2seq":
        # count on from the first source token: the first target needs cross-attention
        start = torch.randint(0, V - 3, (n, 1), generator=gen)
        src = torch.cat([3 + start, torch.randint(3, V, (n, T - 1), generator=gen)], dim=1)
        tgt = 3 + (start + 1 + torch.arange(T)) % (V - 3)
        tgt_in = torch.cat([torch.ones(n, 1, dtype=torch.long), tgt[:, :-1]], dim=1)
        return (src, tgt_in), tgt
    if family in ("forecaster", "forecast-mlp"):
        # continue noisy sines of random phase
        phase = torch.rand(n, 1, 1, generator=gen) * 6.28
        steps = torch.arange(T + 2, dtype=torch.float32).view(1, -1, 1)
        series = torch.sin(0.6 * steps + phase).repeat(1, 1, 3)  # (n, T + 2, 3)
        series = series + 0.05 * torch.randn(series.shape, generator=gen)
        return (series[:, :T],), series[:, T:, :2]
    if family in ("probe", "probe-mlp"):
        # features whose first C coordinates point at the class
        y = torch.randint(0, C, (n,), generator=gen)
        x = 0.3 * torch.randn(n, 12, generator=gen)
        x[torch.arange(n), y] += 1.0
        return (nn.functional.normalize(x, dim=-1),), y
    # vit, image-cnn: the bright half of the image (left / right / top) is the class
    y = torch.randint(0, C, (n,), generator=gen)
    images = 0.3 * torch.randn(n, 1, 8, 8, generator=gen)
    images[y == 0, :, :, :4] += 1.0
    images[y == 1, :, :, 4:] += 1.0
    images[y == 2, :, :4, :] += 1.0
    return (images,), y


@pytest.mark.parametrize(
    "case", [c for c in CASES if "-post-" not in c.label], ids=lambda c: c.label
)
def test_dp_sgd_lowers_the_loss(case: Case) -> None:
    torch.manual_seed(0)
    family = case.config["family"]
    config = dict(case.config, dropout=0.1)
    if "n_layers" in config:
        config.pop("n_layers")
    model = build_model(ModelConfig(**config)).train()
    gen = torch.Generator().manual_seed(1)
    inputs, target = _learnable(family, gen, 512)
    loader = DataLoader(TensorDataset(*inputs, target), batch_size=32, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm, optimizer, loader = PrivacyEngine().make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=0.3,
            max_grad_norm=1.0,
        )
    losses = []
    while len(losses) < 40:
        for *xs, y in loader:
            if y.numel() == 0:
                continue  # Poisson sampling can draw an empty batch
            optimizer.zero_grad()
            loss = case.loss(gm(*xs), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, f"{case.label}: loss {first:.3f} -> {last:.3f}"


# ---------------------------------------------------------------- the check can fail


class _TiedLM(nn.Module):
    """Output layer reusing the embedding matrix through F.linear: the pattern that
    notes/OPACUS.md says gets no per-sample gradient from the head."""

    def __init__(self) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(V, 8)
        self.mix = nn.Linear(8, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self.mix(self.tok_emb(ids)), self.tok_emb.weight)


def test_reference_comparison_catches_a_silently_wrong_model() -> None:
    """Negative control: the comparison used above must reject this model."""
    torch.manual_seed(0)
    model = _TiedLM().double().train()
    inputs, target = _lm(torch.Generator().manual_seed(1), B)
    case = Case("tied", {}, _lm, "lm")
    reference = _per_example_grads(case, copy.deepcopy(model), inputs, target)
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    case.loss(gsm(*inputs), target).backward()
    with pytest.raises(AssertionError):
        _assert_close(model.tok_emb.weight.grad_sample, reference[0], "tied embedding")
