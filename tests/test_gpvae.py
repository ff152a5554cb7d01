r"""Issue 14: the GP decoder (amortized Bayesian GPLVM) — exactness of its bound, its pair, its commands.

Closed forms:

* the GP marginal for fixed latents Z: log p(Y | Z) = Σ_d log N(y_d; 0, K_ZZ + σ² I);
* the linear-Gaussian model y_n = W z_n + ε, W_d ~ N(0, c I_Q), ε ~ N(0, σ² I), written in weight space
  (Bayesian linear regression's evidence, per output dimension d):
  log p(y_d) = −½ N log 2πσ² − ½ log|I + (c/σ²) ZᵀZ| − ½σ⁻² (y_dᵀy_d − σ⁻² y_dᵀ Z A⁻¹ Zᵀ y_d),  A = ZᵀZ/σ² + I/c.
"""

from __future__ import annotations

import json
import math

import pyro
import pytest
import torch

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


def _linear_gaussian(z: torch.Tensor, y: torch.Tensor, c: float, s2: float) -> torch.Tensor:
    n, q = z.shape
    a = z.T @ z / s2 + torch.eye(q, dtype=z.dtype) / c
    zy = z.T @ y  # (Q, D)
    quad = (y * y).sum(0) - (zy * torch.linalg.solve(a, zy)).sum(0) / s2
    logdet = torch.logdet(torch.eye(q, dtype=z.dtype) + (c / s2) * z.T @ z)
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
    c, s2 = float(pair.gp.kernel.variance.detach()), float(pair.noise.detach())
    pair.jitter = 1e-10
    pair.optimal_q(z, y)
    linear = float(_linear_gaussian(z, y, c, s2))
    assert abs(float(_exact_gp(pair, z, y)) - linear) < 1e-8  # two closed forms of one Gaussian
    assert abs(float(pair.bound(z, y).detach()) - linear) < TOL, (float(pair.bound(z, y).detach()), linear)


def test_bad_options_are_one_line_user_errors():
    for options, said in (({"kernel": "cosine"}, "unknown kernel"), ({"z_dim": 0}, "latent size"),
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
    pair = GPVAE(digits.x_shape, 2, 16, "rbf", (32,), "bernoulli", num_data=len(digits.train))
    return ppgen.fit(pair, digits, engine="torch", epochs=2, batch_size=64, lr=1e-2, seed=0, progress=False).pair


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


def test_cli_rejects_more_inducing_points_than_data(tmp_path, capsys):
    code = cli.main(["train", "gpvae", "--data", "digits", "--inducing", "5000", "--epochs", "1",
                     "--out", str(tmp_path / "r")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "inducing points" in err and len(err.splitlines()) == 1
