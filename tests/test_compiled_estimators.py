"""The compiled (JAX) ELBO and IWAE against the torch path and against exact answers.

The two paths draw different noise, so they are compared where the answer is fixed:

* at the same draws: the compiled path returns its guide draws z_{k,n} with its log weights; the torch path's
  traces conditioned on those z give log p(x, z) − log q(z|x) again, equal within float32 rounding (sums of a
  few hundred float32 terms of size ≤ 10²: |error| ≲ 10⁻⁴);
* with the exact posterior as guide (PPCA), every log weight is log p(x), so IWAE_K = ELBO = log p(x) exactly on
  either path, whatever the draws and the chunking (a padded particle counted, or a padded row mixed in, would
  move it by log(K'/K) or more);
* the ordering ELBO ≤ IWAE_K ≤ log p(x) runs on both paths in tests/test_ppca.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import ppca_sample

from ppgen.errors import UserError
from ppgen.evaluation import compiled, elbo, iwae
from ppgen.evaluation import likelihood as likelihood_module
from ppgen.models import CVAE, PPCA, VAE, FactorAnalysis, HierarchicalVAE
from ppgen.sites import log_density, trace_conditioned

pytestmark = pytest.mark.usefixtures("single_thread")


def _binary(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, d), 0.3), generator=torch.Generator().manual_seed(seed))


def _ppca(truth: dict) -> PPCA:
    return PPCA(x_shape=(truth["d"],), z_dim=truth["k"]).set_params(truth["W"], truth["mu"], truth["sigma"])


def _pairs(truth: dict):
    torch.manual_seed(0)
    x12, labels = _binary(9, 12), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    return {
        "vae-bernoulli": (VAE(x_shape=(12,), z_dim=3, hidden=(16,)), x12, ()),
        "vae-gaussian": (VAE(x_shape=(12,), z_dim=3, hidden=(16,), likelihood="gaussian"), x12 * 0.8 + 0.1, ()),
        "hierarchical": (HierarchicalVAE(x_shape=(12,), z_dims=(4, 2), hidden=(16, 8)), x12, ()),
        "cvae-labels": (CVAE(x_shape=(12,), z_dim=2, hidden=(16,), classes=3), x12, (labels,)),
        "ppca": (_ppca(truth), ppca_sample(truth, 9, seed=4), ()),
    }


@pytest.mark.parametrize("name", ["vae-bernoulli", "vae-gaussian", "hierarchical", "cvae-labels", "ppca"])
def test_compiled_log_weights_equal_the_torch_path_at_the_same_draws(name, ppca_truth):
    pair, x, inputs = _pairs(ppca_truth)[name]
    assert compiled.why_not(pair, x, inputs) is None
    k = 6
    log_w, draws = compiled.log_weights_and_draws(pair, x, k, inputs, seed=3)
    assert log_w.shape == (k, len(x)) and set(draws) == set(pair.latent_sites)
    with torch.no_grad():
        guide = trace_conditioned(pair.guide, pair, x, draws, k, inputs)
        model = trace_conditioned(pair.model, pair, x, draws, k, inputs)
        want = log_density(model, pair.data_plate) - log_density(guide, pair.data_plate)
    assert want.shape == log_w.shape
    torch.testing.assert_close(log_w, want, rtol=1e-5, atol=1e-4)
    assert float(log_w.std(0).min()) > 1e-3  # the draws differ: a weight that ignored z would not pass


@pytest.mark.parametrize("budget", [5 * 7, 8_000_000], ids=["row-by-row", "one-chunk"])
def test_exact_posterior_guide_gives_log_px_on_the_compiled_path(ppca_truth, budget):
    """A budget of 35 floats of d = 5 runs the 10 rows one at a time with their 7 particles; 8,000,000 runs all
    10 x 7 at once."""
    pair = _ppca(ppca_truth).set_guide_to_posterior()
    x = ppca_sample(ppca_truth, 10, seed=3)
    log_px = pair.log_marginal(x).detach()
    assert likelihood_module._budget(pair, 7, budget)[1] == (1 if budget == 35 else 228_571)
    for estimate in (iwae(pair, x, k=7, budget=budget, engine="jax"),
                     elbo(pair, x, num_samples=7, budget=budget, engine="jax")):
        torch.testing.assert_close(estimate, log_px, atol=2e-4, rtol=1e-5)


def test_padded_particle_and_row_chunks_drop_out(ppca_truth):
    """K = 7 in particle chunks of at most 3 (3 chunks of 3, two padded particles), 10 rows in chunks of at most 4
    (3 chunks of 4, two padded rows): still log p(x) for each row, in order."""
    pair = _ppca(ppca_truth).set_guide_to_posterior()
    x = ppca_sample(ppca_truth, 10, seed=3)
    log_px = pair.log_marginal(x).detach()
    assert compiled.balanced(7, 3) == (3, 3) and compiled.balanced(10, 4) == (3, 4)
    for which in (compiled.IWAE, compiled.ELBO):
        torch.testing.assert_close(compiled.estimate(pair, x, which, 7, 3, 4), log_px, atol=2e-4, rtol=1e-5)


def test_iwae_and_elbo_agree_across_paths_in_distribution(ppca_truth):
    """On a spoiled guide the two paths' IWAE_20 and ELBO are independent draws of the same estimators: paired
    over 300 x, their mean difference is within 4 standard errors of 0."""
    pair = _ppca(ppca_truth).set_guide_to_posterior()
    with torch.no_grad():
        pair.encoder.raw_tril.add_(torch.tensor([[0.35, 0.0], [0.3, -0.2]]))
    x = ppca_sample(ppca_truth, 300, seed=6)
    torch.manual_seed(0)
    for run in (lambda e: iwae(pair, x, k=20, engine=e), lambda e: elbo(pair, x, num_samples=5, engine=e)):
        a, b = run("jax"), run("torch")
        diff = (a - b).double()
        assert abs(float(diff.mean())) < 4 * float(diff.std() / len(x) ** 0.5)


def test_the_key_comes_from_torch_seed(ppca_truth):
    pair = _ppca(ppca_truth)
    x = ppca_sample(ppca_truth, 20, seed=1)
    runs = []
    for seed in (4, 4, 5):
        torch.manual_seed(seed)
        runs.append(iwae(pair, x, k=10, engine="jax"))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_auto_compiles_large_jobs_only_and_torch_can_be_forced(ppca_truth, monkeypatch):
    pair = _ppca(ppca_truth)
    x = ppca_sample(ppca_truth, 20, seed=1)
    choose = likelihood_module.choose_engine
    monkeypatch.delenv(likelihood_module.ENGINE_VARIABLE, raising=False)
    assert choose(pair, x, 10) == "torch"  # 20 x 10 x 5 values: compiling would cost more than it saves
    monkeypatch.setattr(likelihood_module, "AUTO_MIN_WORK", 1000)
    assert choose(pair, x, 10) == "jax"
    monkeypatch.setenv(likelihood_module.ENGINE_VARIABLE, "torch")
    assert choose(pair, x, 10) == "torch"
    assert choose(pair, x, 10, engine="jax") == "jax"  # the call's engine wins over the environment
    monkeypatch.setenv(likelihood_module.ENGINE_VARIABLE, "fast")
    with pytest.raises(UserError, match="PPGEN_ESTIMATOR_ENGINE=fast is not an estimator engine"):
        choose(pair, x, 10)
    with pytest.raises(UserError, match="engine='gpu' is not an estimator engine"):
        iwae(pair, x, k=2, engine="gpu")


def test_pairs_that_cannot_compile_run_on_torch(monkeypatch):
    monkeypatch.setattr(likelihood_module, "AUTO_MIN_WORK", 1)
    fa = FactorAnalysis(x_shape=(4,), z_dim=2)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    reason = compiled.why_not(fa, x)
    assert reason is not None and "outside the data plate" in reason  # global loadings: torch splits them 1/N
    assert likelihood_module.choose_engine(fa, x, 5) == "torch"
    with pytest.raises(UserError, match="engine='jax' cannot compile this pair's estimate .*outside the data plate"):
        elbo(fa, x, num_samples=2, engine="jax")
    assert elbo(fa, x, num_samples=2).shape == (8,)  # auto: the torch path


def test_validation_callback_compiles_once_after_the_jax_engine(ppca_truth, monkeypatch):
    """Validation after a JAX-trained epoch runs compiled when the run's validation work is large, once compiled
    for the run: new weights, same code; with the exact posterior as guide its ELBO is the mean log p(x) of the
    validation split."""
    monkeypatch.delenv(likelihood_module.ENGINE_VARIABLE, raising=False)
    monkeypatch.setattr(likelihood_module, "AUTO_MIN_WORK", 40 * 5 * 100)  # 40 examples x 5 values x 100 epochs
    pair = _ppca(ppca_truth).set_guide_to_posterior()
    val = ppca_sample(ppca_truth, 40, seed=8)
    data = SimpleNamespace(val=val, inputs=lambda split, names: ())
    calls = []
    real = compiled.estimate
    monkeypatch.setattr(compiled, "estimate", lambda *a, **kw: calls.append(a[2]) or real(*a, **kw))
    callback = likelihood_module.validation_callback(data, seed=0)
    assert callback(SimpleNamespace(pair=pair, options={"engine": "jax", "epochs": 99})) and calls == []  # too small
    first = callback(SimpleNamespace(pair=pair, options={"engine": "jax", "epochs": 100}))["val_elbo"]
    assert first == pytest.approx(float(pair.log_marginal(val).detach().mean()), abs=1e-4)
    pair.set_params(ppca_truth["W"] * 1.1, ppca_truth["mu"], ppca_truth["sigma"]).set_guide_to_posterior()
    second = callback(SimpleNamespace(pair=pair, options={"engine": "jax", "epochs": 100}))["val_elbo"]
    assert second == pytest.approx(float(pair.log_marginal(val).detach().mean()), abs=1e-4)
    assert calls == ["elbo", "elbo"]
    estimators = [fn for key, fn in compiled._PAIRS[pair].items() if key[0] == "elbo"]
    assert len(estimators) == 1 and estimators[0]._cache_size() == 1  # one compilation for both epochs
    callback(SimpleNamespace(pair=pair, options={"engine": "torch", "epochs": 100}))
    assert calls == ["elbo", "elbo"]  # a torch-trained run validates on torch


def test_a_compiled_pair_is_freed_when_dropped(ppca_truth):
    import gc
    import weakref

    pair = _ppca(ppca_truth)
    iwae(pair, ppca_sample(ppca_truth, 4, seed=1), k=3, engine="jax")
    assert pair in compiled._PAIRS
    gone = weakref.ref(pair)
    del pair
    gc.collect()
    assert gone() is None  # what is kept for it (its probe, its compiled estimators) does not hold it
