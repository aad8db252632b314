"""The LAAF paper's two experiments as trainable problems (shared/notes/math.md §3).

* ``Burgers``: u_t + u u_x = nu u_xx on [-1, 1] x [0, 1], a 6 x 20 tanh PINN,
  400 initial/boundary points, 10 000 Latin-hypercube collocation points,
  Adam lr 8e-4; scored by the relative L2 error on the 256 x 100 grid.
* ``Discontinuous``: u(x) = 0.2 sin(6x) (x <= 0), 1 + 0.1 x cos(18x) (x > 0)
  on [-3, 3], 300 points, a 4 x 50 tanh network, Adam lr 2e-4.

The six variants: the standard activation, GAAF, L-LAAF and N-LAAF, the last
two with and without the slope recovery term S(a) (n = 10).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np
import torch

from ..nn import LAAFMLP
from .burgers_exact import NU, burgers_exact

#: variant -> (LAAF mode, slope recovery term in the loss)
VARIANTS: Dict[str, Tuple[str, bool]] = {
    "standard": ("fixed", False),
    "gaaf": ("global", False),
    "l-laaf": ("layer", False),
    "n-laaf": ("neuron", False),
    "l-laaf-srt": ("layer", True),
    "n-laaf-srt": ("neuron", True),
}
SCALE = 10.0


def latin_hypercube(n: int, lows, highs, rng: np.random.Generator) -> np.ndarray:
    """n points, one in each of n equal strata along every dimension, strata paired at random."""
    dims = len(lows)
    strata = np.stack([rng.permutation(n) for _ in range(dims)], axis=1)
    unit = (strata + rng.random((n, dims))) / n
    return np.asarray(lows) + unit * (np.asarray(highs) - np.asarray(lows))


@dataclass
class Problem:
    """A network, its training data and its loss, for one variant and seed."""

    name: str
    model: LAAFMLP
    srt: bool
    lr: float

    def data_loss(self) -> torch.Tensor:
        raise NotImplementedError

    def loss_terms(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(data loss, data loss + S(a) where the variant has slope recovery): the
        first is comparable across variants, the second is what training minimises."""
        data = self.data_loss()
        return data, (data + self.model.slope_recovery() if self.srt else data)

    def error(self) -> float:
        raise NotImplementedError


def _model(sizes, variant: str, device, dtype) -> Tuple[LAAFMLP, bool]:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; got {variant!r}")
    mode, srt = VARIANTS[variant]
    return LAAFMLP(sizes, "tanh", mode, SCALE, device=device, dtype=dtype), srt


class Burgers(Problem):
    """The viscous Burgers PINN of the LAAF paper, §3.2."""

    def __init__(self, variant: str, seed: int, device="cpu", dtype=torch.float32,
                 n_boundary: int = 400, n_collocation: int = 10_000, width: int = 20, depth: int = 6):
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        model, srt = _model([2] + [width] * depth + [1], variant, device, dtype)
        super().__init__("burgers", model, srt, lr=8e-4)
        # Initial condition on half the points, the two boundaries on the rest.
        n_init = n_boundary // 2
        x0 = rng.uniform(-1, 1, n_init)
        tb = rng.uniform(0, 1, n_boundary - n_init)
        xb = np.where(np.arange(tb.size) % 2 == 0, -1.0, 1.0)
        xt_u = np.concatenate([np.stack([x0, np.zeros(n_init)], 1), np.stack([xb, tb], 1)])
        u = np.concatenate([-np.sin(np.pi * x0), np.zeros(tb.size)])
        xt_f = latin_hypercube(n_collocation, [-1.0, 0.0], [1.0, 1.0], rng)
        as_t = lambda a: torch.tensor(a, dtype=dtype, device=device)
        self.xt_u, self.u = as_t(xt_u), as_t(u)[:, None]
        self.xt_f = as_t(xt_f).requires_grad_()
        grid_x, grid_t = np.meshgrid(np.linspace(-1, 1, 256), np.arange(100) * 0.01, indexing="ij")
        self.grid = as_t(np.stack([grid_x.ravel(), grid_t.ravel()], 1))
        self.grid_shape = grid_x.shape
        self.exact = burgers_exact(grid_x, grid_t)

    def residual(self) -> torch.Tensor:
        """u_t + u u_x - nu u_xx at the collocation points (autograd, create_graph)."""
        u = self.model(self.xt_f)
        du = torch.autograd.grad(u.sum(), self.xt_f, create_graph=True)[0]
        u_x, u_t = du[:, :1], du[:, 1:]
        u_xx = torch.autograd.grad(u_x.sum(), self.xt_f, create_graph=True)[0][:, :1]
        return u_t + u * u_x - NU * u_xx

    def data_loss(self) -> torch.Tensor:
        mse_u = (self.model(self.xt_u) - self.u).square().mean()
        return mse_u + self.residual().square().mean()

    def predict(self) -> np.ndarray:
        with torch.no_grad():
            return self.model(self.grid).double().cpu().numpy().reshape(self.grid_shape)

    def error(self) -> float:
        """Relative L2 error on the 256 x 100 grid."""
        pred = self.predict()
        return float(np.linalg.norm(pred - self.exact) / np.linalg.norm(self.exact))


