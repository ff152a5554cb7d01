r"""DDPM (issue 11): the bound's terms against Monte Carlo, the sampled-timestep estimator against the full sum and
the traced pair's ELBO, and the exact log-likelihood of Gaussian data as ground truth.

Gaussian data x_0 ~ N(m, s² I) make every reverse conditional exact: with ᾱ-marginal variances
v_t = ᾱ_t s² + 1 − ᾱ_t,

    q(x_{t−1} | x_t) = N(c_t^0 E[x_0 | x_t] + c_t^x x_t,  1 / (1/v_{t−1} + α_t/β_t)),
    E[x_0 | x_t] = (m/s² + √ᾱ_t x_t/(1 − ᾱ_t)) / (1/s² + ᾱ_t/(1 − ᾱ_t)),   q(x_T) = N(√ᾱ_T m, v_T),

so a pair whose denoiser returns the exact ε-prediction E[ε | x_t], whose variances are the v's above and whose
p(x_T) is q(x_T) has p(x_{0:T}) = q(x_{0:T}): every log weight log p(x_0, x_{1:T}) − log q(x_{1:T} | x_0) is
exactly log q(x_0) (the KL between the two chains is zero).

Tolerances: statistical ones are 4 Monte Carlo standard errors computed from the draws (said at each assertion).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

import ppgen
from ppgen import evaluation, models
from ppgen.data import from_tensor
from ppgen.errors import UserError
from ppgen.models.diffusion import DDPM, DiscretizedNormal
from ppgen.nn import MLPDenoiser, NotLowerable, UNetDenoiser, lower
from ppgen.sites import trace_pair

pytestmark = pytest.mark.usefixtures("single_thread")
M, S = torch.tensor([1.0, -0.5]), 0.5


# -- ground truth: Gaussian data ------------------------------------------------------------------------
class ExactEps(nn.Module):
    """ε̂(x_t, t) = E[ε | x_t] when x_0 ~ N(m, s² I) (in float64)."""

    def __init__(self, alpha_bar: np.ndarray, m: torch.Tensor, s: float):
        super().__init__()
        self.register_buffer("ab", torch.as_tensor(alpha_bar, dtype=torch.float64))
        self.m, self.s = m.double(), float(s)

    def forward(self, x, t):
        ab = self.ab[t.long()].unsqueeze(-1)
        var0 = 1 / (1 / self.s ** 2 + ab / (1 - ab))
        mean0 = var0 * (self.m / self.s ** 2 + ab.sqrt() * x.double() / (1 - ab))
        return ((x.double() - ab.sqrt() * mean0) / (1 - ab).sqrt()).to(x.dtype)


def exact_denoiser(pair: DDPM, m=M, s=S) -> DDPM:
    pair.denoiser = ExactEps(pair.alpha_bar, m, s)
    return pair


class TrueReverse(DDPM):
    """The pair with p(x_T) = q(x_T), reverse steps and decoder = the true q(x_{t−1} | x_t) of N(m, s² I) data."""

    def __init__(self, m=M, s=S, **options):
        super().__init__((m.numel(),), likelihood="gaussian", prediction="eps", **options)
        self.m, self.s = m, s
        exact_denoiser(self, m, s)

    def marginal_var(self, t: int) -> float:
        ab = float(self.alpha_bar[t])
        return ab * self.s ** 2 + 1 - ab

    def step_variance(self, t: int) -> float:
        b = float(self.betas[t])
        return 1 / (1 / self.marginal_var(t - 1) + (1 - b) / b)

    def decoder_variance(self) -> float:
        return self.step_variance(1)

    def prior(self):
        return math.sqrt(float(self.alpha_bar[self.T])) * self.m, math.sqrt(self.marginal_var(self.T))


def log_q0(x: torch.Tensor, m=M, s=S) -> torch.Tensor:
    return torch.distributions.Normal(m, s).log_prob(x).sum(-1)


def gaussian_data(n: int, seed: int) -> torch.Tensor:
    return M + S * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_true_reverse_chain_gives_the_exact_log_likelihood(schedule):
    """Every log weight of the pair equals log q(x_0): the bound is exact (float32 error only, no MC error)."""
    torch.manual_seed(0)
    pair, x = TrueReverse(timesteps=8, schedule=schedule), gaussian_data(6, 1)
    with torch.no_grad():
        log_w = evaluation.log_weights(pair, x, 64)  # (64 trajectories, 6 examples)
        terms = torch.stack([pair.vlb_terms(x).sum(-1) for _ in range(400)])
    torch.testing.assert_close(log_w, log_q0(x).expand_as(log_w), atol=2e-5, rtol=0)
    # the closed-form terms' sum is a noisy single-trajectory estimate of −ELBO = −log q(x_0): 4 SE of its mean
    se = terms.std(0) / math.sqrt(len(terms))
    assert ((-terms.mean(0) - log_q0(x)).abs() < 4 * se).all(), (-terms.mean(0) - log_q0(x), se)


def test_ancestral_samples_of_the_true_reverse_chain_have_the_data_distribution():
    torch.manual_seed(0)
    pair = TrueReverse(timesteps=8)
    x = pair.generate(20000)  # the decoder's mean E[x_0 | x_1]: add its noise for draws of p(x_0)
    x = x + math.sqrt(pair.decoder_variance()) * torch.randn_like(x)
    # mean: 4 SE (s/√n); variance: 4 SE of a normal sample variance (s²·√(2/(n−1)))
    assert ((x.mean(0) - M).abs() < 4 * S / math.sqrt(len(x))).all(), x.mean(0)
    assert ((x.var(0) - S ** 2).abs() < 4 * S ** 2 * math.sqrt(2 / (len(x) - 1))).all(), x.var(0)


@pytest.mark.parametrize("engine", ["torch", pytest.param("jax", marks=pytest.mark.slow)])
def test_a_trained_mlp_denoiser_comes_close_to_the_exact_log_likelihood(engine):
    """Trained on L_vlb by SVI, the bound on held-out points comes within 0.25 nats per example of the bound of the
    exact denoiser with the model's own fixed variances (β_t, p(x_T) = N(0, I)), which is the best this model can
    do and lies 0.13 nats below the exact log p(x_0) here; 0.25 nats is the tolerance of the approximation (an MLP
    of 2 x 64 units, 40 epochs), not a Monte Carlo error (measured: 0.07 torch, 0.10 jax)."""
    torch.manual_seed(0)
    train, test = gaussian_data(4096, 0), gaussian_data(500, 1)
    options = dict(timesteps=8, schedule="cosine", likelihood="gaussian")
    pair = DDPM((2,), hidden=(64, 64), time_dim=16, objective="vlb", **options)
    fit = ppgen.fit(pair, from_tensor(train), epochs=40, batch_size=256, lr=3e-3, engine=engine, progress=False)
    assert fit.options["engine"] == engine and fit.stopped is None
    with torch.no_grad():
        trained = evaluation.elbo(pair, test, num_samples=20)
        ideal = evaluation.elbo(exact_denoiser(DDPM((2,), **options)), test, num_samples=20)
    exact = log_q0(test)
    gap = trained - ideal
    se = gap.std() / math.sqrt(len(gap))
    assert abs(float(gap.mean())) < 0.25 + 4 * se, (float(gap.mean()), float(se))
    assert float((exact - ideal).mean()) == pytest.approx(0.13, abs=0.05)
    assert abs(float((trained - exact).mean())) < 0.4, float((trained - exact).mean())


# -- each term against Monte Carlo; the estimators against each other -------------------------------------
def _random_pair(likelihood: str, prediction: str, variance: str = "beta", objective: str = "vlb") -> DDPM:
    shape = (2,) if likelihood == "gaussian" else (1, 3, 3)
    pair = DDPM(shape, likelihood=likelihood, hidden=(32,), time_dim=8, timesteps=6, schedule="cosine",
                prediction=prediction, variance=variance, objective=objective, levels=LEVELS)
    with torch.no_grad():  # weights away from their initialization, so every path matters
        for p in pair.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return pair


LEVELS = 5


def _data(likelihood: str, n: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    if likelihood == "discretized":
        return torch.randint(0, LEVELS, (n, 1, 3, 3), generator=g).float() / (LEVELS - 1)
    return torch.randn(n, 2, generator=g) if likelihood == "gaussian" else (torch.rand(n, 1, 3, 3, generator=g) < 0.5).float()


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli", "discretized"])
def test_each_closed_form_term_equals_its_monte_carlo_estimate(likelihood):
    """KL(q(x_{t−1}|x_t,x_0) ‖ p(x_{t−1}|x_t)) at a traced x_t, and L_T, against the mean of log q − log p over draws
    from the guide's own site distribution (4 SE); L_0 against the model's observed site (exact)."""
    torch.manual_seed(0)
    pair, x = _random_pair(likelihood, "eps", "beta_tilde"), _data(likelihood)
    with torch.no_grad():
        guide_tr, model_tr = trace_pair(pair, x, 1)
        for t in range(pair.T, 0, -1):
            q, p = guide_tr.nodes[f"x_{t}"]["fn"], model_tr.nodes[f"x_{t}"]["fn"]
            draws = q.sample((20000,))
            log_ratio = q.log_prob(draws) - p.log_prob(draws)  # (draws, 1, N)
            mc, se = log_ratio.mean(0)[0], log_ratio.std(0)[0] / math.sqrt(len(draws))
            exact = pair.prior_kl(x) if t == pair.T else pair.step_kl(x, guide_tr.nodes[f"x_{t + 1}"]["value"][0], t + 1)
            assert ((mc - exact).abs() < 4 * se + 1e-5).all(), (t, mc, exact, se)
        observed = model_tr.nodes["x"]["fn"].log_prob(x)[0]
        torch.testing.assert_close(-pair.decoder_nll(x, guide_tr.nodes["x_1"]["value"][0]), observed, atol=1e-4,
                                   rtol=1e-5)


@pytest.mark.parametrize("likelihood, prediction, variance", [
    ("gaussian", "eps", "beta"), ("gaussian", "x0", "beta"), ("bernoulli", "v", "beta"), ("discretized", "eps", "beta"),
    ("gaussian", "eps", "learned"), ("bernoulli", "eps", "learned")])
def test_sampled_timestep_estimator_equals_the_full_sum_and_the_traced_elbo(likelihood, prediction, variance):
    """E[one-timestep objective] = E[Σ_t closed-form terms] = −ELBO of the traced pair (all T sites), each mean
    within 4 standard errors of the difference (independent draws); learned variances included."""
    torch.manual_seed(0)
    pair, x = _random_pair(likelihood, prediction, variance), _data(likelihood)
    with torch.no_grad():
        sampled = torch.stack([pair.objective(x) for _ in range(4000)])
        full = torch.stack([pair.vlb_terms(x).sum(-1) for _ in range(1000)])
        traced = -evaluation.log_weights(pair, x, 4000)

    def mean_se(v):
        return v.mean(0), v.std(0) / math.sqrt(len(v))

    (a, sa), (b, sb), (c, sc) = mean_se(sampled), mean_se(full), mean_se(traced)
    assert ((a - b).abs() < 4 * torch.hypot(sa, sb)).all(), (a, b, sa, sb)
    assert ((b - c).abs() < 4 * torch.hypot(sb, sc)).all(), (b, c, sb, sc)


def assert_objective_means_agree(pair: DDPM, x: torch.Tensor, draws: int = 3000) -> None:
    """The objective hook traced on NumPyro (as the JAX engine runs it) and on Pyro: per-example means within
    4 SE of their difference over ``draws`` independent draws each."""
    import jax
    import numpyro

    from ppgen.ppl import backend

    xj = jnp.asarray(x.numpy())

    def one(key):
        with backend("numpyro"), numpyro.handlers.seed(rng_seed=key):
            return pair.objective(xj)

    jax_draws = np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(0), draws)))
    with torch.no_grad():
        torch_draws = torch.stack([pair.objective(x) for _ in range(draws)]).numpy()
    diff = jax_draws.mean(0) - torch_draws.mean(0)
    se = np.hypot(jax_draws.std(0), torch_draws.std(0)) / math.sqrt(draws)
    assert (np.abs(diff) < 4 * se).all(), (diff, se)


@pytest.mark.parametrize("likelihood, variance", [("bernoulli", "beta"), ("discretized", "beta"),
                                                  ("bernoulli", "learned")])
def test_the_objective_runs_on_numpyro_with_the_same_mean(likelihood, variance):
    """The JAX side of the hook (as the JAX engine traces it) gives the same L_simple + λ L_vlb, within 4 SE."""
    torch.manual_seed(0)
    pair, x = _random_pair(likelihood, "eps", variance, objective="hybrid"), _data(likelihood)
    assert_objective_means_agree(pair, x)


def test_discretized_decoder_is_a_distribution_over_the_levels_and_checks_its_data():
    """Σ_k P(k) = 1 over the grey levels for any mean and scale (exact: the bins tile the line)."""
    loc = torch.linspace(-1.5, 1.5, 13).unsqueeze(-1)
    grid = torch.arange(LEVELS).float() / (LEVELS - 1)
    for scale in (0.005, 0.3, 3.0):
        total = DiscretizedNormal(loc.expand(13, LEVELS), scale, LEVELS).log_prob(grid).exp().sum(-1)
        torch.testing.assert_close(total, torch.ones(13), atol=1e-5, rtol=0)
    pair = _random_pair("discretized", "eps")
    with pytest.raises(UserError, match="grid of 5 grey levels"):
        pair.check_data(torch.full((2, 1, 3, 3), 0.3))
    draws = pair.generate(4)
    assert draws.shape == (4, 1, 3, 3) and (draws >= 0).all() and (draws <= 1).all()


def _learned_twin(fixed: DDPM, end: float) -> DDPM:
    """A learned-variance pair with ``fixed``'s weights whose v head outputs the constant ``end``."""
    options = {**fixed.config_dict(), "variance": "learned"}
    twin = DDPM.from_config(options)
    missing, unexpected = twin.load_state_dict(fixed.state_dict(), strict=False)
    assert not unexpected and set(missing) == {"denoiser.out_v.weight", "denoiser.out_v.bias"}
    with torch.no_grad():
        twin.denoiser.out_v.weight.zero_()
        twin.denoiser.out_v.bias.fill_(end)
    return twin


