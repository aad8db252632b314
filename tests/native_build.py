"""Compiling the extension's sources outside torch's JIT, for the build checks that need
no GPU: ``test_cuda_sources.py`` (nvcc against this torch's headers) and
``test_old_torch_build.py`` (against the GPU box's older torch, fetched as a wheel).

The commands carry the flags that ``torch.utils.cpp_extension``'s JIT build passes
(its defines, ``-fPIC``, the C++ standard of the torch in question, ``-O3`` as
``laaf_kernels/ops/extension.py`` asks). Objects are compiled once per session into a
directory that the xdist workers share, each under a file lock: nvcc takes minutes a file.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sysconfig
from dataclasses import dataclass

from torch.utils import cpp_extension

from laaf_kernels.ops import extension

HERE = pathlib.Path(__file__).resolve().parent
#: Torch's CPU wheels lack this one generated CUDA header; the shim stands in for it.
SHIM = HERE / "cuda" / "shim"
#: The JIT's nvcc defines; torch 2.11's cpp_extension has the same list (checked at stop 38).
NVCC_DEFINES = list(cpp_extension.COMMON_NVCC_FLAGS)


def find_nvcc():
    """nvcc's path (PATH, else $CUDA_HOME/bin), or None; an error instead of None where
    LAAF_REQUIRE_NVCC=1 (CI)."""
    path = shutil.which("nvcc")
    if path is None and os.environ.get("CUDA_HOME"):
        candidate = pathlib.Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc"
        path = str(candidate) if candidate.exists() else None
    if path is None and os.environ.get("LAAF_REQUIRE_NVCC") == "1":
        raise RuntimeError("LAAF_REQUIRE_NVCC=1 but nvcc is not on PATH (nor in $CUDA_HOME/bin)")
    return path


NVCC = find_nvcc()


@dataclass(frozen=True)
class TorchHeaders:
    """A torch's headers, and the C++ standard its JIT builds extensions with."""
    include: pathlib.Path
    std: str   # "c++20"
    tag: str   # names the objects built against it

    def include_flags(self) -> list:
        flags = [f"-I{self.include}", f"-I{self.include / 'torch' / 'csrc' / 'api' / 'include'}",
                 f"-I{extension.CSRC}"]
        if not (self.include / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").exists():
            flags.append(f"-I{SHIM}")
        return flags


def this_torch() -> TorchHeaders:
    import torch
    return TorchHeaders(pathlib.Path(torch.__file__).parent / "include", "c++20",
                        f"torch{torch.__version__}")


def nvcc_command(source: str, arch: str, headers: TorchHeaders, out: pathlib.Path) -> list:
    """nvcc -c csrc/<source>, device code for `arch` ("sm_90")."""
    return [NVCC, "-c", str(extension.CSRC / source), "-o", str(out), "-O3", f"-arch={arch}",
            *NVCC_DEFINES, f"-std={headers.std}", "--compiler-options", "-fPIC",
            *headers.include_flags()]


def cxx_command(source: str, headers: TorchHeaders, out: pathlib.Path) -> list:
    """c++ -c csrc/<source> with the CPU part's flags (this machine's vector flags)."""
    return ["c++", "-c", str(extension.CSRC / source), "-o", str(out), "-O3", "-fPIC",
            f"-std={headers.std}", "-DTORCH_API_INCLUDE_EXTENSION_H", *extension._cpu_flags(),
            f"-I{sysconfig.get_paths()['include']}", *headers.include_flags()]


def shared_objects_dir(tmp_path_factory) -> pathlib.Path:
    """A directory that the session's xdist workers share."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    directory = base / "objects"
    directory.mkdir(exist_ok=True)
    return directory


def compiled(source: str, headers: TorchHeaders, objects_dir: pathlib.Path,
             arch: str = "sm_90") -> pathlib.Path:
    """csrc/<source> compiled once per session (nvcc for .cu, device code for `arch`;
    c++ for .cpp), under a lock the workers share; the object's path. An error fails
    the calling test with the compiler's error lines."""
    from filelock import FileLock
    is_cuda = source.endswith(".cu")
    out = objects_dir / f"{headers.tag}-{arch if is_cuda else 'host'}-{source}.o"
    with FileLock(f"{out}.lock"):
        if not out.exists():
            partial = out.with_suffix(".partial.o")
            cmd = (nvcc_command(source, arch, headers, partial) if is_cuda
                   else cxx_command(source, headers, partial))
            done = subprocess.run(cmd, capture_output=True, text=True)
            errors = [line for line in done.stderr.splitlines() if "error" in line]
            assert done.returncode == 0, f"{cmd[0]} failed on {source}:\n" + "\n".join(
                errors[:30] or [done.stderr[-4000:]])
            partial.rename(out)
    return out
