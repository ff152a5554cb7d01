r"""Issue 14: the GP decoder (amortized Bayesian GPLVM) — exactness of its bound, its pair, its commands.

Closed forms:

* the GP marginal for fixed latents Z: log p(Y | Z) = Σ_d log N(y_d; 0, K_ZZ + σ² I);
* the linear-Gaussian model y_n = W z_n + ε, W_d ~ N(0, C), C = diag(c_q) (ARD), ε ~ N(0, σ² I), written in
  weight space (Bayesian linear regression's evidence, per output dimension d):
  log p(y_d) = −½ N log 2πσ² − ½ log|I + ZᵀZ C/σ²| − ½σ⁻² (y_dᵀy_d − σ⁻² y_dᵀ Z A⁻¹ Zᵀ y_d),  A = ZᵀZ/σ² + C⁻¹.
"""

from __future__ import annotations

import json
import math

import pyro
import pytest
import torch
from support import mean_se

import ppgen
from ppgen import cli, evaluation
from ppgen.errors import UserError
from ppgen.models.gpvae import GPVAE

#: in float64 with the jitter on K_uu lowered to 1e-10 the sparse bound and the exact marginal agree to rounding
#: (the jitter 1e-5 used in training alone moves them apart by up to 2e-3 nats at N = 12)
TOL = 1e-6


