"""What gets measured: ops, passes, shapes and the suites that combine them."""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import List

OPS = ("linear", "activation", "flexible", "conv_activation")
PASSES = ("infer", "train_fwd", "bwd", "fwd_bwd")
SLOPES = ("none", "scalar", "vector")

#: Named shape sets: (M, K, N); for the activation ops C = N and K is unused.
SHAPE_SETS = {
    "pinn": [(m, w, w) for m in (2 ** 14, 2 ** 17, 2 ** 20) for w in (20, 50, 128)],
    "dl": [(8192, w, w) for w in (1024, 4096)],
    "quick": [(2 ** 14, 50, 50), (100_000, 50, 50)],
}


@dataclass(frozen=True)
class Case:
    """One benchmarked configuration (a row of the results, before the provider)."""

    op: str
    pass_: str
    M: int
    K: int
    N: int
    dtype: str
    activation: str
    slope: str
    headline: bool = False  #: a target of the issues: compile providers run here too

    @property
    def nchw(self):
        """conv_activation: z's (B, C, H, W), H = W = K; M = B H W rows of C = N channels."""
        return (self.M // (self.K * self.K), self.N, self.K, self.K)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["pass"] = d.pop("pass_")
        return d

    @property
    def label(self) -> str:
        if self.op == "conv_activation":
            return (f"{self.op} {self.pass_} {'x'.join(map(str, self.nchw))} channels_last "
                    f"{self.dtype} {self.activation} {self.slope}")
        shape = f"{self.M}x{self.K}x{self.N}" if self.op == "linear" else f"{self.M}x{self.N}"
        return f"{self.op} {self.pass_} {shape} {self.dtype} {self.activation} {self.slope}"


def parse_shape(text: str):
    """'MxKxN' -> (M, K, N), or a named set."""
    if text in SHAPE_SETS:
        return SHAPE_SETS[text]
    try:
        m, k, n = (int(v) for v in text.lower().split("x"))
        if min(m, k, n) < 1:
            raise ValueError
    except ValueError:
        raise ValueError(f"shape must be 'MxKxN' with positive ints or one of "
                         f"{', '.join(SHAPE_SETS)}; got {text!r}") from None
    return [(m, k, n)]


#: The flexible activations (the ``activation`` field of a case holds the kind): the
#: issue's shape, M = 2^20 rows and C = 256 channels (fp32). On CPU the quick suite
#: uses M = 2^16: at 2^20 eager's 1 GiB temporaries ran a 23 GB VM out of memory with
#: malloc's mmap off, and with it on they are page-faulted afresh at every step (4 KiB
#: pages; eager relu_poly fwd + bwd took 22 s). The 2^20 rows are a separate run with
#: THP_MEM_ALLOC_ENABLE=1 (PyTorch's 2 MiB pages): bench/README.md.
FLEXIBLE_SHAPES = {"cuda": [(2 ** 20, 256, 256)], "cpu": [(2 ** 16, 256, 256)]}
FLEXIBLE_KINDS = ("relu_poly", "sigmoid_ramp")

#: laaf_activation on a channels_last convolution output (B, C, H, W), slope along
#: dim=1 (a ResNet stage-1 activation), against eager and torch.compile of the same:
#: the fused op reads it in memory order, (B H W, C), with no copy.
CONV_SHAPES = {"cuda": [(32, 64, 56, 56)], "cpu": [(32, 64, 56, 56)]}


def conv_case(pass_: str, nchw, dtype: str) -> "Case":
    b, c, h, w = nchw
    assert h == w, "conv cases are square"
    return Case("conv_activation", pass_, b * h * w, h, c, dtype, "tanh", "vector", True)


#: The shapes the issues set targets on, per device. On CPU the float32 headline has a
#: float64 and a bfloat16 twin: PINN users often train in float64 (second derivatives
#: of a float32 net lose digits fast), and bfloat16 is what CPU autocast computes in;
#: the quick suite times both, torch.compile included.
HEADLINES = {
    "cuda": [((2 ** 20, 50, 50), "float32"), ((8192, 4096, 4096), "bfloat16")],
    "cpu": [((100_000, 50, 50), "float32"), ((100_000, 50, 50), "float64"),
            ((100_000, 50, 50), "bfloat16")],
}


def _is_headline(device, shape, dtype, act, slope) -> bool:
    return act == "tanh" and slope == "vector" and (shape, dtype) in HEADLINES[device]


def suite(device: str, full: bool, ops=OPS, passes=PASSES, shapes=None,
          dtype: str = "float32") -> List[Case]:
    """The cases of the quick or full suite on ``device``, filtered by ops/passes/shapes.

    full: PINN shapes x tanh/relu/sigmoid x slope kinds in fp32 (on CPU the
    smaller half), plus the deep-learning shapes in bf16 and fp32 (tanh,
    neuron-wise; relu without slope; CPU: M = 8192, K = N = 1024, fp32 only). quick: PINN-sized shapes, tanh,
    neuron-wise, fp32, plus CPU's float64 and bfloat16 headlines (10^5 x 50 x 50).
    Headline cases (``HEADLINES``) also time torch.compile. ``shapes`` replaces the
    suite's grid: those shapes in ``dtype``, tanh, neuron-wise.
    """
    cases = []
    if shapes is not None:
        grid = [(s, dtype, "tanh", "vector") for s in shapes]
    elif not full:
        grid = [(s, "float32", "tanh", "vector") for s in SHAPE_SETS["quick"]]
        grid += [(s, dt, "tanh", "vector") for s, dt in HEADLINES[device]
                 if dt in ("float64", "bfloat16") and device == "cpu"]
    else:
        pinn = SHAPE_SETS["pinn"] if device == "cuda" else SHAPE_SETS["pinn"][:6] + [(100_000, 50, 50)]
        grid = [(s, "float32", "tanh", slope) for s in pinn for slope in SLOPES]
        grid += [(s, "float32", act, "vector") for s in pinn for act in ("relu", "sigmoid")]
        # CPU: fp32 only (bf16 GEMMs run at ~1 GFLOP/s without AMX: 17 s a call)
        dl = SHAPE_SETS["dl"] if device == "cuda" else SHAPE_SETS["dl"][:1]
        low = "bfloat16" if device == "cuda" else "float32"
        for s in dl:
            grid += [(s, dt, "tanh", "vector") for dt in dict.fromkeys((low, "float32"))]
            grid += [(s, low, "relu", "none")]
    laaf_ops = [op for op in ops if op in ("linear", "activation")]
    for op, pass_, (shape, dtype, act, slope) in itertools.product(laaf_ops, passes, grid):
        headline = shapes is not None or _is_headline(device, shape, dtype, act, slope)
        cases.append(Case(op, pass_, *shape, dtype, act, slope, headline))
    if "flexible" in ops:
        flex_shapes = shapes if shapes is not None else FLEXIBLE_SHAPES[device]
        flex_dtype = dtype if shapes is not None else "float32"
        for pass_, shape, kind in itertools.product(passes, flex_shapes, FLEXIBLE_KINDS):
            cases.append(Case("flexible", pass_, *shape, flex_dtype, kind, "vector", True))
    if "conv_activation" in ops and shapes is None:
        cases += [conv_case(pass_, nchw, "float32")
                  for pass_, nchw in itertools.product(passes, CONV_SHAPES[device])]
    # Headline cases first: if a run is cut short, what the targets need is measured.
    return sorted(cases, key=lambda c: not c.headline)
