"""The Triton kernels, compiled for a GPU that is not here (``tools/triton_dry_run.py``).

The interpreter tests check what the kernels compute; they never compile them, and
they take ``triton_prims``' interpreter branches instead of libdevice. Here every
launcher runs against a stand-in driver for an H100 (sm_90; an A100, sm_80, and a T4,
sm_75, for the scenarios that depend on shared memory): each launch is compiled to a cubin by Triton
and ptxas, every autotuning config included, and checked against the device's grid,
shared-memory and thread limits, then skipped. Each scenario runs
in a subprocess (the tool must not run under ``TRITON_INTERPRET=1``, which this test
session sets) and in its own test, so that pytest-xdist spreads them.

Without Triton's NVIDIA backend (its compiler and ptxas) these tests skip, unless
``LAAF_REQUIRE_TRITON_DRY_RUN=1`` (CI), where that is a failure.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "triton_dry_run.py"
#: The tool's scenarios (test_every_scenario_has_a_test checks that these are all of them).
SCENARIOS = ["float32", "bfloat16", "float16", "float64", "activations", "narrow_limits",
             "narrow_backward", "slopes_tf32", "large_grids", "int64_offsets"]
#: (arch, scenario) pairs: all of them on the H100 (the GPU we are lent); on the A100,
#: whose shared memory is smaller (163 KiB), the shapes where that matters; on a T4
#: (sm_75, 64 KiB, the free notebooks' GPU) the narrow backward, which must fall back.
RUNS = [(90, name) for name in SCENARIOS] + [(80, "narrow_limits"), (80, "float64"),
                                             (75, "narrow_backward")]
#: Narrow layers whose fused backward may fit no config, per arch: on the H100 and the
#: A100, none (triton_launchers.NARROW_MAX_W_BYTES is sized for them); on the T4, fp32
#: 128 x 128 at least (88 KiB with the smallest tile), which takes the wide path.
FALLBACKS = {90: (set(), set()), 80: (set(), set()), 75: ({"128 x 128 float32"}, None)}


def _nvidia_backend_problem():
    try:
        from triton.backends import backends
        from triton.backends.nvidia import compiler
    except Exception as error:  # noqa: BLE001 - any import failure means: cannot compile
        return f"triton's NVIDIA backend does not import: {error}"
    if "nvidia" not in backends:
        return "triton has no NVIDIA backend"
    if not (pathlib.Path(compiler.__file__).parent / "bin" / "ptxas").exists():
        return "triton's NVIDIA backend ships no ptxas"
    return None


PROBLEM = _nvidia_backend_problem()
if PROBLEM and os.environ.get("LAAF_REQUIRE_TRITON_DRY_RUN") == "1":
    raise RuntimeError(f"LAAF_REQUIRE_TRITON_DRY_RUN=1 but {PROBLEM}")
needs_backend = pytest.mark.skipif(PROBLEM is not None, reason=str(PROBLEM))


def _run_tool(*args, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # compile afresh: nothing stale
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=1800)


@needs_backend
@pytest.mark.parametrize("arch, scenario", RUNS, ids=[f"sm{a}-{s}" for a, s in RUNS])
def test_kernels_compile_and_launch_within_the_device_limits(arch, scenario, tmp_path):
    report_path = tmp_path / "report.json"
    result = _run_tool("--arch", str(arch), "--only", scenario, "--json", str(report_path),
                       tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    report = json.loads(report_path.read_text())
    assert [s["name"] for s in report["scenarios"]] == [scenario]
    assert report["scenarios"][0]["ok"] and not report["problems"]
    at_least, at_most = FALLBACKS[arch]
    fallbacks = set(report["narrow_fallbacks"])
    assert at_least <= fallbacks and (at_most is None or fallbacks <= at_most), fallbacks
    variants = report["variants"].values()
    assert variants and all(v["launches"] > 0 and v["registers"] > 0 for v in variants)


@needs_backend
def test_the_checks_can_fail(tmp_path):
    """A grid beyond CUDA's limits and a kernel beyond the shared memory are refused."""
    result = _run_tool("--self-test", tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "grid limit enforced" in result.stdout
    assert "shared memory limit enforced" in result.stdout


def test_every_scenario_has_a_test(tmp_path):
    result = _run_tool("--list", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == SCENARIOS
