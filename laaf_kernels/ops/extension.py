"""Building and loading the C++/CUDA extension (``csrc/``): torch.ops.laaf.cpp_* (CPU)
and torch.ops.laaf.cuda_* (CUDA).

For each of the two parts, in order:

1. an ahead-of-time build, ``laaf_kernels._C`` (``LAAF_BUILD_EXT=1 pip install .``;
   it holds the CUDA ops too where it was built with CUDA);
2. a JIT build on first use: ``torch.utils.cpp_extension.load`` with ninja, into
   ``$LAAF_EXT_DIR`` or ``~/.cache/laaf_kernels/<torch version>-<target>``, under a
   file lock so that two processes starting at once do not corrupt it. Where the
   CPU has AVX2 (AVX-512), the CPU kernels are compiled for it, with ATen's
   Sleef-backed vector math; the CUDA kernels for the GPUs of this machine.

If neither works (no compiler, no CUDA toolkit, a failed build), :func:`problem`
(:func:`cuda_problem`) says why, one warning is issued, "auto" moves on to the
next backend, and asking for ``backend="cpp"`` (``"cuda"``) raises with that reason.
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
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch

CSRC = pathlib.Path(__file__).resolve().parents[2] / "csrc"
_lock = threading.Lock()


def _cpu_flags() -> list:
    return [*_vector_flags(), *_openmp_flags()]


#: Compiler flags per ATen CPU capability: at::vec's lane width and our fast paths
#: (csrc/laaf_vec_math.h) follow CPU_CAPABILITY_*; any other capability gets at::vec's
#: portable lanes.
VECTOR_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "DEFAULT": [],
}


def _vector_flags() -> list:
    return VECTOR_FLAGS.get(str(torch.backends.cpu.get_cpu_capability()), [])


def _openmp_flags() -> list:
    """``-fopenmp`` where ATen's parallel backend is OpenMP.

    ``at::parallel_for`` is a header template: whether it runs on threads is decided
    by the flags *this* library is compiled with, not torch's. Without ``-fopenmp``
    every loop of ours silently runs on one thread. The library's libgomp.so.1
    dependency is the one libtorch_cpu has already loaded (ldd shows torch/lib's copy),
    so there is one OpenMP runtime.
    ``torch.ops.laaf.cpp_parallel_threads()`` reports what the build got.
    """
    openmp = "ATen parallel backend: OpenMP" in torch.__config__.parallel_info()
    return ["-fopenmp"] if openmp and sys.platform.startswith("linux") else []


def _cuda_tag() -> str:
    capabilities = sorted({torch.cuda.get_device_capability(i)
                           for i in range(torch.cuda.device_count())})
    return f"cuda{torch.version.cuda}-sm" + "_".join(f"{a}{b}" for a, b in capabilities)


def sources(suffix: str) -> List[pathlib.Path]:
    """The extension's source files ending in ``suffix`` (".cpp", ".cu")."""
    return sorted(CSRC.glob(f"*{suffix}"))


def _source_names(suffix: str) -> tuple:
    """Every csrc/*<suffix>, as setup.py's AOT build takes them: a part's list written
    out by hand once missed a new file, which only the GPU's loader would have found
    (an undefined symbol; tests/test_cuda_sources.py now checks the link)."""
    return tuple(path.name for path in sources(suffix))


@dataclass
class _Part:
    """One JIT-buildable part of the extension and what became of loading it."""
    name: str            # the JIT module name (and .so file)
    sources: tuple       # files in csrc/
    marker: str          # an op this part defines (to see whether _C holds it)
    tag: Callable[[], str]
    cflags: Callable[[], list]
    cuda_cflags: list = field(default_factory=list)
    after_load: str = ""  # the module to import once loaded (fakes, autograd)
    tried: bool = False
    problem: Optional[str] = "not built yet"


CPU = _Part("laaf_cpu_ext", _source_names(".cpp"), "cpp_linear_fwd",
            lambda: str(torch.backends.cpu.get_cpu_capability()),
            lambda: ["-O3", *_cpu_flags()], after_load="laaf_kernels.ops.cpp_backend")
CUDA = _Part("laaf_cuda_ext", _source_names(".cu"), "cuda_linear_fwd",
             _cuda_tag,
             lambda: ["-O3"], cuda_cflags=["-O3"], after_load="laaf_kernels.ops.cuda_backend")


def build_dir(part: _Part = CPU) -> pathlib.Path:
    root = os.environ.get("LAAF_EXT_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "laaf_kernels")
    return pathlib.Path(root) / f"torch{torch.__version__.replace('+', '_')}-{part.tag()}"


def _ensure_ninja_on_path() -> None:
    """A venv's ninja (pip install ninja) sits beside its python, maybe not on PATH."""
    if shutil.which("ninja") is None:
        os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]


def _remove_stale_baton(directory: pathlib.Path) -> None:
    """Remove torch's build baton (``directory/lock``) left by a killed build.

    ``cpp_extension.load`` creates that file while it builds and deletes it after;
    a process that finds it waits, without end and without a word, for it to go. A
    build killed midway (Ctrl-C, a timeout, the OOM killer) leaves it behind, and
    every later first use then hangs. Called with our own ``build.lock`` held: an OS
    lock, released when its holder dies, and taken by every laaf_kernels build of
    this directory; so a baton found here belongs to no live build and is stale.
    """
    baton = directory / "lock"
    if baton.exists():
        logging.getLogger("laaf_kernels").warning(
            "laaf_kernels: removing %s, left by a build that was killed", baton)
        baton.unlink(missing_ok=True)


def _jit_build(part: _Part, verbose: bool) -> None:
    from filelock import FileLock
    from torch.utils import cpp_extension

    _ensure_ninja_on_path()
    directory = build_dir(part)
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / f"{part.name}.so").exists():
        logging.getLogger("laaf_kernels").warning(
            "laaf_kernels: building %s on first use (a minute or more) in %s",
            part.name, directory)
    with FileLock(str(directory / "build.lock")):
        _remove_stale_baton(directory)
        cpp_extension.load(
            name=part.name, sources=[str(CSRC / s) for s in part.sources],
            extra_cflags=part.cflags(), extra_cuda_cflags=part.cuda_cflags,
            extra_include_paths=[str(CSRC)], build_directory=str(directory),
            is_python_module=False, verbose=verbose)


