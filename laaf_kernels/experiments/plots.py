"""Figures of the experiments (the LAAF paper's Figs 2-9, in small)."""
from __future__ import annotations

import pathlib
from collections import defaultdict
from typing import Optional

import numpy as np

from ..pinn.burgers_exact import burgers_exact
from ..pinn.problems import discontinuous_target
from .deps import agg_pyplot


def _by_variant(results):
    groups = defaultdict(list)
    for r in results:
        groups[r["variant"]].append(r)
    return groups


def plot_loss(results, out: pathlib.Path) -> pathlib.Path:
    """Training loss (mean over seeds) per variant: the data (and physics) loss, which
    is comparable across variants, and dashed, where the variant has S(a), the loss it
    minimises."""
    plt = agg_pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant, runs in _by_variant(results).items():
        iters = runs[0]["history"]["iter"]
        data = np.mean([r["history"]["data_loss"] for r in runs], axis=0)
        line, = ax.semilogy(iters, data, label=variant)
        loss = np.mean([r["history"]["loss"] for r in runs], axis=0)
        if not np.array_equal(loss, data):
            ax.semilogy(iters, loss, "--", color=line.get_color(), linewidth=1,
                        label=f"{variant}, with S(a)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss without S(a) (mean over seeds)")
    ax.legend()
    fig.tight_layout()
    path = out / "loss.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_slopes(results, out: pathlib.Path) -> Optional[pathlib.Path]:
    """n*a per hidden layer over the iterations, seed 0 (mean +- std for N-LAAF); None
    when no run has a slope (only the standard activation)."""
    runs = [r for r in results if r["seed"] == 0 and r["history"]["slopes"][0]]
    if not runs:  # only standard activations: no slopes to draw
        return None
    plt = agg_pyplot()
    fig, axes = plt.subplots(len(runs), 1, figsize=(7, 2.2 * max(1, len(runs))), squeeze=False)
    for ax, r in zip(axes[:, 0], runs):
        iters = np.array(r["history"]["iter"])
        stats = np.array(r["history"]["slopes"])  # (logged, layers, 2)
        for layer in range(stats.shape[1]):
            mean, std = stats[:, layer, 0], stats[:, layer, 1]
            ax.plot(iters, mean, label=f"layer {layer + 1}")
            if std.any():
                ax.fill_between(iters, mean - std, mean + std, alpha=0.2)
        ax.set_title(r["variant"], fontsize=9)
        ax.set_ylabel("n·a")
    axes[-1, 0].set_xlabel("iteration")
    axes[0, 0].legend(fontsize=7, ncol=3)
    fig.tight_layout()
    path = out / "slopes.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_burgers_solution(results, out: pathlib.Path) -> list:
    """Heat maps of the prediction and its error, and u(x) at t = 0.25, 0.5, 0.75."""
    plt = agg_pyplot()
    xs, ts = np.linspace(-1, 1, 256), np.arange(100) * 0.01
    exact = burgers_exact(*np.meshgrid(xs, ts, indexing="ij"))
    best = {v: min(runs, key=lambda r: r["error"]) for v, runs in _by_variant(results).items()}
    fig, axes = plt.subplots(len(best), 2, figsize=(10, 2.4 * len(best)), squeeze=False)
    for (variant, r), (ax_u, ax_e) in zip(best.items(), axes):
        pred = np.array(r["prediction"])
        im = ax_u.imshow(pred, aspect="auto", origin="lower", extent=[0, 0.99, -1, 1], cmap="RdBu_r")
        fig.colorbar(im, ax=ax_u)
        ax_u.set_title(f"{variant}: u(x, t), rel. L2 {r['error']:.2e}", fontsize=9)
        im = ax_e.imshow(np.abs(pred - exact), aspect="auto", origin="lower",
                         extent=[0, 0.99, -1, 1], cmap="magma")
        fig.colorbar(im, ax=ax_e)
        ax_e.set_title("|u - exact|", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("t")
    fig.tight_layout()
    heat = out / "solution.png"
    fig.savefig(heat, dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, t in zip(axes, (0.25, 0.5, 0.75)):
        col = int(round(t / 0.01))
        ax.plot(xs, exact[:, col], "k", linewidth=2, label="exact")
        for variant, r in best.items():
            ax.plot(xs, np.array(r["prediction"])[:, col], "--", label=variant)
        ax.set_title(f"t = {t}")
        ax.set_xlabel("x")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    slices = out / "slices.png"
    fig.savefig(slices, dpi=100)
    plt.close(fig)
    return [heat, slices]


def plot_discontinuous_fit(results, out: pathlib.Path) -> list:
    """The fits (best seed) and their pointwise error."""
    plt = agg_pyplot()
    x = np.linspace(-3, 3, 2001)
    exact = discontinuous_target(x)
    best = {v: min(runs, key=lambda r: r["error"]) for v, runs in _by_variant(results).items()}
    fig, (ax_u, ax_e) = plt.subplots(2, 1, figsize=(8, 7))
    ax_u.plot(x, exact, "k", linewidth=2, label="exact")
    for variant, r in best.items():
        pred = np.array(r["prediction"])
        ax_u.plot(x, pred, "--", label=f"{variant} ({r['error']:.2e})")
        ax_e.semilogy(x, np.abs(pred - exact) + 1e-12, label=variant)
    ax_u.legend(fontsize=7)
    ax_e.set_ylabel("|u - exact|")
    ax_e.set_xlabel("x")
    fig.tight_layout()
    path = out / "fit.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


def plot_all(problem: str, results, out: pathlib.Path) -> list:
    """Every figure of the problem; returns the files written."""
    paths = [p for p in (plot_loss(results, out), plot_slopes(results, out)) if p is not None]
    if problem == "burgers":
        paths += plot_burgers_solution(results, out)
    else:
        paths += plot_discontinuous_fit(results, out)
    return paths
