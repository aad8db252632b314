"""Whole models under torch.compile and torch.export, with the backend chosen the
way a model's user chooses it (``use_backend``, ``LAAF_BACKEND``, ``"auto"``), not
per call: no graph break at the dispatch, one graph for every batch size under
``dynamic=True``, a new trace when the selection changes, and an exported program
that saves, loads in a fresh process (after ``laaf_kernels.load_ops()``) and runs.

(test_fused_integration.py traces the functional ops with ``backend=`` given.)
"""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import cuda_emulation
import laaf_kernels
from fused_cases import CPP_PROBLEM, INTERPRETING, TARGETS, TRITON_READY
from laaf_kernels.ops import dispatch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IN_FEATURES = 3


def _off_initial_values(model: nn.Module) -> nn.Module:
    """Slopes and mixing weights moved off their initial values, so that a dropped
    slope or a wrong mix shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("slope", "params")):
                p.mul_(0.7 + 0.6 * torch.rand_like(p)).add_(0.05 * torch.randn_like(p))
    return model


def _model(device) -> nn.Module:
    """The three op families: LAAF linear, flexible linear, LAAF activation."""
    torch.manual_seed(5)
    return _off_initial_values(nn.Sequential(
        laaf_kernels.LAAFLinear(IN_FEATURES, 11, "tanh", mode="neuron", scale=10.0),
        laaf_kernels.FlexibleLinear(11, 7, "relu_tanh"),
        laaf_kernels.LAAF("sin", mode="neuron", num_features=7, scale=2.0),
        nn.Linear(7, 2),
    ).to(device))


def _channels_last_cnn(device) -> nn.Module:
    """The standalone activations on channels_last convolution outputs."""
    torch.manual_seed(6)
    return _off_initial_values(nn.Sequential(
        nn.Conv2d(IN_FEATURES, 5, 3),
        laaf_kernels.LAAF("tanh", mode="neuron", num_features=5, dim=1),
        laaf_kernels.FlexibleActivation("sigmoid_ramp", 5, dim=1),
    ).to(device, memory_format=torch.channels_last))


#: name -> (model, input of a batch of ``rows``, the fused ops that its graph holds)
MODELS = {
    "mlp": (_model, lambda rows: (rows, IN_FEATURES), ("linear_fwd", "flex_fwd", "act_fwd")),
    "channels_last_cnn": (_channels_last_cnn, lambda rows: (rows, IN_FEATURES, 7, 6),
                          ("flex_fwd", "act_fwd")),
}


def _laaf_ops(graph: torch.fx.Graph) -> set:
    return {str(node.target).split(".default")[0] for node in graph.nodes
            if node.op == "call_function" and str(node.target).startswith("laaf.")}


def _fused_ops(backend: str, ops=MODELS["mlp"][2]) -> set:
    return {f"laaf.{backend}_{op}" for op in ops}


def _recording(graphs: list):
    """A torch.compile backend that keeps each graph dynamo hands over, then compiles
    it with inductor, as ``torch.compile`` does by default (AOTAutograd: fake tensors,
    the ops' registered fakes and autograd; C++ or Triton code around the ops)."""
    inductor = torch._dynamo.lookup_backend("inductor")

    def backend(gm, example_inputs):
        graphs.append(gm.graph)
        return inductor(gm, example_inputs)
    return backend


def _loss_and_grads(model, x):
    loss = model(x).square().sum()
    return loss, torch.autograd.grad(loss, [x, *model.parameters()])


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", MODELS)
def test_a_compiled_model_is_one_graph_of_fused_ops_for_every_batch_size(target, name):
    backend, device = target
    make, input_shape, ops = MODELS[name]
    model, graphs = make(device), []
    compiled = torch.compile(model, fullgraph=True, dynamic=True,
                             backend=_recording(graphs))
    with laaf_kernels.use_backend(backend):
        for rows in (5, 9, 14):  # (torch's channels_last conv2d guards batch <= 15)
            x = torch.randn(input_shape(rows), device=device)
            if x.dim() == 4:
                x = x.to(memory_format=torch.channels_last)
            x.requires_grad_()
            assert compiled(x).stride() == model(x).stride()
            loss, grads = _loss_and_grads(compiled, x)
            eager_loss, eager_grads = _loss_and_grads(model, x)
            torch.testing.assert_close(loss, eager_loss)
            for got, want in zip(grads, eager_grads):
                torch.testing.assert_close(got, want)
    assert len(graphs) == 1, "dynamic=True: one trace serves every batch size"
    assert _laaf_ops(graphs[0]) == _fused_ops(backend, ops)


def test_a_compiled_model_is_traced_anew_when_use_backend_changes(monkeypatch):
    """use_backend() is guarded; "auto" is what runs outside it. (LAAF_BACKEND is
    read when a graph is traced: dynamo does not guard environment variables,
    pytorch/pytorch#189027.) The calls are small training calls (9 rows, parameters
    that require grad), which "auto" sends to the reference in eager mode; a traced
    graph keeps the fused ops (dispatch.AUTO_CPU_SMALL_TRAINING)."""
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    model, graphs = _model("cpu"), []
    compiled = torch.compile(model, fullgraph=True, backend=_recording(graphs))
    x = torch.randn(9, IN_FEATURES)
    with laaf_kernels.use_backend("reference"):
        expected = model(x)

    def run_and_check():
        torch.testing.assert_close(compiled(x), expected)

    run_and_check()
    auto = set() if CPP_PROBLEM else _fused_ops("cpp")
    with laaf_kernels.use_backend("reference"):
        run_and_check()
    assert [_laaf_ops(g) for g in graphs] == [auto, set()]
    run_and_check()  # back to "auto": the first trace, not a third
    assert len(graphs) == 2
    if TRITON_READY and INTERPRETING:
        with laaf_kernels.use_backend("triton"):
            run_and_check()
        assert [_laaf_ops(g) for g in graphs] == [auto, set(), _fused_ops("triton")]


_FIRST_USE_COMPILED = """
import torch, laaf_kernels
graphs = []
def recording(gm, example_inputs):
    graphs.append({str(n.target) for n in gm.graph.nodes if str(n.target).startswith("laaf.")})  # dynamo holds op packets: no ".default"
    return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)
model = laaf_kernels.LAAFMLP([2, 16, 1], scale=5.0)
x = torch.randn(7, 2)
y = torch.compile(model, fullgraph=True, backend=recording)(x)  # the library's first call
with laaf_kernels.use_backend("reference"):
    torch.testing.assert_close(y, model(x))
fused = "cpp" in laaf_kernels.available_backends()
assert graphs == [{"laaf.cpp_linear_fwd"} if fused else set()], graphs
"""


def test_the_first_call_of_a_fresh_process_may_be_a_compiled_one():
    """"auto" checks, on first use, whether the C++ extension builds and loads; that
    check runs at trace time (not traced: it holds a lock and may run a build)."""
    _run_python(_FIRST_USE_COMPILED)


def _run_python(source: str, *args: str, env=None) -> str:
    """Run ``source`` in a new interpreter (this one's environment plus ``env``, the repo
    importable); its standard output."""
    run = subprocess.run([sys.executable, "-c", source, *args], cwd=REPO, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": REPO, **(env or {})},
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


# ---------------------------------------------------------------------------
# torch.compile's on-disk caches across a change of which layers keep z
# ---------------------------------------------------------------------------

_COMPILE_FROM_A_SHARED_CACHE = """
import importlib, json, sys, torch, laaf_kernels
from torch._dynamo.utils import counters
backend, device, policy_module, changed = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
laaf_kernels.load_ops()
if changed:  # a later release's policy: every layer keeps z
    importlib.import_module(policy_module).NARROW_MAX = 0
torch.manual_seed(0)
model = laaf_kernels.LAAFMLP([2, 20, 20, 1], activation="tanh", scale=5.0).to(device)
x = torch.randn(33, 2, device=device, requires_grad=True)
inputs = [x, *model.parameters()]
with laaf_kernels.use_backend(backend):
    y = torch.compile(model, fullgraph=True)(x)
    grads = torch.autograd.grad(y.square().sum(), inputs)
with laaf_kernels.use_backend("reference"):
    y_ref = model(x)
    grads_ref = torch.autograd.grad(y_ref.square().sum(), inputs)
for got, want in zip((y, *grads), (y_ref, *grads_ref)):
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
print(json.dumps({name: counters[group][name] for group, name in (
    ("inductor", "fxgraph_cache_hit"), ("inductor", "fxgraph_cache_miss"),
    ("aot_autograd", "autograd_cache_hit"), ("aot_autograd", "autograd_cache_miss"))}))
"""

#: Where each backend's policy of keeping z reads its narrow width.
_POLICY_MODULES = {"cpp": "laaf_kernels.ops.cpp_backend", "cuda": "laaf_kernels.ops.cuda_backend",
                   "triton": "laaf_kernels.kernels.triton_launchers"}


@pytest.mark.parametrize("target", [t for t in TARGETS if t.values[0] != cuda_emulation.TARGET])
def test_a_changed_policy_of_keeping_z_misses_the_compile_caches(target, tmp_path):
    """torch.compile's on-disk caches (inductor's FX graphs, AOTAutograd's) key a graph
    by its code, not by the fakes of the ops in it. So the policy of which layers keep
    z (``stores_z``), which sets the shape of linear_fwd's z, is written into the graph
    as the op's store_z argument: a release that changes it misses the cache, where a
    cached graph traced under the old policy (z empty) would have run on the new
    kernel (z kept) and read an output of the wrong shape. Three fresh processes share
    one cache: the shipped policy (a miss), a changed one (narrow layers keep z: a miss
    again, and the reference's gradients), the shipped one again (a hit: the cache
    works, so the second miss means something)."""
    backend, device = target

    def compile_in_a_fresh_process(changed: bool) -> dict:
        out = _run_python(_COMPILE_FROM_A_SHARED_CACHE, backend, device, _POLICY_MODULES[backend],
                          "1" if changed else "0", env={"TORCHINDUCTOR_CACHE_DIR": str(tmp_path)})
        return json.loads(out.strip().splitlines()[-1])

    shipped = compile_in_a_fresh_process(False)
    assert shipped["fxgraph_cache_hit"] == 0 and shipped["fxgraph_cache_miss"] > 0, shipped
    changed = compile_in_a_fresh_process(True)
    assert changed["fxgraph_cache_hit"] == 0 and changed["autograd_cache_hit"] == 0, changed
    assert changed["fxgraph_cache_miss"] > 0, changed
    again = compile_in_a_fresh_process(False)
    assert again["fxgraph_cache_hit"] + again["autograd_cache_hit"] > 0, again


# ---------------------------------------------------------------------------
# torch.export
# ---------------------------------------------------------------------------

_LOAD_AND_RUN = """
import sys, torch, laaf_kernels
laaf_kernels.load_ops()  # the C++/CUDA ops are otherwise registered on first use
program = torch.export.load(sys.argv[1])
saved = torch.load(sys.argv[2])
torch.testing.assert_close(program.module()(saved["x"]), saved["y"])
"""


def _argument(node: torch.fx.Node, name: str):
    names = [a.name for a in node.target._schema.arguments]
    index = names.index(name)
    return node.args[index] if index < len(node.args) else node.kwargs[name]


@pytest.mark.parametrize("target", [t for t in TARGETS if t.values[0] != cuda_emulation.TARGET])
def test_an_exported_model_saves_loads_in_a_fresh_process_and_runs(target, tmp_path):
    """Exported under no_grad: the inference graph, whose linear forward writes y
    alone; a symbolic batch dim; run at another batch size here and after a round
    trip through torch.export.save / load in a new interpreter."""
    backend, device = target
    model = _model(device).eval()
    with laaf_kernels.use_backend(backend), torch.no_grad():
        program = torch.export.export(
            model, (torch.randn(9, IN_FEATURES, device=device),),
            dynamic_shapes=({0: torch.export.Dim("rows")},))
    assert _laaf_ops(program.graph) == _fused_ops(backend)
    forwards = [n for n in program.graph.nodes if str(n.target).startswith(f"laaf.{backend}_linear_fwd")]
    assert [_argument(n, "store_z") for n in forwards] == [False]

    x = torch.randn(17, IN_FEATURES, device=device)
    with torch.no_grad(), laaf_kernels.use_backend("reference"):
        expected = model(x)
    torch.testing.assert_close(program.module()(x), expected)

    torch.export.save(program, tmp_path / "model.pt2")
    torch.save({"x": x, "y": expected}, tmp_path / "io.pt")
    _run_python(_LOAD_AND_RUN, str(tmp_path / "model.pt2"), str(tmp_path / "io.pt"))
