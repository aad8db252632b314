"""The flexible-activation paper's experiments (seed 003 §3), in small, on data that
ships with the packages here (nothing can be downloaded):

* ``autoencoder``: fully connected auto-encoders on scikit-learn's 8x8 digits
  (64 pixels in [0, 1]), the paper's AE1 / AE2 shapes scaled down: encoder
  64 -> 48 -> d1 -> d2, decoder d2 -> d1 -> 48 -> 64 (six ReLU layers, a
  sigmoid output), AE1 d1 = 24, d2 = 6, AE2 d1 = 32, d2 = 3. As in the paper,
  only two ReLU layers become flexible (AE1: the 3rd and 4th, AE2: the 2nd and
  5th), with the layer-wise regulariser (λ = 0.1); PReLU (per neuron, in the
  same layers) is the other baseline. Adam at the paper's lr 0.00645, batch 100.
* ``forecast``: one-step-ahead forecasting of a synthetic VAR(1) process with
  noise, five series (standing in for the paper's five stock indices),
  windows of 10 lags, split 64 / 16 / 20 % in time order. A stacked LSTM
  [5, 16, 8] + linear head against the same with flexible gates
  (``FlexibleLSTM``). The paper's protocol in small: the learning rate is
  searched for the fixed model on validation loss, then fixed for both, and
  the regulariser's δ is searched for the flexible one.

Every run returns its per-epoch validation loss (the learning curve), its
minimum validation loss and the test loss at the end.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
import torch
from torch import nn

from ..nn.flexible import FlexibleActivation, FlexibleLSTM, flexible_regularization

AE_SHAPES = {"ae1": (24, 6, (2, 3)), "ae2": (32, 3, (1, 4))}  # d1, d2, flexible ReLU layers
AE_VARIANTS = ("relu", "prelu", "relu_poly", "relu_tanh")
FORECAST_VARIANTS = ("lstm", "flexible_lstm")
AE_LR, AE_LAMBDA = 0.00645, 0.1


@dataclass
class Split:
    train: Tuple[torch.Tensor, torch.Tensor]
    val: Tuple[torch.Tensor, torch.Tensor]
    test: Tuple[torch.Tensor, torch.Tensor]


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------

def digits_split(seed: int) -> Split:
    """scikit-learn's digits (1797 x 64, scaled to [0, 1]), split 1200 / 300 / rest at random."""
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().data / 16.0, dtype=torch.float32)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1000 + seed))
    train, val, test = x[order[:1200]], x[order[1200:1500]], x[order[1500:]]
    return Split((train, train), (val, val), (test, test))


