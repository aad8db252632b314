"""Run the LAAF paper's deep-learning benchmark in small (``lenet``: its LeNet variant
on scikit-learn's digits, §4):

    python -m laaf_kernels.experiments lenet --seeds 5 --epochs 30 --jobs 2 --out runs/lenet

Writes to --out: runs.csv (one row per variant, n and seed), summary.json (mean and
std over seeds of the training loss at a few epochs and of the final test accuracy),
history.json (per epoch: training and test loss, test accuracy, n*a per layer),
loss.png (training loss per epoch, mean ± 2 std, one panel per n: the paper's
Fig. 10) and slopes.png. The standard network has no slope, so it runs once per
seed and is drawn in every panel.
"""
from __future__ import annotations

import argparse
import csv
import json
import pathlib
import time
from collections import defaultdict

import numpy as np
import torch

from . import lenet as T
from .cli import parse_variants, run_jobs
from .deps import agg_pyplot, require

REPORT_EPOCHS = (1, 5, 10)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m laaf_kernels.experiments", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=["lenet"])
    p.add_argument("--variants", default=",".join(T.VARIANTS),
                   help=f"comma list of {', '.join(T.VARIANTS)} (default: all)")
    p.add_argument("--scales", default=",".join(f"{n:g}" for n in T.SCALES),
                   help="comma list of the scale factors n >= 1 (default: the paper's 1,2)")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per variant (default 5)")
    p.add_argument("--epochs", type=int, default=30, help="epochs per run (default 30)")
    p.add_argument("--lr", type=float, default=T.LR,
                   help=f"SGD learning rate, divided by 10 at epoch {T.LR_DROP_EPOCH} "
                        f"(default: the paper's {T.LR})")
    p.add_argument("--backend", default=None, help="laaf_kernels backend (default: auto)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    p.add_argument("--out", default=None, help="output directory (default runs/lenet)")
    args = p.parse_args(argv)
    args.variants = parse_variants(p, args.variants, T.VARIANTS)
    try:
        args.scales = [float(v) for v in args.scales.split(",") if v]
    except ValueError as error:
        p.error(f"--scales must be a comma list of numbers: {error}")
    if not args.scales or min(args.scales) < 1:
        p.error(f"--scales needs numbers >= 1, got {args.scales}")
    for name in ("seeds", "epochs", "jobs", "lr"):
        if getattr(args, name) <= 0:
            p.error(f"--{name} must be > 0, got {getattr(args, name)}")
    args.out = pathlib.Path(args.out or "runs/lenet")
    require("matplotlib", "sklearn")
    return args


def model_name(variant: str, scale: float) -> str:
    """The standard network has no slope, so its name carries no n."""
    return variant if variant == "standard" else f"{variant} n={scale:g}"


def make_jobs(args) -> list:
    threads = 1 if args.jobs > 1 else 0
    jobs = []
    for variant in args.variants:
        scales = args.scales[:1] if variant == "standard" else args.scales
        jobs += [(variant, scale, seed, args.epochs, args.lr, args.backend, threads)
                 for scale in scales for seed in range(args.seeds)]
    return jobs


def run_one(job) -> dict:
    variant, scale, seed, epochs, lr, backend, threads = job
    if threads:
        torch.set_num_threads(threads)
    import laaf_kernels

    start = time.perf_counter()
    with laaf_kernels.use_backend(backend or "auto"):
        history = T.train_run(variant, scale, seed, epochs, T.load_digits(), lr)
    return {"model": model_name(variant, scale), "variant": variant, "scale": scale,
            "seed": seed, "seconds": time.perf_counter() - start, "history": history}


def summarize(runs) -> dict:
    """Per model, over seeds: mean and std of the training loss at REPORT_EPOCHS and the
    last epoch, and of the final test accuracy; beside the standard network, the least
    and the largest ratio (standard's final training loss / the model's) over the seeds
    that ran both (one seed: the same initial network and batches)."""
    groups = defaultdict(list)
    for r in runs:
        groups[r["model"]].append(r)
    standard = {r["seed"]: r["history"]["train_loss"][-1] for r in groups.get("standard", [])}
    summary = {}
    for model, rs in groups.items():
        loss = np.array([r["history"]["train_loss"] for r in rs])
        accuracy = np.array([r["history"]["test_accuracy"][-1] for r in rs])
        epochs = [e for e in REPORT_EPOCHS if e < loss.shape[1]] + [loss.shape[1]]
        summary[model] = {
            "train_loss": {str(e): [float(loss[:, e - 1].mean()), float(loss[:, e - 1].std())]
                           for e in epochs},
            "test_accuracy": [float(accuracy.mean()), float(accuracy.std())],
            "seeds": len(rs)}
        ratios = [standard[r["seed"]] / r["history"]["train_loss"][-1]
                  for r in rs if r["seed"] in standard]
        if model != "standard" and ratios:
            # np.min / np.max: a diverged (NaN) run makes both bounds NaN, in any order
            summary[model]["standard_final_loss_over_this"] = [float(np.min(ratios)),
                                                               float(np.max(ratios))]
    return summary


def print_summary(summary: dict) -> None:
    epochs = list(next(iter(summary.values()))["train_loss"])
    print(f"\n{'model':<16}" + "".join(f"{'loss @ ' + e:>22}" for e in epochs)
          + f"{'test accuracy':>20}{'standard / this, last loss':>30}")
    for model, s in summary.items():
        cells = "".join(f"{m:>12.3e} ± {sd:.1e}" for m, sd in s["train_loss"].values())
        mean, std = s["test_accuracy"]
        ratio = s.get("standard_final_loss_over_this")
        ratio = f"{ratio[0]:.3g} to {ratio[1]:.3g}" if ratio else ""
        print(f"{model:<16}{cells}{mean:>12.4f} ± {std:.4f}{ratio:>30}")


def plot_loss(runs, scales, path: pathlib.Path) -> None:
    """Training loss per epoch (log), mean ± 2 std over seeds, one panel per n."""
    plt = agg_pyplot()
    fig, axes = plt.subplots(1, len(scales), figsize=(6 * len(scales), 4.2), squeeze=False)
    for ax, scale in zip(axes[0], scales):
        curves = defaultdict(list)
        for r in runs:
            if r["variant"] == "standard" or r["scale"] == scale:
                curves[r["model"]].append(r["history"]["train_loss"])
        for model, loss in curves.items():
            log = np.log10(np.array(loss))
            mean, std = log.mean(0), log.std(0)
            epochs = np.arange(1, log.shape[1] + 1)
            ax.plot(epochs, 10 ** mean, label=model.split(" ")[0])
            ax.fill_between(epochs, 10 ** (mean - 2 * std), 10 ** (mean + 2 * std), alpha=0.12)
        ax.set_yscale("log")
        ax.set_title(f"n = {scale:g}", fontsize=10)
        ax.set_xlabel("epoch")
    axes[0, 0].set_ylabel("training cross entropy (geometric mean, ± 2 std)")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_slopes(runs, path: pathlib.Path) -> bool:
    """n*a per hidden layer over the epochs, seed 0 of each adaptive model."""
    runs = [r for r in runs if r["seed"] == 0 and r["history"]["slopes"][0]]
    if not runs:
        return False
    plt = agg_pyplot()
    cols = 2
    rows = (len(runs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(11, 2.3 * rows), squeeze=False)
    for ax, r in zip(axes.flat, runs):
        stats = np.array(r["history"]["slopes"])  # (epochs, layers, 2)
        epochs = np.arange(1, len(stats) + 1)
        for layer, name in enumerate(("conv 1", "conv 2", "fc")):
            ax.plot(epochs, stats[:, layer, 0], label=name)
            if stats[:, layer, 1].any():
                ax.fill_between(epochs, stats[:, layer, 0] - stats[:, layer, 1],
                                stats[:, layer, 0] + stats[:, layer, 1], alpha=0.2)
        ax.set_title(r["model"], fontsize=9)
        ax.set_ylabel("n·a")
    for ax in axes.flat[len(runs):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_results(args, runs) -> dict:
    with open(args.out / "runs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "scale", "seed", "final_train_loss", "test_accuracy",
                         "seconds"])
        for r in runs:
            h = r["history"]
            writer.writerow([r["variant"], r["scale"], r["seed"], h["train_loss"][-1],
                             h["test_accuracy"][-1], r["seconds"]])
    from ..ops.dispatch import select_backend

    summary = summarize(runs)
    meta = {"task": "lenet", "epochs": args.epochs, "seeds": args.seeds, "scales": args.scales,
            "lr": args.lr, "momentum": T.MOMENTUM, "batch": T.BATCH,
            "lr_drop_epoch": T.LR_DROP_EPOCH,
            "backend": select_backend(args.backend, torch.device("cpu")).name,
            "torch": torch.__version__,
            "seconds_per_run": float(np.mean([r["seconds"] for r in runs]))}
    (args.out / "summary.json").write_text(json.dumps({"meta": meta, "summary": summary}, indent=1))
    (args.out / "history.json").write_text(json.dumps(
        [{k: r[k] for k in ("variant", "scale", "seed", "history")} for r in runs]))
    return summary


def main(argv) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = run_jobs(run_one, make_jobs(args), args.jobs)
    print_summary(write_results(args, runs))
    plot_loss(runs, args.scales, args.out / "loss.png")
    print(f"wrote {args.out / 'loss.png'}")
    if plot_slopes(runs, args.out / "slopes.png"):
        print(f"wrote {args.out / 'slopes.png'}")
    return 0

