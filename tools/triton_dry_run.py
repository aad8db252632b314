"""Compile every Triton kernel of laaf_kernels for a GPU that is not here.

The Triton interpreter, which runs the kernels in CI, never compiles them: it
executes the Python, takes the interpreter branches of ``triton_prims`` (not
libdevice), accepts any tile and any grid. This tool runs the real launchers
(``laaf_kernels/kernels/triton_launchers.py``) on CPU tensors against a stand-in
Triton driver that describes a GPU (an H100, sm_90, by default). So:

* every launch is compiled by the real Triton compiler down to a cubin (ptxas
  included), for every autotuning config;
* every launch is checked the way the GPU would check it: the grid (x < 2^31,
  y and z <= 65535), the shared memory against the device's opt-in limit, the
  threads per block against what the registers allow;
* nothing runs: the launch itself is skipped.

It reports, per kernel and compiled variant, the registers, spills (local
memory) and shared memory that ptxas reports (``cuobjdump -res-usage``).

    python tools/triton_dry_run.py [--arch 90|80|89|75] [--quick] [--json FILE]

Exit status 1 if any launch failed (a compile error, a config that fits no
resource limit, a grid out of range). A narrow layer whose fused backward fits no
config is not a failure: the launcher falls back to the wide path, as it would on
the GPU, and the report lists it (``narrow_fallbacks``). ``tests/test_triton_dry_run.py`` runs it.
It needs a Triton with the NVIDIA backend (the PyPI wheels have it) and must
run without ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    sys.exit("triton_dry_run: unset TRITON_INTERPRET (it compiles the kernels, not interprets them)")

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler.compiler import max_shared_mem  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.driver import driver as triton_driver  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from laaf_kernels.kernels import triton_launchers as launch  # noqa: E402

# ---------------------------------------------------------------------------
# The GPUs it can stand in for: what the launch checks need
# ---------------------------------------------------------------------------

#: cudaDevAttrMaxSharedMemoryPerBlockOptin, SM count, registers per SM.
DEVICES = {
    90: dict(name="H100 (sm_90)", max_shared_mem=232448, multiprocessor_count=132,
             max_num_regs=65536),
    80: dict(name="A100 (sm_80)", max_shared_mem=166912, multiprocessor_count=108,
             max_num_regs=65536),
    89: dict(name="RTX 4090 / L4 (sm_89)", max_shared_mem=101376, multiprocessor_count=128,
             max_num_regs=65536),
    75: dict(name="T4 (sm_75)", max_shared_mem=65536, multiprocessor_count=40,
             max_num_regs=65536),
}
MAX_GRID = (2**31 - 1, 65535, 65535)


@dataclass
class Variant:
    """One compiled kernel: what ptxas made of it."""
    kernel: str
    num_warps: int
    num_stages: int
    shared: int
    registers: int = 0
    spill_bytes: int = 0
    launches: int = 0


@dataclass
class Report:
    device: str
    triton: str
    torch: str
    variants: Dict[str, Variant] = field(default_factory=dict)
    scenarios: List[dict] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)
    #: "N x K dtype" of the narrow layers whose fused backward fit no config here, so
    #: that their backward took the wide path (triton_launchers.narrow_misfits).
    narrow_fallbacks: List[str] = field(default_factory=list)


class _Resources:
    """Registers and spills of a cubin, from the cuobjdump that Triton ships."""

    def __init__(self):
        from triton.backends.nvidia import compiler as nv
        self.cuobjdump = Path(nv.__file__).parent / "bin" / "cuobjdump"

    def of(self, cubin: bytes) -> tuple:
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(cubin)
            f.flush()
            out = subprocess.run([str(self.cuobjdump), "-res-usage", f.name],
                                 capture_output=True, text=True, check=True).stdout
        regs = re.search(r"REG:(\d+)", out)
        local = re.search(r"LOCAL:(\d+)", out)
        return int(regs.group(1)) if regs else 0, int(local.group(1)) if local else 0


class _Loaded:
    """What load_binary hands Triton as the module and the function handle."""

    def __init__(self, variant: Variant):
        self.variant = variant


class DryRunDriver:
    """A Triton driver for a GPU that is not here: compiles for its target,
    checks every launch against its limits, runs nothing."""

    def __init__(self, arch: int, report: Report):
        self.arch, self.props, self.report = arch, dict(DEVICES[arch]), report
        self.resources = _Resources()
        self.utils = self  # Triton calls driver.utils.load_binary & co.

    # -- what the JIT asks of a driver ------------------------------------
    def get_current_target(self):
        return GPUTarget("cuda", self.arch, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_device_properties(self, device):
        return dict(self.props, warpSize=32, sm_clock_rate=0, mem_clock_rate=0, mem_bus_width=0)

    def get_benchmarker(self):
        """Autotuning 'benchmarks' each config by compiling it: all of them are checked."""
        def bench(kernel_call, quantiles=None, **_):
            kernel_call()
            return [1.0, 1.0, 1.0] if quantiles else 1.0
        return bench

    def load_binary(self, name, cubin, shared, device):
        regs, spills = self.resources.of(cubin)
        handle = _Loaded(Variant(name, 0, 0, shared, regs, spills))
        self.report.variants[f"{name} [{len(self.report.variants)}]"] = handle.variant
        # Threads a block may have with this many registers (allocated per warp in 256s).
        per_warp = -(-max(regs, 1) * 32 // 256) * 256
        max_threads = min(1024, self.props["max_num_regs"] // per_warp * 32)
        return handle, handle, regs, spills, max_threads

    def unload_module(self, module):
        pass

    def launcher_cls(self, src, metadata):
        def run(grid_x, grid_y, grid_z, stream, function, packed_metadata, *rest):
            variant = function.variant
            variant.num_warps, variant.num_stages = metadata.num_warps, metadata.num_stages
            variant.launches += 1
            grid = (grid_x, grid_y, grid_z)
            if any(g < 0 or g > cap for g, cap in zip(grid, MAX_GRID)):
                raise RuntimeError(f"{variant.kernel}: grid {grid} exceeds CUDA's limits {MAX_GRID}")
        return run


def install_driver(arch: int, report: Report) -> None:
    """Make the stand-in the active Triton driver, for the rest of the process
    (there is no real one to go back to on a machine without a GPU)."""
    triton_driver.set_active(DryRunDriver(arch, report))


# ---------------------------------------------------------------------------
# What to launch: every kernel, through the launchers the ops call
# ---------------------------------------------------------------------------
#
# Shapes matter only for the grid and for Triton's specialisation (sizes and
# strides divisible by 16, or 1): odd sizes, as in the interpreter tests, plus
# the PINN width (50) and a wide layer (256) that takes the other paths.

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}
FLEXIBLE_KINDS = ("relu_poly", "relu_tanh", "sigmoid_ramp", "tanh_ramp")


def _rand(*shape, dtype):
    return torch.randn(*shape).to(dtype)


def _linear(dtype, activation: str, slope: str, n: int, k: int, m: int = 997) -> None:
    """Forward (training and inference) and the full backward of one layer."""
    x, w, b = _rand(m, k, dtype=dtype), _rand(n, k, dtype=dtype), _rand(n, dtype=dtype)
    s = {"none": None, "scalar": torch.tensor(1.3, dtype=dtype),
         "vector": _rand(n, dtype=dtype)}[slope]
    launch.linear_forward(x, w, b, s, activation, False)
    _, z = launch.linear_forward(x, w, b, s, activation, launch.stores_z(n, k, True, dtype))
    launch.linear_backward(_rand(m, n, dtype=dtype), x, w, b, z, s, activation,
                           True, True, True, True)


def _activation(dtype, activation: str) -> None:
    """The standalone activation with its slope on columns (dim=-1) and on rows (NCHW, dim=1)."""
    for shape, dim in (((37, 50), -1), ((3, 7, 5, 11), 1)):
        z, g = _rand(*shape, dtype=dtype), _rand(*shape, dtype=dtype)
        s = _rand(shape[dim], dtype=dtype)
        launch.activation_forward(z, s, activation, dim % z.dim())
        launch.activation_backward(g, z, s, activation, dim % z.dim(), True, True)


def _grad_y(dtype, activation: str) -> None:
    """The three create_graph kernels, every output asked for, slope on columns and rows."""
    for shape, dim in (((37, 50), -1), ((3, 7, 5, 11), 1)):
        y, u, g = (_rand(*shape, dtype=dtype) for _ in range(3))
        s = _rand(shape[dim], dtype=dtype)
        launch.grad_y(g, y, s, activation, dim)
        launch.grad_y_vjp(u, g, y, s, activation, dim, True, True, True)
        launch.grad_y_vjp2(u, g, s.clone(), u, g, y, s, activation, dim, True, True, True, True)


def _flexible(dtype, kind: str) -> None:
    for shape, dim in (((37, 50), -1), ((3, 7, 5, 11), 1)):
        z, g = _rand(*shape, dtype=dtype), _rand(*shape, dtype=dtype)
        params = torch.rand(2, shape[dim]).to(dtype)
        launch.flexible_forward(z, params, kind, dim % z.dim())
        launch.flexible_backward(g, z, params, kind, dim % z.dim(), True, True)


def _every_kernel(dtype) -> None:
    """Each kernel in one dtype, every autotuning config."""
    for n in (50, 256):
        _linear(dtype, "tanh", "vector", n, n)
    _activation(dtype, "tanh")
    _grad_y(dtype, "tanh")
    for kind in FLEXIBLE_KINDS:
        _flexible(dtype, kind)


def _narrow_limits() -> None:
    """The widest layers of the fused narrow backward, at its shared-memory bound
    (is_narrow): N x K = 128 x 128 in fp32 and bf16 (64 and 32 KiB of W); in fp64
    64 x 128 and 128 x 64 (64 KiB), and 128 x 128, which takes the wide path. Run with
    each kernel's first config, its smallest: autotuning skips configs that do not
    fit, so a launch fails only if that one does not (the dtype scenarios compile
    every config, at N = K = 50)."""
    for dtype, n, k in ((torch.float32, 128, 128), (torch.bfloat16, 128, 128),
                        (torch.float64, 64, 128), (torch.float64, 128, 64),
                        (torch.float64, 128, 128)):
        _linear(dtype, "tanh", "vector", n, k)


def _narrow_backward() -> None:
    """The backward alone of the narrow_limits layers, as a narrow layer's forward leaves
    it (no z), first config: on a GPU with little shared memory (sm_75: 64 KiB) the
    widest of them fit no config, and their backward must fall back to the wide path."""
    for dtype, n, k in ((torch.float32, 128, 128), (torch.bfloat16, 128, 128),
                        (torch.float64, 64, 128), (torch.float32, 50, 50)):
        m = 997
        x, w, b = _rand(m, k, dtype=dtype), _rand(n, k, dtype=dtype), _rand(n, dtype=dtype)
        launch.linear_backward(_rand(m, n, dtype=dtype), x, w, b, x.new_empty(0),
                               _rand(n, dtype=dtype), "tanh", True, True, True, True)


def _every_activation() -> None:
    """Each activation of the table in fp32 (its libdevice branch): first config only."""
    from laaf_kernels.activations import ACTIVATIONS, get
    for activation in ACTIVATIONS:
        _linear(torch.float32, activation, "vector", 50, 50)
        _activation(torch.float32, activation)
        if get(activation).d1_y is not None:
            _grad_y(torch.float32, activation)


def _slopes_and_tf32() -> None:
    """The other slope kinds, and fp32 GEMMs in TF32 (torch's allow_tf32 switch)."""
    for slope in ("none", "scalar"):
        _linear(torch.float32, "tanh", slope, 50, 50)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        for n in (50, 256):
            _linear(torch.float32, "tanh", "vector", n, n)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def _large_grids() -> None:
    """Inputs whose 2-D view is one very wide row (a 1-D z of 5 000 003 elements)
    or very many rows: every launch must stay inside CUDA's grid limits."""
    n = 5_000_003
    z, g = torch.randn(n), torch.randn(n)
    for s in (None, torch.tensor(0.7), torch.rand(n)):
        launch.activation_forward(z, s, "tanh", 0)
        launch.activation_backward(g, z, s, "tanh", 0, True, s is not None)
        launch.grad_y(g, z, s, "tanh", 0)
    launch.flexible_forward(z, torch.rand(2, n), "relu_poly", 0)
    z2 = torch.randn(2**22 + 1, 2)
    launch.activation_forward(z2, torch.rand(2), "tanh", 1)
    launch.linear_forward(z2, torch.randn(3, 2), None, torch.rand(3), "tanh", True)


def _int64_offsets() -> None:
    """Every kernel's INT64_OFFSETS variant, which a launch takes where a tensor reaches
    2^31 elements (forced here on small tensors), in fp32, every config."""
    real = launch.needs_int64
    launch.needs_int64 = lambda *tensors: True
    try:
        _every_kernel(torch.float32)
    finally:
        launch.needs_int64 = real


#: name -> (what it compiles, whether every autotuning config is compiled)
SCENARIOS: Dict[str, tuple] = {
    **{name: (lambda dt=dt: _every_kernel(dt), True) for name, dt in DTYPES.items()},
    "activations": (_every_activation, False),
    "narrow_limits": (_narrow_limits, False),
    "narrow_backward": (_narrow_backward, False),
    "slopes_tf32": (_slopes_and_tf32, True),
    "large_grids": (_large_grids, False),
    "int64_offsets": (_int64_offsets, True),
}
QUICK = ("float32", "large_grids")


@contextlib.contextmanager
def _first_config_only(enabled: bool):
    """Restrict the autotuned kernels to their first config, the smallest tile (the
    activation sweep would otherwise compile each of the ten activations once per config)."""
    kernels = [k for k in vars(launch).values() if isinstance(k, Autotuner)]
    saved = [k.configs for k in kernels]
    if enabled:
        for k in kernels:
            k.configs = k.configs[:1]
    try:
        yield
    finally:
        for k, configs in zip(kernels, saved):
            k.configs = configs


def run_scenario(name: str, report: Report) -> None:
    body, all_configs = SCENARIOS[name]
    started, before = time.time(), len(report.variants)
    entry = dict(name=name, ok=True)
    try:
        with _first_config_only(not all_configs):
            body()
    except Exception as error:  # noqa: BLE001 - every failure is reported, then the exit status
        entry["ok"] = False
        report.problems.append(f"{name}: {type(error).__name__}: {error}\n"
                               + "".join(traceback.format_exc(limit=-3)))
    entry.update(seconds=round(time.time() - started, 1),
                 compiled=len(report.variants) - before)
    report.scenarios.append(entry)


def summary(report: Report) -> str:
    """Per kernel: how many variants compiled, and the most registers, spill and
    shared memory any of them needs; then the scenarios and the problems."""
    lines = [f"{report.device}, triton {report.triton}, torch {report.torch}",
             f"{'kernel':26s} {'variants':>8s} {'max regs':>8s} {'max spill B':>11s} "
             f"{'max smem B':>10s}"]
    kernels: Dict[str, List[Variant]] = {}
    for v in report.variants.values():
        kernels.setdefault(v.kernel, []).append(v)
    for name, vs in sorted(kernels.items()):
        lines.append(f"{name:26s} {len(vs):8d} {max(v.registers for v in vs):8d} "
                     f"{max(v.spill_bytes for v in vs):11d} {max(v.shared for v in vs):10d}")
    for s in report.scenarios:
        lines.append(f"scenario {s['name']}: {'ok' if s['ok'] else 'FAILED'}, "
                     f"{s['compiled']} compiled, {s['seconds']} s")
    for layer in report.narrow_fallbacks:
        lines.append(f"narrow backward did not fit, wide path taken: {layer}")
    lines += report.problems
    return "\n".join(lines)


@triton.jit
def _self_test_kernel(x_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs[:, None] * BLOCK + offs[None, :])
    tl.store(x_ptr + offs[:, None] * BLOCK + offs[None, :], tl.dot(x, x))


def self_test(arch: int) -> List[str]:
    """The checks must be able to fail: a launch with 70 000 programs on grid axis 1,
    and one on a device with 1 KiB of shared memory, must each be refused."""
    missed = []
    report = Report(DEVICES[arch]["name"], triton.__version__, torch.__version__)
    install_driver(arch, report)
    x = torch.randn(64, 64)
    # Different BLOCKs: a kernel compiled and loaded once is not checked again.
    for what, grid, block, shared in (("grid", (1, 70_000), 16, None),
                                      ("shared memory", (1,), 64, 1024)):
        driver = triton_driver.active
        saved = dict(driver.props)
        if shared is not None:
            driver.props["max_shared_mem"] = shared
        max_shared_mem.cache_clear()  # Triton caches the device's limit
        try:
            _self_test_kernel[grid](x, BLOCK=block)
            missed.append(f"a launch beyond the {what} limit was not refused")
        except Exception as error:  # noqa: BLE001
            print(f"self-test: {what} limit enforced: {type(error).__name__}: {error}")
        finally:
            driver.props = saved
            max_shared_mem.cache_clear()
    return missed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, choices=sorted(DEVICES))
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), metavar="SCENARIO",
                        help=f"run these scenarios ({', '.join(SCENARIOS)}); default: all")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--list", action="store_true", help="print the scenarios' names")
    parser.add_argument("--self-test", action="store_true",
                        help="check that out-of-range launches are refused, then exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(SCENARIOS))
        return 0
    if args.self_test:
        missed = self_test(args.arch)
        print("\n".join(missed) or "self-test: ok")
        return 1 if missed else 0
    names = args.only or (QUICK if args.quick else list(SCENARIOS))
    report = Report(DEVICES[args.arch]["name"], triton.__version__, torch.__version__)
    install_driver(args.arch, report)
    for name in names:
        run_scenario(name, report)
    report.narrow_fallbacks = sorted(f"{n} x {k} {str(dtype).replace('torch.', '')}"
                                     for _, n, k, dtype in launch.narrow_misfits())
    print(summary(report))
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=1))
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
