"""The generated backend sources match the one activation table."""
from laaf_kernels.activations import ACTIVATIONS
from laaf_kernels.kernels import codegen


def test_generated_files_are_fresh():
    stale = [str(p) for p, render in codegen.GENERATED.items() if p.read_text() != render()]
    assert not stale, f"regenerate with `python -m laaf_kernels.kernels.codegen`: {stale}"


def _fit_minimax():
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / "tools" / "fit_minimax.py"
    spec = importlib.util.spec_from_file_location("fit_minimax", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, path.parents[1]


def test_tanh_slots_header_is_the_fit():
    """csrc/laaf_tanh_slots.h (the AVX-512 fp32 tanh's tables) is what
    `python tools/fit_minimax.py fp32_tanh_slots` writes: a fit in mpmath, deterministic,
    ~10 s; its coefficients rounded to float32."""
    fit, root = _fit_minimax()
    header, _ = fit.mp.workdps(40)(fit.tanh_slots_header)()
    assert (root / fit.TANH_SLOTS_HEADER).read_text() == header, \
        "regenerate with `python tools/fit_minimax.py fp32_tanh_slots`"


def test_activation_ids_cover_the_table():
    assert list(codegen.ACT_IDS) == list(ACTIVATIONS)
    assert sorted(codegen.ACT_IDS.values()) == list(range(len(ACTIVATIONS)))


def test_literal_arguments_of_helpers_are_broadcast_over_the_variable():
    """A literal-only where() would be typed fp32 by Triton (0.01 inexact in fp64)."""
    assert codegen._triton_expr("where(h > 0.0, 1.0, 0.01)") == \
        "where(h > 0.0, zeros_like(h) + 1.0, zeros_like(h) + 0.01)"
    assert codegen._triton_expr("0.0") == "zeros_like(h) + 0.0"
    # a literal passed to a @triton.jit helper would be typed fp32 (1e-06 inexact in fp64)
    assert codegen._triton_expr("maximum(abs(z), 1e-06)", "z") == \
        "maximum(abs(z), zeros_like(z) + 1e-06)"


def test_vector_extrema_keep_nan_and_take_one_instruction_against_a_literal():
    """maximum / minimum on at::vec lanes: against a literal (either side, named
    constants and negated literals too) at::vec's clamp_min / clamp_max, max(c, x), which
    keeps a NaN x; of two variables laaf_vec_math.h's nan_maximum / nan_minimum, NaN from
    either side (never at::vec::maximum: slow on AVX-512, see codegen_c.VecStyle)."""
    from laaf_kernels.kernels.codegen_c import ScalarStyle, VecStyle, render_expr
    assert render_expr("maximum(z, 0.0)", VecStyle) == "at::vec::clamp_min(z, V(0.0))"
    assert render_expr("maximum(0.0, z)", VecStyle) == "at::vec::clamp_min(z, V(0.0))"
    assert render_expr("minimum(u, -1.0)", VecStyle) == "at::vec::clamp_max(u, V(-1.0))"
    assert render_expr("maximum(z, w)", VecStyle) == "nan_maximum(z, w)"
    assert render_expr("minimum(exp(1.0), z)", VecStyle) == "nan_minimum(V(1.0).exp(), z)"
    assert render_expr("minimum(z, w)", ScalarStyle) == "prim_minimum(z, w)"