def _exact_gp(pair: GPVAE, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        k = pair.k(z) + pair.noise * torch.eye(z.shape[0], dtype=z.dtype)
        return torch.distributions.MultivariateNormal(torch.zeros(z.shape[0], dtype=z.dtype),
                                                      covariance_matrix=k).log_prob(y.T).sum()


def _linear_gaussian(z: torch.Tensor, y: torch.Tensor, c: torch.Tensor, s2: float) -> torch.Tensor:
    """c: the prior variance of each weight column (ARD), shape (Q,)."""
    n, q = z.shape
    a = z.T @ z / s2 + torch.diag(1 / c)
    zy = z.T @ y  # (Q, D)
    quad = (y * y).sum(0) - (zy * torch.linalg.solve(a, zy)).sum(0) / s2
    logdet = torch.logdet(torch.eye(q, dtype=z.dtype) + z.T @ z * c / s2)
    return (-0.5 * n * math.log(2 * math.pi * s2) - 0.5 * logdet - 0.5 * quad / s2).sum()


@pytest.fixture
def float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


@pytest.mark.parametrize("kernel", ["rbf", "matern52", "linear"])
def test_sparse_bound_at_the_data_with_the_optimal_q_is_the_exact_gp_marginal(kernel, float64):
    torch.manual_seed(0)
    n, q, d = 12, 2, 3
    z, y = torch.randn(n, q), torch.randn(n, d)
    # the linear kernel's K_ZZ has rank Q: its inducing points are Q points (any Q in general position span the
    # feature space, so the Nyström approximation is exact); the others sit at the data
    pair = GPVAE((d,), q, n if kernel != "linear" else q, kernel, (8,), "gaussian")
    if kernel != "linear":
        pair.gp.Xu.data.copy_(z)
    pair.jitter = 1e-10
    pair.optimal_q(z, y)
    bound, exact = float(pair.bound(z, y).detach()), float(_exact_gp(pair, z, y))
    assert abs(bound - exact) < TOL, (bound, exact)
    # and any other q(u) gives less (a bound, not an identity): perturb the mean
    pair.gp.u_loc.data.add_(0.3)
    assert float(pair.bound(z, y).detach()) < exact - 0.1


def test_linear_kernel_gp_is_the_linear_gaussian_model(float64):
    torch.manual_seed(1)
    n, q, d = 15, 2, 4
    z, y = torch.randn(n, q), torch.randn(n, d)
    pair = GPVAE((d,), q, q, "linear", (8,), "gaussian")
    pair.gp.kernel.variance = torch.tensor([0.5, 2.0])  # ARD: one prior variance per latent dimension
    c, s2 = pair.gp.kernel.variance.detach(), float(pair.noise.detach())
    pair.jitter = 1e-10
    pair.optimal_q(z, y)
    linear = float(_linear_gaussian(z, y, c, s2))
    assert abs(float(_exact_gp(pair, z, y)) - linear) < 1e-8  # two closed forms of one Gaussian
    assert abs(float(pair.bound(z, y).detach()) - linear) < TOL, (float(pair.bound(z, y).detach()), linear)


def test_bad_options_are_one_line_user_errors():
    for options, said in (({"kernel": "cosine"}, "unknown kernel"), ({"z_dim": 0}, "z_dim"),
                          ({"inducing": 50, "num_data": 40}, "inducing points")):
        with pytest.raises(UserError, match=said) as err:
            GPVAE.from_config({"x_shape": [5], **options})
        assert "\n" not in str(err.value)
    pair = GPVAE((5,), 2, 50, likelihood="gaussian")
    with pytest.raises(UserError, match="inducing points"):
        pair.check_data(torch.randn(40, 5))


@pytest.fixture(scope="module")
def digits():
    return ppgen.data.load("digits")


@pytest.fixture(scope="module")
def fitted(digits):
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a module fixture runs before the autouse single-thread one
    pair = GPVAE(digits.x_shape, 2, 16, "rbf", (32,), "bernoulli", num_data=len(digits.train))
    fit = ppgen.fit(pair, digits, engine="torch", epochs=2, batch_size=64, lr=1e-2, seed=0, progress=False)
    torch.set_num_threads(threads)
    return fit.pair


def test_elbo_is_at_most_iwae(fitted, digits):
    x = digits.test[:100]
    torch.manual_seed(1)
    with torch.no_grad():
        lower = evaluation.elbo(fitted, x, num_samples=32)
        tighter = evaluation.iwae(fitted, x, k=32)
    diff = (tighter - lower).double()
    gap, se = float(diff.mean()), float(diff.std() / math.sqrt(diff.numel()))
    # ELBO ≤ IWAE_32 in expectation: the mean paired difference may be negative only by MC error (4 SE)
    assert gap > -4 * se, (gap, se)


def test_minibatch_terms_scale_to_the_full_data_bound(digits):
    """The global KL is attributed KL/N per example: B examples carry B/N of it, whatever the batch."""
    torch.manual_seed(0)
    pair = GPVAE(digits.x_shape, 2, 8, "rbf", (16,), "bernoulli", num_data=len(digits.train))
    trace = pyro.poutine.trace(pair.model).get_trace(digits.test[:10])
    trace.compute_log_prob()
    assert float(trace.nodes["u_kl"]["log_prob_sum"]) == pytest.approx(-float(pair.kl_u().detach()) * 10 / len(digits.train))


def test_cli_train_evaluate_and_resume(tmp_path, capsys):
    run = tmp_path / "gp"
    args = ["train", "gpvae", "--data", "digits", "--z-dim", "2", "--inducing", "32", "--kernel", "rbf",
            "--epochs", "1", "--out", str(run)]
    assert cli.main(args) == 0, capsys.readouterr().err
    config = json.loads((run / "config.json").read_text())
    assert config["model_config"]["num_data"] == 1257 and config["model_config"]["kernel"] == "rbf"
    assert cli.main(["evaluate", str(run), "--iwae", "10", "--limit", "20"]) == 0, capsys.readouterr().err
    assert "KL per dimension" in capsys.readouterr().out
    assert cli.main(["train", "gpvae", "--resume", str(run), "--epochs", "2"]) == 0, capsys.readouterr().err
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2


@pytest.mark.slow  # Pyro's NUTS (the GP does not lower to JAX): ~1 min on the shared machine
def test_cli_compare_runs_nuts_beside_the_encoder(tmp_path, capsys):
    run = tmp_path / "gp"
    assert cli.main(["train", "gpvae", "--data", "digits", "--inducing", "16", "--epochs", "1", "--out", str(run)]) == 0
    assert cli.main(["compare", str(run), "--points", "1", "--chains", "1", "--warmup", "30", "--samples", "30",
                     "--steps", "20", "--iwae", "20"]) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert "falling back to Pyro's NUTS" in captured.err and "amort" in captured.out
    table = json.loads((run / "compare" / "compare.json").read_text())
    assert table["engine"] == "pyro" and math.isfinite(table["overall"]["amortization_gap"]), table


@pytest.mark.parametrize("args, said", [(["--inducing", "5000"], "inducing points"),
                                        (["--kernel", "cosine"], "cosine"),
                                        (["--z-dim", "0"], "--z-dim 0: must be a positive"),
                                        (["--kernel", "linear", "--inducing", "0"], "inducing")])
def test_cli_bad_options_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, args, said):
    out = tmp_path / "r"
    try:
        code = cli.main(["train", "gpvae", "--data", "digits", "--epochs", "1", "--out", str(out), *args])
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert said in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


