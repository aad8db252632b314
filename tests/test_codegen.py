"""The generated backend sources match the one activation table."""
from laaf_kernels.activations import ACTIVATIONS
from laaf_kernels.kernels import codegen


def test_generated_files_are_fresh():
    stale = [str(p) for p, render in codegen.GENERATED.items() if p.read_text() != render()]
    assert not stale, f"regenerate with `python -m laaf_kernels.kernels.codegen`: {stale}"


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
