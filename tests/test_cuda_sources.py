"""The CUDA sources, checked without a GPU (nvcc only):

* ``csrc/*.cu`` compile (device code for sm_90 and sm_75, the flags of torch's JIT
  build), so a CUDA syntax or type error cannot land;
* the JIT build's CUDA part takes every one of them, and its objects link: each
  ``laaf::`` function that one calls is defined in another (torch's loader would
  otherwise refuse the library, and only on a GPU);
* the generated CUDA activation functors (``csrc/laaf_activations_cuda.cuh``), built
  for the host, give the table's value, act', act'' and act'-from-y.

Without nvcc these tests skip, unless ``LAAF_REQUIRE_NVCC=1`` (CI), where that is a failure.
"""
from __future__ import annotations

import pathlib
import subprocess

import pytest
import torch

from laaf_kernels.activations import ACTIVATIONS, TABLE, Y_FORMULAS, evaluate
from laaf_kernels.flexible import FLEXIBLE_KINDS, evaluate_flexible
from laaf_kernels.ops import extension

import native_build

HERE = pathlib.Path(__file__).resolve().parent
THIS_TORCH = native_build.this_torch()
NVCC = native_build.NVCC
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed here")


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_90", "sm_75"])
@pytest.mark.parametrize("source", [p.name for p in extension.sources(".cu")])
def test_cuda_kernels_compile(source, arch, objects_dir):
    """Compile only (the device code too): nvcc -c, for the H100's sm_90 and for the
    oldest GPU that CUDA 13 still targets, a T4's sm_75 (no bf16 arithmetic there: the
    kernels compute in float)."""
    obj = native_build.compiled(source, THIS_TORCH, objects_dir, arch)
    assert obj.stat().st_size > 0


def _laaf_symbols(obj: pathlib.Path, which: str) -> dict:
    """{mangled name: nm's type letter} of the external laaf:: symbols that `obj` defines
    or leaves undefined (`which`: "--defined-only" or "--undefined-only"); the unnamed
    namespace's are local, and inline functions weak ("W")."""
    listing = subprocess.run(["nm", "--extern-only", which, str(obj)], capture_output=True,
                             text=True, check=True).stdout
    rows = (line.split() for line in listing.splitlines() if line.strip())
    return {row[-1]: row[-2] for row in rows
            if row[-1].startswith(("_ZN4laaf", "_ZNK4laaf"))}


@needs_nvcc
def test_the_jit_cuda_part_takes_every_source_and_links(objects_dir):
    """The JIT build (extension.CUDA) compiles every csrc/*.cu, as setup.py's AOT build
    does, and the objects link: each laaf:: function that one of them calls (say
    laaf_cuda.cu's call of narrow_linear_backward, in laaf_cuda_narrow_bwd.cu) is
    defined in one of them. libtorch's CUDA half is not in the CPU wheel, so the
    objects cannot be linked into a library here; their symbol tables are compared."""
    assert list(extension.CUDA.sources) == [p.name for p in extension.sources(".cu")]
    objects = [native_build.compiled(source, THIS_TORCH, objects_dir)
               for source in extension.CUDA.sources]
    defined = {o.name: _laaf_symbols(o, "--defined-only") for o in objects}
    called = {name: o.name for o in objects for name in _laaf_symbols(o, "--undefined-only")}
    assert called, "no object calls another: the check below would hold of anything"
    missing = {name: o for name, o in called.items()
               if not any(name in symbols for symbols in defined.values())}
    assert not missing, f"laaf:: symbols that no object of the CUDA part defines: {missing}"
    strong = {}  # a non-weak definition in two objects is a duplicate at the link
    for o, symbols in defined.items():
        for name, kind in symbols.items():
            if kind not in "WVuv":
                strong.setdefault(name, []).append(o)
    twice = {name: found for name, found in strong.items() if len(found) > 1}
    assert not twice, f"laaf:: symbols defined in more than one object: {twice}"


def _edge_inputs() -> list:
    """Random h, kinks (0), softplus's threshold (20) and large |h|."""
    gen = torch.Generator().manual_seed(5)
    spread = (torch.randn(40, generator=gen, dtype=torch.float64) * 4).tolist()
    return spread + [0.0, 1e-3, -1e-3, 1e-8, 19.5, 20.0, 20.5, 30.0, -30.0, 7.0, -7.0]


@pytest.fixture(scope="module")
def functor_table(tmp_path_factory):
    """{(type, name): (h, value, d1, d2, d1_y, d1_y_dy, d1_y_dyy)} from the host build
    of the functors."""
    program = tmp_path_factory.mktemp("functors") / "functors"
    source = HERE / "cuda" / "activation_functors.cu"
    build = subprocess.run([NVCC, f"-std={THIS_TORCH.std}", "-x", "cu", str(source), "-o", str(program),
                            "--expt-relaxed-constexpr", *THIS_TORCH.include_flags()],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-4000:]
    inputs = _edge_inputs()
    run = subprocess.run([str(program)], input=" ".join(map(repr, inputs)), capture_output=True,
                         text=True, check=True)
    table = {}
    for line in run.stdout.splitlines():
        type_name, index, *numbers = line.split()
        names = FLEXIBLE_KINDS if type_name.startswith("flex-") else ACTIVATIONS
        table.setdefault((type_name, names[int(index)]), []).append([float(v) for v in numbers])
    return {key: torch.tensor(rows, dtype=torch.float64).T for key, rows in table.items()}


#: (dtype of the functor, tolerance): float64 within a few ulp of torch's own
#: functions (glibc vs Sleef/MKL); float32 against the float32 table, which
#: differs in the last bits and, for d2 = f(t) with t = tanh(h) near 1, by
#: cancellation: an absolute term of ~1e-6 covers both.
TYPES = {"double": (torch.float64, dict(rtol=1e-13, atol=1e-14)),
         "float": (torch.float32, dict(rtol=2e-6, atol=2e-6))}


@needs_nvcc
@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_generated_cuda_functors_match_the_table(functor_table, type_name, name):
    dtype, tol = TYPES[type_name]
    h, value, d1, d2, *in_y = functor_table[(type_name, name)]
    h_t = h.to(dtype)
    for which, got in (("value", value), ("d1", d1), ("d2", d2)):
        want = evaluate(name, which, h_t).double()
        torch.testing.assert_close(got, want, **tol, msg=lambda m: f"{name}.{which}: {m}")
    for which, got in zip(Y_FORMULAS, in_y):
        if TABLE[name].d1_y is None:
            assert torch.isnan(got).all()
        else:
            want = evaluate(name, which, value.to(dtype)).double()
            torch.testing.assert_close(got, want, **tol, msg=lambda m: f"{name}.{which}: {m}")


@needs_nvcc
@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("kind", FLEXIBLE_KINDS)
def test_generated_cuda_flexible_functors_match_the_table(functor_table, type_name, kind):
    dtype, tol = TYPES[type_name]
    z, p0, p1, value, dz, dp0, dp1 = functor_table[(f"flex-{type_name}", kind)]
    args = [t.to(dtype) for t in (z, p0, p1)]
    for which, got in (("value", value), ("dz", dz), ("dp0", dp0), ("dp1", dp1)):
        want = evaluate_flexible(kind, which, *args).double()
        torch.testing.assert_close(got, want, **tol, msg=lambda m: f"{kind}.{which}: {m}")
