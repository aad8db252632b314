"""The experiments command line: a tiny run writes its files; bad arguments are refused."""
import csv
import json

import pytest

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
])
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(argv)
    assert message in capsys.readouterr().err


def test_problem_setups_follow_the_paper():
    burgers = Burgers("n-laaf", seed=0, n_collocation=500)
    assert burgers.xt_u.shape == (400, 2) and burgers.xt_f.shape == (500, 2)
    assert burgers.exact.shape == (256, 100) and burgers.model.sizes == [2] + [20] * 6 + [1]
    assert (burgers.xt_u[200:, 0].abs() == 1).all() and (burgers.xt_u[:200, 1] == 0).all()
    disc = Discontinuous("gaaf", seed=0)
    assert disc.x.shape == (300, 1) and disc.model.sizes == [1, 50, 50, 50, 50, 1]
    assert disc.lr == 2e-4 and burgers.lr == 8e-4
    assert set(VARIANTS) == {"standard", "gaaf", "l-laaf", "n-laaf", "l-laaf-srt", "n-laaf-srt"}


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
    assert len(history["slopes"][-1]) == 4  # one n*a per hidden layer
