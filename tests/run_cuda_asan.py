"""The emulated CUDA kernels (the ``cuda-emulated`` target of the fused tests) under
AddressSanitizer: every read or write outside a tensor is an error. The plain
emulation cannot see those: a read past the end returns whatever lies there, and a
kernel that then masks the value passes (on a GPU it may fault, or not).

    python tests/run_cuda_asan.py [pytest args]      (make test runs it)

The python process must load ASan first (LD_PRELOAD, with libstdc++ so that ASan can
intercept C++ exceptions), and pytest's output capture would swallow its report, so
this runs pytest in a child process with ASan's reports going to files, which it
prints. First it checks that ASan is live: a kernel that reads one element past the
end of a tensor (tests/cuda/emulation/selftest.cu) must be reported.

Skipped (exit 0) where a GPU is present (the kernels run on it) or g++ has no ASan,
unless LAAF_REQUIRE_CUDA_EMULATION=1 (CI), where a missing ASan is a failure.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
SELF_CHECK = """
import torch, cuda_emulation
cuda_emulation.build_selftest()
torch.ops.laaf_emu_selftest.read_past_end(torch.ones(7))
"""


def _library(name: str):
    path = subprocess.run(["g++", f"-print-file-name={name}"], capture_output=True,
                          text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


def _environment(logs: pathlib.Path) -> dict:
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join([_library("libasan.so"), _library("libstdc++.so")])
    env["ASAN_OPTIONS"] = f"detect_leaks=0:log_path={logs / 'asan'}"
    env["LAAF_CUDA_EMULATION_ASAN"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _reports(logs: pathlib.Path) -> str:
    """ASan's error reports (not its warning that it does not fully support the
    emulation's swapcontext, which every process with a launch writes)."""
    texts = (p.read_text() for p in sorted(logs.glob("asan*")))
    return "".join(t for t in texts if "ERROR: AddressSanitizer" in t)


def _skip(reason: str) -> int:
    if os.environ.get("LAAF_REQUIRE_CUDA_EMULATION") == "1":
        print(f"run_cuda_asan: LAAF_REQUIRE_CUDA_EMULATION=1 but {reason}")
        return 1
    print(f"run_cuda_asan: skipped: {reason}")
    return 0


def main(pytest_args) -> int:
    import torch
    if torch.cuda.is_available():
        print("run_cuda_asan: skipped: a GPU is present, the CUDA kernels run on it")
        return 0
    if _library("libasan.so") is None or _library("libstdc++.so") is None:
        return _skip("g++ has no libasan.so / libstdc++.so")
    with tempfile.TemporaryDirectory() as directory:
        logs = pathlib.Path(directory)
        env = _environment(logs)
        check = subprocess.run([sys.executable, "-c", SELF_CHECK], env=env, cwd=ROOT,
                               capture_output=True, text=True)
        if check.returncode == 0 or "heap-buffer-overflow" not in _reports(logs):
            print("run_cuda_asan: ASan did not report a read past the end of a tensor:\n"
                  + check.stdout[-2000:] + check.stderr[-2000:] + _reports(logs)[-2000:])
            return 1
        for report in logs.glob("asan*"):
            report.unlink()
        print("run_cuda_asan: ASan is live (a read past the end was reported); "
              "running the cuda-emulated tests under it")
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "-k", "cuda-emulated", "tests", *pytest_args], env=env, cwd=ROOT)
        reports = _reports(logs)
        if reports:
            print("run_cuda_asan: AddressSanitizer reported:\n" + reports)
            return 1
        return done.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
