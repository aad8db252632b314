"""The one autograd path that every fused backend shares.

A fused backend provides four ``torch.library`` custom ops::

    linear_fwd(x2d, W, b?, s?, activation, store_z)            -> (y, z)
    linear_bwd(g, x2d, W, b?, z, s?, y?, activation, need_dx, need_dw, need_db, need_ds)
                                                                -> (dx, dW, db, ds)
    act_fwd(z, s?, activation, dim)                             -> y
    act_bwd(g, z, s?, y?, activation, dim, need_dz, need_ds)    -> (dz, ds)

where ``z`` = x W^T + b if ``store_z``, else an empty tensor (the backward
then forms z again, or needs none). Whether a training layer keeps z is the
backend's policy, ``stores_z(N, K, training, dtype, activation)``, asked here
in Python and passed to the op as a constant: so it is written into a traced
graph, and a release that changes the policy changes the graph, and with it the
key of torch.compile's on-disk caches (the key does not cover an op's fake: a
fake that asked the policy itself would let a cached graph outlive the policy it
was traced with). ``y`` is the saved output, passed
only to a backend registered with ``saves_y`` and only for activations whose
act' is a function of y (the table's ``d1_y``: tanh, sigmoid, relu, ...), so
that its backward needs no transcendental; and ``s = scale * slope`` is formed
here with a differentiable torch multiply, so autograd turns ``ds`` into
``da = n * ds`` by itself. This module registers
their autograd formulas and builds the backend's ``linear``/``activation``
entry points (flattening, autocast, inference vs training).

Backward (``shared/notes/math.md``)::

    gh = g act'(h)   gz = gh s   dx = gz W   dW = gz^T x   db = sum gz   ds = sum gh z

When the backward itself is being differentiated (``create_graph=True``, as
a PINN does for u_x, u_xx), the fused backward op is not used: the gradients
are formed from differentiable ops, so derivatives of any order stay correct:
gz = g act'(h) s from the backend's fused ``grad_y`` op where it has one (its
derivatives fused too, :mod:`laaf_kernels.ops.grad_y`), else from torch ops and
the table's act' formula; dx = gz W and dW = gz^T x as the backend's
differentiable ``matmul`` where it has one (:mod:`laaf_kernels.ops.matmul`), else
``torch.mm``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F

from ..activations import evaluate, grad_from_y
from ..activations import get as get_activation
from ..flexible import evaluate_flexible
from ..reference import along, flexible_operands
from .memory_order import in_memory_order

__all__ = ["register_backend_ops", "register_flexible_ops", "make_linear", "make_activation",
           "make_flexible", "differentiable_linear_grads", "differentiable_activation_grads",
           "differentiable_flexible_grads", "present", "call_op", "needed_inputs",
           "register_autograd_rule", "sum_like_slope", "needs_grad"]


# ---------------------------------------------------------------------------
# Differentiable backward (used under create_graph=True)
# ---------------------------------------------------------------------------

def sum_like_slope(t: torch.Tensor, s: torch.Tensor, keep_dim: int) -> torch.Tensor:
    """Reduce ``t`` to the shape of ``s``: all of it for a 0-d s, else all dims but ``keep_dim``."""
    if s.dim() == 0:
        return t.sum()
    dims = [d for d in range(t.dim()) if d != keep_dim]
    return t.sum(dims) if dims else t  # (t.sum([]) would sum over every dim)


def _gh(g, activation, h_fn, y):
    """gh = g act'(h): from the saved output y where the table allows (y is the
    op's differentiable output, so higher derivatives flow through it), else from h."""
    if y is not None and get_activation(activation).d1_y is not None:
        return grad_from_y(activation, g, y)
    return g * evaluate(activation, "d1", h_fn())


