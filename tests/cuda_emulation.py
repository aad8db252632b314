"""The CUDA backend's kernels (``csrc/*.cu``), run on the CPU: a host emulation, so
that every test of the fused backends also runs the CUDA kernels without a GPU.

How:

1. :func:`translate` rewrites each CUDA source into C++ (and checks that each rewrite
   applied exactly where expected, so that a source change cannot slip past it):

   * ``kernel<<<grid, block, smem, stream>>>(args)`` becomes
     ``::laaf_emu::launch("kernel", key, [&](auto... p) { kernel(p...); }, grid, block,
     smem, stream)(args)``: the kernel's template arguments are deduced from the
     arguments, as nvcc does; ``key`` is the kernel's address where it is a plain
     function (pointer), for its cudaFuncSetAttribute shared-memory limit;
   * ``extern __shared__ ... name[];`` becomes a pointer to the block's dynamic
     shared memory, and ``__shared__ T name[n];`` a reference to a static array;
     both are filled with 0xFF bytes (NaN) at the start of every block;
   * the ops register for CPU tensors (``TORCH_LIBRARY_IMPL(laaf, CPU, m)``) and
     ``check_cuda`` accepts them.
2. :func:`build` compiles them with ``g++``, with ``tests/cuda/emulation/cuda_emulation.h``
   force-included and its ``include/`` shadowing ``cuda_runtime.h`` and ``c10/cuda/*``:
   threads as fibers, barriers, warp shuffles, launch-configuration checks (see that
   header). The library defines ``torch.ops.laaf.cuda_*`` for CPU tensors.
3. :func:`cuda_backend_on_cpu` lets the ``"cuda"`` backend take CPU tensors while it
   is active (the ``cuda-emulated`` target of ``fused_cases.TARGETS``).

What it finds: wrong indexing, races between the threads of a block that a barrier
should order, reads of unwritten shared memory, a ``__syncthreads`` in divergent
code, bad launch configurations, wrong reductions; and the whole host side (layouts,
dispatch, the ops' outputs). What it cannot: anything about the GPU's own arithmetic
(the emulation computes in the host's float and double, with the host's libm rather
than CUDA's), warp-synchronous code without a shuffle (there is none), the memory
model across blocks, registers, speed.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import re
from typing import Iterator, Optional

import torch

from laaf_kernels.ops import dispatch, extension

HERE = pathlib.Path(__file__).resolve().parent
EMULATION = HERE / "cuda" / "emulation"
HEADER = EMULATION / "cuda_emulation.h"
SELFTEST = EMULATION / "selftest.cu"
#: The CUDA sources that launch kernels or register ops, and the headers that include
#: them, translated; the other headers (the functors, the layout) compile as they are.
TRANSLATED = ("laaf_cuda.cu", "laaf_cuda_narrow_bwd.cu", "laaf_cuda_flexible.cu",
              "laaf_cuda_grad_y.cu", "laaf_cuda_common.cuh", "laaf_cuda_narrow.cuh")
REQUIRE_ENV = "LAAF_REQUIRE_CUDA_EMULATION"
#: The (backend, device) target of the emulated kernels in fused_cases.TARGETS.
TARGET = ("cuda", "cpu")
#: With this set to 1 the kernels are built with AddressSanitizer, which the python
#: process must preload (``tests/run_cuda_asan.py`` does): every read or write outside a
#: tensor is then an error, where the plain emulation reads whatever lies there.
ASAN_ENV = "LAAF_CUDA_EMULATION_ASAN"

_LAUNCH_OPEN, _LAUNCH_CLOSE = "<<<", ">>>"
_EXTERN_SHARED = re.compile(
    r"extern __shared__ (?:__align__\(\d+\) )?(?P<type>[\w ]+?) (?P<name>\w+)\[\];")
_CUDA_IMPL = re.compile(r"TORCH_LIBRARY_IMPL\((?P<ns>\w+), CUDA, m\)")
_STATIC_SHARED = re.compile(
    r"(?<!extern )__shared__ (?P<type>[\w:<>, ]+?) (?P<name>\w+)(?P<dims>(?:\[[^\]]+\])+);")


def _kernel_start(text: str, end: int) -> int:
    """Where the kernel expression that ends at ``end`` begins: an identifier,
    maybe qualified, maybe with a template argument list (``k<T, ACT>``)."""
    i = end
    while text[i - 1].isspace():
        i -= 1
    if text[i - 1] == ">":
        depth = 0
        while True:
            i -= 1
            depth += {">": 1, "<": -1}.get(text[i], 0)
            if depth == 0:
                break
    while i > 0 and (text[i - 1].isalnum() or text[i - 1] in "_:"):
        i -= 1
    return i


def _translate_launches(text: str) -> tuple:
    out, count, pos = [], 0, 0
    while (open_at := text.find(_LAUNCH_OPEN, pos)) != -1:
        close_at = text.index(_LAUNCH_CLOSE, open_at)
        start = _kernel_start(text, open_at)
        kernel = text[start:open_at].strip()
        config = text[open_at + len(_LAUNCH_OPEN):close_at]
        name = " ".join(kernel.split())
        key = "nullptr" if "<" in name else f"reinterpret_cast<const void*>({name})"
        out.append(text[pos:start])
        out.append(f'::laaf_emu::launch("{name}", {key}, '
                   f'[&](auto... p) {{ {name}(p...); }}, {config})')
        pos = close_at + len(_LAUNCH_CLOSE)
        count += 1
    out.append(text[pos:])
    return "".join(out), count


def _expect(count: int, expected: int, what: str, source: str) -> None:
    if count != expected:
        raise AssertionError(f"CUDA emulation: expected {expected} {what} in {source}, "
                             f"found {count}; update tests/cuda_emulation.py")


def _replace(text: str, pattern, replacement, expected: int, what: str, source: str) -> str:
    new, count = (re.subn(pattern, replacement, text) if not isinstance(pattern, str)
                  else (text.replace(pattern, replacement), text.count(pattern)))
    _expect(count, expected, what, source)
    return new


#: What each translated source must contain, counted, so that a source change that
#: the translation does not cover fails loudly instead of compiling wrongly.
EXPECTED = {
    "laaf_cuda.cu": dict(launches=2, dynamic_shared=1, static_shared=0, impls=1, checks=0),
    "laaf_cuda_narrow_bwd.cu": dict(launches=1, dynamic_shared=1, static_shared=0, impls=0,
                                    checks=0),
    "laaf_cuda_flexible.cu": dict(launches=1, dynamic_shared=0, static_shared=0, impls=1,
                                  checks=0),
    "laaf_cuda_grad_y.cu": dict(launches=0, dynamic_shared=0, static_shared=0, impls=1,
                                checks=0),
    # (translated though it has nothing to rewrite: its #include of laaf_cuda_common.cuh
    # must find the translated copy beside it)
    "laaf_cuda_narrow.cuh": dict(launches=0, dynamic_shared=0, static_shared=0, impls=0,
                                 checks=0),
    "laaf_cuda_common.cuh": dict(launches=4, dynamic_shared=0, static_shared=3, impls=0,
                                 checks=1),
    "selftest.cu": dict(launches=5, dynamic_shared=1, static_shared=1, impls=1, checks=0),
}


def translate(source: str, text: str) -> str:
    """``text`` of csrc/``source`` as C++ for the emulation (see the module docstring)."""
    want = EXPECTED[source]
    text, count = _translate_launches(text)
    _expect(count, want["launches"], "kernel launches", source)
    text = _replace(text, _EXTERN_SHARED,
                    r"\g<type>* \g<name> = reinterpret_cast<\g<type>*>(::laaf_emu::dynamic_smem());",
                    want["dynamic_shared"], "extern __shared__ arrays", source)
    text = _replace(text, _STATIC_SHARED,
                    r"auto& \g<name> = ::laaf_emu::static_shared<\g<type>\g<dims>, __COUNTER__>();",
                    want["static_shared"], "__shared__ arrays", source)
    text = _replace(text, _CUDA_IMPL, r"TORCH_LIBRARY_IMPL(\g<ns>, CPU, m)",
                    want["impls"], "TORCH_LIBRARY_IMPL(..., CUDA, m) blocks", source)
    text = _replace(text, ".is_cuda()", ".is_cpu()", want["checks"], "is_cuda() checks", source)
    return f"// GENERATED from csrc/{source} by tests/cuda_emulation.py: do not edit.\n" + text


def _write_if_changed(path: pathlib.Path, text: str) -> None:
    """Rewrite only what changed: ninja rebuilds by modification time."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _digest() -> str:
    """A hash of everything the builds read from this repository."""
    files = ([extension.CSRC / s for s in TRANSLATED] + sorted(EMULATION.rglob("*.h"))
             + [SELFTEST])
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _asan() -> bool:
    return os.environ.get(ASAN_ENV) == "1"