def discontinuous_target(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0, 0.2 * np.sin(6 * x), 1 + 0.1 * x * np.cos(18 * x))


class Discontinuous(Problem):
    """The discontinuous-function regression of the LAAF paper, §3.1."""

    def __init__(self, variant: str, seed: int, device="cpu", dtype=torch.float32,
                 n_points: int = 300, width: int = 50, depth: int = 4):
        torch.manual_seed(seed)
        model, srt = _model([1] + [width] * depth + [1], variant, device, dtype)
        super().__init__("discontinuous", model, srt, lr=2e-4)
        x = np.linspace(-3, 3, n_points)
        self.x = torch.tensor(x, dtype=dtype, device=device)[:, None]
        self.u = torch.tensor(discontinuous_target(x), dtype=dtype, device=device)[:, None]
        x_test = np.linspace(-3, 3, 2001)
        self.x_test = torch.tensor(x_test, dtype=dtype, device=device)[:, None]
        self.exact = discontinuous_target(x_test)

    def data_loss(self) -> torch.Tensor:
        return (self.model(self.x) - self.u).square().mean()

    def predict(self) -> np.ndarray:
        with torch.no_grad():
            return self.model(self.x_test).double().cpu().numpy()[:, 0]

    def error(self) -> float:
        """Relative L2 error on 2001 points of [-3, 3]."""
        pred = self.predict()
        return float(np.linalg.norm(pred - self.exact) / np.linalg.norm(self.exact))


PROBLEMS = {"burgers": Burgers, "discontinuous": Discontinuous}


def slope_stats(model, scale: float = SCALE) -> list:
    """Per hidden layer of ``model`` (its ``slopes()``): (mean, std) of n * a (std 0 for
    one slope; [] for "fixed")."""
    stats = []
    for a in model.slopes():
        na = (scale * a.detach()).double()
        stats.append((float(na.mean()), float(na.std()) if na.numel() > 1 else 0.0))
    return stats


def train(problem: Problem, iters: int, log_every: int = 10, progress=None) -> dict:
    """Adam on ``problem.loss_terms()``'s loss for ``iters`` steps; returns the history
    of that loss, of the data loss (the loss without S(a)) and of the slopes."""
    opt = torch.optim.Adam(problem.model.parameters(), lr=problem.lr)
    history = {"iter": [], "loss": [], "data_loss": [], "slopes": []}
    for it in range(1, iters + 1):
        data, loss = problem.loss_terms()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % log_every == 0 or it == 1 or it == iters:
            history["iter"].append(it)
            history["loss"].append(loss.item())
            history["data_loss"].append(data.item())
            history["slopes"].append(slope_stats(problem.model))
            if progress is not None:
                progress(it, loss.item())
    history["error"] = problem.error()
    if not math.isfinite(history["loss"][-1]):
        history["error"] = float("nan")
    return history