@pytest.mark.parametrize("end, fixed_variance", [(40.0, "beta"), (-40.0, "beta_tilde")])
@pytest.mark.parametrize("objective", ["vlb", "hybrid"])
def test_learned_variance_at_its_ends_is_the_fixed_variance(end, fixed_variance, objective):
    """v ≡ +40 gives σ_t² = β_t and v ≡ −40 gives β̃_t (u = sigmoid(v) is 1 and 0 in float32): the objective, the
    closed-form terms, the traced ELBO and ancestral samples equal the fixed-variance pair's (same draws)."""
    torch.manual_seed(0)
    fixed = _random_pair("bernoulli", "eps", fixed_variance, objective)
    learned, x = _learned_twin(fixed, end), _data("bernoulli")
    for fn in (lambda p: p.objective(x), lambda p: p.vlb_terms(x), lambda p: evaluation.log_weights(p, x, 3),
               lambda p: p.generate(3)):
        values = []
        for pair in (fixed, learned):
            torch.manual_seed(7)
            with torch.no_grad():
                values.append(fn(pair))
        torch.testing.assert_close(values[1], values[0], rtol=1e-5, atol=1e-5)


def test_learned_variance_in_the_hybrid_trains_only_the_variance_through_the_bound():
    """The hybrid's L_vlb term reaches the v head and, through a stop-gradient on x̂_0, not the mean: the gradient of
    the hybrid on the mean's output layer is L_simple's alone (Nichol & Dhariwal, 2021)."""
    pair, x = _random_pair("gaussian", "eps", "learned", objective="hybrid"), _data("gaussian")
    simple = DDPM.from_config({**pair.config_dict(), "objective": "simple", "variance": "beta"})
    simple.load_state_dict(pair.state_dict(), strict=False)
    grads = []
    for p in (pair, simple):
        torch.manual_seed(5)
        p.zero_grad()
        p.objective(x).sum().backward()
        grads.append(p.denoiser.out.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
    assert pair.denoiser.out_v.weight.grad.abs().sum() > 0


def test_hybrid_is_simple_plus_lambda_vlb():
    torch.manual_seed(0)
    x = _data("gaussian")
    pairs = {o: _random_pair("gaussian", "eps", objective=o) for o in ("simple", "vlb", "hybrid")}
    for o in ("vlb", "hybrid"):
        pairs[o].load_state_dict(pairs["simple"].state_dict())
    values = {}
    for o, pair in pairs.items():
        torch.manual_seed(5)  # the same t and noise for each
        with torch.no_grad():
            values[o] = pair.objective(x)
    torch.testing.assert_close(values["hybrid"], values["simple"] + 0.001 * values["vlb"])


# -- importance-sampled timesteps (Nichol & Dhariwal, 2021, §3.3) ------------------------------------------
def _importance_twins(likelihood: str = "bernoulli", objective: str = "vlb", **options) -> tuple[DDPM, DDPM]:
    """A pair with importance-sampled timesteps and its uniform twin (the same weights)."""
    uniform = _random_pair(likelihood, "eps", objective=objective)
    uniform = DDPM.from_config({**uniform.config_dict(), **options}) if options else uniform
    importance = DDPM.from_config({**uniform.config_dict(), "timestep_sampling": "importance"})
    missing, unexpected = importance.load_state_dict(uniform.state_dict(), strict=False)
    assert not unexpected and set(missing) == {"timestep_history.values", "timestep_history.count"}
    return importance, uniform


def test_the_history_keeps_the_last_ten_values_of_each_timestep_and_sets_p_t():
    """Against a plain per-example append: each t's ring holds its last 10 values (duplicates of t within a batch
    included); p_t is uniform until every t has 10, then ∝ sqrt(mean L_t²), mixed with 0.1% uniform."""
    from ppgen.models.diffusion import HISTORY, UNIFORM_MIX

    pair, _ = _importance_twins()
    g = torch.Generator().manual_seed(0)
    reference: dict[int, list[float]] = {t: [] for t in range(1, pair.T + 1)}
    for size in (3, 40, 1, 25, 64):
        t = torch.randint(1, pair.T + 1, (size,), generator=g)
        values = torch.rand(size, generator=g)
        assert torch.equal(pair.timestep_probs(), torch.full((pair.T,), 1 / pair.T)) or \
            all(len(v) >= HISTORY for v in reference.values())
        pair.record_losses(t, values)
        for ti, vi in zip(t.tolist(), values.tolist()):
            reference[ti].append(vi)
    for ti, kept in reference.items():
        assert int(pair.timestep_history.count[ti - 1]) == len(kept)
        assert sorted(pair.timestep_history.values[ti - 1].tolist()) == sorted(kept[-HISTORY:])
    assert all(len(v) >= HISTORY for v in reference.values())
    rms = torch.tensor([math.sqrt(sum(v ** 2 for v in kept[-HISTORY:]) / HISTORY) for kept in reference.values()],
)
    expected = rms / rms.sum() * (1 - UNIFORM_MIX) + UNIFORM_MIX / pair.T
    torch.testing.assert_close(pair.timestep_probs(), expected)


class Echo(nn.Module):
    """ε̂(x_t, t) = x_t: L_simple = ‖ε − x_t‖² then runs from ‖ε − y‖² at small t to 0 at t = T."""

    def forward(self, x, t):
        return x


@pytest.mark.parametrize("objective", ["vlb", "hybrid"])
def test_the_importance_weighted_estimator_has_the_full_sums_mean_for_a_fixed_p(objective):
    """With a fixed, far from uniform p_t (a history set by hand; evaluation mode, so no updates), the estimator
    L_T + L_{t−1}/p_t at t ~ p_t has the mean of the sum of all closed-form terms (vlb); the hybrid's L_simple
    term, weighted alike, has the uniform L_simple's mean (λ = 0 and a denoiser under which L_simple depends
    strongly on t, so that the weight matters): within 4 SE of the difference (independent draws). Without the
    1/(T p_t) weight either test fails by many SE."""
    from ppgen.models.diffusion import HISTORY

    torch.manual_seed(0)
    pair, uniform = _importance_twins(objective=objective, **({"vlb_weight": 0.0} if objective == "hybrid" else {}))
    if objective == "hybrid":
        pair.denoiser = uniform.denoiser = Echo()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        pair.timestep_history.values.copy_(torch.exp(3 * torch.randn(pair.T, HISTORY, generator=g)))
        pair.timestep_history.count.fill_(HISTORY)
    p = pair.timestep_probs()
    assert p.max() / p.min() > 10  # far from uniform
    pair.eval()
    x = _data("bernoulli")
    with torch.no_grad():
        sampled = torch.stack([pair.objective(x) for _ in range(4000)])
        if objective == "vlb":
            full = torch.stack([uniform.vlb_terms(x).sum(-1) for _ in range(1000)])
        else:
            full = torch.stack([uniform.objective(x) for _ in range(4000)])
    assert torch.equal(pair.timestep_probs(), p)  # evaluation mode: p stayed fixed
    a, sa = sampled.mean(0), sampled.std(0) / math.sqrt(len(sampled))
    b, sb = full.mean(0), full.std(0) / math.sqrt(len(full))
    assert ((a - b).abs() < 4 * torch.hypot(sa, sb)).all(), (a, b, sa, sb)


def test_importance_sampling_lowers_the_variance_where_the_terms_are_unequal():
    """Trained-mode calls fill the history (uniform t until every t has 10 values), then p_t follows the terms;
    on this pair the terms span five orders of magnitude (the closed-form means below) and the importance
    estimator's variance per example is below the uniform one's by more than 4 SE of the difference (SE of a
    sample variance: sqrt((m4 − s⁴)/n))."""
    torch.manual_seed(0)
    pair, uniform = _importance_twins()
    x = _data("bernoulli")
    with torch.no_grad():
        means = torch.stack([uniform.vlb_terms(x) for _ in range(100)]).mean((0, 1))[:-1]  # L_0 .. L_{T−1}
        assert means.max() / means.min() > 1e3
        pair.train()
        while bool((pair.timestep_history.count < 10).any()):
            pair.objective(x)
        assert pair.timestep_probs().argmax() == means.argmax()
        pair.eval()
        draws = {name: torch.stack([p.objective(x) for _ in range(3000)]) for name, p in
                 (("importance", pair), ("uniform", uniform))}

    def var_se(v):
        centred = v - v.mean(0)
        var = centred.pow(2).mean(0)
        return var, ((centred.pow(4).mean(0) - var ** 2) / len(v)).sqrt()

    (vi, si), (vu, su) = var_se(draws["importance"]), var_se(draws["uniform"])
    assert (vu - vi > 4 * torch.hypot(si, su)).all(), (vi, vu, si, su)


def straight_and_resumed(options: dict, engine: str, lr: float) -> tuple[list[dict], DDPM]:
    """The state dicts of a DDPM on 256 Gaussian points after 4 epochs straight and after 2 + a resume to 4 (the
    same seeds), and the resumed pair."""
    data = from_tensor(gaussian_data(256, 0))
    states = []
    for split in (False, True):
        torch.manual_seed(0)
        pair = DDPM((2,), **options)
        kw = dict(batch_size=64, lr=lr, progress=False, callback=None, seed=3, engine=engine)
        if split:
            fit = ppgen.fit(pair, data, epochs=2, **kw)
            pair = DDPM((2,), **options)
            fit = ppgen.fit(pair, data, epochs=4, resume=fit.checkpoint(), **kw)
        else:
            fit = ppgen.fit(pair, data, epochs=4, **kw)
        assert fit.options["engine"] == engine and fit.stopped is None
        states.append(pair.state_dict())
    return states, pair


@pytest.mark.parametrize("engine", ["torch", "jax"])
def test_importance_sampling_trains_on_both_engines_and_carries_its_history(engine):
    """The history is carried from step to step (on JAX in the mutable site, through the compiled epoch) and back
    into the torch buffers: every training example's term is recorded; a resumed run equals the uninterrupted one
    bit for bit, history included; simple + importance is refused in one line."""
    options = dict(timesteps=8, hidden=(16,), time_dim=8, likelihood="gaussian", objective="vlb",
                   timestep_sampling="importance")
    fits, _ = straight_and_resumed(options, engine, lr=1e-3)
    count, values = fits[0]["timestep_history.count"], fits[0]["timestep_history.values"]
    assert int(count.sum()) == 4 * 256 and (count >= 10).all() and (values != 0).all()
    assert all(torch.equal(fits[0][k], fits[1][k]) for k in fits[0])
    with pytest.raises(UserError, match="objective vlb or hybrid"):
        DDPM((2,), **{**options, "objective": "simple"})


def test_the_importance_weighted_objective_runs_on_numpyro_with_the_same_mean():
    """The JAX side (as the JAX engine traces it) with the same fixed p_t: the same mean as torch's, within 4 SE;
    in training mode it records the terms into the mutable site (NumPyro carries them), on torch into the buffers."""
    import numpyro

    from ppgen.models.diffusion import HISTORY
    from ppgen.ppl import backend

    torch.manual_seed(0)
    pair, _ = _importance_twins()
    with torch.no_grad():
        pair.timestep_history.values.copy_(torch.exp(3 * torch.randn(pair.T, HISTORY)))
        pair.timestep_history.count.fill_(HISTORY)
    pair.eval()
    x = _data("bernoulli")
    xj = jnp.asarray(x.numpy())

    assert_objective_means_agree(pair, x)
    pair.train()
    with backend("numpyro"), numpyro.handlers.seed(rng_seed=1):
        trace = numpyro.handlers.trace(lambda: pair.objective(xj)).get_trace()
    recorded = trace["timestep_history$buffers"]["value"]
    assert int(recorded["count"].sum()) == HISTORY * pair.T + len(x)


# -- networks, config, sampling ----------------------------------------------------------------------------
@pytest.mark.parametrize("make, shape", [
    (lambda: MLPDenoiser((2,), (16, 16), 8), (2,)),
    (lambda: MLPDenoiser((1, 4, 4), (16,), 8), (1, 4, 4)),
    (lambda: UNetDenoiser((1, 8, 8), channels=4, channel_mult=(1, 2), time_dim=8, groups=2), (1, 8, 8)),
    (lambda: UNetDenoiser((1, 8, 8), channels=4, channel_mult=(1, 2), time_dim=8, groups=2, attention=True),
     (1, 8, 8)),
], ids=["mlp", "mlp-image", "unet", "unet-attention"])
def test_denoisers_lower_to_jax(make, shape):
    """sin/cos time embedding, group norm and nearest up-sampling lowered: torch and JAX agree, any leading dims."""
    torch.manual_seed(0)
    net = make()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    for lead in [(2, 3)]:
        x, t = torch.randn(lead + shape), torch.randint(1, 100, lead).float()
        with torch.no_grad():
            want = net(x, t).numpy()
        got = np.asarray(net(jnp.asarray(x.numpy()), jnp.asarray(t.numpy())))
        assert got.shape == want.shape == lead + shape
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("make, shape", [
    (lambda: MLPDenoiser((2,), (16,), 8, outputs=2), (2,)),
    (lambda: UNetDenoiser((1, 4, 4), channels=4, channel_mult=(1, 2), time_dim=8, groups=2, outputs=2), (1, 4, 4)),
], ids=["mlp", "unet"])
def test_denoisers_with_a_variance_head_lower_to_jax(make, shape):
    torch.manual_seed(0)
    net = make()
    x, t = torch.randn((3,) + shape), torch.randint(1, 100, (3,)).float()
    with torch.no_grad():
        want = net(x, t)
    got = net(jnp.asarray(x.numpy()), jnp.asarray(t.numpy()))
    assert len(want) == len(got) == 2
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), b.numpy(), atol=2e-5, rtol=1e-5)


