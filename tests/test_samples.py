"""FID, KID, IS and precision/recall against closed forms and hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from ppgen.data import load
from ppgen.errors import UserError
from ppgen.evaluation.samples import fid, inception_score, kid, precision_recall, sample_quality


def frechet(m1, s1, m2, s2) -> float:
    """The closed form ‖m1 − m2‖² + tr(S1 + S2 − 2 (S1 S2)^{1/2}), by scipy's sqrtm."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def gaussian(n, mean, cov, seed):
    g = np.random.default_rng(seed)
    return torch.as_tensor(g.multivariate_normal(mean, cov, size=n))


M1, M2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.0, -1.0])
S1 = np.array([[1.0, 0.3, 0.0], [0.3, 2.0, 0.2], [0.0, 0.2, 0.5]])
S2 = np.array([[0.5, -0.1, 0.0], [-0.1, 1.0, 0.0], [0.0, 0.0, 1.5]])


def test_fid_of_a_set_with_itself_is_zero():
    x = gaussian(3000, M1, S1, 0)
    assert abs(fid(x, x)) < 1e-8


def test_fid_equals_the_frechet_distance_of_the_sample_moments():
    x, y = gaussian(2000, M1, S1, 1), gaussian(1500, M2, S2, 2)
    exact = frechet(x.mean(0).numpy(), np.cov(x.T.numpy()), y.mean(0).numpy(), np.cov(y.T.numpy()))
    assert fid(x, y) == pytest.approx(exact, rel=1e-8)


def test_fid_between_two_gaussians_matches_the_closed_form():
    # FID is a plug-in estimate: its mean term is biased up by (tr S1 + tr S2)/n exactly; the
    # covariance term's bias is O(1/n) as well, far below the Monte Carlo error checked here.
    n, reps = 20_000, 8
    values = np.array([fid(gaussian(n, M1, S1, 10 + r), gaussian(n, M2, S2, 100 + r)) for r in range(reps)])
    expected = frechet(M1, S1, M2, S2) + (np.trace(S1) + np.trace(S2)) / n
    se = values.std(ddof=1) / math.sqrt(reps)
    assert abs(values.mean() - expected) < 4 * se
    assert expected > 1.0  # the distributions really differ


def test_kid_is_unbiased_for_two_draws_of_one_distribution():
    # With subset_size = n the subset estimate is the full unbiased MMD² of the two draws;
    # its mean over independent replicates must be 0 within Monte Carlo error.
    n, reps = 400, 30
    values = np.array([kid(gaussian(n, M1, S1, r), gaussian(n, M1, S1, 1000 + r), subsets=1, subset_size=n)[0]
                       for r in range(reps)])
    se = values.std(ddof=1) / math.sqrt(reps)
    assert abs(values.mean()) < 4 * se
    shifted = kid(gaussian(n, M1, S1, 7), gaussian(n, M2, S2, 8), subsets=1, subset_size=n)[0]
    assert shifted > values.mean() + 20 * values.std(ddof=1)


def test_inception_score_limits_and_formula():
    confident = 30.0 * torch.eye(10).repeat(50, 1)  # 10 classes, equally often, predicted with certainty
    assert inception_score(confident, splits=1)[0] == pytest.approx(10.0, rel=1e-6)
    assert inception_score(torch.zeros(200, 10), splits=1)[0] == pytest.approx(1.0, abs=1e-9)
    logits = torch.as_tensor(np.random.default_rng(0).normal(size=(300, 5)) * 2)
    p = torch.softmax(logits.double(), 1).numpy()
    marginal = p.mean(0)
    exact = math.exp(np.mean((p * (np.log(p) - np.log(marginal))).sum(1)))
    assert inception_score(logits, splits=1)[0] == pytest.approx(exact, rel=1e-9)


def test_precision_recall_hand_computed():
    # real points on a line 0, 1, 2, 3, 10 -> 1-NN radii 1, 1, 1, 1, 7;  fake 2.5, 5.5, 20 -> radii 3, 3, 14.5.
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])
    fake = torch.tensor([[2.5], [5.5], [20.0]])
    pr = precision_recall(real, fake, k=1)
    assert pr["precision"] == pytest.approx(2 / 3)  # 2.5 (ball of 2) and 5.5 (ball of 10) are inside; 20 is not
    assert pr["recall"] == pytest.approx(1.0)  # 0..3 lie in the ball of 2.5, 10 in that of 20
    x = gaussian(500, M1, S1, 3)
    assert precision_recall(x, x) == {"precision": 1.0, "recall": 1.0}
    assert precision_recall(x, x + 100) == {"precision": 0.0, "recall": 0.0}
    with pytest.raises(UserError):
        precision_recall(x[:3], x[:3], k=3)


def test_sample_quality_with_the_cached_classifier_on_digits(tmp_path):
    data = load("digits", binarize=None)
    good = sample_quality(data.test, data, cache_dir=tmp_path)
    assert good["classifier_accuracy"] > 0.9  # 10 classes: chance is 0.1
    assert abs(good["fid"]) < 1e-6 and good["precision"] == 1.0 and good["recall"] == 1.0
    assert list(tmp_path.iterdir()), "the classifier was not cached"
    held_out = sample_quality(data.val, data, cache_dir=tmp_path)
    assert held_out["classifier_accuracy"] == good["classifier_accuracy"]  # loaded from the cache
    noise = sample_quality(torch.rand_like(data.test), data, cache_dir=tmp_path)
    assert noise["fid"] > 10 * held_out["fid"] and noise["kid"] > 10 * abs(held_out["kid"])
    assert held_out["is"] > noise["is"] and held_out["precision"] > noise["precision"]
    with pytest.raises(UserError):
        sample_quality(data.test[:, :, :4], data, cache_dir=tmp_path)


def test_cli_evaluate_reports_sample_quality(tmp_path, monkeypatch, capsys):
    import json

    from ppgen.cli import main

    monkeypatch.setenv("PPGEN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    fast = ["--data", "digits", "--z-dim", "4", "--hidden", "32", "--batch-size", "64", "--no-progress"]
    assert main(["train", "vae", *fast, "--epochs", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--iwae", "2", "--fid", "--kid", "--is", "--pr", "--samples", "200",
                 "--json"]) == 0
    q = json.loads(capsys.readouterr().out)["sample_quality"]
    assert q["n_fake"] == 200 and q["classifier_accuracy"] > 0.9
    assert q["fid"] > 0 and 1.0 <= q["is"] <= 10.0 and 0 <= q["precision"] <= 1 and 0 <= q["recall"] <= 1
    assert list((tmp_path / "cache" / "classifiers").iterdir())
