"""NUTS with a discrete latent on NumPyro: the component of a Gaussian mixture summed out of the potential
(funsor), recovered per draw by infer_discrete into ArviZ, against the exact posterior (tests/discrete_pairs.py)."""

from __future__ import annotations

import math

import arviz as az
import numpy as np
import torch

from ppgen.data import from_tensor
from ppgen.diagnostics import to_inference_data
from ppgen.inference import fit
from tests.discrete_pairs import MEANS, ComponentMixture, component_log_joint, mixture_data, posterior_z_mean

SPREAD = 0.35  # components close enough that p(z | x) is one hump NUTS crosses freely


def test_nuts_sums_the_component_out_and_recovers_it():
    """Per-point NUTS (4 points, 2 chains × 500 draws) on the enumerated mixture: the posterior means of z and of
    the one-hot component within 4 Monte Carlo standard errors of the exact E[z | x] = Σ_c p(c|x) r (x − μ_c) and
    p(c | x). MCSE: ArviZ's ``mcse`` (mean) of each coordinate from the InferenceData; for a component indicator
    whose draws are all equal (MCSE 0) the floor is the independent-draws SE √(p(1−p)/S), S the number of
    draws."""
    means = SPREAD * torch.tensor(MEANS)
    x = mixture_data(60, seed=1)[:4]
    x = x * SPREAD  # data drawn near the spread-out components
    pair = ComponentMixture(spread=SPREAD)
    pair.trial_run(x)
    result = fit(pair, from_tensor(x), backend="nuts", points=4, split="train", chains=2, warmup=300, samples=500,
                 seed=0)
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