def test_attention_block_starts_as_the_identity_and_then_mixes_every_pixel():
    """With its output projection at zero (its initialization) the U-Net with attention computes what the U-Net
    without it computes; once trained (weights perturbed), the output at one pixel depends on the input at every
    pixel through one attention layer (gradient of the block's output at pixel 0 wrt each input pixel ≠ 0)."""
    from ppgen.nn.denoisers import SelfAttention

    torch.manual_seed(0)
    plain = UNetDenoiser((1, 8, 8), channels=4, channel_mult=(1, 2), time_dim=8, groups=2)
    attn = UNetDenoiser((1, 8, 8), channels=4, channel_mult=(1, 2), time_dim=8, groups=2, attention=True)
    missing, _ = attn.load_state_dict(plain.state_dict(), strict=False)
    assert missing and all(name.startswith("attention.") for name in missing)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3.0, 50.0])
    with torch.no_grad():
        torch.testing.assert_close(attn(x, t), plain(x, t))
    block = SelfAttention(4, 2)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.5 * torch.randn_like(p))
    h = torch.randn(1, 4, 5, 5, requires_grad=True)
    block(h)[0, :, 0, 0].sum().backward()
    assert (h.grad.abs().sum(1) > 0).all()
    with pytest.raises(UserError, match="denoiser=.unet."):
        DDPM((2,), likelihood="gaussian", attention=True)


