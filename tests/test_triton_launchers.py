"""Host-side limits of the Triton launchers (laaf_kernels/kernels/triton_launchers.py),
checked on meta tensors: nothing is allocated and nothing launches.

* The kernels' offsets are int32: a tensor that spans 2^31 elements or more (by its
  size, or by its strides), or a linear layer whose output would, is refused with an
  error that names it, instead of wrapping around on a GPU.
* The fused narrow backward holds W in shared memory: which layers take it depends on
  the dtype (an fp64 128 x 128 W fits no GPU's shared memory; tools/triton_dry_run.py).
"""
import re

import pytest
import torch

from laaf_kernels.kernels import triton_launchers as launch
from laaf_kernels.ops import extension

META = dict(device="meta")


def test_a_tensor_of_2_31_elements_is_refused_by_name():
    z = torch.empty(2**31, **META)
    with pytest.raises(ValueError, match=r"triton backend: z spans 2147483648 elements"):
        launch.activation_forward(z, None, "tanh", 0)
    with pytest.raises(ValueError, match=r"triton backend: g spans"):
        launch.activation_backward(z, torch.empty(3, **META), None, "tanh", 0, True, False)


def test_strides_that_reach_2_31_are_refused():
    x = torch.empty(6, **META).as_strided((2, 3), (2**31, 1))  # 6 elements, 2^31 + 3 apart
    w = torch.empty(4, 3, **META)
    with pytest.raises(ValueError, match=r"triton backend: x spans 2147483651 elements"):
        launch.linear_forward(x, w, None, None, "tanh", False)


def test_a_linear_output_of_2_31_elements_is_refused():
    x, w = torch.empty(2**25, 2, **META), torch.empty(64, 2, **META)  # y: 2^31 elements
    with pytest.raises(ValueError, match=r"triton backend: the output y spans"):
        launch.linear_forward(x, w, None, None, "tanh", True)


def test_just_below_the_limit_passes_the_check():
    launch._check_int32_span("z", 2**31 - 1)


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
