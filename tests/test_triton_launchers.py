"""Host-side limits of the Triton launchers (laaf_kernels/kernels/triton_launchers.py),
checked on meta tensors: nothing is allocated and nothing launches.

* Which launches index in int64 is tested in test_int64_offsets.py.
* The fused narrow backward holds W in shared memory: which layers take it depends on
  the dtype (an fp64 128 x 128 W fits no GPU's shared memory; tools/triton_dry_run.py).
"""
import re

import pytest
import torch

from laaf_kernels.kernels import triton_launchers as launch
from laaf_kernels.ops import extension

META = dict(device="meta")


@pytest.mark.parametrize("dtype, n, k, narrow", [
    (torch.float32, 128, 128, True),    # W tile 64 KiB
    (torch.bfloat16, 128, 128, True),   # 32 KiB
    (torch.float64, 64, 128, True),     # 64 KiB
    (torch.float64, 128, 64, True),
    (torch.float64, 65, 128, False),    # rounds up to 128 x 128: 128 KiB
    (torch.float64, 128, 128, False),
    (torch.float32, 129, 20, False),    # wider than NARROW_MAX
    (torch.float32, 20, 129, False),
])
def test_which_layers_take_the_narrow_backward(dtype, n, k, narrow):
    assert launch.is_narrow(n, k, dtype) is narrow
    assert launch.stores_z(n, k, True, dtype) is (not narrow)
    assert launch.stores_z(n, k, False, dtype) is False


def test_block_sizes_are_tritons_next_power_of_two():
    """next_pow2_at_least (a loop of comparisons, in place of Triton 3.8's slow
    triton.next_power_of_2) gives Triton's answer, raised to the floor, at every n up
    to 4100 (both sides of each power of two)."""
    import triton
    from laaf_kernels.kernels.triton_utils import next_pow2_at_least, next_pow2_at_least_16
    for low in (1, 16, 64):
        got = [next_pow2_at_least(n, low) for n in range(1, 4101)]
        assert got == [max(low, triton.next_power_of_2(n)) for n in range(1, 4101)], low
    assert next_pow2_at_least_16(0) == 16 and next_pow2_at_least_16(17) == 32


def test_the_wide_row_bound_is_the_cpp_kernels_one():
    """_as_grid re-views wide rows as csrc's act_layout does (the Triton backend cannot
    call the C++ extension, so the rule is written twice): the bound must be the same."""
    header = (extension.CSRC / "laaf_layout.h").read_text()
    bound = re.search(r"constexpr int64_t kMaxUnsplitRow = (\d+);", header)
    assert bound and int(bound.group(1)) == launch.MAX_UNSPLIT_ROW


@pytest.mark.parametrize("shape, view", [
    ((512,), (1, 512)),          # at the bound: one row
    ((513,), (513, 1)),          # odd: width 1
    ((3, 520), (195, 8)),        # 1560 = 8 * 195
    ((2, 4096), (128, 64)),      # widths stop at 64
])
def test_wide_rows_without_a_per_channel_slope_are_re_viewed(shape, view):
    z = torch.empty(shape, **META)
    for s in (None, torch.tensor(0.5)):
        z2, on_rows, _ = launch._as_grid(z, s, z.dim() - 1)
        assert tuple(z2.shape) == view and not on_rows
    z2, _, _ = launch._as_grid(z, torch.empty(shape[-1], **META), z.dim() - 1)  # (C,): kept
    assert tuple(z2.shape) == (z.numel() // shape[-1], shape[-1])