def test_interpolate_other_than_integer_nearest_is_not_lowerable():
    class Bilinear(nn.Module):
        def forward(self, x):
            return nn.functional.interpolate(x, scale_factor=2.0, mode="bilinear")

    fn = lower(Bilinear())
    with pytest.raises(NotLowerable, match="interpolate"):
        fn({}, jnp.ones((1, 1, 2, 2)))


def test_registered_config_round_trips_and_bad_options_are_one_line():
    assert models.get("ddpm") is DDPM and "ddpm" in models.describe()
    pair = DDPM((2,), likelihood="gaussian", timesteps=7, schedule="cosine", sampler="ddim", sample_steps=3)
    assert pair.latent_sites == tuple(f"x_{t}" for t in range(7, 0, -1)) and pair.has_objective
    again = DDPM.from_config(pair.config_dict())
    assert again.config == pair.config
    for options, needle in [({"timesteps": 0}, "at least 1"), ({"schedule": "quad"}, "unknown schedule"),
                            ({"timesteps": 5, "sample_steps": 6}, "DDIM steps"), ({"prediction": "y"}, "prediction"),
                            ({"denoiser": "unet"}, "U-Net needs images"), ({"variance": "learned"}, "learned variance")]:
        with pytest.raises(UserError, match=needle) as err:
            DDPM((2,), likelihood="gaussian", **options)
        assert "\n" not in str(err.value)


