"""``make bench``: laaf_kernels' ops and backends against eager PyTorch,
torch.compile and cuBLAS, side by side in one run, with memory and roofline.

    python -m bench.run                 # quick suite on this machine's device
    python -m bench.run --full          # the whole suite (PINN and deep-learning shapes)
    python -m bench.run --ops linear --passes fwd_bwd --shapes 1048576x50x50 --providers eager,compile

Writes bench/results/<device>-<date>.json (every row, with device and versions)
and PNG plots beside it when matplotlib is installed.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time
from typing import List

import torch

import laaf_kernels

from . import cases as C
from .memory import peak_bytes, saved_bytes
from .models import model_steps
from .providers import all_providers, make_fn, make_inputs
from .report import (metadata, print_header, print_models, print_table, results_path,
                     write_json)
from .roofline import ceilings, model_bytes, model_flops
from .timing import copies_for_cold_l2, rotating, time_interleaved

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def _choices(text: str, valid, what: str) -> List[str]:
    items = [t for t in text.split(",") if t]
    bad = [t for t in items if t not in valid]
    if bad:
        raise SystemExit(f"error: unknown {what} {', '.join(map(repr, bad))}; "
                         f"valid: {', '.join(valid)}")
    return items


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="the whole suite (default: quick)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda (default: cuda when present)")
    p.add_argument("--ops", default=",".join(C.OPS), help=f"comma list of {', '.join(C.OPS)}")
    p.add_argument("--passes", default=",".join(C.PASSES), help=f"comma list of {', '.join(C.PASSES)}")
    p.add_argument("--providers", default=None, help="comma list (default: all valid here)")
    p.add_argument("--shapes", default=None,
                   help=f"comma list of MxKxN or {', '.join(C.SHAPE_SETS)} (default: the suite's)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64", "bfloat16", "float16"),
                   help="the dtype of the --shapes cases (default: float32)")
    p.add_argument("--no-models", action="store_true", help="skip the whole-model steps")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="after this many seconds, skip the remaining torch.compile rows "
                        "(recorded as skipped) so that the run ends in time")
    p.add_argument("--out", default=str(RESULTS), help="directory for the JSON and plots")
    args = p.parse_args(argv)
    if args.device not in ("cpu", "cuda"):
        raise SystemExit(f"error: --device must be cpu or cuda, got {args.device!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda asked for, but no CUDA device is available")
    valid_providers = all_providers(args.device)
    args.ops = _choices(args.ops, C.OPS, "op")
    args.passes = _choices(args.passes, C.PASSES, "pass")
    args.compile_everywhere = args.providers is not None
    args.providers = (valid_providers if args.providers is None
                      else _choices(args.providers, valid_providers, "provider"))
    if args.dtype != "float32" and args.shapes is None:
        raise SystemExit("error: --dtype sets the dtype of the --shapes cases; give --shapes too")
    if args.shapes is not None:
        try:
            args.shapes = [s for text in args.shapes.split(",") for s in C.parse_shape(text)]
        except ValueError as error:
            raise SystemExit(f"error: {error}") from None
    return args


def _pass_callable(case: C.Case, fn, inputs: dict):
    """The timed callable of one pass over one input set."""
    args = list(inputs.values())
    if case.pass_ == "infer":
        def infer():
            with torch.no_grad():
                return fn(*args)
        return infer
    if case.pass_ == "train_fwd":
        return lambda: fn(*args)
    if case.pass_ == "bwd":
        y = fn(*args)
        g = torch.randn_like(y)
        return lambda: torch.autograd.grad(y, args, g, retain_graph=True)
    g = torch.randn_like(fn(*args))
    return lambda: torch.autograd.grad(fn(*args), args, g)


def _empty_row(case: C.Case, provider: str, error=None) -> dict:
    return {**case.as_dict(), "label": case.label, "provider": provider, "error": error,
            "median_ms": None, "p20_ms": None, "p80_ms": None, "gbps": None, "pct_bw": None,
            "tflops": None, "pct_mm": None, "saved_bytes": None, "peak_bytes": None,
            "speedup_vs_eager": None}


def _error(error: Exception) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0]


def prepare(case: C.Case, provider: str, device: str):
    """(fn, the first input set, the timed callable over rotating input sets), or None."""
    fn = make_fn(provider, case)
    if fn is None:
        return None
    grad = case.pass_ != "infer"
    first = make_inputs(case, device, grad)
    set_bytes = sum(t.numel() * t.element_size() for t in first.values())
    input_sets = [first] + [make_inputs(case, device, grad, seed=i)
                            for i in range(1, copies_for_cold_l2(set_bytes, device))]
    return fn, first, rotating([_pass_callable(case, fn, inputs) for inputs in input_sets])


def finish_row(row: dict, case: C.Case, quantiles, fn, first: dict, device: str, ceil: dict):
    """Fill in times, roofline and memory of a measured row."""
    median, p20, p80 = quantiles
    row.update(median_ms=median, p20_ms=p20, p80_ms=p80)
    seconds = median * 1e-3
    row["gbps"] = model_bytes(case) / seconds / 1e9
    row["pct_bw"] = 100 * row["gbps"] / ceil["copy_gbps"]
    if model_flops(case):
        row["tflops"] = model_flops(case) / seconds / 1e12
        peak = ceil.get(f"mm_tflops_{case.dtype}")
        row["pct_mm"] = 100 * row["tflops"] / peak if peak else None
    if case.pass_ == "train_fwd":
        params = [first[k] for k in ("w", "b", "a") if k in first]
        try:
            row["saved_bytes"] = saved_bytes(lambda: fn(*first.values()), params)
        except Exception:  # compiled graphs may refuse saved-tensor hooks
            row["saved_bytes"] = None
    row["peak_bytes"] = peak_bytes(_pass_callable(case, fn, first), device)


def run_providers(case: C.Case, providers, device: str, quick: bool, ceil: dict) -> list:
    """Measure every provider of one case side by side; one failing provider is
    recorded as an error row and does not sink the others."""
    rows, prepared = {}, {}
    for provider in providers:
        try:
            ready = prepare(case, provider, device)
        except Exception as error:
            rows[provider] = _empty_row(case, provider, _error(error))
            continue
        if ready is not None:
            rows[provider] = _empty_row(case, provider)
            prepared[provider] = ready
    try:
        timed = time_interleaved({p: ready[2] for p, ready in prepared.items()}, device, quick)
    except Exception:  # find the culprit: time them one by one
        timed = {}
        for provider, ready in prepared.items():
            try:
                timed.update(time_interleaved({provider: ready[2]}, device, quick))
            except Exception as error:
                rows[provider]["error"] = _error(error)
    for provider, quantiles in timed.items():
        fn, first, _ = prepared[provider]
        try:
            finish_row(rows[provider], case, quantiles, fn, first, device, ceil)
        except Exception as error:
            rows[provider]["error"] = _error(error)
    return [rows[p] for p in providers if p in rows]


COMPILED = ("compile", "compile-max")


def _skip_reason(case: C.Case, provider: str, args, started: float):
    """Why a compile provider is left out of this row, or None."""
    if provider not in COMPILED:
        return None
    if not (case.headline or args.compile_everywhere):
        return "not a headline case"  # a compile per shape would not fit the run
    if args.deadline_s is not None and time.monotonic() - started > args.deadline_s:
        return "skipped: past --deadline-s"
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    quick = not args.full
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 for every provider
    torch._dynamo.config.cache_size_limit = 256
    print(f"laaf_kernels {laaf_kernels.__version__} | torch {torch.__version__} | device "
          f"{args.device} | providers: {', '.join(args.providers)}", flush=True)
    ceil = ceilings(args.device, quick)
    print("ceilings: " + ", ".join(f"{k} {v:.3g}" for k, v in ceil.items()), flush=True)
    meta = metadata(args.device, ceil)
    path = results_path(pathlib.Path(args.out), meta)
    print_header()
    rows = []
    for case in C.suite(args.device, args.full, args.ops, args.passes, args.shapes, args.dtype):
        reasons = {p: _skip_reason(case, p, args, started) for p in args.providers}
        measured = [p for p, why in reasons.items() if why is None]
        case_rows = run_providers(case, measured, args.device, quick, ceil)
        case_rows += [_empty_row(case, p, why) for p, why in reasons.items()
                      if why not in (None, "not a headline case")]
        eager = next((r for r in case_rows if r["provider"] == "eager" and not r["error"]), None)
        for r in case_rows:
            if eager and not r["error"]:
                r["speedup_vs_eager"] = eager["median_ms"] / r["median_ms"]
        print_table(case_rows)
        sys.stdout.flush()
        rows += case_rows
        write_json(path, meta, rows, [])  # after every case: a cut-short run keeps its rows
    models = []
    if not args.no_models:
        backends = [p.split(":", 1)[1] for p in args.providers if p.startswith("backend:")]
        steps = model_steps(backends, args.device)
        for name, (median, p20, p80) in time_interleaved(steps, args.device, quick).items():
            models.append({"model": name, "median_ms": median, "p20_ms": p20, "p80_ms": p80})
        print_models(models)
    write_json(path, meta, rows, models)
    print(f"\nwrote {path}")
    try:
        from .plots import plot
        for png in plot(path):
            print(f"wrote {png}")
    except ImportError:
        print("matplotlib is not installed: no plots (python -m bench.plots FILE later)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
