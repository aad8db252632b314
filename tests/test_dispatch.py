"""Backend selection: per-call > use_backend() > LAAF_BACKEND > auto, and clear
errors for unknown or unavailable backends."""
import threading

import pytest
import torch

import laaf_kernels
from laaf_kernels import reference
from laaf_kernels.ops import dispatch


@pytest.fixture
def spy_backend(monkeypatch):
    """Register a recording 'cpp' backend (reference math underneath) for the test."""
    calls = []

    def linear(*args):
        calls.append("linear")
        return reference.linear_impl(*args)

    def activation(*args):
        calls.append("activation")
        return reference.activation_impl(*args)

    def flexible(*args):
        calls.append("flexible")
        return reference.flexible_activation_impl(*args)

    registry = dict(dispatch._REGISTRY)
    registry["cpp"] = dispatch.Backend("cpp", linear, activation, lambda device: None, flexible)
    monkeypatch.setattr(dispatch, "_REGISTRY", registry)
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    return calls


def _call(**kwargs):
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 2, generator=gen), torch.randn(4, 2, generator=gen)
    return laaf_kernels.laaf_linear(x, w, None, torch.tensor(0.5), scale=2.0, **kwargs)


def test_reference_is_always_available():
    assert "reference" in laaf_kernels.available_backends()
    assert set(laaf_kernels.available_backends()) <= set(dispatch.KNOWN_BACKENDS)


def test_unknown_backend_lists_valid_names():
    with pytest.raises(ValueError, match="backend= must be 'auto' or one of reference, triton, cpp, cuda"):
        _call(backend="numba")
    with pytest.raises(ValueError, match=r"use_backend\(name\) must be"):
        with laaf_kernels.use_backend("numba"):
            pass


def test_unavailable_backend_says_why():
    # The CUDA backend can never run on CPU tensors, whatever is installed.
    with pytest.raises(RuntimeError, match=r"backend 'cuda' \(from backend=\) cannot run on cpu"):
        _call(backend="cuda")


def test_env_var_is_used_and_checked(monkeypatch):
    monkeypatch.setenv("LAAF_BACKEND", "bogus")
    with pytest.raises(ValueError, match="LAAF_BACKEND environment variable must be"):
        _call()
    monkeypatch.setenv("LAAF_BACKEND", "reference")
    torch.testing.assert_close(_call(), _call(backend="reference"))


def test_precedence(spy_backend, monkeypatch):
    _call()  # auto on CPU prefers "cpp" when it is available
    assert spy_backend == ["linear"]
    with laaf_kernels.use_backend("reference"):
        _call()
        assert spy_backend == ["linear"]
        _call(backend="cpp")  # per-call wins over the context
        assert spy_backend == ["linear"] * 2
        with laaf_kernels.use_backend("cpp"):  # contexts nest
            laaf_kernels.laaf_activation(torch.randn(2, 3))
        assert spy_backend[-1] == "activation"
        _call()  # the outer context is restored
        assert len(spy_backend) == 3
    monkeypatch.setenv("LAAF_BACKEND", "reference")
    _call()
    assert len(spy_backend) == 3
    with laaf_kernels.use_backend("cpp"):  # the context wins over the env var
        _call()
    assert len(spy_backend) == 4


def test_use_backend_is_thread_local(spy_backend):
    seen = []

    def worker():
        _call()
        seen.append(len(spy_backend))

    with laaf_kernels.use_backend("reference"):
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
    assert seen == [1], "another thread must not inherit this thread's use_backend()"


def test_auto_falls_back_to_reference_on_unknown_device_types(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    assert dispatch.select_backend(None, torch.device("meta")).name == "reference"


def test_register_backend_rejects_unknown_names():
    with pytest.raises(ValueError, match="backend name must be one of"):
        dispatch.register_backend(dispatch.Backend("jax", None, None, lambda d: None))


def _linear_call(rows, n_out, grad, **kwargs):
    x = torch.randn(rows, 2, requires_grad=grad)
    return laaf_kernels.laaf_linear(x, torch.randn(n_out, 2), None, torch.tensor(0.5), **kwargs)


def test_auto_sends_small_training_calls_on_the_cpu_to_the_reference(spy_backend):
    """Below AUTO_CPU_SMALL_TRAINING output elements, a call that autograd records runs
    on "reference" under "auto" (however "auto" was asked for); inference calls, larger
    calls, flexible calls and a backend asked for by name stay on "cpp"."""
    limit = dispatch.AUTO_CPU_SMALL_TRAINING
    _linear_call(limit["linear"] - 1, 1, grad=True)
    with laaf_kernels.use_backend("auto"):
        laaf_kernels.laaf_activation(torch.randn(limit["activation"] - 1, requires_grad=True))
    assert spy_backend == []
    _linear_call(limit["linear"], 1, grad=True)
    _linear_call(5, 4, grad=False)  # no input that autograd records
    with torch.no_grad():
        _linear_call(5, 4, grad=True)
    laaf_kernels.laaf_activation(torch.randn(limit["activation"], requires_grad=True))
    laaf_kernels.flexible_activation(torch.randn(5, 3, requires_grad=True),
                                     torch.rand(2, 3), kind="tanh_ramp")
    _linear_call(5, 4, grad=True, backend="cpp")
    assert spy_backend == ["linear", "linear", "linear", "activation", "flexible", "linear"]


def test_the_small_call_rule_is_asked_only_where_it_applies(monkeypatch):
    """is_small() is asked only for "auto" on the CPU, and not while torch.compile or
    export traces: a graph traced with dynamic shapes keeps the fused op, with no guard
    on the batch size (test_compile_and_export's use_backend test traces such a small
    training call into fused ops)."""
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    asked = []

    def is_small():
        asked.append(True)
        return True

    cpu = torch.device("cpu")
    assert dispatch.select_backend(None, cpu, is_small).name == "reference"
    assert len(asked) == 1
    dispatch.select_backend("reference", cpu, is_small)
    dispatch.select_backend(None, torch.device("meta"), is_small)
    assert len(asked) == 1
    fused = "cpp" if "cpp" in laaf_kernels.available_backends() else "reference"
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert dispatch.select_backend(None, cpu, is_small).name == fused
    assert len(asked) == 1
