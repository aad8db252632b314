"""Results: the stdout table, and the JSON file with the run's metadata."""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import subprocess
from typing import List

import torch

import laaf_kernels


def cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def metadata(device: str, ceilings: dict) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    def git(*args):
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results")
    return {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else
        f"{cpu_name()} ({torch.get_num_threads()} threads)",
        "device_type": device,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda,
        "laaf_kernels": laaf_kernels.__version__, "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
        "python": platform.python_version(), "ceilings": ceilings,
        "allocator_env": allocator_env(),
    }


#: Environment variables that change how tensors are allocated, and so CPU timings of
#: large tensors (page faults): glibc's malloc tunables, PyTorch's THP switch.
_ALLOCATOR_VARS = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                   "THP_MEM_ALLOC_ENABLE", "PYTORCH_CUDA_ALLOC_CONF")


def allocator_env() -> dict:
    """The allocator settings of this run (those set), recorded with its results."""
    return {k: os.environ[k] for k in _ALLOCATOR_VARS if k in os.environ}


def results_path(out_dir: pathlib.Path, meta: dict) -> pathlib.Path:
    name = "".join(c if c.isalnum() or c in "-." else "_" for c in meta["device"].split(" (")[0])
    return out_dir / f"{name}-{meta['date'][:10]}.json"


def write_json(path: pathlib.Path, meta: dict, rows: List[dict], models: List[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "rows": rows, "models": models}, indent=1) + "\n")


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def print_header() -> None:
    head = (f"{'case':<44} {'provider':<18} {'median ms':>10} {'p20':>8} {'p80':>8} "
            f"{'x eager':>8} {'GB/s':>8} {'%bw':>5} {'TFLOP/s':>8} {'%mm':>5} {'saved MB':>9}")
    print(head)
    print("-" * len(head))


def print_table(rows: List[dict]) -> None:
    last = None
    for r in rows:
        label = r["label"] if r["label"] != last else ""
        last = r["label"]
        if r.get("error"):
            print(f"{label:<44} {r['provider']:<18} error: {r['error'][:60]}")
            continue
        saved = None if r["saved_bytes"] is None else r["saved_bytes"] / 2 ** 20
        print(f"{label:<44} {r['provider']:<18} {r['median_ms']:>10.4f} {r['p20_ms']:>8.4f} "
              f"{r['p80_ms']:>8.4f} {_fmt(r['speedup_vs_eager'], '>8.2f')} "
              f"{_fmt(r['gbps'], '>8.1f')} {_fmt(r['pct_bw'], '>5.0f')} "
              f"{_fmt(r['tflops'], '>8.2f')} {_fmt(r['pct_mm'], '>5.0f')} {_fmt(saved, '>9.2f')}")


def print_models(models: List[dict]) -> None:
    print(f"\n{'whole-model step':<32} {'median ms':>10} {'p20':>8} {'p80':>8}")
    for m in models:
        print(f"{m['model']:<32} {m['median_ms']:>10.3f} {m['p20_ms']:>8.3f} {m['p80_ms']:>8.3f}")
