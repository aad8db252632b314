"""Modules of the combined flexible activations (seed paper 003):
``FlexibleActivation``, ``FlexibleLinear``, the layer-wise regulariser
``flexible_regularization``, and the flexible-gate ``FlexibleLSTMCell`` / ``FlexibleLSTM``.

Each module keeps its per-channel parameters as one ``(2, C)`` parameter
``.params`` (row p = the kind's p-th free parameter), initialised to the kind's
baseline values, where the function equals its baseline activation exactly.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple, Union

import torch
from torch import nn

from ..checks import check_flexible_kind
from ..flexible import get_kind
from ..functional import flexible_activation, flexible_linear

__all__ = ["FlexibleActivation", "FlexibleLinear", "flexible_regularization",
           "FlexibleLSTMCell", "FlexibleLSTM"]


def _baseline_params(kind: str, num_features: int, device=None, dtype=None) -> nn.Parameter:
    """(2, C) filled with the kind's baseline values (e.g. α = 1, β = 0.1)."""
    init = torch.tensor(get_kind(kind).init, device=device, dtype=dtype or torch.get_default_dtype())
    return nn.Parameter(init[:, None].repeat(1, num_features))


def _check_features(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class FlexibleActivation(nn.Module):
    """``y = f_kind(z; α)`` with per-channel parameters along ``dim``.

    Args:
        kind: a name in ``laaf_kernels.FLEXIBLE_KINDS``.
        num_features: C, the size of ``z`` along ``dim``.
        dim: the channel dim (-1 for (..., C), 1 for NCHW).
    """

    def __init__(self, kind: str, num_features: int, dim: int = -1, *, device=None, dtype=None):
        super().__init__()
        self.kind = check_flexible_kind(kind)
        self.num_features = _check_features("num_features", num_features)
        self.dim = dim
        self.params = _baseline_params(kind, num_features, device, dtype)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return flexible_activation(z, self.params, kind=self.kind, dim=self.dim)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, num_features={self.num_features}, dim={self.dim}"


class FlexibleLinear(nn.Linear):
    """``f_kind(x W^T + b; α)``: an ``nn.Linear`` with a flexible activation, params (2, N)."""

    def __init__(self, in_features: int, out_features: int, kind: str, bias: bool = True, *,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.kind = check_flexible_kind(kind)
        self.params = _baseline_params(kind, out_features, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return flexible_linear(x, self.weight, self.bias, self.params, kind=self.kind)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kind={self.kind}"


def flexible_regularization(model: nn.Module, lam: Union[float, Dict[str, float]],
                            delta: float = 0.0) -> torch.Tensor:
    """The layer-wise regulariser of the paper (§2.4, shared/notes/math.md §2)::

        R = sum_j λ_j sum_i sum_k (α_ijk - ᾱ_jk)^2  +  δ sum_ijk (α_ijk - α_k0)^2

    over every flexible module j of ``model`` (``FlexibleActivation``,
    ``FlexibleLinear``), neurons i and parameters k, with ᾱ_jk the layer mean
    and α_k0 the kind's baseline value. ``lam`` is one λ for all layers, or a
    dict from module name (as in ``model.named_modules()``) to λ; layers it
    leaves out get λ = 0. A model without flexible modules gives 0.
    """
    if isinstance(lam, dict):
        names = {name for name, _ in model.named_modules()}
        unknown = sorted(set(lam) - names)
        if unknown:
            raise ValueError(f"lam names modules that model does not have: {unknown}")
    elif isinstance(lam, bool) or not isinstance(lam, (int, float)):
        raise TypeError(f"lam must be a float or a dict of module name -> float, got {type(lam)}")
    total = None
    for name, module in model.named_modules():
        if not isinstance(module, (FlexibleActivation, FlexibleLinear)):
            continue
        p = module.params
        weight = lam.get(name, 0.0) if isinstance(lam, dict) else float(lam)
        baseline = p.new_tensor(get_kind(module.kind).init)[:, None]
        term = (weight * (p - p.mean(dim=1, keepdim=True)).pow(2).sum()
                + delta * (p - baseline).pow(2).sum())
        total = term if total is None else total + term
    if total is None:
        first = next(model.parameters(), None)
        return torch.zeros((), device=None if first is None else first.device)
    return total


class FlexibleLSTMCell(nn.Module):
    """An LSTM cell whose gates are flexible (the paper's flexible-gate LSTM)::

        i, f, o = f_sigmoid_ramp(·)          g = f_tanh_ramp(·)
        c' = f c + i g                       h' = o f_tanh_ramp(c')

    with per-unit parameters for each of the five activations. Weights and their
    initialisation are those of ``nn.LSTMCell`` (gate order i, f, g, o); at the
    parameters' baseline values the cell equals ``nn.LSTMCell`` exactly.
    """

    GATES = ("input_gate", "forget_gate", "cell_gate", "output_gate", "cell_output")

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *,
                 device=None, dtype=None):
        super().__init__()
        self.input_size = _check_features("input_size", input_size)
        self.hidden_size = _check_features("hidden_size", hidden_size)
        options = dict(device=device, dtype=dtype)
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size, **options))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size, **options))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size, **options)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size, **options)) if bias else None
        for gate in self.GATES:
            kind = "tanh_ramp" if gate in ("cell_gate", "cell_output") else "sigmoid_ramp"
            setattr(self, gate, FlexibleActivation(kind, hidden_size, **options))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U(-1/sqrt(H), 1/sqrt(H)), as nn.LSTMCell."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh):
            if weight is not None:
                nn.init.uniform_(weight, -bound, bound)

    def step(self, gates_x: torch.Tensor, state: Tuple[torch.Tensor, torch.Tensor]):
        """One step from the input's projection ``gates_x`` = x W_ih^T + b_ih."""
        h, c = state
        gates = torch.nn.functional.linear(h, self.weight_hh, self.bias_hh) + gates_x
        i, f, g, o = gates.chunk(4, dim=-1)
        c = self.forget_gate(f) * c + self.input_gate(i) * self.cell_gate(g)
        h = self.output_gate(o) * self.cell_output(c)
        return h, c

    def forward(self, x: torch.Tensor, state: Optional[Tuple[torch.Tensor, torch.Tensor]] = None):
        """x (B, input_size) -> (h, c), each (B, hidden_size); state defaults to zeros."""
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            state = (zeros, zeros)
        return self.step(torch.nn.functional.linear(x, self.weight_ih, self.bias_ih), state)