# -- ELBO ≤ IWAE_K ≤ the exact log marginal on a problem small enough to integrate ---------------------------------
#
# Three points y_n ∈ R², a 1-D latent, the linear kernel k(z, z') = c z z' with Gaussian noise σ² and the learned
# constant mean m. The exact quantity is the GPLVM's log marginal likelihood with the latents integrated out,
#
#     log p(Y) = log ∫ N(Z; 0, I) Π_d N(y_d; m_d, c Z Zᵀ + σ² I) dZ,
#
# computed two independent ways that must agree: (a) the weight-space form, f_d(z) = w_d z with w ~ N(0, c I_D):
# given w the points are independent, y_n | w ~ N(m, w wᵀ + σ² I) (PPCA's marginal with W = w), so
# log p(Y) = log ∫ N(w; 0, c I) Π_n N(y_n; m, w wᵀ + σ² I) dw, a 2-D integral; (b) the 3-D integral over Z with
# the rank-one covariance in closed form. Both on fine grids (trapezoid: spectrally accurate for these smooth
# integrands that decay like Gaussians).
#
# ppgen's per-example bound integrates u against q(u) inside the log weight: log w_n(z) = ℓ̄_n(z) + log p(z)
# − log q(z | y_n) − KL(q(u) ‖ p(u))/N, ℓ̄_n(z) = E_{q(f_n | z)} log p(y_n | f_n). Its IWAE_K tends, as K → ∞, to
#
#     L_∞ = Σ_n log ∫ N(z; 0, 1) exp(ℓ̄_n(z)) dz − KL(q(u) ‖ p(u))        (1-D integrals: computed on a grid),
#
# and L_∞ ≤ log p(Y): Jensen in F given u (only the marginals p(f_n | u, z_n) enter, so the points decouple
# given u), then in u (log ∫ p(z) e^{g(z)} dz is convex in g). So the chain tested is
# ELBO ≤ IWAE_K ≤ L_∞ ≤ log p(Y), each sum over the three points.


def _trapezoid_log(log_f: torch.Tensor, dx: float, dims: int) -> torch.Tensor:
    """log ∫ exp(log_f) on a uniform grid whose values fill the last ``dims`` axes (integrand ≈ 0 at the edges)."""
    return torch.logsumexp(log_f.flatten(-dims), -1) + dims * math.log(dx)


def _log_py_weight_space(y, m, c, s2, half=7.0, n=201):
    g = torch.linspace(-half, half, n) * math.sqrt(c)
    w = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1)  # (n, n, 2)
    cov = w.unsqueeze(-1) * w.unsqueeze(-2) + s2 * torch.eye(2)
    lik = torch.distributions.MultivariateNormal(m, covariance_matrix=cov.unsqueeze(-3)).log_prob(
        y.view(-1, 1, 1, 2).movedim(0, -2)).sum(-1)
    prior = torch.distributions.Normal(0.0, math.sqrt(c)).log_prob(w).sum(-1)
    return _trapezoid_log(prior + lik, float(g[1] - g[0]), 2)


