"""The extension against the GPU box's torch, without a GPU. That box has torch 2.11
(CUDA 13.0) and no package registry; this machine has 2.13. Torch 2.11's JIT builds
extensions as C++17 where 2.13's builds them as C++20, and its libraries are the ones a
GPU run loads. So, with its wheel fetched (``pip download``, no dependencies; the headers
and five libraries unpacked, ~1 GB, cached under ~/.cache/laaf_kernels):

* every ``csrc/*.cpp`` and ``csrc/*.cu`` compiles against its headers in its standard;
* the CUDA part (``extension.CUDA.sources``) links into a library against its
  libc10 / libtorch libraries with ``--no-undefined``, as the JIT build's link would.

Runs where ``LAAF_OLD_TORCH`` names the version (CI: 2.11.0); skipped otherwise. With
``LAAF_REQUIRE_OLD_TORCH=1`` a missing version is a failure, not a skip.
"""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import zipfile

import pytest

from laaf_kernels.ops import extension

import native_build

VERSION = os.environ.get("LAAF_OLD_TORCH")
if VERSION is None and os.environ.get("LAAF_REQUIRE_OLD_TORCH") == "1":
    raise RuntimeError("LAAF_REQUIRE_OLD_TORCH=1 but LAAF_OLD_TORCH names no torch version")
pytestmark = pytest.mark.skipif(VERSION is None, reason="LAAF_OLD_TORCH is not set")

#: What the checks need of the wheel: headers, the JIT's flags, the CUDA part's libraries.
LIBRARIES = ("c10", "c10_cuda", "torch", "torch_cpu", "torch_cuda")
MEMBERS = ("torch/include/", "torch/utils/cpp_extension.py",
           *(f"torch/lib/lib{name}.so" for name in LIBRARIES))


def _unpacked(version: str) -> pathlib.Path:
    """torch==version's wheel for this python, its MEMBERS unpacked (once, under a lock)."""
    from filelock import FileLock
    root = pathlib.Path.home() / ".cache" / "laaf_kernels" / f"torch-{version}"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / "fetch.lock")):
        if not (root / "unpacked").exists():
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                            "--only-binary=:all:", f"torch=={version}", "-d", str(root)],
                           check=True)
            wheel = next(root.glob(f"torch-{version}*.whl"))
            with zipfile.ZipFile(wheel) as archive:
                for name in archive.namelist():
                    if name.startswith(MEMBERS):
                        archive.extract(name, root)
            wheel.unlink()
            (root / "unpacked").touch()
    return root / "torch"


def _jit_standard(cpp_extension_py: pathlib.Path) -> str:
    """The -std=... that this torch's cpp_extension gives a build that names none."""
    found = re.search(r"common_cflags \+= \['-std=(c\+\+\d+)'", cpp_extension_py.read_text())
    assert found, f"no default C++ standard found in {cpp_extension_py}"
    return found.group(1)


@pytest.fixture(scope="module")
def old_torch() -> native_build.TorchHeaders:
    torch_dir = _unpacked(VERSION)
    return native_build.TorchHeaders(torch_dir / "include",
                                     _jit_standard(torch_dir / "utils" / "cpp_extension.py"),
                                     f"torch{VERSION}")


def test_the_old_torch_builds_as_cpp17(old_torch):
    """What makes this check worth its time: 2.11's JIT standard is not 2.13's."""
    assert old_torch.std == "c++17"


@pytest.mark.parametrize("source", [p.name for p in extension.sources(".cpp")])
def test_cpu_sources_compile(source, old_torch, objects_dir):
    assert native_build.compiled(source, old_torch, objects_dir).stat().st_size > 0


@pytest.mark.skipif(native_build.NVCC is None, reason="nvcc is not installed here")
def test_cuda_part_compiles_and_links(old_torch, objects_dir):
    """nvcc (sm_90) each .cu, then nvcc -shared with --no-undefined against the old
    torch's libraries (its libcudart too): a symbol that neither our objects nor those
    libraries define fails here, as torch's loader would fail on the GPU."""
    objects = [native_build.compiled(source, old_torch, objects_dir)
               for source in extension.CUDA.sources]
    library = objects_dir / f"torch{VERSION}-laaf_cuda_ext.so"
    lib_dir = old_torch.include.parent / "lib"
    cmd = [native_build.NVCC, "-shared", "-cudart", "shared", *map(str, objects), "-o",
           str(library), f"-L{lib_dir}", *(f"-l{name}" for name in LIBRARIES),
           "-Xlinker", "--no-undefined"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    undefined = [line for line in done.stderr.splitlines() if "undefined reference" in line]
    assert done.returncode == 0, "link failed:\n" + "\n".join(undefined[:20] or
                                                              [done.stderr[-4000:]])
    assert library.stat().st_size > 0
