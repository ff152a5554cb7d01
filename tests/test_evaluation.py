"""Evaluation: collapse diagnostics against closed forms, and the chunked likelihood estimators."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import mean_se, ppca_sample

import ppgen
from ppgen.evaluation import active_units, bits_per_dim, elbo, iwae, kl_per_dim, log_weights, mutual_information, report
from ppgen.evaluation import likelihood as likelihood_module
from ppgen.models import PPCA
from ppgen.models.base import GenerativeModel

pytestmark = pytest.mark.usefixtures("single_thread")


class GaussianEncoder(GenerativeModel):
    """A small pair whose q(z|x) = N(a ⊙ x + b, s²) is known exactly; its prior is the model's site
    p(z) = N(0, I) (the KL per dimension reads it from there), p(x | z) = N(z, I)."""

    def __init__(self, a, b, s):
        self.a, self.b, self.s = (torch.as_tensor(v, dtype=torch.float32) for v in (a, b, s))
        super().__init__(SimpleNamespace(x_shape=tuple(self.a.shape)))

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand(list(self.a.shape)).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(*self.encode(x)).to_event(1))

    def encode(self, x):
        return self.a * x + self.b, self.s.expand_as(x)


# -- KL per dimension, active units ------------------------------------------------------------------


def test_kl_per_dim_matches_the_closed_form():
    x = torch.randn(300, 3, generator=torch.Generator().manual_seed(0))
    pair = GaussianEncoder(a=[0.0, 1.0, 2.0], b=[0.5, 0.0, -1.0], s=[1.0, 0.3, 2.0])
    loc, scale = pair.encode(x)
    want = (0.5 * (loc**2 + scale**2 - 1 - 2 * torch.log(scale))).mean(0)  # KL(N(μ, σ²) ‖ N(0, 1))
    got = kl_per_dim(pair, x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # the first dimension has μ = 0.5, σ = 1 for every x: KL = 0.125 exactly
    assert float(got[0]) == pytest.approx(0.125, rel=1e-5)


def test_kl_per_dim_is_zero_at_the_prior():
    pair = GaussianEncoder(a=[0.0, 0.0], b=[0.0, 0.0], s=[1.0, 1.0])
    assert torch.equal(kl_per_dim(pair, torch.randn(10, 2)), torch.zeros(2))


def test_active_units_count_units_whose_mean_moves_with_x():
    torch.manual_seed(0)
    pair = ppgen.models.VAE(x_shape=(10,), z_dim=5, hidden=(16,))
    with torch.no_grad():
        pair.encoder.loc.weight[1].zero_()  # unit 1: mean constant in x
        pair.encoder.loc.weight[3].mul_(1e-3)  # unit 3: varies, but far below the 0.01 threshold
        for unit in (0, 2, 4):
            pair.encoder.loc.weight[unit].mul_(3.0)
    x = torch.bernoulli(torch.full((400, 10), 0.5))
    count, activity = active_units(pair, x)
    with torch.no_grad():
        loc = pair.encoder(x)[0]
    torch.testing.assert_close(activity, loc.var(0), rtol=1e-5, atol=1e-9)
    assert float(activity[1]) == pytest.approx(0.0, abs=1e-10)
    assert 0 < float(activity[3]) < 0.01
    assert (activity[[0, 2, 4]] > 0.01).all()
    assert count == 3
    assert active_units(pair, x, threshold=0.0)[0] == 4  # a looser threshold counts unit 3 too


# -- mutual information -------------------------------------------------------------------------------


def test_mutual_information_is_zero_when_the_encoder_ignores_x():
    torch.manual_seed(0)
    pair = ppgen.models.VAE(x_shape=(10,), z_dim=4, hidden=(16,))
    with torch.no_grad():
        pair.encoder.layers[0].weight.zero_()  # q(z|x) is the same for every x
    x = torch.bernoulli(torch.full((300, 10), 0.5))
    assert abs(mutual_information(pair, x)) < 1e-4


def test_mutual_information_is_bounded_by_log_n_and_reaches_it():
    """With z_m from q(z|x_m): log q(z_m) ≥ log q(z_m|x_m) − log N, so the estimate is at most log N;
    an encoder that separates every x (tiny σ, distinct means) attains it."""
    n = 200
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(1))
    sharp = GaussianEncoder(a=[1.0, 1.0, 1.0], b=[0.0, 0.0, 0.0], s=[1e-4, 1e-4, 1e-4])
    vague = GaussianEncoder(a=[1.0, 1.0, 1.0], b=[0.0, 0.0, 0.0], s=[3.0, 3.0, 3.0])
    mi_sharp, mi_vague = mutual_information(sharp, x), mutual_information(vague, x)
    assert mi_sharp <= math.log(n) + 1e-4
    assert mi_sharp == pytest.approx(math.log(n), abs=1e-3)
    assert 0.0 < mi_vague < mi_sharp


def test_mutual_information_matches_the_gaussian_closed_form():
    """x ~ N(0, I_2), q(z|x) = N(a x, s²): the aggregate posterior is N(0, a² + s²), so
    I(x; z) = Σ_j ½ log((a_j² + s_j²) / s_j²). Ten independent estimates on N = 2000 points;
    the estimator's bias at this N (≈ 0.003 in a pilot) is far below the tolerance."""
    a, s = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 1.0])
    exact = float((0.5 * torch.log((a**2 + s**2) / s**2)).sum())
    pair = GaussianEncoder(a=a, b=[0.0, 0.0], s=s)
    estimates = []
    for seed in range(10):
        x = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1000 + seed))
        estimates.append(mutual_information(pair, x, seed=seed))
    m, se = mean_se(torch.tensor(estimates))
    assert abs(m - exact) < 4 * se + 0.01, (m, exact, se)
    assert se < 0.02


