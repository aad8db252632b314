"""Bad input: each raises a ValueError or TypeError naming the argument and what
was expected, through the public API and through laaf_kernels.reference alike."""
import pytest
import torch

import laaf_kernels
from laaf_kernels import reference

LINEAR_APIS = [laaf_kernels.laaf_linear, reference.laaf_linear]
ACTIVATION_APIS = [laaf_kernels.laaf_activation, reference.laaf_activation]


def good(dtype=torch.float32):
    x = torch.randn(5, 3, dtype=dtype)
    w = torch.randn(4, 3, dtype=dtype)
    b = torch.randn(4, dtype=dtype)
    a = torch.rand(4, dtype=dtype) + 0.1
    return x, w, b, a


LINEAR_CASES = {
    "unknown activation": (lambda x, w, b, a: dict(args=(x, w, b, a), activation="swish"),
                           ValueError, "activation must be one of tanh, sigmoid, relu, leaky_relu"),
    "slope 2-D": (lambda x, w, b, a: dict(args=(x, w, b, a.view(2, 2))),
                  ValueError, r"slope must have shape \(\) or \(4,\)"),
    "slope wrong length": (lambda x, w, b, a: dict(args=(x, w, b, a[:3])),
                           ValueError, r"slope must have shape \(\) or \(4,\)"),
    "slope (1,) is not broadcast": (lambda x, w, b, a: dict(args=(x, w, b, a[:1])),
                                    ValueError, r"slope must have shape \(\) or \(4,\)"),
    "x last dim != K": (lambda x, w, b, a: dict(args=(x[:, :2], w, b, a)),
                        ValueError, r"x.shape\[-1\] must equal weight.shape\[1\] = 3"),
    "0-d x": (lambda x, w, b, a: dict(args=(x[0, 0], w, b, a)),
              ValueError, r"x.shape\[-1\] must equal"),
    "weight 1-D": (lambda x, w, b, a: dict(args=(x, w[0], b, a)),
                   ValueError, "weight must be 2-D"),
    "bias wrong length": (lambda x, w, b, a: dict(args=(x, w, b[:3], a)),
                          ValueError, r"bias must have shape \(4,\)"),
    "bias 2-D": (lambda x, w, b, a: dict(args=(x, w, b.view(1, 4), a)),
                 ValueError, r"bias must have shape \(4,\)"),
    "mixed dtypes": (lambda x, w, b, a: dict(args=(x.double(), w, b, a)),
                     TypeError, "weight has dtype torch.float32 but x has torch.float64"),
    "mixed slope dtype": (lambda x, w, b, a: dict(args=(x, w, b, a.double())),
                          TypeError, "slope has dtype torch.float64"),
    "integer x": (lambda x, w, b, a: dict(args=(x.long(), w, b, a)),
                  TypeError, "x must have a floating-point dtype"),
    "integer slope": (lambda x, w, b, a: dict(args=(x, w, b, torch.ones(4, dtype=torch.int32))),
                      TypeError, "slope must have a floating-point dtype"),
    "list as x": (lambda x, w, b, a: dict(args=(x.tolist(), w, b, a)),
                  TypeError, "x must be a torch.Tensor"),
    "float as slope": (lambda x, w, b, a: dict(args=(x, w, b, 0.5)),
                       TypeError, "slope must be a torch.Tensor"),
    "scale zero": (lambda x, w, b, a: dict(args=(x, w, b, a), scale=0.0),
                   ValueError, "scale must be a finite number > 0, got 0.0"),
    "scale negative": (lambda x, w, b, a: dict(args=(x, w, b, a), scale=-1),
                       ValueError, "scale must be a finite number > 0"),
    "scale nan": (lambda x, w, b, a: dict(args=(x, w, b, a), scale=float("nan")),
                  ValueError, "scale must be a finite number > 0"),
    "scale tensor": (lambda x, w, b, a: dict(args=(x, w, b, a), scale=torch.tensor(2.0)),
                     TypeError, "scale must be a real number"),
    "scale bool": (lambda x, w, b, a: dict(args=(x, w, b, a), scale=True),
                   TypeError, "scale must be a real number"),
}


@pytest.mark.parametrize("api", LINEAR_APIS, ids=["public", "reference"])
@pytest.mark.parametrize("case", LINEAR_CASES)
def test_linear_bad_input(api, case):
    build, error, message = LINEAR_CASES[case]
    call = build(*good())
    with pytest.raises(error, match=message):
        api(*call.pop("args"), **call)


def test_mixed_devices_are_refused():
    x, w, b, a = good()
    meta_bias = torch.empty(4, device="meta")
    with pytest.raises(ValueError, match="bias is on meta but x is on cpu"):
        laaf_kernels.laaf_linear(x, w, meta_bias, a)


def test_scale_is_checked_even_without_slope():
    x, w, b, _ = good()
    with pytest.raises(ValueError, match="scale"):
        laaf_kernels.laaf_linear(x, w, b, None, scale=-2.0)


ACTIVATION_CASES = {
    "slope length != C": (dict(z=torch.randn(2, 3, 4), slope=torch.rand(4), dim=1),
                          ValueError, r"slope must have shape \(\) or \(3,\) \(C = z.shape\[1\]\)"),
    "dim out of range": (dict(z=torch.randn(2, 3), slope=torch.rand(3), dim=2),
                         ValueError, r"dim must be in \[-2, 1\]"),
    "dim not int": (dict(z=torch.randn(2, 3), slope=torch.rand(3), dim=1.0),
                    TypeError, "dim must be an int"),
    "(C,) slope on 0-d z": (dict(z=torch.tensor(1.0), slope=torch.rand(1), dim=0),
                            ValueError, "z is 0-d"),
    "integer z": (dict(z=torch.ones(2, 3, dtype=torch.int64), slope=None),
                  TypeError, "z must have a floating-point dtype"),
    "mixed dtypes": (dict(z=torch.randn(2, 3), slope=torch.rand(3, dtype=torch.float64)),
                     TypeError, "slope has dtype torch.float64 but z has torch.float32"),
    "unknown activation": (dict(z=torch.randn(2, 3), slope=None, activation="mish"),
                           ValueError, "activation must be one of"),
    "scale <= 0": (dict(z=torch.randn(2, 3), slope=torch.rand(3), scale=-0.5),
                   ValueError, "scale must be a finite number > 0"),
}


@pytest.mark.parametrize("api", ACTIVATION_APIS, ids=["public", "reference"])
@pytest.mark.parametrize("case", ACTIVATION_CASES)
def test_activation_bad_input(api, case):
    kwargs, error, message = ACTIVATION_CASES[case]
    kwargs = dict(kwargs)
    with pytest.raises(error, match=message):
        api(kwargs.pop("z"), kwargs.pop("slope"), **kwargs)


def test_nan_and_inf_propagate_like_the_reference():
    x, w, b, a = good(torch.float64)
    x[1, 0] = float("nan")
    x[3, 2] = float("inf")
    y = laaf_kernels.laaf_linear(x, w, b, a, scale=2.0)
    want = torch.tanh(2.0 * a * (x @ w.T + b))
    torch.testing.assert_close(y, want, equal_nan=True)
    assert torch.isnan(y[1]).all()