def _log_py_latent_space(y, m, c, s2, half=7.0, n=121):
    g = torch.linspace(-half, half, n)
    z = torch.stack(torch.meshgrid(g, g, g, indexing="ij"), -1)  # (n, n, n, 3)
    r = y - m  # (3, D)
    zz = (z * z).sum(-1)
    zr = z @ r  # (n, n, n, D)
    # N(r_d; 0, c z zᵀ + σ² I): determinant lemma and Sherman–Morrison for the rank-one covariance
    logdet = 3 * math.log(s2) + torch.log1p(c * zz / s2)
    quad = ((r * r).sum(0) - c * zr ** 2 / (s2 + c * zz.unsqueeze(-1))) / s2
    lik = (-0.5 * (3 * math.log(2 * math.pi) + logdet.unsqueeze(-1) + quad)).sum(-1)
    prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    return _trapezoid_log(prior + lik, float(g[1] - g[0]), 3)


def _expected_loglik_on_grid(pair, y, z):
    """ℓ̄_n(z) for every point n and grid value z: (N, G), from the GP's predictive in closed form."""
    loc, var = pair.predictive(z.unsqueeze(-1))  # (G, D)
    s2 = pair.noise
    normal = torch.distributions.Normal(loc, s2.sqrt()).log_prob(y.unsqueeze(1))  # (N, G, D)
    return (normal - var / (2 * s2)).sum(-1)


@pytest.fixture(scope="module")
def small_linear_pair():
    """A 1-D linear-kernel GP decoder (c = 1, σ² = 0.2, M = 1 inducing input at 1, q(u) optimal for the latents that
    drew the data) on three points, and its amortized guide trained against it by SVI (Pyro's Trace_ELBO, 200 Adam
    steps, the decoder fixed); float64."""
    before, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)  # for the construction only: the tests that need it ask for float64
    torch.set_num_threads(1)
    torch.manual_seed(3)
    z = torch.randn(3, 1)
    y = z * torch.tensor([[1.5, -1.2]]) + 0.4 * torch.randn(3, 2)
    pair = GPVAE((2,), 1, 1, "linear", (16,), "gaussian", num_data=3)
    pair.gp.Xu.data.fill_(1.0)
    pair.gp.kernel.variance = torch.tensor([1.0])
    pair.gp.likelihood.variance = torch.tensor(0.2)
    pair.jitter = 1e-10
    pair.optimal_q(z, y)
    optimizer = torch.optim.Adam(pair.encoder.parameters(), lr=2e-2)
    for _ in range(200):
        optimizer.zero_grad()
        pyro.infer.Trace_ELBO().differentiable_loss(pair.model, pair.guide, y).backward()
        optimizer.step()
    torch.set_default_dtype(before)
    torch.set_num_threads(threads)
    return pair.eval(), y


def test_exact_log_marginal_by_two_integrals(small_linear_pair, float64):
    pair, y = small_linear_pair
    with torch.no_grad():
        c, s2, m = float(pair.gp.kernel.variance), float(pair.noise), pair.mean.detach()
        a, b = float(_log_py_weight_space(y, m, c, s2)), float(_log_py_latent_space(y, m, c, s2))
    assert abs(a - b) < 1e-6, (a, b)  # two reductions, two grids, one number