def build_dir() -> pathlib.Path:
    suffix = "-asan" if _asan() else ""
    return extension.build_dir(extension.CPU).with_name(f"cuda-emulation-{_digest()}{suffix}")


def _build(name: str, sources: list, verbose: bool) -> None:
    """Translate ``sources`` (paths) into the build directory and compile the ``.cu``
    ones, with the other translated headers beside them, into library ``name``."""
    from filelock import FileLock
    from torch.utils import cpp_extension

    directory = build_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory / f"{name}.lock")):
        compiled = []
        for path in sources:
            target = directory / (path.stem + ".cpp" if path.suffix == ".cu" else path.name)
            _write_if_changed(target, translate(path.name, path.read_text()))
            if path.suffix == ".cu":
                compiled.append(str(target))
        extension._ensure_ninja_on_path()
        (directory / name).mkdir(exist_ok=True)
        extension._remove_stale_baton(directory / name)  # (we hold the build's lock)
        sanitize = ["-fsanitize=address", "-fno-omit-frame-pointer"] if _asan() else []
        cpp_extension.load(
            name=name, sources=compiled,
            extra_cflags=["-O1", "-include", str(HEADER), "-Wno-unknown-pragmas", *sanitize],
            extra_ldflags=sanitize,
            extra_include_paths=[str(EMULATION / "include"), str(extension.CSRC)],
            build_directory=str(directory / name), is_python_module=False, verbose=verbose)


