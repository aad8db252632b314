"""Run the LAAF paper's experiments.

    python -m laaf_kernels.experiments burgers --seeds 3 --out runs/burgers
    python -m laaf_kernels.experiments discontinuous --variants standard,n-laaf-srt --iters 2000
    python -m laaf_kernels.experiments lenet ...   (the paper's LeNet benchmark, §4:
        see laaf_kernels/experiments/lenet_cli.py)
    python -m laaf_kernels.experiments autoencoder | forecast ...   (flexible activations:
        see laaf_kernels/experiments/flexible_cli.py)

Writes to --out: runs.csv (one row per variant and seed), summary.json (mean and
std per variant, beside the paper's Table 1 for Burgers), history.json (loss
and n*a per layer over the iterations) and PNG figures.
"""
from __future__ import annotations

import argparse
import csv
import importlib
import json
import multiprocessing
import pathlib
import sys
import time

import numpy as np
import torch

from ..pinn.problems import PROBLEMS, VARIANTS, train
from .deps import progress_bar, require

#: Relative L2 errors of the LAAF paper's Table 1 (Burgers, 2000 iterations).
PAPER_TABLE_1 = {"standard": 1.913973e-01, "gaaf": 9.517134e-02, "l-laaf": 8.866356e-02,
                 "n-laaf": 9.129446e-02, "l-laaf-srt": 7.693435e-02, "n-laaf-srt": 8.378424e-02}
