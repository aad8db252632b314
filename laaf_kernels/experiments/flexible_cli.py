"""Run the flexible-activation paper's experiments (``flexible_tasks``):

    python -m laaf_kernels.experiments autoencoder --seeds 5 --epochs 30 --out runs/autoencoder
    python -m laaf_kernels.experiments forecast --seeds 5 --epochs 30 --out runs/forecast

Writes to --out: runs.csv (one row per model and seed), summary.json (mean and std
of the test loss and of the minimum validation loss per model, plus the searched
hyper-parameters) and curves.png (mean validation loss per epoch, ± std).
"""
from __future__ import annotations

import argparse
import csv
import json
import pathlib
import sys
from collections import defaultdict

import numpy as np
import torch

from . import flexible_tasks as T
from .deps import agg_pyplot, require

TASKS = ("autoencoder", "forecast")
LR_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.2)   # the paper's [0.001, 0.2], log scale, in small
DELTA_GRID = (0.0, 0.001, 0.01, 0.1)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m laaf_kernels.experiments", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=TASKS)
    p.add_argument("--seeds", type=int, default=5, help="seeds per model (default 5)")
    p.add_argument("--epochs", type=int, default=30, help="epochs per run (default 30)")
    p.add_argument("--backend", default=None, help="laaf_kernels backend (default: auto)")
    p.add_argument("--lr-grid", default=",".join(map(str, LR_GRID)),
                   help="forecast: learning rates searched for the fixed LSTM")
    p.add_argument("--delta-grid", default=",".join(map(str, DELTA_GRID)),
                   help="forecast: regulariser deltas searched for the flexible LSTM")
    p.add_argument("--out", default=None, help="output directory (default runs/<task>)")
    args = p.parse_args(argv)
    try:
        args.lr_grid = [float(v) for v in args.lr_grid.split(",") if v]
        args.delta_grid = [float(v) for v in args.delta_grid.split(",") if v]
    except ValueError as error:
        p.error(f"--lr-grid / --delta-grid must be comma lists of numbers: {error}")
    if not args.lr_grid or not args.delta_grid or min(args.lr_grid) <= 0 or min(args.delta_grid) < 0:
        p.error("--lr-grid needs numbers > 0 and --delta-grid numbers >= 0")
    for name in ("seeds", "epochs"):
        if getattr(args, name) <= 0:
            p.error(f"--{name} must be > 0, got {getattr(args, name)}")
    args.out = pathlib.Path(args.out or f"runs/{args.task}")
    require("matplotlib", *(["sklearn"] if args.task == "autoencoder" else []))
    return args


def _autoencoder_runs(args):
    runs = []
    for shape in T.AE_SHAPES:
        for variant in T.AE_VARIANTS:
            for seed in range(args.seeds):
                result = T.run_autoencoder(shape, variant, seed, args.epochs)
                runs.append({"model": f"{shape}/{variant}", "seed": seed, **result})
                print(f"{shape}/{variant} seed {seed}: test {result['test']:.4e}", file=sys.stderr)
    return runs, {"lr": T.AE_LR, "lambda": T.AE_LAMBDA}


def _forecast_runs(args):
    search_epochs = max(1, args.epochs // 3)
    lr, lr_scores = T.search_lr(search_epochs, args.lr_grid)
    delta, delta_scores = T.search_delta(search_epochs, lr, args.delta_grid)
    print(f"searched: lr {lr} ({lr_scores}), delta {delta} ({delta_scores})", file=sys.stderr)
    split = T.forecast_split()
    runs = []
    for variant in T.FORECAST_VARIANTS:
        for seed in range(args.seeds):
            result = T.run_forecast(variant, seed, args.epochs, lr, delta, split)
            runs.append({"model": variant, "seed": seed, **result})
            print(f"{variant} seed {seed}: test {result['test']:.4e}", file=sys.stderr)
    return runs, {"lr": lr, "lr_scores": lr_scores, "delta": delta, "delta_scores": delta_scores,
                  "search_epochs": search_epochs, "lambda": 0.025}


def summarize(runs) -> dict:
    groups = defaultdict(list)
    for r in runs:
        groups[r["model"]].append(r)
    summary = {}
    for model, rs in groups.items():
        test = np.array([r["test"] for r in rs])
        best = np.array([r["min_val"] for r in rs])
        summary[model] = {"test_mean": float(test.mean()), "test_std": float(test.std(ddof=0)),
                          "min_val_mean": float(best.mean()), "min_val_std": float(best.std(ddof=0)),
                          "seeds": len(rs)}
    return summary


def plot_curves(runs, path: pathlib.Path) -> None:
    plt = agg_pyplot()
    groups = defaultdict(list)
    for r in runs:
        groups[r["model"]].append(r["val_curve"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model, curves in groups.items():
        curves = np.array(curves)
        mean, std = curves.mean(0), curves.std(0)
        epochs = np.arange(1, len(mean) + 1)
        ax.plot(epochs, mean, label=model)
        ax.fill_between(epochs, mean - std, mean + std, alpha=0.15)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation MSE (mean ± std over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    import laaf_kernels

    with laaf_kernels.use_backend(args.backend or "auto"):
        runs, hyper = (_autoencoder_runs if args.task == "autoencoder" else _forecast_runs)(args)
    with open(args.out / "runs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "seed", "test_mse", "min_val_mse"])
        for r in runs:
            writer.writerow([r["model"], r["seed"], r["test"], r["min_val"]])
    summary = summarize(runs)
    from ..ops.dispatch import select_backend

    meta = {"task": args.task, "epochs": args.epochs, "seeds": args.seeds,
            "backend": select_backend(args.backend, torch.device("cpu")).name,
            "torch": torch.__version__, "hyper": hyper}
    (args.out / "summary.json").write_text(json.dumps({"meta": meta, "summary": summary}, indent=1))
    print(f"\n{'model':<22} {'test MSE (mean ± std)':>26} {'min val MSE (mean ± std)':>28}")
    for model, s in summary.items():
        print(f"{model:<22} {s['test_mean']:>14.4e} ± {s['test_std']:.2e} "
              f"{s['min_val_mean']:>16.4e} ± {s['min_val_std']:.2e}")
    plot_curves(runs, args.out / "curves.png")
    print(f"wrote {args.out / 'curves.png'}")
    return 0