def test_report_collects_the_diagnostics():
    torch.manual_seed(0)
    pair = ppgen.models.VAE(x_shape=(10,), z_dim=3, hidden=(8,))
    x = torch.bernoulli(torch.full((50, 10), 0.5))
    out = report(pair, x)
    assert out["kl_total"] == pytest.approx(float(kl_per_dim(pair, x).sum()), rel=1e-5)
    assert out["active_units"] == active_units(pair, x)[0]
    assert out["mutual_information"] == pytest.approx(mutual_information(pair, x), rel=1e-6)
    assert len(out["kl_per_dim"]) == len(out["activity"]) == 3


# -- chunking of the likelihood estimators ----------------------------------------------------------


@pytest.fixture
def table_log_weights(monkeypatch):
    """Replace log_weights by a fixed table W[k, n] (row n is named by x[n, 0]), served chunk by chunk.

    Chunked and unchunked calls then see the same weights, so they must agree exactly:
    IWAE = logsumexp_k W − log K and ELBO = mean_k W, whatever the chunks.
    """
    n, k = 13, 50
    table = torch.randn(k, n, generator=torch.Generator().manual_seed(0)) * 3
    served: dict[int, int] = {}

    def fake(pair, x, count, **options):
        rows = x[:, 0].long()
        first = int(rows[0])
        start = served.get(first, 0)
        served[first] = start + count
        return table[start : start + count][:, rows]

    monkeypatch.setattr(likelihood_module, "log_weights", fake)
    x = torch.arange(n, dtype=torch.float32)[:, None].expand(n, 5).contiguous()
    return table, x, served


class _Shape:
    """Stands in for a pair: the estimators read only these (the log weights come from the fixture's table)."""
    x_shape = (5,)
    has_closed_form_elbo = False
    data_plate = "data"
    has_guide = False  # nothing to enumerate: the log weights come from the table

    def guide_draws(self, k: int) -> int:
        return k

    def model(self, x) -> None:  # no latent outside the data plate: IWAE is defined per example
        pass


@pytest.fixture
def stand_in_pairs(monkeypatch):
    """The estimators take the stand-in (not a GenerativeModel) past their argument check."""
    from ppgen.evaluation import likelihood

    monkeypatch.setattr(likelihood, "check_estimator_args", lambda pair, x, call: x)


@pytest.mark.parametrize("budget", [5 * 7, 5 * 50, 5 * 130, 8_000_000], ids=["k-chunks-of-7", "k-whole", "rows-of-2", "one-batch"])
def test_iwae_and_elbo_chunking_is_exact(table_log_weights, budget, stand_in_pairs):
    table, x, served = table_log_weights
    want_iwae = torch.logsumexp(table, 0) - math.log(table.shape[0])
    torch.testing.assert_close(iwae(_Shape(), x, k=table.shape[0], budget=budget), want_iwae, rtol=1e-6, atol=1e-5)
    served.clear()
    torch.testing.assert_close(elbo(_Shape(), x, num_samples=table.shape[0], budget=budget), table.mean(0),
                               rtol=1e-6, atol=1e-5)


def test_chunked_iwae_agrees_with_one_batch_on_a_real_pair(ppca_truth):
    """Chunks draw their own particles, so on a real pair the agreement is statistical: paired over x,
    within 4 SE. (How chunks are pooled is checked exactly above, with a fixed table of weights.)"""
    pair = PPCA(x_shape=(5,), z_dim=2).set_params(ppca_truth["W"], ppca_truth["mu"], ppca_truth["sigma"])
    pair.set_guide_to_posterior()
    with torch.no_grad():
        pair.encoder.raw_tril.add_(torch.tensor([[0.35, 0.0], [0.3, -0.2]]))
        pair.encoder.linear.weight.add_(0.04)
    x = ppca_sample(ppca_truth, 100, seed=9)
    torch.manual_seed(0)
    with torch.no_grad():
        whole = iwae(pair, x, k=100)
        chunked = iwae(pair, x, k=100, budget=5 * 25)  # 4 chunks of 25 particles, one example at a time
        e_whole, e_chunked = elbo(pair, x, num_samples=20), elbo(pair, x, num_samples=20, budget=5 * 7)
    for a, b in ((chunked, whole), (e_chunked, e_whole)):
        assert not torch.equal(a, b)  # independent draws ...
        m, se = mean_se(a - b)
        assert abs(m) < 4 * se, (m, se)  # ... of the same estimator


def test_iwae_1_and_elbo_1_are_the_same_estimate():
    torch.manual_seed(0)
    pair = ppgen.models.VAE(x_shape=(10,), z_dim=3, hidden=(8,))
    x = torch.bernoulli(torch.full((20, 10), 0.5))
    torch.manual_seed(5)
    a = iwae(pair, x, k=1)
    torch.manual_seed(5)
    b = elbo(pair, x, num_samples=1)
    torch.manual_seed(5)
    c = log_weights(pair, x, 1)[0]
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


def test_iwae_rejects_k_zero(stand_in_pairs):
    with pytest.raises(ValueError, match="at least 1"):
        iwae(_Shape(), torch.zeros(3, 5), k=0)


def test_bits_per_dim():
    log_px = torch.tensor([-100.0 * math.log(2) * 784])
    assert float(bits_per_dim(log_px, (1, 28, 28))) == pytest.approx(100.0)
