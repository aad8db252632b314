"""The CUDA emulation (tests/cuda_emulation.py) itself: the checks that make the
``cuda-emulated`` target of the fused tests worth running must be able to fail.

tests/cuda/emulation/selftest.cu holds kernels with the bugs it must catch (a
missing barrier, a shuffle in divergent code, launches the driver refuses, a
launch without its check), each beside a correct twin that must pass; and a change
to csrc/ that the translation does not cover must fail the build, not compile wrongly.
"""
from __future__ import annotations

import pytest
import torch

import cuda_emulation
from laaf_kernels.ops import extension

PROBLEM = cuda_emulation.problem()
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=f"cuda emulation: {PROBLEM}")


@pytest.fixture(scope="module")
def selftest():
    cuda_emulation.build_selftest()
    return torch.ops.laaf_emu_selftest


def _x(n):
    return torch.randn(n, generator=torch.Generator().manual_seed(n), dtype=torch.float32)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_a_missing_barrier_reads_unwritten_shared_memory(selftest, dynamic):
    x = _x(256)
    good = selftest.block_sum(x, True, dynamic)
    torch.testing.assert_close(good, x.sum().reshape(1), rtol=1e-5, atol=1e-5)
    # Without the barrier thread 0 sums before the other 255 threads have written:
    # the emulation's shared memory starts every block as NaN.
    assert torch.isnan(selftest.block_sum(x, False, dynamic)).all()


def test_a_shuffle_in_divergent_code_is_a_deadlock(selftest):
    x = _x(32)
    want = x + x.reshape(16, 2).flip(1).reshape(32)
    torch.testing.assert_close(selftest.pair_sum(x, 32), want)
    with pytest.raises(RuntimeError, match="deadlock: 16 threads wait"):
        selftest.pair_sum(x, 16)


@pytest.mark.parametrize("config, why", [
    ((0, 1, 256, 0, 0), "an empty grid"),
    ((1, 70_000, 256, 0, 0), "grid beyond"),
    ((1, 1, 1025, 0, 0), "not 1 to 1024 threads"),
    ((1, 1, 256, 64 * 1024, 0), "dynamic shared memory above the kernel's limit of 49152"),
    ((1, 1, 256, 100 * 1024, 64 * 1024), "above the kernel's limit of 65536"),
])
def test_launches_the_driver_refuses(selftest, config, why):
    with pytest.raises(RuntimeError, match=why):
        selftest.configured_launch(*config, True)


def test_launches_the_driver_takes(selftest):
    selftest.configured_launch(1, 65_535, 1, 0, 0, True)
    selftest.configured_launch(2, 1, 1024, 0, 0, True)
    selftest.configured_launch(1, 1, 256, 200 * 1024, 200 * 1024, True)


def test_the_device_opt_in_limit_is_the_h100s(selftest):
    with pytest.raises(RuntimeError, match="invalid argument"):
        selftest.configured_launch(1, 1, 256, 0, 228 * 1024, True)


def test_a_launch_without_its_check_fails_the_next_launch(selftest):
    selftest.configured_launch(1, 1, 32, 0, 0, False)
    with pytest.raises(RuntimeError, match="was not followed by C10_CUDA_KERNEL_LAUNCH_CHECK"):
        selftest.configured_launch(1, 1, 32, 0, 0, True)
    selftest.configured_launch(1, 1, 32, 0, 0, True)  # reported once


@pytest.mark.parametrize("source", cuda_emulation.TRANSLATED)
def test_an_untranslated_change_to_a_source_fails_loudly(source):
    text = (extension.CSRC / source).read_text()
    cuda_emulation.translate(source, text)  # the source as it is translates
    with pytest.raises(AssertionError, match="kernel launches"):
        cuda_emulation.translate(source, text + "\nvoid f() { k<<<1, 1>>>(); }\n")
    with pytest.raises(AssertionError, match="__shared__ arrays"):
        cuda_emulation.translate(source, text + "\n__shared__ float extra[4];\n")


def test_every_cuda_source_is_translated():
    assert sorted(p.name for p in extension.CSRC.glob("*.cu")) == sorted(
        s for s in cuda_emulation.TRANSLATED if s.endswith(".cu"))
    # Headers that launch kernels, and those that include one (their #include must
    # find the translated copy beside them).
    launching = {p.name for p in extension.CSRC.glob("*.cuh") if "<<<" in p.read_text()}
    including = {p.name for p in extension.CSRC.glob("*.cuh")
                 if any(f'#include "{name}"' in p.read_text() for name in launching)}
    assert sorted(launching | including) == sorted(
        s for s in cuda_emulation.TRANSLATED if s.endswith(".cuh"))


def test_the_emulated_kernels_run_on_cpu_tensors():
    """A direct call of an emulated op, outside the backend: the N-LAAF forward (a wide
    layer, N = 130, z asked for)."""
    gen = torch.Generator().manual_seed(3)
    x, w = torch.randn(70, 9, generator=gen), torch.randn(130, 9, generator=gen)
    b, s = torch.randn(130, generator=gen), torch.rand(130, generator=gen) + 0.5
    y, z = torch.ops.laaf.cuda_linear_fwd(x, w, b, s, "tanh", True)
    torch.testing.assert_close(z, torch.addmm(b, x, w.t()), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, torch.tanh(s * z), rtol=1e-5, atol=1e-5)