def differentiable_activation_grads(g, z, s, activation, dim, need, y=None, grad_y=None):
    """(dz, ds) of y = act(s z) from differentiable ops. With the backend's fused
    ``grad_y`` (g act'(h) s from y, its derivatives fused too), where the table
    writes act' in y: from the saved y, or from y = act(s z) recomputed by torch
    (a backend that does not save y); otherwise from torch ops alone."""
    s_b = None if s is None else along(s, z.dim(), dim)
    need_ds = need[1] and s is not None
    h_fn = lambda: z if s is None else z * s_b  # noqa: E731
    if grad_y is not None and get_activation(activation).d1_y is not None:
        if y is None:
            y = get_activation(activation).torch_fn(h_fn())
        if not need_ds:
            return (grad_y(g, y, s, activation, dim) if need[0] else None), None
        gh = grad_y(g, y, None, activation, dim)
    else:
        gh = _gh(g, activation, h_fn, y)
    dz = (gh if s is None else gh * s_b) if need[0] else None
    ds = sum_like_slope(gh * z, s, dim) if need_ds else None
    return dz, ds


def differentiable_linear_grads(g, x, weight, bias, s, activation, need, y=None, grad_y=None,
                                matmul=torch.mm):
    """(dx, dW, db, ds) of y = act(s (x W^T + b)) from differentiable ops.
    z is recomputed with F.linear (so that the graph reaches x, W and b) unless
    neither act' (given y) nor ds needs it, as for a PINN's u_x; act' comes
    from y whenever the table allows, even when z is recomputed for ds, through
    the backend's fused ``grad_y`` where given; dx = gz W and dW = gz^T x through
    ``matmul`` (the backend's narrow GEMM, or torch.mm)."""
    if need[3] or y is None or get_activation(activation).d1_y is None:
        z = F.linear(x, weight, bias)
        gz, ds = differentiable_activation_grads(g, z, s, activation, 1, (True, need[3]), y,
                                                 grad_y)
    elif grad_y is not None:
        gz, ds = grad_y(g, y, s, activation, 1), None
    else:
        gh = grad_from_y(activation, g, y)
        gz, ds = (gh if s is None else gh * s), None
    return (matmul(gz, weight) if need[0] else None,
            matmul(gz.t(), x) if need[1] else None,
            gz.sum(0) if need[2] else None,
            ds)


def differentiable_flexible_grads(g, z, params, kind, dim, need):
    """(dz, dparams) of y = f_kind(z; p0, p1) from the table's formulas as torch ops:
    dz = g f_z, dparams[k] = sum over all dims but ``dim`` of g f_{p_k}; float16 and
    bfloat16 computed in float32 (see flexible.compute_dtype)."""
    zc, p0, p1 = flexible_operands(z, params, dim)
    g = g.to(zc.dtype)
    dz = (g * evaluate_flexible(kind, "dz", zc, p0, p1)).to(z.dtype) if need[0] else None
    dp = None
    if need[1]:
        dp = torch.stack([sum_like_slope(g * evaluate_flexible(kind, f"dp{k}", zc, p0, p1),
                                          params[k], dim) for k in range(params.shape[0])])
        dp = dp.to(params.dtype)
    return dz, dp


# ---------------------------------------------------------------------------
# Autograd registration for a backend's ops
# ---------------------------------------------------------------------------

def needed_inputs(ctx, count: int):
    """ctx.needs_input_grad[:count] narrowed to the inputs this backward pass will
    use: autograd.grad(u, x) runs only what leads to x, and the engine knows
    which nodes those are (native ops skip the rest the same way). The nodes are
    this node's own edges, ``ctx.next_functions``, leaves' AccumulateGrad included
    (skipping those keeps a PINN's u_x pass from forming dW and db for nothing)."""
    need = list(ctx.needs_input_grad[:count])
    try:
        edges = ctx.next_functions
    except Exception:  # not a real autograd node (e.g. while torch.compile traces)
        return tuple(need)
    for i, (node, _) in enumerate(edges[:count]):
        if need[i] and node is not None:
            try:
                need[i] = torch._C._will_engine_execute_node(node)
            except Exception:  # the grad target itself, private API gone: keep it
                pass
    return tuple(need)


def present(grads, need):
    """An op's outputs with None where not needed (the ops return empty tensors there)."""
    return [t if n else None for t, n in zip(grads, need)]


def _saved_y(saves_y: bool, activation: str, y: torch.Tensor) -> Optional[torch.Tensor]:
    return y if saves_y and get_activation(activation).d1_y is not None else None