class FlexibleLSTM(nn.Module):
    """A stack of ``FlexibleLSTMCell`` layers over (T, B, input) (or (B, T, input)
    with ``batch_first``); returns ``(output, (h_n, c_n))`` as ``nn.LSTM`` does.

    Its weights are named as ``nn.LSTM``'s are (``weight_ih_l0``, ...), so
    ``load_state_dict`` of an ``nn.LSTM`` (``strict=False``: the flexible
    parameters are new) gives the same weights.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, *, device=None, dtype=None):
        super().__init__()
        self.hidden_size = _check_features("hidden_size", hidden_size)
        self.num_layers = _check_features("num_layers", num_layers)
        self.batch_first = batch_first
        self.cells = nn.ModuleList(
            FlexibleLSTMCell(input_size if layer == 0 else hidden_size, hidden_size, bias,
                             device=device, dtype=dtype) for layer in range(num_layers))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for layer in range(self.num_layers):  # nn.LSTM names -> ours
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                key = f"{prefix}{name}_l{layer}"
                if key in state_dict:
                    state_dict[f"{prefix}cells.{layer}.{name}"] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor, state=None):
        if x.dim() != 3:
            raise ValueError(f"x must be 3-D (T, B, input) or (B, T, input), got {tuple(x.shape)}")
        if self.batch_first:
            x = x.transpose(0, 1)
        steps, batch = x.shape[0], x.shape[1]
        if state is None:
            zeros = x.new_zeros(self.num_layers, batch, self.hidden_size)
            state = (zeros, zeros)
        h_n, c_n = [], []
        for layer, cell in enumerate(self.cells):
            # The input projection of all steps in one GEMM (as ATen's LSTM does).
            gates_x = torch.nn.functional.linear(x, cell.weight_ih, cell.bias_ih)
            h, c = state[0][layer], state[1][layer]
            outputs = []
            for t in range(steps):
                h, c = cell.step(gates_x[t], (h, c))
                outputs.append(h)
            x = torch.stack(outputs) if steps else x.new_zeros(0, batch, self.hidden_size)
            h_n.append(h)
            c_n.append(c)
        out = x.transpose(0, 1) if self.batch_first else x
        return out, (torch.stack(h_n), torch.stack(c_n))
