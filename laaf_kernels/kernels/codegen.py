"""Render the activation table (``laaf_kernels/activations.py``) into backend source:
Triton here, C++ (CPU vector lanes, CUDA scalars) in :mod:`.codegen_c`.

    python -m laaf_kernels.kernels.codegen          # rewrite the generated files
    python -m laaf_kernels.kernels.codegen --check  # exit 1 if any is stale

Generated files are committed, so that they can be read and so that a GPU box
without write access to the package still works; ``tests/test_codegen.py``
fails when one no longer matches the table.
"""
from __future__ import annotations

import argparse
import ast
import pathlib
import sys

from ..activations import ACTIVATIONS, TABLE, Y_FORMULAS, is_constant
from ..flexible import FLEXIBLE, FLEXIBLE_KINDS
from . import codegen_c

HERE = pathlib.Path(__file__).resolve().parent
TRITON_FILE = HERE / "triton_activations.py"
TRITON_FLEXIBLE_FILE = HERE / "triton_flexible_formulas.py"
CSRC = HERE.parent.parent / "csrc"

#: The integer id of each activation inside kernels (a tl.constexpr).
ACT_IDS = {name: i for i, name in enumerate(ACTIVATIONS)}
#: The integer id of each flexible kind inside kernels.
KIND_IDS = {name: i for i, name in enumerate(FLEXIBLE_KINDS)}


class _BroadcastLiteralArguments(ast.NodeTransformer):
    """``where(c, 1.0, 0.01)`` -> ``where(c, zeros_like(h) + 1.0, zeros_like(h) + 0.01)``,
    and the same for the literal arguments of ``maximum`` / ``minimum``.

    These are @triton.jit helpers (``triton_prims``): a Python float passed to one
    is typed fp32 there, so 0.01 or 1e-06 would be inexact in an fp64 kernel
    (and a literal-only ``where`` fp32 as a whole). Broadcasting the literal over
    the formula's variable (``h``, or ``z``) keeps that variable's dtype. Literals
    in plain arithmetic (``0.01 * h``) take the tensor's dtype already.
    """

    def __init__(self, var: str):
        self.var = var

    def visit_Call(self, node):
        self.generic_visit(node)
        if isinstance(node.func, ast.Name) and node.func.id in ("where", "maximum", "minimum"):
            first = 1 if node.func.id == "where" else 0  # where's condition stays as it is
            node.args[first:] = [_broadcast(a, self.var) if isinstance(a, ast.Constant) else a
                                 for a in node.args[first:]]
        return node


def _broadcast(constant: ast.Constant, var: str) -> ast.expr:
    zeros = ast.Call(func=ast.Name("zeros_like", ast.Load()), args=[ast.Name(var, ast.Load())],
                     keywords=[])
    return ast.BinOp(left=zeros, op=ast.Add(), right=constant)


def _triton_expr(source: str, var: str = "h") -> str:
    """A formula as a Triton expression; constants are broadcast over ``var``."""
    if is_constant(source):
        return f"zeros_like({var}) + {source}"
    tree = _BroadcastLiteralArguments(var).visit(ast.parse(source, mode="eval"))
    return ast.unparse(tree)


def _triton_switch(signature: str, doc: str, selector: str, cases) -> str:
    """A @triton.jit function that picks one formula by a constexpr id.
    ``cases``: (id, name, lets, formula) per row; the first argument of
    ``signature`` is the variable that literals are broadcast over."""
    var = signature.split("(")[1].split(",")[0]
    lines = ["@triton.jit", f"def {signature}:", f'    """{doc}"""']
    for i, (case_id, name, lets, formula) in enumerate(cases):
        lines.append(f"    {'if' if i == 0 else 'elif'} {selector} == {case_id}:  # {name}")
        lines += [f"        {v} = {_triton_expr(e, var)}" for v, e in lets]
        lines.append(f"        out = {_triton_expr(formula, var)}")
    lines += ["    else:", f"        tl.static_assert(False, 'unknown {selector} id')",
              f"        out = {var}", "    return out"]
    return "\n".join(lines)