# ---------------------------------------------------------------------------
# Calling a registered op: eagerly with its autograd rule, or through the op
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Rule:
    """An op's autograd rule, as given to torch.library.register_autograd."""
    op: Callable
    setup_context: Callable
    backward: Callable


_RULES: Dict[str, _Rule] = {}


def register_autograd_rule(qualname: str, backward, setup_context) -> None:
    """torch.library.register_autograd, keeping the rule for eager calls (call_op)."""
    torch.library.register_autograd(qualname, backward, setup_context=setup_context)
    namespace, name = qualname.split("::")
    _RULES[qualname] = _Rule(getattr(getattr(torch.ops, namespace), name), setup_context,
                             backward)


class _EagerCall(torch.autograd.Function):
    """One eager call ``(*inputs, rule)`` of a registered op: the op's own kernel,
    then the very setup_context and backward that torch.library would run. This
    skips torch.library's per-call Python wrapper (schema defaults filled in, a
    redispatch from Python: about 100 us), which a PINN pays for every layer of
    every derivative pass, and which made the small layers of a PINN slower than
    the unfused reference."""

    @staticmethod
    def forward(ctx, *args):
        *inputs, rule = args
        with torch._C._AutoDispatchBelowAutograd():
            output = rule.op(*inputs)
        ctx.rule_backward = rule.backward
        rule.setup_context(ctx, tuple(inputs), output)
        return output

    @staticmethod
    def backward(ctx, *grads):
        return (*ctx.rule_backward(ctx, *grads), None)


# Function.apply, less its Python prologue: torch.autograd.Function.apply binds default
# arguments (only for a Function with a separate setup_context, not _EagerCall) and
# unwraps functorch's dead wrappers (no functorch transform reaches call_op:
# dispatch.select_backend hands those to the reference), then calls this C
# classmethod of torch._C._FunctionBase. Skipping the prologue saves ~2 us a call,
# which a PINN step pays some 50 times.
_eager_apply = super(torch.autograd.Function, _EagerCall).apply


def needs_grad(*values) -> bool:
    """Whether autograd records a call on ``values`` (tensors among other arguments)."""
    return torch.is_grad_enabled() and any(
        isinstance(v, torch.Tensor) and v.requires_grad for v in values)


def call_op(qualname: str, *args):
    """Run the registered op ``qualname`` on ``args`` with its autograd.

    Under torch.compile the op itself is called (what it traces); otherwise the
    op's kernel runs directly, in an :class:`_EagerCall` when a gradient is wanted.
    Both paths use the one rule. (No call reaches here under a torch.func transform:
    dispatch.select_backend hands those to the reference.)"""
    rule = _RULES[qualname]
    if torch.compiler.is_compiling():
        return rule.op(*args)
    if needs_grad(*args):
        return _eager_apply(*args, rule)
    with torch._C._AutoDispatchBelowAutograd():
        return rule.op(*args)


def _register_linear_autograd(fwd_name: str, bwd_op, saves_y: bool, grad_y=None,
                              matmul=torch.mm) -> None:
    """Autograd of ``fwd_name`` (y, z) via ``bwd_op``; z is a saved, non-differentiable output."""

    def setup_context(ctx, inputs, output):
        x, weight, bias, s, activation, _store_z = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)
        ctx.activation = activation
        ctx.save_for_backward(x, weight, bias, output[1], s,
                              _saved_y(saves_y, activation, output[0]))

    def backward(ctx, gy, _gz):
        x, weight, bias, z, s, y = ctx.saved_tensors
        need = needed_inputs(ctx, 4)
        if gy is None or not any(need):
            return None, None, None, None, None, None
        if torch.is_grad_enabled():  # create_graph=True: keep the backward differentiable
            grads = differentiable_linear_grads(gy, x, weight, bias, s, ctx.activation, need, y,
                                                grad_y, matmul)
        else:
            grads = present(bwd_op(gy, x, weight, bias, z, s, y, ctx.activation, *need), need)
        return (*grads, None, None)

    register_autograd_rule(fwd_name, backward, setup_context)


