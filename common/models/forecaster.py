"""Multivariate time-series forecaster: a Transformer encoder over time steps.

``model(x (B, T_in, n_vars)) -> (B, horizon, n_out)``. Each time step's vector of
variables is projected to ``d_model`` (one token per step), positions are added, a
non-causal encoder mixes the window, and the head reads the last step's state,
which has attended to the whole window, to emit every horizon step at once (direct
multi-step forecasting, no error feedback between steps).

With ``season`` > 0 both forecast the residual over the seasonal-naive forecast (each
step repeats the target one period earlier, read from the window's last ``n_out``
variables): an untrained model then forecasts as well as seasonal naive, and training,
private or not, only has to learn what that misses. On a smooth hourly series the day
before is already a close forecast (seattle-temps: MSE 0.0009 in standardised units),
and a model from scratch would spend its few DP steps relearning it. The Transformer
then also adds a linear map of the whole window (the residual's autoregressive part,
which a linear model fits well and attention read from one token does not: on
seattle-temps' teacher windows the Transformer alone stayed near seasonal naive).

The learned part is multiplied by ``output_scale``, the typical size of that residual,
so that it works in units of order 1, where the usual learning rates hold. Unscaled (a
residual of 0.03 standard deviations), one epoch of AdamW at lr 3e-5 took the teacher
from seasonal naive's MSE 0.0009 to 0.0064: Adam moves every weight by about lr per
step, whatever the size of the target. With ``center`` the learned part reads each
window minus its mean: distilled on the public (summer) windows, an MLP student that
read raw levels reached test MSE 0.116, centred 0.00064 (one offline run, seed 0).

``ForecastMLP`` is the small student beside it: the flattened window through one hidden
layer, plus a linear map of the window to the forecast (the linear autoregression that
already forecasts smooth series well; the hidden layer learns what it misses).
"""

from __future__ import annotations

import torch
from torch import nn

from common.models.blocks import TransformerSettings, TransformerStack, init_weights
from common.models.positional import make_positional


def _centered(x: torch.Tensor) -> torch.Tensor:
    """Each window minus its own mean, per variable: the learned part then sees the shape
    of the window, not its level, and what it learned on summer windows still applies in
    winter (the level is in the seasonal-naive term)."""
    return x - x.mean(dim=1, keepdim=True)  # (B, T_in, n_vars)


def seasonal_naive(x: torch.Tensor, horizon: int, n_out: int, season: int) -> torch.Tensor:
    """(B, T_in, n_vars) -> (B, horizon, n_out): each step's value one ``season`` back,
    from the last ``n_out`` variables (the targets)."""
    last = x[:, -season:, -n_out:]  # (B, season, n_out)
    steps = torch.arange(horizon, device=x.device) % season
    return last[:, steps]  # (B, horizon, n_out)


class TimeSeriesForecaster(nn.Module):
    """Window (B, T_in, n_vars) -> forecast (B, horizon, n_out); T_in <= max_len
    (T_in == max_len with a ``season``)."""

    def __init__(
        self,
        n_vars: int,
        horizon: int,
        n_out: int,
        max_len: int,
        settings: TransformerSettings | None = None,
        season: int = 0,
        output_scale: float = 1.0,
        center: bool = False,
    ) -> None:
        super().__init__()
        s = settings or TransformerSettings()
        self.horizon, self.n_out, self.season = horizon, n_out, season
        self.output_scale, self.center = output_scale, center
        self.input_proj = nn.Linear(n_vars, s.d_model)
        self.pos = make_positional(s.positional, s.d_model, max_len)
        self.drop = nn.Dropout(s.dropout)
        self.encoder = TransformerStack(s)
        self.head = nn.Linear(s.d_model, horizon * n_out)
        self.apply(init_weights)
        self.linear = nn.Linear(max_len * n_vars, horizon * n_out) if season else None
        if self.linear is not None:  # start as seasonal naive exactly
            for layer in (self.linear, self.head):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = _centered(x) if self.center else x  # what the learned part reads
        h = self.drop(self.pos(self.input_proj(z)))  # (B, T_in, d)
        h = self.encoder(h)
        y = self.head(h[:, -1])  # (B, horizon * n_out)
        if self.linear is not None:
            y = y + self.linear(z.flatten(1))
        y = self.output_scale * y.view(-1, self.horizon, self.n_out)  # (B, horizon, n_out)
        if self.season:
            y = y + seasonal_naive(x, self.horizon, self.n_out, self.season)
        return y


class ForecastMLP(nn.Module):
    """Window (B, T_in, n_vars) -> forecast (B, horizon, n_out); T_in == input_len.

    ``head`` is the last layer (what ``dp-trainable = "head"`` trains under DP).
    """

    def __init__(self, n_vars: int, input_len: int, horizon: int, n_out: int, hidden: int,
                 dropout: float = 0.1, season: int = 0, output_scale: float = 1.0,
                 center: bool = False) -> None:
        super().__init__()
        self.horizon, self.n_out, self.season = horizon, n_out, season
        self.output_scale, self.center = output_scale, center
        width = input_len * n_vars
        self.linear = nn.Linear(width, horizon * n_out)  # the autoregressive part
        self.body = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, horizon * n_out)
        if season:  # start as seasonal naive exactly
            for layer in (self.linear, self.head):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = (_centered(x) if self.center else x).flatten(1)  # (B, T_in * n_vars)
        y = self.linear(flat) + self.head(self.body(flat))  # (B, horizon * n_out)
        y = self.output_scale * y.view(-1, self.horizon, self.n_out)  # (B, horizon, n_out)
        if self.season:
            y = y + seasonal_naive(x, self.horizon, self.n_out, self.season)
        return y


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
