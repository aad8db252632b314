"""The experiments command line: a tiny run writes its files; bad arguments are refused."""
import csv
import json

import pytest
import torch

import laaf_kernels
from laaf_kernels.experiments import cli
from laaf_kernels.pinn import VARIANTS, Burgers, Discontinuous
from laaf_kernels.pinn.problems import latin_hypercube, train


def test_tiny_discontinuous_run_writes_results(tmp_path, capsys):
    rc = cli.main(["discontinuous", "--variants", "standard,n-laaf-srt", "--iters", "4",
                   "--seeds", "2", "--log-every", "2", "--out", str(tmp_path)])
    assert rc == 0
    rows = list(csv.DictReader(open(tmp_path / "runs.csv")))
    assert [(r["variant"], r["seed"]) for r in rows] == [
        ("standard", "0"), ("standard", "1"), ("n-laaf-srt", "0"), ("n-laaf-srt", "1")]
    summary = json.loads((tmp_path / "summary.json").read_text())["summary"]
    assert set(summary) == {"standard", "n-laaf-srt"}
    assert (tmp_path / "loss.png").exists() and (tmp_path / "fit.png").exists()
    assert "relative L2 error" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["burgers", "--variants", "laaf"], "unknown variant(s) 'laaf'; valid: standard, gaaf"),
    (["burgers", "--iters", "0"], "--iters must be > 0"),
    (["burgers", "--seeds", "-1"], "--seeds must be > 0"),
    (["burgers", "--device", "cuda:3"], "no CUDA device is available"),
    (["heat"], "invalid choice: 'heat'"),
    (["heat"], "lenet"),  # every command is named: the others dispatch before argparse
    (["heat"], "forecast"),
    (["forecast", "--lr-grid", "0.1,x"], "--lr-grid / --delta-grid must be comma lists"),
    (["forecast", "--lr-grid", "0"], "--lr-grid needs numbers > 0"),
    (["autoencoder", "--epochs", "0"], "--epochs must be > 0"),
    (["lenet", "--variants", "laaf"], "unknown variant(s) 'laaf'; valid: standard, gaaf"),
    (["lenet", "--scales", "0.5"], "--scales needs numbers >= 1"),
    (["lenet", "--scales", "1,x"], "--scales must be a comma list of numbers"),
    (["lenet", "--epochs", "0"], "--epochs must be > 0"),
    (["lenet", "--lr", "0"], "--lr must be > 0"),
])
def test_bad_arguments(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a refused command may write nothing, not even runs/
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_problem_setups_follow_the_paper():
    burgers = Burgers("n-laaf", seed=0, n_collocation=500)
    assert burgers.xt_u.shape == (400, 2) and burgers.xt_f.shape == (500, 2)
    assert burgers.exact.shape == (256, 100) and burgers.model.sizes == [2] + [20] * 6 + [1]
    assert (burgers.xt_u[200:, 0].abs() == 1).all() and (burgers.xt_u[:200, 1] == 0).all()
    disc = Discontinuous("gaaf", seed=0)
    assert disc.x.shape == (300, 1) and disc.model.sizes == [1, 50, 50, 50, 50, 1]
    assert disc.lr == 2e-4 and burgers.lr == 8e-4
    assert set(VARIANTS) == {"standard", "gaaf", "l-laaf", "n-laaf", "l-laaf-srt", "n-laaf-srt"}


def test_summary_pairs_each_variant_with_the_standard_network_of_its_seed():
    runs = [{"variant": v, "seed": seed, "error": e} for v, seed, e in [
        ("standard", 0, 0.10), ("standard", 1, 0.30), ("standard", 2, 0.20),
        ("n-laaf", 0, 0.15), ("n-laaf", 1, 0.25), ("n-laaf", 2, 0.05),
        ("gaaf", 5, 0.01)]]
    summary = cli.summarize(runs, "burgers")
    assert summary["n-laaf"]["better_than_standard"] == [2, 3]  # seeds 1 and 2
    assert summary["n-laaf"]["median"] == 0.15 and summary["n-laaf"]["paper"] == 9.129446e-02
    assert "better_than_standard" not in summary["standard"]
    assert "better_than_standard" not in summary["gaaf"]  # no standard run of seed 5
    assert summary["standard"]["mean"] == pytest.approx(0.2)


def test_latin_hypercube_has_one_point_per_stratum():
    import numpy as np

    pts = latin_hypercube(50, [-1.0, 0.0], [1.0, 1.0], np.random.default_rng(0))
    for dim, (lo, hi) in enumerate([(-1.0, 1.0), (0.0, 1.0)]):
        strata = np.floor((pts[:, dim] - lo) / (hi - lo) * 50).astype(int)
        assert sorted(strata) == list(range(50))


def test_training_lowers_the_loss_and_records_slopes():
    problem = Discontinuous("l-laaf-srt", seed=1)
    history = train(problem, iters=30, log_every=10)
    assert history["loss"][-1] < history["loss"][0]
    # the loss minimised is the data loss plus S(a) = 1 / mean_k exp(mean(a^k)), which
    # lies in (0, 1) while the slopes are positive
    assert all(0 < a - d < 1 for a, d in zip(history["loss"], history["data_loss"]))
    data, loss = problem.loss_terms()
    assert torch.equal(loss, data + problem.model.slope_recovery())
    assert len(history["slopes"][-1]) == 4  # one n*a per hidden layer


# ---------------------------------------------------------------------------
# The flexible-activation paper's experiments (autoencoder, forecast)
# ---------------------------------------------------------------------------

def _summary(path):
    return json.loads((path / "summary.json").read_text())


def test_tiny_autoencoder_run_writes_results(tmp_path, capsys):
    rc = cli.main(["autoencoder", "--seeds", "1", "--epochs", "1", "--out", str(tmp_path)])
    assert rc == 0
    summary = _summary(tmp_path)["summary"]
    assert set(summary) == {f"{s}/{v}" for s in ("ae1", "ae2")
                            for v in ("relu", "prelu", "relu_poly", "relu_tanh")}
    assert all(0 < s["test_mean"] < 1 for s in summary.values())
    assert (tmp_path / "curves.png").exists() and "test MSE" in capsys.readouterr().out


def test_tiny_forecast_run_searches_then_fixes_the_learning_rate(tmp_path):
    rc = cli.main(["forecast", "--seeds", "1", "--epochs", "1", "--lr-grid", "0.01,0.03",
                   "--delta-grid", "0,0.01", "--out", str(tmp_path)])
    assert rc == 0
    meta, summary = _summary(tmp_path)["meta"], _summary(tmp_path)["summary"]
    assert meta["hyper"]["lr"] in (0.01, 0.03) and set(meta["hyper"]["lr_scores"]) == {"0.01", "0.03"}
    assert set(summary) == {"lstm", "flexible_lstm"}
    rows = list(csv.DictReader(open(tmp_path / "runs.csv")))
    assert len(rows) == 2 and all(float(r["test_mse"]) > 0 for r in rows)


def test_flexible_experiment_data_and_models():
    from laaf_kernels.experiments import flexible_tasks as T

    split = T.digits_split(0)
    assert split.train[0].shape == (1200, 64) and 0 <= split.train[0].min() <= split.train[0].max() <= 1
    model = T.autoencoder("ae2", "relu_poly")
    assert sum(isinstance(m, laaf_kernels.FlexibleActivation) for m in model) == 2
    x = T.var1_series(steps=300)
    assert x.shape == (300, 5) and abs(x).max() < 10  # stable: spectral radius 0.8
    fc = T.forecast_split()
    assert fc.train[0].shape[1:] == (10, 5) and fc.train[1].shape[1:] == (5,)


# ---------------------------------------------------------------------------
# The LAAF paper's deep-learning benchmark (LeNet on digits)
# ---------------------------------------------------------------------------

def test_tiny_lenet_run_writes_results(tmp_path, capsys):
    rc = cli.main(["lenet", "--variants", "standard,gaaf-srt,n-laaf", "--scales", "1,2",
                   "--seeds", "1", "--epochs", "2", "--out", str(tmp_path)])
    assert rc == 0
    rows = list(csv.DictReader(open(tmp_path / "runs.csv")))
    # the standard network has no slope, so it runs once, not once per n
    assert [(r["variant"], float(r["scale"])) for r in rows] == [
        ("standard", 1.0), ("gaaf-srt", 1.0), ("gaaf-srt", 2.0), ("n-laaf", 1.0), ("n-laaf", 2.0)]
    summary = _summary(tmp_path)["summary"]
    assert set(summary) == {"standard", "gaaf-srt n=1", "gaaf-srt n=2", "n-laaf n=1", "n-laaf n=2"}
    assert all(set(s["train_loss"]) == {"1", "2"} and 0 <= s["test_accuracy"][0] <= 1
               for s in summary.values())
    history = json.loads((tmp_path / "history.json").read_text())
    assert [len(h["history"]["slopes"][-1]) for h in history] == [0, 3, 3, 3, 3]
    assert (tmp_path / "loss.png").exists() and (tmp_path / "slopes.png").exists()
    assert "test accuracy" in capsys.readouterr().out


def test_lenet_follows_the_paper_and_every_variant_starts_as_the_standard_network():
    from laaf_kernels.experiments import lenet

    data = lenet.load_digits()
    assert data.train_x.shape == (1437, 1, 8, 8) and data.test_x.shape == (360, 1, 8, 8)
    assert 0 <= data.train_x.min() < data.train_x.max() <= 1
    assert set(data.train_y.tolist()) == set(range(10))
    x = data.test_x[:37]
    outputs = {}
    for variant, (mode, _) in lenet.VARIANTS.items():
        torch.manual_seed(3)
        model = lenet.LeNet(mode, 2.0)
        assert [m.out_channels for m in (model.conv1, model.conv2)] == [64, 64]
        fc, out = model.fc, model.out
        assert (fc.in_features, fc.out_features, out.out_features) == (256, 1014, 10)
        assert len(model.slopes()) == (0 if mode == "fixed" else 3)
        if mode == "global":  # GAAF: one slope object shared by the three layers
            assert len({id(a) for a in model.slopes()}) == 1
        outputs[variant] = model(x)
    for variant, out in outputs.items():  # same seed, n*a = 1: the same function
        torch.testing.assert_close(out, outputs["standard"], rtol=1e-5, atol=1e-6, msg=variant)


def test_lenet_standard_run_does_not_depend_on_the_scale():
    from laaf_kernels.experiments import lenet

    data = lenet.load_digits()
    data.train_x, data.train_y = data.train_x[:150], data.train_y[:150]
    runs = [lenet.train_run("standard", n, seed=1, epochs=2, data=data) for n in (1.0, 2.0)]
    assert runs[0] == runs[1]
    srt = lenet.train_run("n-laaf-srt", 2.0, seed=1, epochs=2, data=data)
    assert srt["train_loss"] != runs[0]["train_loss"] and srt["slopes"][-1][0][0] != 1.0


def test_lenet_summary_pairs_each_model_with_the_standard_network_of_its_seed():
    from laaf_kernels.experiments import lenet_cli

    def run(variant, scale, seed, losses):
        return {"model": lenet_cli.model_name(variant, scale), "variant": variant, "seed": seed,
                "history": {"train_loss": losses, "test_accuracy": [0.5] * len(losses)}}

    runs = [run("standard", 1.0, 0, [2.0, 1.0]), run("standard", 1.0, 1, [2.0, 0.5]),
            run("gaaf", 2.0, 0, [2.0, 0.25]), run("gaaf", 2.0, 1, [2.0, 0.25]),
            run("gaaf", 2.0, 7, [2.0, 1e-9])]  # seed 7 has no standard run: left out
    summary = lenet_cli.summarize(runs)
    assert summary["gaaf n=2"]["standard_final_loss_over_this"] == [2.0, 4.0]
    assert summary["gaaf n=2"]["train_loss"]["1"] == [2.0, 0.0]
    assert "standard_final_loss_over_this" not in summary["standard"]


def _without(monkeypatch, module: str) -> None:
    """Makes `import module` fail as if it were not installed."""
    import builtins
    import importlib.util
    import sys

    real_import, real_find = builtins.__import__, importlib.util.find_spec
    monkeypatch.delitem(sys.modules, module, raising=False)

    def fake_import(name, *args, **kwargs):
        if name.split(".")[0] == module:
            raise ModuleNotFoundError(f"No module named {module!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.split(".")[0] == module else real_find(name, *a))


def test_missing_optional_packages_fail_before_training(monkeypatch, tmp_path):
    _without(monkeypatch, "matplotlib")
    with pytest.raises(SystemExit, match=r"matplotlib.*laaf_kernels\[experiments\]"):
        cli.main(["discontinuous", "--iters", "1", "--seeds", "1", "--out", str(tmp_path)])
    _without(monkeypatch, "sklearn")
    with pytest.raises(SystemExit, match=r"sklearn.*laaf_kernels\[experiments\]"):
        cli.main(["autoencoder", "--seeds", "1", "--epochs", "1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"sklearn.*laaf_kernels\[experiments\]"):
        cli.main(["lenet", "--seeds", "1", "--epochs", "1", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir()), "nothing may be written before the check"


def test_runs_without_tqdm(monkeypatch, tmp_path, capsys):
    from laaf_kernels.experiments.deps import progress_bar

    _without(monkeypatch, "tqdm")
    jobs = [1, 2, 3]
    assert progress_bar(jobs, desc="runs") is jobs
    bar = progress_bar(total=3)
    bar.set_postfix(loss="1")
    bar.close()
    rc = cli.main(["discontinuous", "--variants", "standard", "--iters", "2", "--seeds", "1",
                   "--log-every", "1", "--out", str(tmp_path)])
    assert rc == 0 and (tmp_path / "runs.csv").exists()