def _register_activation_autograd(fwd_name: str, bwd_op, saves_y: bool, grad_y=None) -> None:
    """Autograd of ``fwd_name`` y = act(s z) via ``bwd_op``."""

    def setup_context(ctx, inputs, output):
        z, s, activation, dim = inputs
        ctx.activation, ctx.dim = activation, dim
        ctx.save_for_backward(z, s, _saved_y(saves_y, activation, output))

    def backward(ctx, gy):
        z, s, y = ctx.saved_tensors
        need = needed_inputs(ctx, 2)
        if not any(need):
            return None, None, None, None
        if torch.is_grad_enabled():
            grads = differentiable_activation_grads(gy, z, s, ctx.activation, ctx.dim, need, y,
                                                    grad_y)
        else:
            grads = present(bwd_op(gy, z, s, y, ctx.activation, ctx.dim, *need), need)
        return (*grads, None, None)

    register_autograd_rule(fwd_name, backward, setup_context)


# ---------------------------------------------------------------------------
# Fake (meta) implementations: shapes only, for torch.compile and opcheck
# ---------------------------------------------------------------------------

def _empty_unless(need: bool, like: torch.Tensor, shape) -> torch.Tensor:
    return like.new_empty(shape if need else (0,))


def _register_fakes(prefix: str) -> None:
    """Fakes of laaf::<prefix>_{linear,act}_{fwd,bwd}: functions of their arguments
    alone (no policy of the library's), as the caches of torch.compile assume."""

    @torch.library.register_fake(f"laaf::{prefix}_linear_fwd")
    def _(x, weight, bias, s, activation, store_z):
        shape = (x.shape[0], weight.shape[0])
        return x.new_empty(shape), _empty_unless(store_z, x, shape)

    @torch.library.register_fake(f"laaf::{prefix}_linear_bwd")
    def _(g, x, weight, bias, z, s, y, activation, need_dx, need_dw, need_db, need_ds):
        need_ds = need_ds and s is not None
        return (_empty_unless(need_dx, x, x.shape), _empty_unless(need_dw, x, weight.shape),
                _empty_unless(need_db, x, weight.shape[:1]),
                s.new_empty(s.shape) if need_ds else x.new_empty((0,)))

    @torch.library.register_fake(f"laaf::{prefix}_act_fwd")
    def _(z, s, activation, dim):
        return torch.empty_like(z, memory_format=torch.contiguous_format)

    @torch.library.register_fake(f"laaf::{prefix}_act_bwd")
    def _(g, z, s, y, activation, dim, need_dz, need_ds):
        need_ds = need_ds and s is not None
        return (torch.empty_like(z, memory_format=torch.contiguous_format) if need_dz
                else z.new_empty((0,)),
                s.new_empty(s.shape) if need_ds else z.new_empty((0,)))


def register_backend_ops(prefix: str, saves_y: bool = False,
                         grad_y: Optional[Callable] = None,
                         matmul: Callable = torch.mm) -> None:
    """Fakes and autograd for a backend's four ops, torch.ops.laaf.<prefix>_*.
    ``grad_y`` (:func:`laaf_kernels.ops.grad_y.make_grad_y`) makes the create_graph
    backward run on the backend's fused derivatives of g act'(h) s, and ``matmul``
    (:func:`laaf_kernels.ops.matmul.make_matmul`) its GEMMs on the backend's own."""
    _register_fakes(prefix)
    ops = torch.ops.laaf
    _register_linear_autograd(f"laaf::{prefix}_linear_fwd", getattr(ops, f"{prefix}_linear_bwd"),
                              saves_y, grad_y, matmul)
    _register_activation_autograd(f"laaf::{prefix}_act_fwd", getattr(ops, f"{prefix}_act_bwd"),
                                  saves_y, grad_y)


# ---------------------------------------------------------------------------
# The backend entry points (what dispatch calls, arguments already checked)
# ---------------------------------------------------------------------------

def _autocast(device_type: str, *tensors):
    """Under autocast, cast x, W, b as ``nn.Linear`` is cast (the slope stays fp32)."""
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(None if t is None else t.to(dtype) for t in tensors)




