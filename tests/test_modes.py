"""Mode-coverage metrics against exact answers on samples whose distribution is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ppgen.data.sources import MIXTURES, mixture
from ppgen.errors import UserError
from ppgen.evaluation.modes import mode_report, summarize

#: P(‖ε‖ ≤ 3σ) for a 2-D isotropic Gaussian: the χ²₂ CDF at 9
P_HQ = 1 - math.exp(-4.5)
N = 2500


@pytest.mark.parametrize("name", ["ring8", "grid25"])
def test_true_mixture_scores_all_modes_and_the_exact_high_quality_share(name):
    x, _ = mixture(name, N, seed=3)
    r = mode_report(x, mixture=name)
    k = len(MIXTURES[name][0]())
    assert r["modes"] == k == r["n_modes"]
    se = math.sqrt(P_HQ * (1 - P_HQ) / N)
    assert abs(r["high_quality"] - P_HQ) < 4 * se
    assert sum(r["counts"]) == round(r["high_quality"] * N)


def test_reverse_kl_of_true_samples_matches_its_multinomial_expectation():
    # For a multinomial histogram of N draws over K equal cells, E KL(q‖p) ≈ (K − 1) / (2N)
    # (the χ² approximation), with standard deviation ≈ √(2(K − 1)) / (2N).
    k, seeds = 8, 24
    kls = [mode_report(mixture("ring8", N, seed=s)[0], mixture="ring8")["reverse_kl"] for s in range(seeds)]
    expected = (k - 1) / (2 * N)
    se = math.sqrt(2 * (k - 1)) / (2 * N) / math.sqrt(seeds)
    assert abs(np.mean(kls) - expected) < 4 * se


def test_one_mode_gives_one_of_eight_and_kl_log_8():
    x, labels = mixture("ring8", 4 * N, seed=1)
    one = x[labels == 2][:N]
    r = mode_report(one, mixture="ring8")
    assert r["modes"] == 1
    assert r["reverse_kl"] == pytest.approx(math.log(8), abs=1e-12)
    assert r["counts"][2] == sum(r["counts"])


def test_half_the_modes_in_equal_shares_gives_kl_log_2():
    modes = MIXTURES["ring8"][0]()
    x = np.repeat(modes[::2], 100, axis=0)  # 4 modes, exactly on their centres
    r = mode_report(x, mixture="ring8")
    assert r["modes"] == 4 and r["high_quality"] == 1.0
    assert r["reverse_kl"] == pytest.approx(math.log(2), abs=1e-12)


def test_high_quality_threshold_is_three_standard_deviations():
    modes, std = MIXTURES["grid25"][0](), MIXTURES["grid25"][1]
    inside = modes + np.array([2.99 * std, 0.0])
    outside = modes + np.array([0.0, 3.01 * std])
    assert mode_report(inside, mixture="grid25")["high_quality"] == 1.0
    r = mode_report(outside, mixture="grid25")
    assert r["high_quality"] == 0.0 and r["modes"] == 0


def test_summarize_gives_mean_and_standard_error():
    reports = [{"modes": m, "high_quality": 0.5, "reverse_kl": 0.1} for m in (6, 7, 8)]
    s = summarize(reports)
    assert s["modes"] == 7 and s["modes_se"] == pytest.approx(1 / math.sqrt(3))
    assert s["high_quality_se"] == 0


def test_bad_input_is_a_user_error():
    with pytest.raises(UserError):
        mode_report(np.zeros((10, 3)), mixture="ring8")
    with pytest.raises(UserError):
        mode_report(np.zeros((10, 2)), mixture="moons")
    with pytest.raises(UserError):
        mode_report(np.full((10, 2), np.nan), mixture="ring8")