def test_ddim_and_ancestral_sampling_shapes_and_ranges():
    torch.manual_seed(0)
    pair = DDPM((1, 4, 4), likelihood="bernoulli", hidden=(16,), time_dim=8, timesteps=10)
    assert pair.ddim_timesteps(4) == [10, 7, 4, 1] and pair.ddim_timesteps(1) == [10]
    assert pair.ddim_timesteps() == list(range(10, 0, -1))
    for x in (pair.generate(5), pair.sample_ddim(5, steps=3), pair.sample_ddim(5, steps=10, eta=1.0)):
        assert x.shape == (5, 1, 4, 4) and (x >= 0).all() and (x <= 1).all()
    with pytest.raises(UserError, match="DDIM steps"):
        pair.sample_ddim(2, steps=11)


def test_ddim_with_the_exact_denoiser_recovers_the_data_distribution():
    """DDIM's deterministic map (η = 0, all T = 200 steps) with the exact ε-prediction moves N(0, I) onto
    N(m, s²I) up to its discretization error; the band (0.05 on the mean, 10% on the variance) is that error's
    size at T = 200, wider than the sampling error (4 SE: 0.014 and 3%)."""
    torch.manual_seed(0)
    pair = exact_denoiser(DDPM((2,), likelihood="gaussian", timesteps=200, sampler="ddim"))
    x = pair.generate(4000)
    assert ((x.mean(0) - M).abs() < 0.05).all(), x.mean(0)
    assert ((x.var(0) / S ** 2 - 1).abs() < 0.10).all(), x.var(0)


