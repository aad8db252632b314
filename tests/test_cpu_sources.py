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
    _build_and_run(_NAN_EXTREMA_CHECK, "nan_extrema", capability, tmp_path)


#: The narrow GEMM (csrc/laaf_cpu_gemm.h) on its own, every capability this CPU can
#: execute: C = A B + bias against double sums, over widths that leave 0 to 15 columns
#: past the last whole vector, depths from 1 to 128 (the dot tail's masked last depth
#: vector at every residue), row counts that end in partial row groups, with and
#: without the dot tail; C += A B (dW's form, C padded like B) the same way, its padding
#: lanes unchanged; and lane_sums against scalar sums. On AVX-512 the tail must be
#: taken where dot_tail_columns says (fp32 and fp64 N = K = 50, a K = 50 output layer).
_NARROW_GEMM_CHECK = r"""
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>
#include "laaf_cpu_gemm.h"
using namespace laaf::cpu;
// C += A B (dW's form): C padded like B, its lanes random before; the padding lanes
// (B's are zero) must come back unchanged, and nothing past C be touched.
template <typename T> int check_accumulated(const std::vector<T>& a, int64_t rows, int64_t depth,
                                            int64_t width, const PackedPanel<T>& panel,
                                            std::mt19937& gen) {
  std::uniform_real_distribution<double> dist(-1, 1);
  const double eps = sizeof(T) == 4 ? 6e-8 : 1.2e-16;
  const int64_t ldc = panel.padded();
  std::vector<T> guarded(rows * ldc + 32, T(7));
  T* c = guarded.data() + 16;
  for (int64_t i = 0; i < rows * ldc; ++i) c[i] = T(dist(gen));
  const std::vector<T> before(c, c + rows * ldc);
  narrow_gemm(StridedA<T>{a.data(), depth, 1}, rows, panel, c, ldc, GemmInit<T>{nullptr, true});
  int bad = 0;
  for (int i = 0; i < 16; ++i) bad += guarded[i] != T(7) || c[rows * ldc + i] != T(7);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t w = 0; w < ldc; ++w) {
      double exact = before[r * ldc + w], size = std::abs(exact);
      for (int64_t d = 0; w < width && d < depth; ++d) {
        exact += double(a[r * depth + d]) * panel.row(d)[w];
        size += std::abs(double(a[r * depth + d]) * panel.row(d)[w]);
      }
      bad += !(std::abs(c[r * ldc + w] - exact) <= 4 * (depth + 1) * eps * size);
    }
  if (bad) std::printf("T%zu width %ld depth %ld rows %ld: accumulated C wrong in %d places\n",
                       sizeof(T), long(width), long(depth), long(rows), bad);
  return bad;
}
template <typename T> int check_gemm(std::mt19937& gen) {
  std::uniform_real_distribution<double> dist(-1, 1);
  const double eps = sizeof(T) == 4 ? 6e-8 : 1.2e-16;
  int bad = 0;
  for (int64_t width : {1, 2, 3, 4, 5, 15, 16, 17, 18, 19, 20, 30, 33, 35, 50, 51, 52, 66, 99, 100, 127, 128})
    for (int64_t depth : {1, 3, 17, 20, 33, 50, 64, 100, 128})
      for (int64_t rows : {1, 7, 67})
        for (bool tail : {false, true}) {
          // C between 16 guard values on each side, which no store may touch
          std::vector<T> a(rows * depth), b(depth * width), bias(width), c_guarded(rows * width + 32, T(7));
          T* c = c_guarded.data() + 16;
          for (auto& e : a) e = T(dist(gen));
          for (auto& e : b) e = T(dist(gen));
          for (auto& e : bias) e = T(dist(gen));
          PackedPanel<T> panel(depth, width, tail);
          panel.pack(b.data(), depth, width, 1);
          const auto bias_row = padded_row(bias.data(), width);
          narrow_gemm(StridedA<T>{a.data(), depth, 1}, rows, panel, c, width,
                      GemmInit<T>{bias_row.data(), false});
          for (int i = 0; i < 16; ++i)
            if (c_guarded[i] != T(7) || c[rows * width + i] != T(7)) {
              if (bad++ < 5) std::printf("T%zu width %ld depth %ld rows %ld: a store outside C\n",
                                         sizeof(T), long(width), long(depth), long(rows));
              break;
            }
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t w = 0; w < width; ++w) {
              double exact = bias[w], size = std::abs(double(bias[w]));
              for (int64_t d = 0; d < depth; ++d) {
                exact += double(a[r * depth + d]) * b[d * width + w];
                size += std::abs(double(a[r * depth + d]) * b[d * width + w]);
              }
              if (!(std::abs(c[r * width + w] - exact) <= 4 * (depth + 1) * eps * size)) {
                if (bad++ < 5) std::printf("T%zu width %ld depth %ld rows %ld tail %ld: C(%ld, %ld) = %g, not %g\n",
                                           sizeof(T), long(width), long(depth), long(rows),
                                           long(panel.tail_columns()), long(r), long(w),
                                           double(c[r * width + w]), exact);
              }
            }
          if (!tail) bad += check_accumulated(a, rows, depth, width, panel, gen);
        }
  return bad;
}
template <typename T> int check_tail_taken(int64_t width, int64_t depth, int64_t expected) {
  const int64_t got = PackedPanel<T>(depth, width, true).tail_columns();
  const int64_t want = LAAF_HAS_LANE_SUMS ? expected : 0;
  if (got != want) std::printf("T%zu N %ld K %ld: %ld tail columns, not %ld\n", sizeof(T),
                               long(width), long(depth), long(got), long(want));
  return got != want;
}
#if LAAF_HAS_LANE_SUMS
template <typename T> int check_lane_sums(std::mt19937& gen) {
  using V = at::vec::Vectorized<T>;
  constexpr int L = V::size();
  std::uniform_real_distribution<double> dist(-1, 1);
  T in[L][L], out[L];
  V acc[L];
  for (int i = 0; i < L; ++i) {
    for (int j = 0; j < L; ++j) in[i][j] = T(dist(gen));
    acc[i] = V::loadu(in[i]);
  }
  lane_sums(acc).store(out);
  int bad = 0;
  for (int i = 0; i < L; ++i) {
    double exact = 0, size = 0;
    for (int j = 0; j < L; ++j) exact += in[i][j], size += std::abs(double(in[i][j]));
    bad += !(std::abs(out[i] - exact) <= L * size * (sizeof(T) == 4 ? 6e-8 : 1.2e-16));
  }
  if (bad) std::printf("lane_sums T%zu: %d wrong lanes\n", sizeof(T), bad);
  return bad;
}
#endif
int main() {
  std::mt19937 gen(3);
  int bad = check_gemm<float>(gen) + check_gemm<double>(gen);
  bad += check_tail_taken<float>(50, 50, 2) + check_tail_taken<double>(50, 50, 2);
  bad += check_tail_taken<float>(1, 50, 1) + check_tail_taken<float>(50, 3, 0);
#if LAAF_HAS_LANE_SUMS
  for (int i = 0; i < 20; ++i) bad += check_lane_sums<float>(gen) + check_lane_sums<double>(gen);
#endif
  std::printf(bad ? "wrong: %d\n" : "ok\n", bad);
  return bad != 0;
}
"""