def _triton_function(which: str) -> str:
    prime = "" if which == "value" else "'" * int(which[1])
    cases = [(ACT_IDS[name], name, TABLE[name].lets_for(TABLE[name].formula(which)),
              TABLE[name].formula(which)) for name in ACTIVATIONS]
    return _triton_switch(f"act_{which}(h, ACT: tl.constexpr)",
                          f"act{prime}(h) for the activation with id ACT.", "ACT", cases)


def _triton_y_function(which: str) -> str:
    """act'(h) (d1_y) or its derivatives in y, as functions of y = act(h), for the
    activations that have them (laaf_kernels.ops.grad_y)."""
    cases = [(ACT_IDS[name], name, (), TABLE[name].formula(which)) for name in ACTIVATIONS
             if TABLE[name].d1_y is not None]
    what = {"d1_y": "act'(h)", "d1_y_dy": "d act'(h) / dy",
            "d1_y_dyy": "d^2 act'(h) / dy^2"}[which]
    return _triton_switch(f"act_{which}(y, ACT: tl.constexpr)",
                          f"{what} from y = act(h), for the activation with id ACT.", "ACT", cases)


def _triton_flexible_function(which: str) -> str:
    cases = [(KIND_IDS[name], name, FLEXIBLE[name].lets_for(FLEXIBLE[name].formula(which)),
              FLEXIBLE[name].formula(which)) for name in FLEXIBLE_KINDS]
    return _triton_switch(f"flex_{which}(z, p0, p1, KIND: tl.constexpr)",
                          f"The flexible kind KIND's {which} at z, parameters p0, p1.", "KIND",
                          cases)


def render_triton_flexible() -> str:
    header = [
        '"""GENERATED by laaf_kernels/kernels/codegen.py from laaf_kernels/flexible.py.',
        "",
        "Do not edit: change the table and run `python -m laaf_kernels.kernels.codegen`.",
        "flex_value / flex_dz / flex_dp0 / flex_dp1 give f(z; p0, p1) and its partial",
        'derivatives; KIND selects the kind at compile time (KIND_IDS below)."""',
        "# flake8: noqa",
        "import triton",
        "import triton.language as tl",
        "",
        "from .triton_prims import (abs, cbrt, maximum, minimum, sigmoid, tanh, where,",
        "                           zeros_like)",
        "",
        f"KIND_IDS = {KIND_IDS!r}",
    ]
    body = [_triton_flexible_function(which) for which in ("value", "dz", "dp0", "dp1")]
    return "\n".join(header) + "\n\n\n" + "\n\n\n".join(body) + "\n"


def render_triton() -> str:
    header = [
        '"""GENERATED by laaf_kernels/kernels/codegen.py from laaf_kernels/activations.py.',
        "",
        "Do not edit: change the table and run `python -m laaf_kernels.kernels.codegen`.",
        "act_value / act_d1 / act_d2 give act(h), act'(h), act''(h); act_d1_y /",
        "act_d1_y_dy / act_d1_y_dyy give act'(h) and its derivatives in y = act(h), where",
        'the table has them. ACT selects the activation at compile time (ACT_IDS below)."""',
        "# flake8: noqa",
        "import triton",
        "import triton.language as tl",
        "",
        "from .triton_prims import (INV_SQRT_2PI, SQRT1_2, abs, cos, erf, exp, expm1, log1p,",
        "                           maximum, minimum, sigmoid, sin, tanh, where, zeros_like)",
        "",
        f"ACT_IDS = {ACT_IDS!r}",
    ]
    body = [_triton_function(which) for which in ("value", "d1", "d2")]
    body += [_triton_y_function(which) for which in Y_FORMULAS]
    return "\n".join(header) + "\n\n\n" + "\n\n\n".join(body) + "\n"


GENERATED = {
    TRITON_FILE: render_triton,
    TRITON_FLEXIBLE_FILE: render_triton_flexible,
    CSRC / "laaf_activation_ids.h": codegen_c.render_ids,
    CSRC / "laaf_activations.h": codegen_c.render_cpp,
    CSRC / "laaf_activations_cuda.cuh": codegen_c.render_cuda,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    stale = []
    for path, render in GENERATED.items():
        text = render()
        if not path.exists() or path.read_text() != text:
            stale.append(path)
            if not args.check:
                path.write_text(text)
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'}: {path}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