class PointEps(nn.Module):
    """ε̂(x_t, t) = E[ε | x_t] = (x_t − √ᾱ_t y_0)/√(1 − ᾱ_t) when the data are the single point y_0 (model space)."""

    def __init__(self, alpha_bar: np.ndarray, y0: torch.Tensor):
        super().__init__()
        self.register_buffer("ab", torch.as_tensor(alpha_bar, dtype=torch.float64))
        self.y0 = y0.double()
        self.outputs: list[torch.Tensor] = []  # ε̂ at each call, in order

    def forward(self, x, t):
        ab = self.ab[t.long()].reshape(t.shape + (1,) * self.y0.dim())
        self.outputs.append(((x.double() - ab.sqrt() * self.y0) / (1 - ab).sqrt()).to(x.dtype))
        return self.outputs[-1]


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_ddim_and_ancestral_sampling_with_the_exact_denoiser_of_one_point_return_that_point(likelihood):
    """One data point: x̂_0 = y_0 at every step, so DDIM (η = 0, 50 of T = 1000 steps) and the ancestral chain
    end at it whatever x_T is — binary pixels exactly (the decoder's Φ(±1/√β_1) = Φ(±100) is 0 or 1 in float32,
    through the data's scaling y = 2x − 1, the clipping and back), a continuous point to float32 rounding. And
    DDIM's η = 0 path is x_s = √ᾱ_s y_0 + √(1 − ᾱ_s) ε with the ε of x_T throughout: ε̂ is the same at every step."""
    torch.manual_seed(0)
    x0 = torch.bernoulli(torch.full((1, 4, 4), 0.3)) if likelihood == "bernoulli" else torch.randn(1, 4, 4)
    pair = DDPM((1, 4, 4), likelihood=likelihood, timesteps=1000)
    pair.denoiser = PointEps(pair.alpha_bar, pair.to_model_space(x0))
    deterministic = pair.sample_ddim(20, 50, eta=0.0)
    first, *rest = pair.denoiser.outputs
    assert len(rest) == 49
    for eps in rest:
        torch.testing.assert_close(eps, first, rtol=0, atol=1e-4)  # float32 rounding: 2e-5 measured
    for x in (deterministic, pair.sample_ddim(20, 50, eta=1.0), pair.generate(20)):
        if likelihood == "bernoulli":
            assert torch.equal(x, x0.expand_as(x))
        else:
            torch.testing.assert_close(x, x0.expand_as(x), rtol=0, atol=1e-4)


