"""The C++ CPU sources compile for the ATen CPU capabilities this machine does not run.

The extension is built for the running CPU's capability (``extension.VECTOR_FLAGS``),
so the other fast paths of ``csrc/laaf_vec_math.h`` (AVX-512 lanes: 16 floats, 8
doubles, their own int64 shifts and masks) and the portable fallback (no
CPU_CAPABILITY_*: at::vec's scalar-loop lanes) would otherwise first be compiled on a
user's machine. Compile only (``-fsyntax-only`` instantiates every template the sources
use); what runs here is tested in test_fused_*.py. One small program does run, once per
capability this CPU executes: nan_maximum / nan_minimum, which no table formula uses yet.

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


#: The lane helpers whose NaN rule a formula relies on, run on every capability this
#: CPU can execute: nan_maximum / nan_minimum (NaN from either operand, in any lane).
_NAN_EXTREMA_CHECK = r"""
#include <cmath>
#include <cstdio>
#include "laaf_vec_math.h"
template <typename T> int check() {
  using V = at::vec::Vectorized<T>;
  const int n = V::size();
  T a[64], b[64], mx[64], mn[64];
  for (int i = 0; i < n; ++i) {  // lanes: NaN left, NaN right, a > b, a < b, equal
    a[i] = i % 5 == 0 ? NAN : T(i % 3);
    b[i] = i % 5 == 1 ? NAN : T(1);
  }
  laaf::nan_maximum(V::loadu(a), V::loadu(b)).store(mx);
  laaf::nan_minimum(V::loadu(a), V::loadu(b)).store(mn);
  int bad = 0;
  for (int i = 0; i < n; ++i) {
    const bool nan = std::isnan(a[i]) || std::isnan(b[i]);
    bad += nan ? !(std::isnan(mx[i]) && std::isnan(mn[i]))
               : !(mx[i] == std::fmax(a[i], b[i]) && mn[i] == std::fmin(a[i], b[i]));
  }
  return bad;
}
int main() {
  const int bad = check<float>() + check<double>();
  std::printf(bad ? "wrong lanes: %d\n" : "ok\n", bad);
  return bad != 0;
}
"""


def _runnable_capabilities():
    order = ["DEFAULT", "AVX2", "AVX512"]
    running = str(torch.backends.cpu.get_cpu_capability())
    return [c for c in order[:order.index(running) + 1] if c in extension.VECTOR_FLAGS] \
        if running in order else ["DEFAULT"]


@pytest.mark.skipif(CXX is None, reason="no C++ compiler ($CXX or c++) here")
@pytest.mark.parametrize("capability", _runnable_capabilities())
def test_nan_extrema_keep_nan_from_either_side(capability, tmp_path):
    from torch.utils import cpp_extension
    source = tmp_path / "nan_extrema.cpp"
    source.write_text(_NAN_EXTREMA_CHECK)
    torch_dir = os.path.dirname(torch.__file__)
    binary = tmp_path / "nan_extrema"
    includes = [f"-isystem{p}" for p in cpp_extension.include_paths()]
    cmd = [CXX, "-O2", "-std=c++17", *extension.VECTOR_FLAGS[capability], *includes,
           f"-I{extension.CSRC}", str(source), f"-L{torch_dir}/lib", "-ltorch_cpu", "-lc10",
           f"-Wl,-rpath,{torch_dir}/lib", "-o", str(binary)]
    _assert_compiles(cmd, f"nan_extrema.cpp, {capability}")
    run = subprocess.run([str(binary)], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok", (capability, run.stdout, run.stderr)