DEFAULT_ITERS = {"burgers": 2000, "discontinuous": 10_000}
#: command -> module (in this package) whose ``main(argv)`` runs it
OTHER_COMMANDS = {"lenet": "lenet_cli", "autoencoder": "flexible_cli", "forecast": "flexible_cli"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m laaf_kernels.experiments", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    # lenet, autoencoder and forecast have their own command lines (main dispatches on
    # argv[0]); they are listed so that an unknown command's error names every command
    p.add_argument("problem", choices=sorted(PROBLEMS) + list(OTHER_COMMANDS))
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma list of {', '.join(VARIANTS)} (default: all six)")
    p.add_argument("--iters", type=int, default=None,
                   help="Adam steps (default: burgers 2000, discontinuous 10000)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per variant (default 3)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--backend", default=None, help="laaf_kernels backend (default: auto)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (CPU)")
    p.add_argument("--log-every", type=int, default=10, help="history every N steps")
    p.add_argument("--out", default=None, help="output directory (default runs/<problem>)")
    args = p.parse_args(argv)
    args.variants = parse_variants(p, args.variants, VARIANTS)
    args.iters = DEFAULT_ITERS[args.problem] if args.iters is None else args.iters
    for name in ("iters", "seeds", "jobs", "log_every"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        p.error(f"--device: {error}")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device is available here")
    if device.type not in ("cpu", "cuda"):
        p.error(f"--device must be cpu or cuda[:N], got {args.device!r}")
    args.out = pathlib.Path(args.out or f"runs/{args.problem}")
    require("matplotlib")
    return args


def parse_variants(parser: argparse.ArgumentParser, text: str, valid) -> list:
    """The comma list ``text`` as a list; ``parser.error`` names any name not in ``valid``."""
    variants = [v for v in text.split(",") if v]
    unknown = [v for v in variants if v not in valid]
    if unknown or not variants:
        parser.error(f"unknown variant(s) {', '.join(map(repr, unknown))}; "
                     f"valid: {', '.join(valid)}")
    return variants


def run_one(job) -> dict:
    """Train one (variant, seed); returns its numbers, history and final prediction."""
    problem_name, variant, seed, iters, device, backend, log_every, threads, show = job
    if threads:
        torch.set_num_threads(threads)
    import laaf_kernels

    problem = PROBLEMS[problem_name](variant, seed, device=device)
    bar = progress_bar(total=iters, desc=f"{variant} seed {seed}", leave=False) if show else None

    def progress(it, loss):
        if bar is not None:
            bar.n = it
            bar.set_postfix(loss=f"{loss:.3e}")

    start = time.perf_counter()
    with laaf_kernels.use_backend(backend or "auto"):
        history = train(problem, iters, log_every, progress)
    if bar is not None:
        bar.close()
    return {"variant": variant, "seed": seed, "error": history["error"],
            "final_loss": history["loss"][-1], "final_data_loss": history["data_loss"][-1],
            "seconds": time.perf_counter() - start,
            "history": history, "prediction": problem.predict().tolist()}


def run_jobs(run, jobs: list, processes: int) -> list:
    """``[run(job) for job in jobs]``, in ``processes`` spawned processes when > 1
    (each job then sets its own thread count), with a progress bar over the runs."""
    if processes == 1:
        return [run(job) for job in progress_bar(jobs, desc="runs")]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        return list(progress_bar(pool.imap(run, jobs), total=len(jobs), desc="runs"))


def summarize(results, problem: str) -> dict:
    """Per variant: mean, std and median of the error over seeds and, beside the
    standard network, on how many seeds it did better than the standard network of
    the same seed (one seed fixes the weights and the data of every variant, and n*a
    starts at 1, so the pairs start from the same network)."""
    standard = {r["seed"]: r["error"] for r in results if r["variant"] == "standard"}
    summary = {}
    for variant in dict.fromkeys(r["variant"] for r in results):
        runs = [r for r in results if r["variant"] == variant]
        errors = np.array([r["error"] for r in runs])
        summary[variant] = {"mean": float(errors.mean()), "std": float(errors.std(ddof=0)),
                            "median": float(np.median(errors)), "seeds": len(errors)}
        pairs = [(r["error"], standard[r["seed"]]) for r in runs if r["seed"] in standard]
        if variant != "standard" and pairs:
            summary[variant]["better_than_standard"] = [sum(e < s for e, s in pairs), len(pairs)]
        if problem == "burgers":
            summary[variant]["paper"] = PAPER_TABLE_1[variant]
    return summary


def print_summary(summary: dict, problem: str) -> None:
    print(f"\n{'variant':<12} {'relative L2 error (mean ± std)':>32} {'median':>11} "
          f"{'< standard':>11}" + (f" {'paper, Table 1':>16}" if problem == "burgers" else ""))
    for variant, s in summary.items():
        wins = "{}/{}".format(*s["better_than_standard"]) if "better_than_standard" in s else ""
        line = f"{variant:<12} {s['mean']:>20.4e} ± {s['std']:.2e} {s['median']:>11.4e} {wins:>11}"
        if problem == "burgers":
            line += f" {s['paper']:>16.4e}"
        print(line)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in OTHER_COMMANDS:
        module = importlib.import_module(f".{OTHER_COMMANDS[argv[0]]}", __package__)
        return module.main(argv)
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    threads = 1 if args.jobs > 1 else 0
    jobs = [(args.problem, v, seed, args.iters, str(args.device), args.backend, args.log_every,
             threads, args.jobs == 1) for v in args.variants for seed in range(args.seeds)]
    results = run_jobs(run_one, jobs, args.jobs)
    with open(args.out / "runs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "seed", "relative_l2_error", "final_loss", "final_data_loss",
                         "seconds"])
        for r in results:
            writer.writerow([r["variant"], r["seed"], r["error"], r["final_loss"],
                             r["final_data_loss"], r["seconds"]])
    summary = summarize(results, args.problem)
    from ..ops.dispatch import select_backend

    meta = {"problem": args.problem, "iters": args.iters, "seeds": args.seeds,
            "device": str(args.device),
            "backend": select_backend(args.backend, torch.device(args.device)).name,
            "torch": torch.__version__,
            "seconds_per_run": float(np.mean([r["seconds"] for r in results]))}
    (args.out / "summary.json").write_text(json.dumps({"meta": meta, "summary": summary}, indent=1))
    (args.out / "history.json").write_text(json.dumps(
        [{k: r[k] for k in ("variant", "seed", "history")} for r in results]))
    print_summary(summary, args.problem)
    from .plots import plot_all
    for path in plot_all(args.problem, results, args.out):
        print(f"wrote {path}")
    return 0

