"""Backend registry and selection: the seam where fused backends plug in.

A backend is a pair of *unchecked* implementations (arguments are validated
once, in :mod:`laaf_kernels.functional`, before dispatch) plus a function that
says whether it can run on a given device, and if not, why.

Which backend runs, first match wins:

1. the per-call ``backend=`` argument;
2. the innermost :func:`use_backend` context;
3. the ``LAAF_BACKEND`` environment variable;
4. ``"auto"``: the best available backend for the tensors' device
   (``AUTO_ORDER``), ending with ``"reference"``, which runs everywhere. On the
   CPU, a small training call goes to ``"reference"`` (``AUTO_CPU_SMALL_TRAINING``).

Asking for a backend by name that cannot run raises a ``RuntimeError`` that says
why; ``"auto"`` quietly moves on to the next one.

Under a ``torch.func`` transform (grad, vmap, jvp, jacrev, jacfwd, hessian, as
functorch-style PINN code uses), the backend so chosen hands the call to
``"reference"``, the same formulas as torch ops, which every transform supports:
torch.func cannot transform a ``torch.library`` custom op whose autograd is
registered with ``register_autograd`` (pytorch/pytorch#168393, #179652). Outside
transforms, including ``torch.autograd.grad(..., create_graph=True)``, the fused
kernels run.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional

import torch

from .. import reference
from .autograd import needs_grad

__all__ = ["Backend", "register_backend", "available_backends", "load_ops", "select_backend",
           "small_training_call", "use_backend", "KNOWN_BACKENDS", "ENV_VAR"]

ENV_VAR = "LAAF_BACKEND"
KNOWN_BACKENDS = ("reference", "triton", "cpp", "cuda")

#: For "auto": the order in which backends are tried, per device type.
AUTO_ORDER: Dict[str, tuple] = {
    "cuda": ("triton", "cuda", "reference"),
    "cpu": ("cpp", "reference"),
}

#: For "auto" on the CPU: a call that autograd records and whose output has fewer
#: elements than this (per entry point) runs on "reference". A fused op's Python
#: autograd.Function costs ~25 us more per training call, forward and backward, than
#: the reference's native autograd nodes; that exceeds what fusing saves below about
#: 12 000-20 000 output elements of laaf_linear and 50 000 of laaf_activation (Intel
#: Xeon, 2 threads, fp32 and fp64: bench/README.md, stop 29). The flexible ops win at
#: every size, and inference calls lose at most a few us, so they stay fused. Not
#: applied under torch.compile or export: a traced graph keeps the fused op, whatever
#: the batch size (no guard on it).
AUTO_CPU_SMALL_TRAINING = {"linear": 16384, "activation": 32768}


def small_training_call(entry: str, out_elements: int, *inputs) -> bool:
    """Whether a call of ``entry`` is one that "auto" sends to the reference on the
    CPU: fewer than ``AUTO_CPU_SMALL_TRAINING[entry]`` output elements, and inputs
    (tensors or None) that autograd records (the fused ops' own test, needs_grad)."""
    return out_elements < AUTO_CPU_SMALL_TRAINING.get(entry, 0) and needs_grad(*inputs)


@dataclass(frozen=True)
class Backend:
    """A backend: unchecked ``linear``/``activation`` implementations and availability.

    ``linear(x, weight, bias, slope, activation, scale)``,
    ``activation(z, slope, activation, scale, dim)`` and
    ``flexible(z, params, kind, dim)`` (the flexible activations) receive
    validated arguments (all three None for a backend that cannot load).
    ``unavailable(device)`` returns ``None`` when the backend can run on
    ``device`` (``None``: on some device of this machine), else the reason.
    """

    name: str
    linear: Callable
    activation: Callable
    unavailable: Callable[[Optional[torch.device]], Optional[str]]
    flexible: Optional[Callable] = None


_REGISTRY: Dict[str, Backend] = {}
#: ``use_backend`` names in force, innermost last, per thread. A ``threading.local``
#: rather than a ``ContextVar``: torch.compile traces (and guards on) a
#: thread-local's attributes, but cannot trace ``ContextVar.get``.
_context = threading.local()


def register_backend(backend: Backend) -> None:
    """Add (or replace) a backend; its name must be one of ``KNOWN_BACKENDS``."""
    if backend.name not in KNOWN_BACKENDS:
        raise ValueError(f"backend name must be one of {KNOWN_BACKENDS}, got {backend.name!r}")
    _REGISTRY[backend.name] = backend


# torch.compile folds this to a constant at trace time instead of tracing it (the
# first call may build the C++ extension). Sound: a backend's availability on a device
# is settled by its first check and never changes afterwards.
@torch.compiler.assume_constant_result
def _why_unavailable(name: str, device: Optional[torch.device]) -> Optional[str]:
    backend = _REGISTRY.get(name)
    if backend is None:
        return f"the {name!r} backend is not part of this build of laaf_kernels"
    return backend.unavailable(device)


def available_backends() -> List[str]:
    """The backends that can run on this machine (on at least one of its devices)."""
    return [name for name in KNOWN_BACKENDS if _why_unavailable(name, None) is None]


def load_ops() -> List[str]:
    """Register the ``torch.ops.laaf.*`` ops of every fused backend that runs here
    (building the C++/CUDA extension if needed) and return those backends' names.

    Ops are otherwise registered on a backend's first use. A process that loads a
    saved ``torch.export`` program holding laaf ops calls this before
    ``torch.export.load``, so that the program's ops resolve.
    """
    return [name for name in available_backends() if name != "reference"]


def _check_name(name, source: str) -> str:
    if name == "auto" or name in KNOWN_BACKENDS:
        return name
    raise ValueError(
        f"{source} must be 'auto' or one of {', '.join(KNOWN_BACKENDS)}; got {name!r}")


def _requested(backend: Optional[str]):
    """The backend name in force, and where it came from."""
    if backend is not None:
        return backend, "backend="
    in_force = getattr(_context, "names", ())
    if in_force:
        return in_force[-1], "use_backend()"
    if os.environ.get(ENV_VAR):
        return os.environ[ENV_VAR], f"the {ENV_VAR} environment variable"
    return "auto", "auto"


def select_backend(backend: Optional[str], device: torch.device,
                   is_small: Optional[Callable[[], bool]] = None) -> Backend:
    """The backend that runs a call on ``device`` (see the module docstring);
    ``is_small()`` says whether the call is a small training call
    (:func:`small_training_call`), asked only where "auto" would use it."""
    chosen = _chosen_backend(backend, device, is_small)  # first: a bad name still raises
    if torch._C._are_functorch_transforms_active():  # torch.func: see the module docstring
        return _REGISTRY["reference"]
    return chosen


def _chosen_backend(backend: Optional[str], device: torch.device,
                    is_small: Optional[Callable[[], bool]] = None) -> Backend:
    name, source = _requested(backend)
    name = _check_name(name, source)
    if name == "auto":
        if (device.type == "cpu" and is_small is not None
                and not torch.compiler.is_compiling() and is_small()):
            return _REGISTRY["reference"]
        for candidate in AUTO_ORDER.get(device.type, ("reference",)):
            if _why_unavailable(candidate, device) is None:
                return _REGISTRY[candidate]
        return _REGISTRY["reference"]
    reason = _why_unavailable(name, device)
    if reason is not None:
        raise RuntimeError(
            f"backend {name!r} (from {source}) cannot run on {device}: {reason}. "
            f"Available here: {', '.join(available_backends())}")
    return _REGISTRY[name]


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the calls inside the ``with`` block on backend ``name`` (or ``"auto"``).

    A per-call ``backend=`` still wins. Contexts nest, and are local to the
    thread. ``torch.compile`` guards on them: a compiled function called under
    another backend is traced anew.
    """
    outer = getattr(_context, "names", ())
    _context.names = outer + (_check_name(name, "use_backend(name)"),)
    try:
        yield
    finally:
        _context.names = outer


register_backend(Backend(
    name="reference",
    linear=reference.linear_impl,
    activation=reference.activation_impl,
    unavailable=lambda device: None,
    flexible=reference.flexible_activation_impl,
))


# ---------------------------------------------------------------------------
# "triton": imported here, once, when triton is installed (so that compiled
# graphs never trace an import); a failed import is kept as the reason.
# ---------------------------------------------------------------------------

def _triton_device_problem(device: Optional[torch.device]) -> Optional[str]:
    interpreting = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if device is None:
        if torch.cuda.is_available() or interpreting:
            return None
        return "no CUDA device, and TRITON_INTERPRET is not 1"
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        return None if interpreting else (
            "Triton runs CPU tensors only in its interpreter: set TRITON_INTERPRET=1 "
            "before triton is first imported")
    return f"Triton does not run {device.type} tensors"


def _register_triton() -> None:
    if importlib.util.find_spec("triton") is None:
        problem = "triton is not installed (pip install triton)"
        register_backend(Backend("triton", None, None, lambda device: problem))
        return
    try:
        from . import triton_backend
    except Exception as error:  # a broken or incompatible triton must not break the library
        problem = f"importing the Triton kernels failed: {type(error).__name__}: {error}"
        register_backend(Backend("triton", None, None, lambda device: problem))
        return
    register_backend(Backend("triton", triton_backend.linear, triton_backend.activation,
                             _triton_device_problem, triton_backend.flexible))


_register_triton()


# ---------------------------------------------------------------------------
# "cpp": the C++ extension, built on first use (laaf_kernels.ops.extension)
# ---------------------------------------------------------------------------

def _cpp_problem(device: Optional[torch.device]) -> Optional[str]:
    if device is not None and device.type != "cpu":
        return f"the C++ kernels run CPU tensors, not {device.type}"
    from . import extension
    return extension.problem()


def _cpp_module():
    from . import cpp_backend
    return cpp_backend


def _extension_entry(module, name: str):
    """Call module().<name>; the backend module registers its ops' fakes and autograd
    on import, which needs the extension loaded, hence the late import (a plain
    ``from . import``, which torch.compile traces)."""
    def call(*args):
        return getattr(module(), name)(*args)
    return call


register_backend(Backend("cpp", _extension_entry(_cpp_module, "linear"),
                         _extension_entry(_cpp_module, "activation"), _cpp_problem,
                         _extension_entry(_cpp_module, "flexible")))


# ---------------------------------------------------------------------------
# "cuda": the CUDA part of the extension, built on first use like "cpp"
# ---------------------------------------------------------------------------

def _cuda_problem(device: Optional[torch.device]) -> Optional[str]:
    if device is not None and device.type != "cuda":
        return f"the CUDA kernels run CUDA tensors, not {device.type}"
    from . import extension
    return extension.cuda_problem()


def _cuda_module():
    from . import cuda_backend
    return cuda_backend


register_backend(Backend("cuda", _extension_entry(_cuda_module, "linear"),
                         _extension_entry(_cuda_module, "activation"), _cuda_problem,
                         _extension_entry(_cuda_module, "flexible")))
