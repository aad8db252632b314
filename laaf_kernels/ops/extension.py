"""Building and loading the C++ extension (``csrc/``) that defines torch.ops.laaf.cpp_*.

In order:

1. an ahead-of-time build, ``laaf_kernels._C`` (``LAAF_BUILD_EXT=1 pip install .``);
2. a JIT build on first use: ``torch.utils.cpp_extension.load`` with ninja, into
   ``$LAAF_EXT_DIR`` or ``~/.cache/laaf_kernels/<torch version>-<cpu capability>``,
   under a file lock so that two processes starting at once do not corrupt it.
   Where the CPU has AVX2 (AVX-512), the kernels are compiled for it, with
   ATen's Sleef-backed vector math.

If neither works (no compiler, a failed build), :func:`problem` says why, one
warning is issued, "auto" uses the reference backend, and asking for
``backend="cpp"`` raises with that reason.
"""
from __future__ import annotations

import importlib
import logging
import os
import pathlib
import shutil
import sys
import threading
import warnings
from typing import Optional

import torch

CSRC = pathlib.Path(__file__).resolve().parents[2] / "csrc"
SOURCES = ("laaf_cpu.cpp",)
_lock = threading.Lock()
_state = {"tried": False, "problem": "not built yet"}


def _cpu_flags() -> list:
    capability = torch.backends.cpu.get_cpu_capability()
    if capability == "AVX512":
        return ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma",
                "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]
    if capability == "AVX2":
        return ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return []


def build_dir() -> pathlib.Path:
    root = os.environ.get("LAAF_EXT_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "laaf_kernels")
    tag = f"torch{torch.__version__.replace('+', '_')}-{torch.backends.cpu.get_cpu_capability()}"
    return pathlib.Path(root) / tag


def _ensure_ninja_on_path() -> None:
    """A venv's ninja (pip install ninja) sits beside its python, maybe not on PATH."""
    if shutil.which("ninja") is None:
        os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]


def _jit_build(verbose: bool) -> None:
    from filelock import FileLock
    from torch.utils import cpp_extension

    _ensure_ninja_on_path()
    directory = build_dir()
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "laaf_cpu_ext.so").exists():
        logging.getLogger("laaf_kernels").warning(
            "laaf_kernels: building the C++ extension on first use (about a minute) in %s",
            directory)
    with FileLock(str(directory / "build.lock")):
        cpp_extension.load(
            name="laaf_cpu_ext", sources=[str(CSRC / s) for s in SOURCES],
            extra_cflags=["-O3", *_cpu_flags()], extra_include_paths=[str(CSRC)],
            build_directory=str(directory), is_python_module=False, verbose=verbose)


def load(verbose: bool = False) -> Optional[str]:
    """Load the extension once (AOT module, else JIT build) and register its ops'
    fakes and autograd (laaf_kernels.ops.cpp_backend); returns the problem or None."""
    if _state["tried"]:  # fast path, no lock (also what torch.compile traces)
        return _state["problem"]
    with _lock:
        if _state["tried"]:
            return _state["problem"]
        _state["tried"] = True
        try:
            importlib.import_module("laaf_kernels._C")
            _state["problem"] = None
        except ImportError:
            try:
                _jit_build(verbose)
                _state["problem"] = None
            except Exception as error:  # no compiler, failed build, ...
                first = str(error).strip().splitlines()[:1] or [""]
                _state["problem"] = (f"the C++ extension could not be built "
                                     f"({type(error).__name__}: {first[0][:200]})")
                warnings.warn(f"laaf_kernels: {_state['problem']}; the 'cpp' backend is "
                              "unavailable and 'auto' uses the reference backend", stacklevel=3)
        if _state["problem"] is None:  # whoever calls torch.ops.laaf.cpp_* gets autograd
            importlib.import_module("laaf_kernels.ops.cpp_backend")
        return _state["problem"]


def problem() -> Optional[str]:
    """Why the extension is unusable (building it first if not tried yet), or None."""
    return load()
