"""The commands on a pair with input columns (``model(x, *inputs)``): the conditional VAE from the command line.

Exact answers:

* ``ppgen train cvae`` records the pair's columns and its metrics' ``{split}_elbo`` equal the ELBO estimator given
  each split's labels in the split's order (same seed): the run's figures are log p(x | y) bounds, not of x alone;
* ``ppgen evaluate`` reports the ELBO and IWAE-K given the test labels, equal to the estimators called by hand;
* ``ppgen sample --label`` writes exactly ``pair.generate(n, labels)`` under the same seed, and other labels give
  other draws (the label reaches the decoder); after 60 epochs (about 30 s) a logistic regression trained on the
  grey 8x8 digits (96% held-out accuracy) reads the asked label in at least 7 of 8 draws of every class (all
  80 measured);
* ``posterior.nc`` holds q(z | x, y) at the first test examples given their labels: its draws' means lie within
  4 standard errors (the guide's scale / √1000, independent draws) of the encoder's means given y, and its
  log-likelihood equals log p(x_n | z, y_n) of the model traced by hand at those draws (float rounding);
* ``ppgen compare`` runs per point given each point's label: the encoder's ELBO in its table agrees with the
  ELBO estimator given the labels (``sites.log_weights``, which ``evaluation.elbo`` averages; 4,000 draws) within
  4 combined standard errors, and the wrong labels give an ELBO lower by more than that;
* every refusal (a label for a pair without inputs, a label out of range, a missing label in the data, the
  adversarial backend) is exit 2 with one line, before anything is written.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from support import run_cli

from ppgen import evaluation, runs
from ppgen.data import load


def one_line_error(capsys, code: int, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    for word in words:
        assert word in err, err
    return err


@pytest.fixture(scope="module")
def cvae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cvae") / "run"
    assert run_cli("train", "cvae", "--data", "digits", "--epochs", 60, "--hidden", 128, "--z-dim", 4, "--batch-size",
                   64, "--out", out, "--no-progress") == 0
    return out


def test_train_records_the_inputs_and_its_elbos_are_given_each_splits_labels(cvae_run):
    config = runs.read_config(cvae_run)
    assert config["inputs"] == ["y"] and config["data"]["inputs"] is None
    metrics = json.loads((cvae_run / runs.METRICS).read_text())
    pair = runs.load_pair(cvae_run)
    pair.eval()
    data = load("digits")
    expected = {}
    torch.manual_seed(0)  # quick_metrics: one seeded pass over train, val, test
    for split in ("train", "val", "test"):
        x = data.train_epoch(0) if split == "train" else getattr(data, split)
        expected[split] = float(evaluation.elbo(pair, x, inputs=data.inputs(split, ("y",))).mean())
    for split in ("train", "val", "test"):
        assert metrics[f"{split}_elbo"] == pytest.approx(expected[split], abs=1e-4)
    assert (cvae_run / "reconstructions.png").exists() and (cvae_run / "latents.png").exists()


def test_evaluate_uses_the_test_labels(cvae_run, capsys):
    capsys.readouterr()
    assert run_cli("evaluate", cvae_run, "--iwae", 10, "--limit", 200, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    pair = runs.load_pair(cvae_run)
    pair.eval()
    data = load("digits")
    x, (y,) = data.test[:200], data.inputs("test", ("y",))
    torch.manual_seed(0)
    elbo = evaluation.elbo(pair, x, num_samples=10, inputs=(y[:200],))
    iwae = evaluation.iwae(pair, x, k=10, inputs=(y[:200],))
    assert result["elbo"] == pytest.approx(float(elbo.mean()), abs=1e-4)
    assert result["iwae_10"] == pytest.approx(float(iwae.mean()), abs=1e-4)
    assert result["iwae_10"] >= result["elbo"] - 4 * result["elbo_se"]
    assert len(result["kl_per_dim"]) == 4 and "active_units" in result


def test_sample_with_a_label_is_the_pairs_conditional_generation(cvae_run, tmp_path, capsys):
    pair = runs.load_pair(cvae_run)
    pair.eval()
    assert run_cli("sample", cvae_run, "--label", 3, "-n", 8, "--out", tmp_path / "s.npy", "--seed", 5) == 0
    torch.manual_seed(5)
    with torch.no_grad():
        expected, other = pair.generate(8, 3), None
        torch.manual_seed(5)
        other = pair.generate(8, 4)
    drawn = np.load(tmp_path / "s.npy")
    np.testing.assert_array_equal(drawn, expected.numpy())
    assert np.abs(drawn - other.numpy()).max() > 1e-3  # the label reaches the decoder
    labels = list(range(8))
    assert run_cli("sample", cvae_run, "--label", ",".join(map(str, labels)), "-n", 8, "--out",
                   tmp_path / "each.npy") == 0
    torch.manual_seed(0)
    with torch.no_grad():
        np.testing.assert_array_equal(np.load(tmp_path / "each.npy"), pair.generate(8, labels).numpy())
    capsys.readouterr()
    one_line_error(capsys, run_cli("sample", cvae_run, "--label", 12, "-n", 8, "--out", tmp_path / "x.npy"),
                   "0..9", "12")
    one_line_error(capsys, run_cli("sample", cvae_run, "--label", "1,2", "-n", 8, "--out", tmp_path / "x.npy"),
                   "8 labels")
    one_line_error(capsys, run_cli("sample", cvae_run, "--label", 1, "--rejection", "--out", tmp_path / "x.npy"),
                   "--rejection")
    assert not (tmp_path / "x.npy").exists()


def test_sampled_digits_show_the_asked_label(cvae_run, tmp_path):
    from sklearn.linear_model import LogisticRegression

    grey = load("digits", binarize=None)
    classifier = LogisticRegression(max_iter=2000).fit(grey.train.flatten(1).numpy(), grey.train_labels.numpy())
    assert classifier.score(grey.test.flatten(1).numpy(), grey.test_labels.numpy()) > 0.9
    for label in range(10):
        assert run_cli("sample", cvae_run, "--label", label, "-n", 8, "--out", tmp_path / "s.npy") == 0
        read = classifier.predict(np.load(tmp_path / "s.npy").reshape(8, -1))
        assert (read == label).sum() >= 7, (label, read)


def test_posterior_nc_is_drawn_given_the_test_labels(cvae_run):
    import arviz as az
    from pyro import poutine

    idata = az.from_netcdf(cvae_run / "posterior.nc")
    pair = runs.load_pair(cvae_run)
    pair.eval()
    data = load("digits")
    x, y = data.test[:16], data.inputs("test", ("y",))[0][:16]
    z = idata.posterior["z"].values  # (chain, draw, data, z_dim)
    assert z.shape[:3] == (4, 250, 16)
    with torch.no_grad():
        loc, scale = pair.encode(x, y)
    draws = z.reshape(-1, 16, z.shape[-1])
    se = scale.numpy() / math.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(0) - loc.numpy()) < 4 * se)
    ll = idata.log_likelihood["x"].values.reshape(len(draws), 16)
    for d in (0, 517, 999):
        with torch.no_grad():
            trace = poutine.trace(poutine.condition(pair.model, {"z": torch.as_tensor(draws[d])})).get_trace(x, y)
            expected = trace.nodes["x"]["fn"].log_prob(x)
        np.testing.assert_allclose(ll[d], expected.numpy(), rtol=1e-5, atol=1e-4)


def test_compare_runs_per_point_given_the_points_labels(cvae_run, tmp_path):
    import arviz as az

    from ppgen.sites import log_weights

    out = tmp_path / "compare"
    assert run_cli("compare", cvae_run, "--points", 2, "--chains", 2, "--warmup", 100, "--samples", 200, "--steps",
                   100, "--iwae", 200, "--out", out) == 0
    rows = json.loads((out / "compare.json").read_text())["points"]
    assert [r["point"] for r in rows] == [0, 1]
    combined = az.from_netcdf(out / "compare.nc")
    assert combined.posterior["z"].dims[:4] == ("chain", "draw", "inference", "data")
    assert az.from_netcdf(out / "nuts.nc").log_likelihood["x"].shape == (2, 200, 2)
    pair = runs.load_pair(cvae_run)
    pair.eval()
    data = load("digits")
    x, y = data.test[:2], data.inputs("test", ("y",))[0][:2]
    torch.manual_seed(0)
    right = log_weights(pair, x, 4000, inputs=(y,)).double()
    wrong = log_weights(pair, x, 4000, inputs=((y + 1) % 10,)).double()
    for i, row in enumerate(rows):
        se = math.sqrt(row["elbo_encoder_se"] ** 2 + float(right[:, i].var()) / 4000)
        assert abs(row["elbo_encoder"] - float(right[:, i].mean())) < 4 * se, (row["elbo_encoder"], right[:, i].mean())
        assert float(wrong[:, i].mean()) < row["elbo_encoder"] - 8 * se  # the labels reach both sides


def test_the_adversarial_backend_refuses_a_pair_with_inputs(tmp_path, capsys):
    capsys.readouterr()
    code = run_cli("train", "cvae", "--data", "digits", "--backend", "adversarial", "--epochs", 1, "--out",
                   tmp_path / "gan", "--no-progress")
    one_line_error(capsys, code, "input columns", "svi")
    assert not (tmp_path / "gan").exists()


def test_label_on_a_pair_without_inputs_is_refused(tmp_path, capsys):
    out = tmp_path / "vae"
    assert run_cli("train", "vae", "--data", "digits", "--epochs", 1, "--hidden", 32, "--z-dim", 2, "--out", out,
                   "--no-progress") == 0
    capsys.readouterr()
    one_line_error(capsys, run_cli("sample", out, "--label", 3, "--out", tmp_path / "s.npy"), "--label", "vae")
    assert not (tmp_path / "s.npy").exists()


def _digits_npz(path, y):
    data = load("digits", binarize=None)
    x = torch.cat([data.train, data.val, data.test]).numpy()
    np.savez(path, x=x, y=y(len(x)))


def test_an_npz_with_x_and_y_trains_a_cvae(tmp_path, capsys):
    _digits_npz(tmp_path / "d.npz", lambda n: np.arange(n) % 10)
    out = tmp_path / "run"
    assert run_cli("train", "cvae", "--data", tmp_path / "d.npz", "--epochs", 1, "--hidden", 32, "--z-dim", 2,
                   "--likelihood", "cbernoulli", "--out", out, "--no-progress") == 0
    metrics = json.loads((out / runs.METRICS).read_text())
    assert runs.read_config(out)["inputs"] == ["y"] and np.isfinite(metrics["test_elbo"])

    def with_missing(n):  # one unlabelled example: the conditional VAE needs every label
        y = np.arange(n) % 10
        y[5] = -1
        return y

    _digits_npz(tmp_path / "m.npz", with_missing)
    capsys.readouterr()
    code = run_cli("train", "cvae", "--data", tmp_path / "m.npz", "--likelihood", "cbernoulli", "--epochs", 1,
                   "--out", tmp_path / "m", "--no-progress")
    one_line_error(capsys, code, "no 'y' label")
    assert not (tmp_path / "m").exists()  # refused before anything is written


def test_csv_input_columns_are_recorded_and_reach_the_pair(tmp_path, capsys):
    rng = np.random.default_rng(0)
    label = rng.integers(0, 3, 120)
    features = rng.normal(size=(120, 3)) + label[:, None]
    rows = ["a,b,c,group"] + [f"{f[0]},{f[1]},{f[2]},{g}" for f, g in zip(features, label)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    assert run_cli("train", "cvae", "--data", tmp_path / "d.csv", "--inputs", "group", "--label-column", "group",
                   "--classes", 3, "--likelihood", "gaussian", "--hidden", 16, "--z-dim", 2, "--epochs", 1,
                   "--batch-size", 32, "--out", out, "--no-progress") == 0
    config = runs.read_config(out)
    assert config["data"]["inputs"] == ["group"] and config["inputs"] == ["group"]
    capsys.readouterr()
    assert run_cli("evaluate", out, "--iwae", 5, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    pair = runs.load_pair(out)
    pair.eval()
    data = load(str(tmp_path / "d.csv"), inputs=("group",), binarize=None)
    torch.manual_seed(0)
    elbo = evaluation.elbo(pair, data.test, num_samples=10, inputs=data.inputs("test", ("group",)))
    assert result["elbo"] == pytest.approx(float(elbo.mean()), abs=1e-4)
    code = run_cli("train", "cvae", "--data", tmp_path / "d.csv", "--inputs", "group", "--classes", 3,
                   "--likelihood", "gaussian", "--out", tmp_path / "wrong", "--no-progress")
    one_line_error(capsys, code, "'y'")  # the pair reads column y by default; the data has group
    assert not (tmp_path / "wrong").exists()


def test_label_needs_a_generate_that_takes_labels(tmp_path):
    """A pair with input columns whose ``generate(n)`` takes no labels is refused in one line naming the fix."""
    from test_inputs import ConditionalLinear

    from ppgen.errors import UserError
    from ppgen.workflows.sample import _check_labels

    with pytest.raises(UserError, match=r"generate\(n\) takes no labels") as err:
        _check_labels(ConditionalLinear(), tmp_path)
    assert "\n" not in str(err.value)


def test_guide_draws_without_the_input_columns_are_one_line(cvae_run):
    from types import SimpleNamespace

    from ppgen.diagnostics import to_inference_data
    from ppgen.errors import UserError

    pair = runs.load_pair(cvae_run)
    with pytest.raises(UserError, match="input columns") as err:
        to_inference_data(SimpleNamespace(backend="svi", pair=pair), x=load("digits").test[:4])
    assert "\n" not in str(err.value) and "(y)" in str(err.value)