def var1_series(steps: int = 2000, series: int = 5, seed: int = 0) -> np.ndarray:
    """x_t = A x_{t-1} + e_t: A random with spectral radius 0.8, e_t ~ N(0, 0.1^2 I)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(series, series))
    a *= 0.8 / np.max(np.abs(np.linalg.eigvals(a)))
    x = np.zeros((steps, series))
    for t in range(1, steps):
        x[t] = a @ x[t - 1] + 0.1 * rng.normal(size=series)
    return x


def forecast_split(lags: int = 10) -> Split:
    """Windows of ``lags`` steps -> the next step, 64 / 16 / 20 % in time order
    (one fixed series: the seeds vary the models, as in the paper)."""
    x = torch.tensor(var1_series(), dtype=torch.float32)
    windows = torch.stack([x[t:t + lags] for t in range(len(x) - lags)])
    targets = x[lags:]
    n = len(windows)
    a, b = int(0.64 * n), int(0.80 * n)
    return Split((windows[:a], targets[:a]), (windows[a:b], targets[a:b]),
                 (windows[b:], targets[b:]))


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------

def _activation(variant: str, width: int, flexible: bool) -> nn.Module:
    if not flexible or variant == "relu":
        return nn.ReLU()
    if variant == "prelu":
        return nn.PReLU(width)
    return FlexibleActivation(variant, width)


def autoencoder(shape: str, variant: str) -> nn.Sequential:
    """64 -> 48 -> d1 -> d2 -> d1 -> 48 -> 64, ReLU layers (two of them ``variant``)."""
    d1, d2, flexible_layers = AE_SHAPES[shape]
    widths = [64, 48, d1, d2, d1, 48]
    layers: List[nn.Module] = []
    for i in range(len(widths) - 1):
        layers += [nn.Linear(widths[i], widths[i + 1]),
                   _activation(variant, widths[i + 1], i in flexible_layers)]
    layers += [nn.Linear(48, 64), nn.Sigmoid()]
    return nn.Sequential(*layers)


class Forecaster(nn.Module):
    """Stacked LSTM layers of ``sizes`` (e.g. [16, 8]) and a linear head to 5 series."""

    def __init__(self, flexible: bool, sizes=(16, 8), series: int = 5):
        super().__init__()
        widths = [series, *sizes]
        cls = FlexibleLSTM if flexible else nn.LSTM
        self.layers = nn.ModuleList(cls(widths[i], widths[i + 1], batch_first=True)
                                    for i in range(len(sizes)))
        self.head = nn.Linear(sizes[-1], series)

    def forward(self, x):
        for layer in self.layers:
            x, _ = layer(x)
        return self.head(x[:, -1])


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------

def _mse(model: nn.Module, data: Tuple[torch.Tensor, torch.Tensor]) -> float:
    with torch.no_grad():
        return float(nn.functional.mse_loss(model(data[0]), data[1]))


def fit(model: nn.Module, split: Split, lr: float, epochs: int, batch: int, seed: int,
        lam: float = 0.0, delta: float = 0.0) -> Dict:
    """Adam on MSE (+ the flexible regulariser R(lam, delta)); per-epoch validation loss."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = split.train
    curve = []
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            loss = nn.functional.mse_loss(model(x[idx]), y[idx])
            if lam or delta:
                loss = loss + flexible_regularization(model, lam, delta)
            opt.zero_grad()
            loss.backward()
            opt.step()
        curve.append(_mse(model, split.val))
    return {"val_curve": curve, "min_val": float(np.min(curve)), "test": _mse(model, split.test)}


def run_autoencoder(shape: str, variant: str, seed: int, epochs: int) -> Dict:
    torch.manual_seed(seed)
    model = autoencoder(shape, variant)
    lam = AE_LAMBDA if variant in ("relu_poly", "relu_tanh") else 0.0
    return fit(model, digits_split(seed), AE_LR, epochs, 100, seed, lam=lam)


def run_forecast(variant: str, seed: int, epochs: int, lr: float, delta: float = 0.0,
                 split: Split = None) -> Dict:
    torch.manual_seed(seed)
    model = Forecaster(flexible=variant == "flexible_lstm")
    lam = 0.025 if variant == "flexible_lstm" else 0.0  # the paper's λ for LSTMs
    return fit(model, split or forecast_split(), lr, epochs, 50, seed, lam=lam,
               delta=delta if variant == "flexible_lstm" else 0.0)


def search_lr(epochs: int, candidates, seeds: int = 2) -> Tuple[float, Dict[float, float]]:
    """The fixed LSTM's learning rate with the lowest mean minimum validation loss."""
    split = forecast_split()
    scores = {lr: float(np.mean([run_forecast("lstm", 100 + s, epochs, lr, split=split)["min_val"]
                                 for s in range(seeds)])) for lr in candidates}
    return min(scores, key=scores.get), scores


def search_delta(epochs: int, lr: float, candidates) -> Tuple[float, Dict[float, float]]:
    """The flexible LSTM's δ (at the fixed model's lr) with the lowest minimum validation loss."""
    split = forecast_split()
    scores = {d: run_forecast("flexible_lstm", 200, epochs, lr, d, split)["min_val"]
              for d in candidates}
    return min(scores, key=scores.get), scores