def build(verbose: bool = False) -> None:
    """Translate and compile the CUDA sources; load the library (torch.ops.laaf.cuda_*
    on CPU tensors) and the "cuda" backend's Python side (fakes, autograd)."""
    _build("laaf_cuda_emulation", [extension.CSRC / s for s in TRANSLATED], verbose)
    import laaf_kernels.ops.cuda_backend  # noqa: F401  (fakes and autograd of cuda_*)


def build_selftest(verbose: bool = False) -> None:
    """Build tests/cuda/emulation/selftest.cu: torch.ops.laaf_emu_selftest.*, kernels
    with the bugs that the emulation must catch."""
    _build("laaf_cuda_emulation_selftest", [SELFTEST], verbose)


_problem: Optional[str] = None
_tried = False


def problem() -> Optional[str]:
    """Build once; why the emulation cannot run here, or None. With
    LAAF_REQUIRE_CUDA_EMULATION=1 (CI) a failed build is an error."""
    global _problem, _tried
    if not _tried:
        _tried = True
        if torch.cuda.is_available():
            _problem = "a GPU is present: the CUDA kernels run on it instead"
        else:
            try:
                build()
            except Exception as error:  # no compiler, a failed build
                _problem = f"the CUDA emulation could not be built: {type(error).__name__}: {error}"
        if _problem and os.environ.get(REQUIRE_ENV) == "1" and not torch.cuda.is_available():
            raise RuntimeError(f"{REQUIRE_ENV}=1 but {_problem}")
    return _problem


def _emulated_problem(device: Optional[torch.device]) -> Optional[str]:
    if device is not None and device.type != "cpu":
        return f"the emulated CUDA kernels run CPU tensors, not {device.type}"
    return None


@contextlib.contextmanager
def cuda_backend_on_cpu() -> Iterator[None]:
    """While active, the "cuda" backend runs the emulated kernels on CPU tensors."""
    real = dispatch._REGISTRY["cuda"]
    dispatch.register_backend(dispatch.Backend(
        "cuda", real.linear, real.activation, _emulated_problem, real.flexible))
    try:
        yield
    finally:
        dispatch.register_backend(real)