def _build_and_run(source_text, name, capability, tmp_path):
    """Compiles a check program against csrc/ and libtorch for `capability`, runs it,
    and asserts that it printed "ok"."""
    from torch.utils import cpp_extension
    source = tmp_path / f"{name}.cpp"
    source.write_text(source_text)
    torch_dir = os.path.dirname(torch.__file__)
    binary = tmp_path / name
    includes = [f"-isystem{p}" for p in cpp_extension.include_paths()]
    cmd = [CXX, "-O2", "-std=c++17", *extension.VECTOR_FLAGS[capability], *includes,
           f"-I{extension.CSRC}", str(source), f"-L{torch_dir}/lib", "-ltorch_cpu", "-lc10",
           f"-Wl,-rpath,{torch_dir}/lib", "-o", str(binary)]
    _assert_compiles(cmd, f"{name}.cpp, {capability}")
    run = subprocess.run([str(binary)], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok", (capability, run.stdout, run.stderr)


@pytest.mark.skipif(CXX is None, reason="no C++ compiler ($CXX or c++) here")
@pytest.mark.parametrize("capability", _runnable_capabilities())
def test_narrow_gemm_and_its_dot_tail_against_double_sums(capability, tmp_path):
    _build_and_run(_NARROW_GEMM_CHECK, "narrow_gemm_check", capability, tmp_path)