def make_linear(prefix: str, stores_z: Callable, dtypes=None, fallback=None):
    """The backend's ``linear(x, weight, bias, slope, activation, scale)``; inputs
    of a dtype outside ``dtypes`` (after autocast) go to ``fallback``. ``stores_z(N,
    K, training, dtype, activation)`` is the backend's policy of which layers keep
    z: plain Python on the shapes, so that torch.compile evaluates it while it
    traces (guarding on N and K where they are symbolic) and writes its answer into
    the graph."""

    def linear(x, weight, bias, slope, activation: str, scale: float) -> torch.Tensor:
        x, weight, bias = _autocast(x.device.type, x, weight, bias)
        if dtypes is not None and x.dtype not in dtypes:  # e.g. bf16 under autocast
            return fallback(x, weight, bias, slope, activation, scale).to(x.dtype)
        s = None if slope is None else scale * slope
        # A 2-D x goes in as it is: a reshape would add a view node to the graph, and
        # each costs a few microseconds forward and backward, which a small layer feels.
        flat = x.dim() != 2
        x2 = x.reshape(-1, x.shape[-1]) if flat else x
        store_z = bool(stores_z(weight.shape[0], weight.shape[1],  # bool(): a constant
                                needs_grad(x, weight, bias, s), x.dtype, activation))
        y, _ = call_op(f"laaf::{prefix}_linear_fwd", x2, weight, bias, s, activation, store_z)
        return y.reshape(*x.shape[:-1], weight.shape[0]) if flat else y

    return linear


def make_activation(prefix: str, dtypes=None, fallback=None):
    """The backend's ``activation(z, slope, activation, scale, dim)``; as make_linear."""

    def activation_fn(z, slope, activation: str, scale: float, dim: int) -> torch.Tensor:
        if dtypes is not None and z.dtype not in dtypes:
            return fallback(z, slope, activation, scale, dim)
        s: Optional[torch.Tensor] = None if slope is None else scale * slope
        return in_memory_order(
            lambda zz, d: call_op(f"laaf::{prefix}_act_fwd", zz, s, activation, d), z, dim)

    return activation_fn


# ---------------------------------------------------------------------------
# Flexible activations: flex_fwd(z, params, kind, dim) -> y and
# flex_bwd(g, z, params, kind, dim, need_dz, need_dp) -> (dz, dparams)
# ---------------------------------------------------------------------------

def register_flexible_ops(prefix: str) -> None:
    """Fakes and autograd for torch.ops.laaf.<prefix>_flex_{fwd,bwd}."""

    @torch.library.register_fake(f"laaf::{prefix}_flex_fwd")
    def _(z, params, kind, dim):
        return torch.empty_like(z, memory_format=torch.contiguous_format)

    @torch.library.register_fake(f"laaf::{prefix}_flex_bwd")
    def _(g, z, params, kind, dim, need_dz, need_dp):
        return (torch.empty_like(z, memory_format=torch.contiguous_format) if need_dz
                else z.new_empty((0,)),
                params.new_empty(params.shape) if need_dp else z.new_empty((0,)))

    bwd_op = getattr(torch.ops.laaf, f"{prefix}_flex_bwd")

    def setup_context(ctx, inputs, output):
        z, params, kind, dim = inputs
        ctx.kind, ctx.dim = kind, dim
        ctx.save_for_backward(z, params)

    def backward(ctx, gy):
        z, params = ctx.saved_tensors
        need = needed_inputs(ctx, 2)
        if not any(need):
            return None, None, None, None
        if torch.is_grad_enabled():  # create_graph=True: differentiable formulas
            grads = differentiable_flexible_grads(gy, z, params, ctx.kind, ctx.dim, need)
        else:
            grads = present(bwd_op(gy, z, params, ctx.kind, ctx.dim, *need), need)
        return (*grads, None, None)

    register_autograd_rule(f"laaf::{prefix}_flex_fwd", backward, setup_context)


def make_flexible(prefix: str, dtypes=None, fallback=None):
    """The backend's ``flexible(z, params, kind, dim)``; as make_activation."""

    def flexible(z, params, kind: str, dim: int) -> torch.Tensor:
        if dtypes is not None and z.dtype not in dtypes:
            return fallback(z, params, kind, dim)
        return in_memory_order(
            lambda zz, d: call_op(f"laaf::{prefix}_flex_fwd", zz, params, kind, d), z, dim)

    return flexible
