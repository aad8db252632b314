"""Test set-up. Without a GPU, Triton kernels run on CPU tensors in Triton's
interpreter, which must be switched on before triton is first imported."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _cuda_backend_on_cpu_for_the_emulated_target(request):
    """A test of the ``cuda-emulated`` target (fused_cases.TARGETS) runs with the
    "cuda" backend taking CPU tensors, on the emulated kernels; every other test
    sees the backend as it is (CUDA tensors only)."""
    callspec = getattr(request.node, "callspec", None)
    target = callspec.params.get("target") if callspec is not None else None
    if target is None:
        yield
        return
    import cuda_emulation  # here: it imports triton, which must see TRITON_INTERPRET first
    if target != cuda_emulation.TARGET:
        yield
        return
    with cuda_emulation.cuda_backend_on_cpu():
        yield


@pytest.fixture(scope="session")
def objects_dir(tmp_path_factory):
    """Where native_build puts compiled objects, shared by the session's xdist workers
    (the sm_90 objects of test_cuda_sources serve its compile and its link test)."""
    import native_build
    return native_build.shared_objects_dir(tmp_path_factory)


@pytest.fixture
def new_tensors_hold_nan():
    """torch.use_deterministic_algorithms fills every new floating-point tensor with NaN,
    ATen's empty inside our ops included: a value that no kernel wrote shows as NaN.
    warn_only: cuBLAS on a GPU would otherwise refuse to run without
    CUBLAS_WORKSPACE_CONFIG (the fill happens either way)."""
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
