"""NUTS with a discrete latent on NumPyro: the component of a Gaussian mixture summed out of the potential
(funsor), recovered per draw by infer_discrete into ArviZ, against the exact posterior (tests/discrete_pairs.py)."""

from __future__ import annotations

import math

import arviz as az
import numpy as np
import pytest
import torch

from ppgen.data import from_tensor
from ppgen.diagnostics import to_inference_data
from ppgen.inference import fit
from tests.discrete_pairs import (
    MEANS,
    ComponentMixture,
    component_log_joint,
    log_marginal,
    mixture_data,
    posterior_z_mean,
)

SPREAD = 0.35  # components close enough that p(z | x) is one hump NUTS crosses freely


@pytest.fixture(scope="module")
def mixture_nuts():
    """(pair, x, exact component means, per-point NUTS fit): 4 points, 2 chains x (300 warmup + 500) draws."""
    means = SPREAD * torch.tensor(MEANS)
    x = mixture_data(60, seed=1)[:4] * SPREAD  # data drawn near the spread-out components
    pair = ComponentMixture(spread=SPREAD)
    pair.trial_run(x)
    result = fit(pair, from_tensor(x), backend="nuts", points=4, split="train", chains=2, warmup=300, samples=500,
                 seed=0)
    return pair, x, means, result


def test_nuts_sums_the_component_out_and_recovers_it(mixture_nuts):
    """Per-point NUTS (4 points, 2 chains × 500 draws) on the enumerated mixture: the posterior means of z and of
    the one-hot component within 4 Monte Carlo standard errors of the exact E[z | x] = Σ_c p(c|x) r (x − μ_c) and
    p(c | x). MCSE: ArviZ's ``mcse`` (mean) of each coordinate from the InferenceData; for a component indicator
    whose draws are all equal (MCSE 0) the floor is the independent-draws SE √(p(1−p)/S), S the number of
    draws."""
    pair, x, means, result = mixture_nuts
    assert set(result.samples) == {"z", "c"}
    idata = to_inference_data(result, log_lik=False)
    assert set(idata.posterior.data_vars) == {"z", "c"}
    z_mean = idata.posterior["z"].mean(("chain", "draw")).values
    z_mcse = az.mcse(idata, var_names=["z"])["z"].values
    exact_z = posterior_z_mean(x, means).numpy()
    assert (np.abs(z_mean - exact_z) <= 4 * z_mcse).all(), (z_mean, exact_z, z_mcse)

    c = idata.posterior["c"].values  # (chain, draw, point)
    exact_c = torch.softmax(component_log_joint(x, means=means), -1).numpy()  # (point, component)
    draws = c.shape[0] * c.shape[1]
    for k in range(exact_c.shape[1]):
        hit = az.convert_to_dataset({"hit": (c == k).astype(float)})
        mcse = az.mcse(hit)["hit"].values
        floor = np.sqrt(exact_c[:, k] * (1 - exact_c[:, k]) / draws)
        estimate = (c == k).mean((0, 1))
        assert (np.abs(estimate - exact_c[:, k]) <= 4 * np.maximum(mcse, floor)).all(), (k, estimate, exact_c[:, k])
    assert math.isfinite(float(result.history[0]["wall"]))


def test_amortization_comparison_sums_the_component_out(mixture_nuts):
    """``ppgen compare``'s per-point table (amortization.compare) for the pair with c enumerated in the model: z is
    compared on its marginal posterior, every density log p(x, z) = log Σ_c p(x, c, z). Checked: (1) the
    encoder's ELBO there (Gaussian q, c summed by amortization.log_joint) agrees with the enumerated estimator
    (sites.enumerated_log_weights, c summed by the per-example rule) within 4 SE, SE² the sum of both estimates'
    squared SEs (sd of the per-draw terms / √draws); (2) the ELBO of q* is at most the exact log p(x) + 4 SE."""
    from ppgen.evaluation.amortization import compare
    from ppgen.sites import enumerated_log_weights

    pair, x, means, result = mixture_nuts
    table = compare(pair, result, steps=200, elbo_samples=500, iwae_k=500, seed=0)
    rows = table["points"]
    assert len(rows) == 4 and all(math.isfinite(r["kl"]) and r["divergences"] == 0 for r in rows)
    torch.manual_seed(0)
    _, terms = enumerated_log_weights(pair, x, 4000)  # (draws, points)
    ours, ours_se = terms.mean(0), terms.std(0) / math.sqrt(terms.shape[0])
    exact = log_marginal(x, means=means)
    for i, row in enumerate(rows):
        se = math.hypot(row["elbo_encoder_se"], float(ours_se[i]))
        assert abs(row["elbo_encoder"] - float(ours[i])) <= 4 * se, (i, row["elbo_encoder"], float(ours[i]), se)
        assert row["elbo_qstar"] <= float(exact[i]) + 4 * row["approximation_gap_se"]
