"""The LAAF paper's deep-learning benchmark (§4), in small: its LeNet variant on
scikit-learn's 8x8 digits (the paper used MNIST, KMNIST, Fashion-MNIST and Semeion;
nothing can be downloaded here).

The paper's network, with padding so that 8x8 images fit:

    conv 64 5x5 -> max-pool 2x2 -> act        (8x8 -> 4x4, a slope per channel)
    conv 64 5x5 -> max-pool 2x2 -> act        (4x4 -> 2x2, a slope per channel)
    fully connected 256 -> 1014 -> act        (a slope per neuron)
    fully connected 1014 -> 10

with act(z) = relu(n a z) in the mode of the variant; GAAF shares one slope over
the three layers. Training as in the paper: cross entropy, SGD with momentum 0.9,
batch 64, lr 0.01 divided by 10 at the start of the 10th epoch, n = 1 and 2.
The paper's claim (Fig. 10): with the slope recovery term S(a) the training loss
falls faster than with the fixed activation.

Every slope starts at n a = 1, and a run's seed fixes both the weights and the
batch order, so the variants of one seed start from the same network and see the
same batches: their curves differ only by what the slopes do.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..functional import slope_recovery
from ..nn import LAAF, LAAFLinear
from ..nn.slopes import make_slope
from ..pinn.problems import VARIANTS as PINN_VARIANTS
from ..pinn.problems import slope_stats

#: variant -> (LAAF mode, slope recovery term in the loss): the PINN experiments' six,
#: and GAAF with S(a), which the paper's Fig. 10 also shows
VARIANTS: Dict[str, Tuple[str, bool]] = {**PINN_VARIANTS, "gaaf-srt": ("global", True)}
SCALES = (1.0, 2.0)
LR, MOMENTUM, BATCH, LR_DROP_EPOCH = 0.01, 0.9, 64, 10
TEST_SIZE = 360


@dataclass
class Digits:
    """The 1797 digits as (N, 1, 8, 8) images in [0, 1], one fixed train / test split
    (as the paper's fixed data sets; the seeds vary the networks and batch order)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def load_digits() -> Digits:
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32)[:, None]
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    test, train = order[:TEST_SIZE], order[TEST_SIZE:]
    return Digits(x[train], y[train], x[test], y[test])


class LeNet(nn.Module):
    """The paper's LeNet variant for 8x8 inputs, with ``relu(n a z)`` after each hidden layer."""

    def __init__(self, mode: str, scale: float, channels: int = 64, hidden: int = 1014,
                 classes: int = 10):
        super().__init__()
        shared = make_slope("global", None, scale) if mode == "global" else None
        self.conv1 = nn.Conv2d(1, channels, 5, padding=2)
        self.act1 = LAAF("relu", mode, channels, scale, slope=shared, dim=1)
        self.conv2 = nn.Conv2d(channels, channels, 5, padding=2)
        self.act2 = LAAF("relu", mode, channels, scale, slope=shared, dim=1)
        self.fc = LAAFLinear(channels * 4, hidden, "relu", mode, scale, slope=shared)
        self.out = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(F.max_pool2d(self.conv1(x), 2))
        x = self.act2(F.max_pool2d(self.conv2(x), 2))
        return self.out(self.fc(x.flatten(1)))

    def slopes(self) -> List[nn.Parameter]:
        """One slope per hidden layer (the same object three times for GAAF); [] if fixed."""
        return [m.slope for m in (self.act1, self.act2, self.fc) if m.slope is not None]


def evaluate(model: LeNet, x: torch.Tensor, y: torch.Tensor) -> Tuple[float, float]:
    """(cross entropy, accuracy) of ``model`` on (x, y)."""
    with torch.no_grad():
        logits = model(x)
    return (float(F.cross_entropy(logits, y)),
            float((logits.argmax(1) == y).double().mean()))


def train_run(variant: str, scale: float, seed: int, epochs: int, data: Digits,
              lr: float = LR) -> dict:
    """One (variant, n, seed): per epoch the mean training cross entropy over its
    batches (the paper's Fig. 10 plots this, without S(a)), the test cross entropy and
    accuracy after it, and n*a per layer. ``lr`` drops to lr/10 at LR_DROP_EPOCH."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; got {variant!r}")
    mode, srt = VARIANTS[variant]
    torch.manual_seed(seed)
    model = LeNet(mode, scale)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM)
    batches = torch.Generator().manual_seed(seed)
    history = {"train_loss": [], "test_loss": [], "test_accuracy": [], "slopes": []}
    for epoch in range(1, epochs + 1):
        if epoch == LR_DROP_EPOCH:
            for group in opt.param_groups:
                group["lr"] = lr / 10
        history["train_loss"].append(_epoch(model, opt, data, srt, batches))
        test_loss, accuracy = evaluate(model, data.test_x, data.test_y)
        history["test_loss"].append(test_loss)
        history["test_accuracy"].append(accuracy)
        history["slopes"].append(slope_stats(model, scale))
    return history


def _epoch(model: LeNet, opt, data: Digits, srt: bool, batches: torch.Generator) -> float:
    """One pass over the shuffled training set; returns the mean batch cross entropy.
    The sum stays a (float64) tensor, read once at the end: no host sync per batch."""
    order = torch.randperm(len(data.train_x), generator=batches)
    total = torch.zeros((), dtype=torch.float64, device=data.train_x.device)
    for start in range(0, len(order), BATCH):
        index = order[start:start + BATCH]
        cross_entropy = F.cross_entropy(model(data.train_x[index]), data.train_y[index])
        loss = cross_entropy + slope_recovery(model.slopes()) if srt else cross_entropy
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += cross_entropy.detach().double() * len(index)
    return total.item() / len(order)
