"""Multivariate time-series forecaster: a Transformer encoder over time steps.

``model(x (B, T_in, n_vars)) -> (B, horizon, n_out)``. Each time step's vector of
variables is projected to ``d_model`` (one token per step), positions are added, a
non-causal encoder mixes the window, and the head reads the last step's state,
which has attended to the whole window, to emit every horizon step at once (direct
multi-step forecasting, no error feedback between steps).
"""

from __future__ import annotations

import torch
from torch import nn

from common.models.blocks import TransformerSettings, TransformerStack, init_weights
from common.models.positional import make_positional


class TimeSeriesForecaster(nn.Module):
    """Window (B, T_in, n_vars) -> forecast (B, horizon, n_out); T_in <= max_len."""

    def __init__(
        self,
        n_vars: int,
        horizon: int,
        n_out: int,
        max_len: int,
        settings: TransformerSettings | None = None,
    ) -> None:
        super().__init__()
        s = settings or TransformerSettings()
        self.horizon, self.n_out = horizon, n_out
        self.input_proj = nn.Linear(n_vars, s.d_model)
        self.pos = make_positional(s.positional, s.d_model, max_len)
        self.drop = nn.Dropout(s.dropout)
        self.encoder = TransformerStack(s)
        self.head = nn.Linear(s.d_model, horizon * n_out)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.pos(self.input_proj(x)))  # (B, T_in, d)
        h = self.encoder(h)
        y = self.head(h[:, -1])  # (B, horizon * n_out)
        return y.view(-1, self.horizon, self.n_out)  # (B, horizon, n_out)


class ForecastMSELoss(nn.Module):
    """Mean squared error with one value per *example* when ``reduction="none"``.

    ``nn.MSELoss(reduction="none")`` returns (B, horizon, n_out); Opacus' ghost-clipping
    criterion needs a per-example loss (B,), so this averages over the forecast first.
    ``reduction`` is a plain attribute because Opacus switches it to "none" and back.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_example = (prediction - target).pow(2).flatten(1).mean(dim=1)  # (B,)
        if self.reduction == "none":
            return per_example
        if self.reduction == "sum":
            return per_example.sum()
        return per_example.mean()
