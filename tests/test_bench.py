"""The benchmark harness runs (one tiny case, CPU) and rejects bad options clearly."""
import json

import pytest
import torch

from bench import cases, providers, roofline, run


def test_one_tiny_case_writes_rows_with_metadata(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "0")
    rc = run.main(["--device", "cpu", "--ops", "linear", "--passes", "train_fwd,fwd_bwd",
                   "--shapes", "64x8x8", "--providers", "backend:reference,eager,mm",
                   "--no-models", "--out", str(tmp_path)])
    assert rc == 0
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert {"device", "torch", "triton", "git_commit", "date", "ceilings"} <= set(data["meta"])
    assert data["meta"]["allocator_env"]["MALLOC_MMAP_MAX_"] == "0"
    rows = data["rows"]
    assert {r["provider"] for r in rows} == {"backend:reference", "eager", "mm"}
    assert all(r["error"] is None and r["median_ms"] > 0 for r in rows)
    train = [r for r in rows if r["pass"] == "train_fwd" and r["provider"] != "mm"]
    assert all(r["saved_bytes"] > 0 for r in train)
    assert "median ms" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--ops", "conv"], "unknown op 'conv'; valid: linear, activation"),
    (["--passes", "sideways"], "unknown pass 'sideways'; valid: infer"),
    (["--providers", "numpy"], "unknown provider 'numpy'; valid: backend:reference"),
    (["--shapes", "12x4"], "shape must be 'MxKxN'"),
    (["--device", "tpu"], "--device must be cpu or cuda"),
    (["--dtype", "float64"], "--dtype sets the dtype of the --shapes cases; give --shapes too"),
])
def test_bad_options_list_the_valid_ones(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        run.parse_args(["--device", "cpu", *argv] if "--device" not in argv else argv)
    assert message in str(exc.value)


def test_roofline_models():
    case = cases.Case("linear", "fwd_bwd", 1000, 50, 50, "float32", "tanh", "vector")
    assert roofline.model_flops(case) == 3 * 2 * 1000 * 50 * 50
    # x, y, z, g, dx once each (x twice: forward and dW), plus W, b twice
    assert roofline.model_bytes(case) == 4 * (2 * 50_000 + 3 * 50_000 + 2 * (2500 + 50))


def test_full_gpu_suite_has_the_headline_cases():
    full = cases.suite("cuda", full=True)
    heads = {(c.op == "flexible", c.M, c.K, c.N, c.dtype) for c in full
             if c.headline and c.op != "conv_activation"}
    assert heads == {(False, 2 ** 20, 50, 50, "float32"), (False, 8192, 4096, 4096, "bfloat16"),
                     (True, 2 ** 20, 256, 256, "float32")}  # the flexible issue's shape
    assert {c.pass_ for c in full} == set(cases.PASSES)


def test_quick_cpu_suite_times_the_headline_shape_in_fp32_fp64_and_bf16():
    quick = cases.suite("cpu", full=False)
    heads = {(c.op, c.M, c.K, c.N, c.dtype) for c in quick
             if c.headline and c.op in ("linear", "activation")}
    assert heads == {(op, 100_000, 50, 50, dt) for op in ("linear", "activation")
                     for dt in ("float32", "float64", "bfloat16")}
    assert not any(c.dtype == "bfloat16" for c in cases.suite("cuda", full=False))


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_both_suites_time_a_channels_last_conv_activation(device):
    for full in (False, True):
        conv = [c for c in cases.suite(device, full) if c.op == "conv_activation"]
        assert {c.pass_ for c in conv} == set(cases.PASSES)
        assert {c.nchw for c in conv} == {(32, 64, 56, 56)}
        assert conv[0].label.startswith("conv_activation") and "32x64x56x56 channels_last" in conv[0].label
    inputs = providers.make_inputs(conv[0], "cpu", requires_grad=False)
    assert inputs["x"].is_contiguous(memory_format=torch.channels_last)
    assert inputs["a"].shape == (64,)


def test_shapes_take_the_dtype_option():
    args = run.parse_args(["--device", "cpu", "--shapes", "64x8x8", "--dtype", "float64"])
    chosen = cases.suite("cpu", False, args.ops, args.passes, args.shapes, args.dtype)
    assert chosen and {c.dtype for c in chosen} == {"float64"}


def test_gpu_script_parses_and_refuses_a_bad_mode():
    """bench/gpu.sh only ever runs on a lent GPU machine, in one call: a syntax error
    or a broken argument check would cost that call. bash -n parses it; a bad mode
    exits 2 with the valid ones named, before anything is built."""
    import pathlib
    import subprocess
    script = pathlib.Path(__file__).resolve().parents[1] / "bench" / "gpu.sh"
    parsed = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert parsed.returncode == 0, parsed.stderr
    bad = subprocess.run(["bash", str(script), "everything"], capture_output=True, text=True,
                         timeout=30)
    assert bad.returncode == 2 and "all, tests or bench" in bad.stderr, (bad.returncode, bad.stderr)