def test_elbo_iwae_and_the_exact_marginal_in_order(small_linear_pair, float64):
    pair, y = small_linear_pair
    n, reps, k = y.shape[0], 500, 64
    with torch.no_grad():
        c, s2, m = float(pair.gp.kernel.variance), float(pair.noise), pair.mean.detach()
        log_py = float(_log_py_weight_space(y, m, c, s2))
        grid = torch.linspace(-12, 12, 24001)
        log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(grid)
        ell = _expected_loglik_on_grid(pair, y, grid)  # (N, G)
        kl = float(pair.kl_u())
        log_pn = _trapezoid_log(log_prior + ell, float(grid[1] - grid[0]), 1) - kl / n  # per point, KL/N each
        l_inf = float(log_pn.sum())
        # the exact ELBO: E_q(z|y_n)[ℓ̄_n(z) + log p(z) − log q(z|y_n)] − KL/N on the same grid
        loc, scale = pair.encode(y)
        log_q = torch.distributions.Normal(loc, scale).log_prob(grid)  # (N, G)
        elbo_exact = float(((log_q.exp() * (ell + log_prior - log_q)).sum(-1) * float(grid[1] - grid[0])).sum() - kl)

        torch.manual_seed(4)
        rows = y.repeat(reps, 1)  # reps independent estimates of every point
        elbos = evaluation.elbo(pair, rows).view(reps, n).sum(1)
        iwaes = evaluation.iwae(pair, rows, k=k).view(reps, n).sum(1)
        # and the raw importance weights: E_q[w_n] = exp(log p̃_n) exactly (the estimate behind IWAE is unbiased)
        ratio = (ppgen.sites.log_weights(pair, rows, k) - log_pn.repeat(reps)).exp().view(k, reps, n)

    (e, se_e), (i, se_i) = mean_se(elbos), mean_se(iwaes)
    # the Monte Carlo ELBO is unbiased for the exact one (two-sided, 4 SE)
    assert abs(e - elbo_exact) < 4 * se_e, (e, elbo_exact, se_e)
    for point in range(n):
        r, se_r = mean_se(ratio[..., point])
        assert abs(r - 1) < 4 * se_r, (point, r, se_r)
    # the chain, each step with its own MC error (4 SE); the last is deterministic (grid error ≪ 1e-6)
    assert e < i + 4 * math.hypot(se_e, se_i), (e, i)
    assert i < l_inf + 4 * se_i, (i, l_inf, se_i)
    assert l_inf <= log_py + 1e-6, (l_inf, log_py)
    # not a degenerate case: IWAE_64 is tighter than the ELBO by many standard errors
    assert i - e > 4 * math.hypot(se_e, se_i), (e, i)


def test_bernoulli_expectation_by_gauss_hermite_matches_a_fine_grid(float64):
    from ppgen.models.gpvae import bernoulli_expectation

    torch.manual_seed(5)
    y = torch.bernoulli(torch.full((6,), 0.5))
    loc, var = 3 * torch.randn(6), 4 * torch.rand(6) + 1e-3
    f = torch.linspace(-1, 1, 200_001) * 60
    weight = torch.distributions.Normal(loc.unsqueeze(-1), var.sqrt().unsqueeze(-1)).log_prob(f).exp()
    log_lik = torch.distributions.Bernoulli(logits=f).log_prob(y.unsqueeze(-1))
    exact = (weight * log_lik).sum(-1) * float(f[1] - f[0])
    assert torch.allclose(bernoulli_expectation(y, loc, var), exact, atol=1e-6)


@pytest.mark.slow  # Pyro's NUTS in Python: ~15-30 s on the shared 2-core machine
def test_nuts_over_a_latent_with_the_gp_fixed_samples_its_exact_posterior(small_linear_pair, float64, capsys):
    """The GP does not lower to JAX: NUTS falls back to Pyro's (one notice line) and samples the model's posterior
    p(z | y_n) ∝ N(z; 0, 1) exp(ℓ̄_n(z)) (with q(u) fixed), whose mean and sd a grid gives exactly."""
    import arviz as az

    pair, y = small_linear_pair
    data = ppgen.data.Dataset(name="three", train=y, val=y[:0], test=y[:0])
    fit = ppgen.fit(pair, data, backend="nuts", points=[0], chains=1, warmup=100, samples=300, seed=0)
    assert fit.state["engine"] == "pyro" and "falling back to Pyro's NUTS" in capsys.readouterr().err
    draws = torch.as_tensor(fit.samples["z"][:, :, 0, 0])  # (chain, draw)
    ess = float(az.ess(draws.numpy()))
    with torch.no_grad():
        grid = torch.linspace(-8, 8, 16001)
        log_post = torch.distributions.Normal(0.0, 1.0).log_prob(grid) + _expected_loglik_on_grid(pair, y[:1], grid)[0]
        w = torch.softmax(log_post, 0)
        mean = float((w * grid).sum())
        sd = float((w * (grid - mean) ** 2).sum().sqrt())
    se_mean, se_sd = sd / math.sqrt(ess), sd / math.sqrt(2 * ess)  # the latter: a Gaussian's sd, ESS draws
    assert abs(float(draws.mean()) - mean) < 4 * se_mean, (float(draws.mean()), mean, se_mean)
    assert abs(float(draws.std()) - sd) < 4 * se_sd, (float(draws.std()), sd, se_sd)