# -- the command line ------------------------------------------------------------------------------------------
CLI_FAST = ["--data", "digits", "--timesteps", "10", "--hidden", "32", "--time-dim", "8", "--batch-size", "128",
            "--no-progress", "--select", "last", "--ema", "0.9"]


def test_cli_train_evaluate_sample_resume_and_errors(tmp_path, capsys):
    import json

    from ppgen.cli import main

    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", "ddpm", *CLI_FAST, "--epochs", "3", "--out", str(straight)]) == 0
    assert main(["train", "ddpm", *CLI_FAST, "--epochs", "2", "--out", str(split)]) == 0
    assert main(["train", "ddpm", "--resume", str(split), "--epochs", "3", "--no-progress"]) == 0
    a = torch.load(straight / "model.pt", weights_only=True)
    b = torch.load(split / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)  # resume is bit-exact, the weights' average included
    assert "ema.count" in a and int(a["ema.count"]) > 0
    capsys.readouterr()
    assert main(["evaluate", str(straight), "--iwae", "8", "--limit", "100", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # the bound and the importance-weighted bound over K = 8 forward trajectories: IWAE ≥ ELBO up to 3 SE
    assert result["elbo"] < 0 and result["iwae_8"] >= result["elbo"] - 3 * result["elbo_se"]
    assert main(["sample", str(straight), "-n", "6", "--steps", "4", "--out", str(tmp_path / "s.npy")]) == 0
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (6, 1, 8, 8) and (samples >= 0).all() and (samples <= 1).all()
    for args, needle in [(["--timesteps", "0"], "at least 1"), (["--sample-steps", "11"], "DDIM steps")]:
        capsys.readouterr()
        assert main(["train", "ddpm", *CLI_FAST, *args, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
        assert not (tmp_path / "bad").exists()
    assert main(["sample", str(straight), "--steps", "11", "--out", str(tmp_path / "t.npy")]) == 2
    assert "DDIM steps" in capsys.readouterr().err
    assert main(["models"]) == 0
    assert "ddpm" in capsys.readouterr().out


def test_posterior_file_is_skipped_when_the_latents_are_too_many():
    """posterior.nc holds 16 examples x 1,000 draws of every latent: a DDPM's T latents shaped like x can exceed
    any file size (MNIST at T = 1000: 12.5e9 values), so the run says so and writes none; a VAE's fits."""
    from ppgen import workflows
    from ppgen.models import VAE

    said = []
    assert not workflows.posterior_fits(DDPM((1, 28, 28), timesteps=1000), torch.zeros(1, 1, 28, 28), log=said.append)
    assert said and "posterior.nc not written" in said[0]
    assert workflows.posterior_fits(VAE((1, 8, 8), z_dim=4, hidden=(8,)), torch.zeros(1, 1, 8, 8), log=said.append)
    assert len(said) == 1


def test_evaluation_elbo_is_the_closed_form_bound_and_agrees_with_the_traced_elbo():
    """ppgen's ELBO of a DDPM is its closed-form bound (the protocol's ``closed_form_elbo``): the same expectation as
    the traced ELBO over all T sites (4 SE of the difference), with the timesteps one per denoiser call (budget=1)
    as with all in one. (Its variance need not be smaller: its x_t are drawn independently per t, the traced
    ones along one trajectory.)"""
    torch.manual_seed(0)
    pair, x = _random_pair("bernoulli", "eps"), _data("bernoulli")
    assert pair.has_closed_form_elbo and not models.VAE((2,), z_dim=1, hidden=(2,)).has_closed_form_elbo
    with torch.no_grad():
        closed = torch.stack([evaluation.elbo(pair, x) for _ in range(2000)])
        chunked = torch.stack([-pair.vlb_terms(x, budget=1).sum(-1) for _ in range(2000)])
        traced = evaluation.log_weights(pair, x, 2000)
    for estimate in (closed, chunked):
        diff = estimate.mean(0) - traced.mean(0)
        se = torch.hypot(estimate.std(0), traced.std(0)) / math.sqrt(2000)
        assert (diff.abs() < 4 * se).all(), (diff, se)


# -- the weights' moving average (Ho et al. sample with it) -----------------------------------------------
def test_weight_average_follows_its_recursion_on_torch_and_jax():
    """θ̄_{n+1} = d_n θ̄_n + (1 − d_n) θ_n, d_n = min(decay, (1 + n)/(10 + n)), against the recursion in float64
    over five weight draws; the JAX function gives the torch update's values from the same weights."""
    from ppgen.nn.average import WeightAverage

    torch.manual_seed(0)
    net = MLPDenoiser((2,), (8,), 8)
    average = WeightAverage(net, decay=0.5)
    expected = {k: v.double().clone() for k, v in average.shadow.named_parameters()}
    for n in range(5):
        for p in net.parameters():
            p.data.normal_()
        jax_params = {k: jnp.asarray(v.numpy()) for k, v in average.state_dict().items()}
        updates: dict = {}
        average.jax_function()(jax_params, {k: jnp.asarray(v.detach().numpy()) for k, v in net.state_dict().items()},
                               updates=updates)
        average.update(net)  # torch: no weights bound, so in place
        d = min(0.5, (1 + n) / (10 + n))
        for name, p in net.named_parameters():
            expected[name] = d * expected[name] + (1 - d) * p.detach().double()
            mine = dict(average.shadow.named_parameters())[name]
            assert torch.allclose(mine.double(), expected[name], atol=1e-6)
            assert np.allclose(np.asarray(updates["shadow." + name]), mine.numpy(), atol=1e-6)
        assert int(average.count) == n + 1 and int(updates["count"]) == n + 1
    assert not any(p.requires_grad for p in average.parameters())
    net.double(), average.double()  # new buffer objects: the update lists the tensors again
    for b in net.buffers():
        b.add_(1.0)
    average.update(net)
    assert all(torch.equal(a, b) for a, b in zip(average.shadow.buffers(), net.buffers())) and list(net.buffers())
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(net, decay=1.0)


@pytest.mark.parametrize("engine", ["torch", "jax"])
def test_ema_is_carried_by_both_engines_used_in_evaluation_and_resumed_exactly(engine):
    """One update per training step on each engine (JAX: in the mutable site, back into the torch weights); the
    evaluation-mode network is the average, the training-mode one the trained weights; a resumed run equals the
    uninterrupted one bit for bit, the average included; a decay outside [0, 1) is one line."""
    options = dict(timesteps=8, hidden=(16,), time_dim=8, likelihood="gaussian", ema=0.9)
    states, pair = straight_and_resumed(options, engine, lr=1e-2)
    data = from_tensor(gaussian_data(256, 0))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert int(states[0]["ema.count"]) == 4 * 256 // 64
    raw, averaged = states[0]["denoiser.layers.0.weight"], states[0]["ema.shadow.layers.0.weight"]
    assert not torch.equal(raw, averaged) and (raw - averaged).abs().max() < 0.5
    x = data.train[:5]
    pair.train()
    assert pair.network is pair.denoiser
    pair.eval()
    assert pair.network is pair.ema.shadow
    by_hand = pair._x0_from(pair.ema.shadow(x, torch.full((5,), 3.0)), x, math.sqrt(pair.alpha_bar[3]),
                            math.sqrt(1 - pair.alpha_bar[3]))
    assert torch.allclose(pair.predict_x0(x, 3), by_hand)
    with pytest.raises(UserError, match="option ema=1.0"):
        DDPM((2,), **{**options, "ema": 1.0})


def test_an_mlp_denoiser_narrower_than_what_it_predicts_is_said_before_training(capsys):
    """ε ~ N(0, I) spans all D values; an MLP whose last (linear-read) hidden layer is narrower spans fewer, so
    ε cannot be learned: said once before training, naming the fixes; nothing said where the net can represent it."""
    narrow = DDPM(x_shape=(1, 4, 4), hidden=(8,), timesteps=5)
    assert "last hidden layer (8)" in narrow.training_notice and "--prediction x0" in narrow.training_notice
    assert DDPM(x_shape=(1, 4, 4), hidden=(8,), timesteps=5, prediction="v").training_notice is not None
    assert DDPM(x_shape=(1, 4, 4), hidden=(8,), timesteps=5, prediction="x0").training_notice is None
    assert DDPM(x_shape=(1, 4, 4), hidden=(8, 16), timesteps=5).training_notice is None
    assert DDPM(x_shape=(1, 28, 28)).training_notice is not None  # the defaults on MNIST: 256 < 784
    assert DDPM(x_shape=(1, 8, 8), denoiser="unet", channels=4, timesteps=5).training_notice is None
    torch.manual_seed(0)
    ppgen.fit(narrow, from_tensor(torch.rand(32, 1, 4, 4).round()), epochs=1, batch_size=16, engine="torch", progress=False)
    err = capsys.readouterr().err
    assert err.count("last hidden layer (8) is narrower than the 16 values") == 1
