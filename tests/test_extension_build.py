"""The C++ extension's first-use build when it cannot succeed: a broken compiler
gives one clear warning, "auto" falls back to the reference, and asking for "cpp" by
name raises with the cause; a baton left by a killed build does not hang the next one.

Each case runs in a fresh interpreter (a backend's availability is settled once per
process) with its own empty build directory, and a compiler that fails at once.
"""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_FIRST_USE = """
import warnings, torch, laaf_kernels
from laaf_kernels import reference
from laaf_kernels.ops import dispatch, extension

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    problem = extension.problem()
laaf_warnings = [str(w.message) for w in caught if "laaf_kernels" in str(w.message)]
assert problem is not None and "laaf_cpu_ext could not be built" in problem, problem
assert len(laaf_warnings) == 1 and problem in laaf_warnings[0], laaf_warnings
assert "'auto' moves on" in laaf_warnings[0], laaf_warnings

cpu = torch.device("cpu")
assert dispatch.select_backend("auto", cpu).name == "reference"
assert "cpp" not in laaf_kernels.available_backends()
x, w = torch.randn(5, 3), torch.randn(4, 3)
torch.testing.assert_close(laaf_kernels.laaf_linear(x, w, backend="auto"),
                           reference.linear_impl(x, w, None, None, "tanh", 1.0))
try:
    laaf_kernels.laaf_linear(x, w, backend="cpp")
except RuntimeError as error:
    assert "backend 'cpp' (from backend=) cannot run on cpu" in str(error), error
    assert "could not be built" in str(error), error
else:
    raise AssertionError("backend='cpp' did not raise")
print("OK")
"""


def _first_use(tmp_path, *, stale_baton: bool) -> subprocess.CompletedProcess:
    """Run _FIRST_USE with an empty LAAF_EXT_DIR (plus torch's baton file, left as a
    killed build leaves it, when ``stale_baton``) and a compiler that always fails."""
    env = {**os.environ, "PYTHONPATH": REPO, "LAAF_EXT_DIR": str(tmp_path),
           "CXX": "false", "CC": "false", "LAAF_BACKEND": "auto"}
    env.pop("LAAF_REQUIRE_CPP", None)  # (CI sets it: there a failed build is an error)
    env.pop("TRITON_INTERPRET", None)
    if stale_baton:
        code = ("from laaf_kernels.ops import extension; "
                "print(extension.build_dir(extension.CPU))")
        directory = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                   capture_output=True, text=True).stdout.strip()
        os.makedirs(directory)
        open(os.path.join(directory, "lock"), "w").close()
    return subprocess.run([sys.executable, "-c", _FIRST_USE], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_failed_build_warns_once_and_auto_falls_back(tmp_path):
    run = _first_use(tmp_path, stale_baton=False)
    assert run.returncode == 0 and run.stdout.strip() == "OK", run.stderr[-3000:]


def test_a_baton_left_by_a_killed_build_does_not_hang_the_next(tmp_path):
    """torch's cpp_extension.load waits without end for a ``lock`` file in the build
    directory to go; a build killed midway leaves one. Before the fix this run hung
    (and the timeout fails the test)."""
    try:
        run = _first_use(tmp_path, stale_baton=True)
    except subprocess.TimeoutExpired:
        pytest.fail("the first use hung on the stale baton")
    assert run.returncode == 0 and run.stdout.strip() == "OK", run.stderr[-3000:]
    assert "left by a build that was killed" in run.stderr, run.stderr[-3000:]