# -- a numerically singular K_uu: the linear kernel's rank is Q, far below M inducing points ---------------------------


def _rank_deficient_pair() -> GPVAE:
    """A float32 linear-kernel decoder with Q = 2 and M = 32 inducing points: K_uu has rank 2, and with the kernel's
    variances at 100 its largest eigenvalue (~3e3) puts float32 rounding (~M ε λ_max ≈ 1e-2) far above the fixed
    jitter 1e-5 (Pyro's Cholesky raised "not positive-definite" here)."""
    torch.manual_seed(0)
    pair = GPVAE((6,), 2, 32, "linear", (16,), "gaussian")
    pair.gp.kernel.variance = torch.full((2,), 100.0)
    pair.gp.u_loc.data.normal_()
    return pair


def test_a_rank_deficient_linear_kernel_gets_the_smallest_jitter_that_factors_it(capsys):
    from ppgen.models.gpvae import JITTER, RELATIVE_JITTERS

    pair = _rank_deficient_pair()
    z = torch.randn(50, 2)
    with torch.no_grad():
        loc, var = pair.predictive(z)
        pair.predictive(z)
        kuu = pair.k(pair.gp.Xu)
    jitter = pair.stable_jitter()
    eye = torch.eye(32)
    assert jitter > JITTER and int(torch.linalg.cholesky_ex(kuu + jitter * eye).info) == 0
    rung = RELATIVE_JITTERS.index(round(jitter / float(kuu.diagonal().mean()), 12))
    lower = RELATIVE_JITTERS[rung - 1] * float(kuu.diagonal().mean()) if rung else JITTER
    assert int(torch.linalg.cholesky_ex(kuu + lower * eye).info) != 0  # the rung below does not factor it
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and "jitter" in said[0] and "32 inducing points" in said[0]  # once, for three calls
    # the same predictive in float64 with the same jitter: float32's Cholesky has backward error ~ M ε |K| (Higham,
    # Thm 10.3) and the whitened solve L⁻¹k_u amplifies it by at most √cond(K_uu + jI) ≈ 4e3: 32 · 6e-8 · 4e3 ≈ 8e-3
    exact = GPVAE((6,), 2, 32, "linear", (16,), "gaussian").double()
    exact.load_state_dict({k: v.double() for k, v in pair.state_dict().items()})
    exact.jitter = jitter
    with torch.no_grad():
        loc64, var64 = exact.predictive(z.double())
    assert float((loc - loc64).abs().max()) <= 1e-2 * float(loc64.abs().max())
    assert float((var - var64).abs().max()) <= 1e-2 * float(var64.abs().max())
    assert exact.stable_jitter() == jitter and capsys.readouterr().err == ""  # float64 factors it as it is


def test_a_rank_deficient_linear_kernel_trains(capsys):
    pair = _rank_deficient_pair()
    x = torch.randn(64, 2) @ torch.randn(2, 6)  # rank-2 data
    fit = ppgen.fit(pair, x, epochs=1, batch_size=32, engine="torch", progress=False)
    assert fit.stopped is None and math.isfinite(fit.history[-1]["elbo"])


def test_a_kernel_matrix_no_jitter_makes_positive_definite_is_one_line_with_the_fix():
    from ppgen.models.gpvae import jitter_for

    with pytest.raises(UserError, match="at most 2 inducing points") as err:
        jitter_for(torch.diag(torch.tensor([1.0, -1.0, 1.0])), what="3 inducing points, linear kernel", rank=2)
    assert "\n" not in str(err.value) and "--inducing" in str(err.value)
