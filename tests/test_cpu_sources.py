"""The C++ CPU sources compile for the ATen CPU capabilities this machine does not run.

The extension is built for the running CPU's capability (``extension.VECTOR_FLAGS``),
so the other fast paths of ``csrc/laaf_vec_math.h`` (AVX-512 lanes: 16 floats, 8
doubles, their own int64 shifts and masks) and the portable fallback (no
CPU_CAPABILITY_*: at::vec's scalar-loop lanes) would otherwise first be compiled on a
user's machine. Compile only (``-fsyntax-only`` instantiates every template the sources
use); what runs here is tested in test_fused_*.py.

Without a C++ compiler this skips, unless ``LAAF_REQUIRE_CPP=1`` (CI), where that is a
failure, as the extension's own build would be.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig

import pytest
import torch

from laaf_kernels.ops import extension


def _compiler():
    path = shutil.which(os.environ.get("CXX", "c++"))
    if path is None and os.environ.get("LAAF_REQUIRE_CPP") == "1":
        raise RuntimeError("LAAF_REQUIRE_CPP=1 but no C++ compiler ($CXX or c++) is on PATH")
    return path


CXX = _compiler()


@pytest.mark.skipif(CXX is None, reason="no C++ compiler ($CXX or c++) here")
@pytest.mark.parametrize("capability", sorted(set(extension.VECTOR_FLAGS) - {
    str(torch.backends.cpu.get_cpu_capability())}))
def test_cpu_sources_compile_for_the_other_capabilities(capability):
    from torch.utils import cpp_extension
    includes = [f"-isystem{p}" for p in cpp_extension.include_paths()]
    includes += [f"-isystem{sysconfig.get_paths()['include']}", f"-I{extension.CSRC}"]
    cmd = [CXX, "-fsyntax-only", "-std=c++20", "-DTORCH_API_INCLUDE_EXTENSION_H",
           "-DTORCH_EXTENSION_NAME=laaf_syntax_check", *extension.VECTOR_FLAGS[capability],
           *extension._openmp_flags(), *includes, *map(str, extension.sources(".cpp"))]
    _assert_compiles(cmd, capability)


def _assert_compiles(cmd, what):
    done = subprocess.run(cmd, capture_output=True, text=True)
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert done.returncode == 0, f"{what}:\n" + "\n".join(errors[:30] or [done.stderr[-4000:]])


#: The standalone C++ timing harnesses (their build lines are in their headers).
TOOLS = sorted((extension.CSRC.parent / "tools").glob("*.cpp"))


@pytest.mark.skipif(CXX is None, reason="no C++ compiler ($CXX or c++) here")
@pytest.mark.parametrize("capability", sorted(extension.VECTOR_FLAGS))
@pytest.mark.parametrize("tool", TOOLS, ids=lambda p: p.name)
def test_tools_compile(tool, capability):
    """tools/*.cpp include csrc's headers directly: a header change that breaks them
    fails here, not on the next engineer's first run."""
    from torch.utils import cpp_extension
    includes = [f"-isystem{p}" for p in cpp_extension.include_paths()]
    cmd = [CXX, "-fsyntax-only", "-std=c++17", *extension.VECTOR_FLAGS[capability], *includes,
           f"-I{extension.CSRC}", str(tool)]
    _assert_compiles(cmd, f"{tool.name}, {capability}")


def test_the_tools_are_found():
    assert {p.name for p in TOOLS} >= {"narrow_gemm_bench.cpp", "vec_math_bench.cpp"}
