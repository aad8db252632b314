"""Whole-model steps: one PINN training step (Burgers, 6 x 20 N-LAAF, u_xx
included; on CPU in float64 too) and one MLP classifier training step with and
without convert()."""
from __future__ import annotations

import math
from typing import Callable, Dict

import torch
from torch import nn

import laaf_kernels

NU = 0.01 / math.pi


def burgers_step(backend: str, device: str, n_collocation: int = 10_000,
                 n_boundary: int = 400, dtype=torch.float32) -> Callable[[], None]:
    """One Adam step on the Burgers PINN loss MSE(u_t + u u_x - nu u_xx) + MSE_b + S(a)."""
    gen = torch.Generator().manual_seed(0)
    model = laaf_kernels.LAAFMLP([2] + [20] * 6 + [1], "tanh", "neuron", 10.0).to(device, dtype)
    opt = torch.optim.Adam(model.parameters(), lr=8e-4)
    xt = (torch.rand(n_collocation, 2, generator=gen) * torch.tensor([2.0, 1.0])
          - torch.tensor([1.0, 0.0])).to(device, dtype).requires_grad_()
    xb = (torch.rand(n_boundary, 2, generator=gen) * 2 - 1).to(device, dtype)
    ub = -torch.sin(math.pi * xb[:, :1])

    def step():
        with laaf_kernels.use_backend(backend):
            u = model(xt)
            du = torch.autograd.grad(u.sum(), xt, create_graph=True)[0]
            u_x, u_t = du[:, :1], du[:, 1:]
            u_xx = torch.autograd.grad(u_x.sum(), xt, create_graph=True)[0][:, :1]
            residual = u_t + u * u_x - NU * u_xx
            loss = residual.square().mean() + (model(xb) - ub).square().mean() \
                + model.slope_recovery()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return step


def mlp_classifier_step(backend: str, device: str, convert: bool, batch: int = 512,
                        widths=(784, 1024, 1024, 10)) -> Callable[[], None]:
    """One SGD step of an MLP classifier (ReLU), plain or ``convert()``-ed to N-LAAF."""
    torch.manual_seed(0)
    layers = []
    for d_in, d_out in zip(widths[:-2], widths[1:-1]):
        layers += [nn.Linear(d_in, d_out), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(widths[-2], widths[-1])).to(device)
    if convert:
        laaf_kernels.convert(model, mode="neuron", scale=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, widths[0], device=device)
    y = torch.randint(0, widths[-1], (batch,), device=device)

    def step():
        with laaf_kernels.use_backend(backend):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return step


def model_steps(backends, device: str) -> Dict[str, Callable[[], None]]:
    steps = {}
    for backend in backends:
        steps[f"burgers_6x20 [{backend}]"] = burgers_step(backend, device)
        if device == "cpu":
            steps[f"burgers_6x20_fp64 [{backend}]"] = burgers_step(backend, device, dtype=torch.float64)
        steps[f"mlp_convert [{backend}]"] = mlp_classifier_step(backend, device, convert=True)
    steps["mlp_plain [nn]"] = mlp_classifier_step("reference", device, convert=False)
    return steps