def _aot_holds(part: _Part) -> bool:
    """Whether the ahead-of-time module exists and defines this part's ops."""
    try:
        importlib.import_module("laaf_kernels._C")
    except ImportError:
        return False
    return hasattr(torch.ops.laaf, part.marker)


def _load(part: _Part, verbose: bool, precondition: Optional[str] = None) -> Optional[str]:
    """Load ``part`` once (AOT module, else JIT build) and import its backend
    module (fakes and autograd of its ops); returns the problem or None."""
    if part.tried:  # fast path, no lock (also what torch.compile traces)
        return part.problem
    with _lock:
        if part.tried:
            return part.problem
        part.tried = True
        part.problem = precondition
        if precondition is None and not _aot_holds(part):
            try:
                _jit_build(part, verbose)
            except Exception as error:  # no compiler, failed build, ...
                first = str(error).strip().splitlines()[:1] or [""]
                part.problem = (f"{part.name} could not be built "
                                f"({type(error).__name__}: {first[0][:200]})")
                warnings.warn(f"laaf_kernels: {part.problem}; the backend is unavailable "
                              "and 'auto' moves on to the next one", stacklevel=4)
        if part.problem is None:  # whoever calls torch.ops.laaf.* then gets autograd
            importlib.import_module(part.after_load)
        return part.problem


def load(verbose: bool = False) -> Optional[str]:
    """Load the CPU ops (torch.ops.laaf.cpp_*); the problem, or None."""
    return _load(CPU, verbose)


def problem() -> Optional[str]:
    """Why the CPU extension is unusable (building it first if not tried yet), or None."""
    return load()


def _cuda_precondition() -> Optional[str]:
    if not torch.cuda.is_available():
        return "no CUDA device"
    from torch.utils import cpp_extension
    if cpp_extension.CUDA_HOME is None and not _aot_holds(CUDA):
        return "no CUDA toolkit (nvcc) to build the kernels, and no ahead-of-time build"
    return None


def cuda_problem(verbose: bool = False) -> Optional[str]:
    """Why the CUDA extension is unusable (building it first if not tried yet), or None."""
    if CUDA.tried:
        return CUDA.problem
    return _load(CUDA, verbose, _cuda_precondition())

