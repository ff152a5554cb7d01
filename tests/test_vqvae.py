"""Issue 13, the VQ-VAE: exactness of its pieces, the bound, the autoregressive prior, and the commands.

Exact checks (no Monte Carlo): the straight-through gradient, the EMA codebook against the k-means centroid
step (and scikit-learn's Lloyd step), the bound against the sum of its two parts, and the PixelCNN prior's
normalization over all 81 grids of a 2x2 grid with K = 3. The one statistical check (the prior's ancestral
sampler against its own probabilities) has a tolerance of 4 binomial standard errors per grid.
"""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from support import VQVAE_FLAGS as FAST
from support import VQVAE_SMALL as SMALL
from torch.nn import functional as F

import ppgen
from ppgen import evaluation
from ppgen.cli import main
from ppgen.errors import UserError
from ppgen.inference.stages import fit_stage
from ppgen.models.vqvae import VQVAE, Codebook, CodeGridPrior, PixelCNNPrior


@pytest.fixture(scope="module")
def digits():
    return ppgen.data.load("digits")


@pytest.fixture(scope="module")
def trained(digits):
    """A small VQ-VAE after 3 epochs of stage one (EMA codebook with restarts) on the digits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before conftest's single_thread (see there why one thread)
    try:
        torch.manual_seed(0)
        pair = VQVAE(digits.x_shape, **SMALL)
        ppgen.fit(pair, digits, epochs=3, batch_size=64, lr=3e-3, progress=False, engine="torch")
    finally:
        torch.set_num_threads(threads)
    return pair.eval()


# -- the straight-through gradient ----------------------------------------------------------------------------
@pytest.mark.parametrize("commitment", [0.0, 0.25])
def test_straight_through_gradient_is_the_identitys(digits, commitment):
    """d objective / d z_e = d[−log p(x | z)]/dz at z = z_q (the identity's gradient through the quantizer)
    + 2β (z_e − z_q) from the commitment loss; and the decoder sees the value z_q."""
    torch.manual_seed(1)
    pair = VQVAE(digits.x_shape, **{**SMALL, "commitment": commitment}).eval()  # eval: no codebook update
    x = digits.test[:8]
    kept = {}

    def keep(module, inputs, output):
        output.retain_grad()
        kept["z_e"] = output

    handle = pair.encoder.register_forward_hook(keep)
    pair.objective(x).sum().backward()
    handle.remove()
    z_e = kept["z_e"]
    with torch.no_grad():
        z_q = pair.embed_codes(pair.codes(x))
    z = z_q.clone().requires_grad_(True)
    (-pair.observation(z).log_prob(x)).sum().backward()
    expected = z.grad + 2 * commitment * (z_e.detach() - z_q)
    assert z_e.grad.abs().max() > 1e-3  # a gradient reaches the encoder at all
    torch.testing.assert_close(z_e.grad, expected, rtol=1e-4, atol=1e-6)


# -- the EMA codebook -----------------------------------------------------------------------------------------------
def _assignment(n: int = 60, k: int = 3, d: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g)
    labels = torch.arange(n) % k  # every code has n/k members
    centroids = torch.stack([z[labels == j].mean(0) for j in range(k)])
    return z, labels, centroids


def test_ema_on_a_fixed_assignment_is_the_kmeans_centroid_step():
    """Decay 0.99, zero start, the same assignment t times: the bias-corrected counts N_k/(1 − γ^t) are the
    cluster sizes and the codebook S_k/N_k the centroids (float rounding only); with decay 0 one step from any
    state gives the centroids; a code with no member keeps its vector."""
    z, labels, centroids = _assignment()
    book = Codebook(3, 2, ema=True, decay=0.99, restart_below=0.0)
    for _ in range(25):
        book.update(z, labels)
    torch.testing.assert_close(book.embed.data, centroids, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(book.corrected_count(), torch.full((3,), 20.0), rtol=1e-5, atol=0)

    book = Codebook(4, 2, ema=True, decay=0.0, restart_below=0.0)
    book.count.uniform_(1, 5)
    book.total.normal_()
    unused = book.embed.data[3].clone()
    book.update(z, labels)  # code 3 has no member
    torch.testing.assert_close(book.embed.data[:3], centroids, rtol=1e-6, atol=1e-7)
    assert torch.equal(book.embed.data[3], unused)


def test_ema_with_decay_zero_is_one_lloyd_step_of_scikit_learn():
    """Nearest-code assignment followed by the decay-0 update = one iteration of scikit-learn's Lloyd k-means
    from the same centres."""
    from sklearn.cluster import KMeans

    g = torch.Generator().manual_seed(3)
    z = torch.cat([torch.randn(40, 2, generator=g) + c for c in (torch.tensor([3.0, 0]), torch.tensor([-3.0, 0]),
                                                                   torch.tensor([0, 3.0]))])
    book = Codebook(3, 2, ema=True, decay=0.0, restart_below=0.0)
    book.embed.data = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    start = book.embed.data.double().numpy().copy()
    book.update(z, book.nearest(z))
    km = KMeans(3, init=start, n_init=1, max_iter=1, algorithm="lloyd").fit(z.double().numpy())
    torch.testing.assert_close(book.embed.data, torch.tensor(km.cluster_centers_, dtype=torch.float32),
                               rtol=1e-5, atol=1e-6)


def test_dead_codes_restart_at_batch_vectors():
    """Codes whose bias-corrected count per batch is below the threshold move to rows of the batch; the
    others keep their EMA centroids."""
    z, labels, centroids = _assignment()
    torch.manual_seed(0)
    book = Codebook(5, 2, ema=True, decay=0.99, restart_below=1.0)
    book.update(z, labels)  # codes 3 and 4 unused
    torch.testing.assert_close(book.embed.data[:3], centroids, rtol=1e-5, atol=1e-6)
    for j in (3, 4):
        assert (book.embed.data[j] == z).all(1).any(), j
    # a restarted code starts at the threshold rate: it survives a step in which it is used at least that often
    torch.testing.assert_close(book.corrected_count()[3:], torch.ones(2))
    moved = book.embed.data[3].clone()
    labels = labels.clone()
    labels[:2] = 3  # code 3 now used twice per batch, code 4 not at all
    book.update(z, labels)
    c = 1 - 0.99  # the raw count N_3 after the restart at t = 1: threshold 1 times (1 − γ^1)
    expected = (0.99 * c * moved + 0.01 * z[:2].sum(0)) / (0.99 * c + 0.01 * 2)  # S_3 / N_3 after the second step
    torch.testing.assert_close(book.embed.data[3], expected, rtol=1e-5, atol=1e-6)
    assert float(book.corrected_count()[3]) > 1
    # the unused code fell below the threshold again ((0.99 · 0.01) / (1 − 0.99²) ≈ 0.5): moved and reset anew
    assert (book.embed.data[4] == z).all(1).any()
    torch.testing.assert_close(book.corrected_count()[4], torch.tensor(1.0))


def test_ema_state_is_in_the_state_dict(digits):
    pair = VQVAE(digits.x_shape, **SMALL)
    keys = set(pair.state_dict())
    assert {"quantizer.count", "quantizer.total", "quantizer.steps", "quantizer.embed", "prior_fitted"} <= keys
    assert pair.svi_engines == ("torch",)


# -- the bound --------------------------------------------------------------------------------------------------------
def test_the_bound_is_the_sum_of_its_two_parts(trained, digits):
    """ELBO from the traces = log p(x | z_q) (Bernoulli, by hand) + log p(k) (−hw log K, uniform), and
    IWAE_K equals it (a point mass: every particle coincides); the objective with β = 0 is minus it."""
    pair, x = trained, digits.test[:50]
    torch.manual_seed(0)
    bound = evaluation.elbo(pair, x)
    with torch.no_grad():
        logits = pair.decoder(pair.embed_codes(pair.codes(x)))
        log_px = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3))
    log_pk = -math.prod(pair.grid) * math.log(pair.config.codes)
    torch.testing.assert_close(bound, log_px + log_pk, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(evaluation.iwae(pair, x, k=7), bound, rtol=1e-6, atol=1e-4)
    zero = VQVAE(digits.x_shape, **{**SMALL, "commitment": 0.0})
    zero.load_state_dict(pair.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(zero.eval().objective(x), -bound, rtol=1e-5, atol=1e-3)


def test_fitted_prior_enters_the_bound_and_sampling(trained, digits):
    pair = VQVAE(digits.x_shape, **SMALL)
    pair.load_state_dict(trained.state_dict())
    untrained = VQVAE(digits.x_shape, **SMALL)
    with pytest.raises(UserError, match="not been trained"):
        fit_stage(untrained, "prior", digits, epochs=1)
    uniform = float(evaluation.elbo(pair.eval(), digits.test).mean())
    history = fit_stage(pair, "prior", digits, epochs=3, seed=0).history
    assert bool(pair.prior_fitted) and history[-1]["prior_nll"] < history[0]["prior_nll"]
    x = digits.test
    bound = evaluation.elbo(pair.eval(), x)
    log_px, log_pk = pair.log_bound_parts(x)
    with torch.no_grad():
        by_hand = pair.prior_net.log_prob(pair.codes(x))
    torch.testing.assert_close(log_pk, by_hand)
    torch.testing.assert_close(bound, log_px + log_pk, rtol=1e-6, atol=1e-4)
    # the learned prior beats the uniform one on held-out codes (16 positions x log 16 = 44.4 nats for uniform)
    assert float(bound.mean()) > uniform
    torch.manual_seed(0)
    samples = pair.generate(5)
    assert samples.shape == (5, *digits.x_shape) and ((samples >= 0) & (samples <= 1)).all()


# -- the autoregressive prior --------------------------------------------------------------------------------------------
def _tiny_prior() -> PixelCNNPrior:
    torch.manual_seed(0)
    net = PixelCNNPrior(codes=3, channels=8, layers=2)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)  # far from uniform, so a leak of the current position would show
    return net.eval()


def test_the_prior_sums_to_one_over_every_grid_of_a_tiny_case():
    """2x2 grid, K = 3: Σ over all 81 grids of p(k) = 1 (each position sees only earlier ones)."""
    net = _tiny_prior()
    grids = torch.tensor(list(itertools.product(range(3), repeat=4))).reshape(81, 2, 2)
    with torch.no_grad():
        lp = net.log_prob(grids)
    assert len(grids) == 81 and float(lp.exp().max()) > 2 / 81  # not the uniform distribution
    assert abs(float(torch.logsumexp(lp.double(), 0))) < 1e-5
    # the same through the pair's prior site (the distribution the model samples its codes from)
    prior = CodeGridPrior(net, 3, (2, 2))
    torch.testing.assert_close(prior.log_prob(grids.reshape(9, 9, 2, 2)).reshape(81), lp)


def test_ancestral_samples_follow_the_prior():
    """20,000 draws: every grid's frequency within 4 binomial standard errors of its probability."""
    net = _tiny_prior()
    grids = torch.tensor(list(itertools.product(range(3), repeat=4))).reshape(81, 2, 2)
    with torch.no_grad():
        p = net.log_prob(grids).exp().double()
    torch.manual_seed(1)
    draws = net.sample(20_000, (2, 2), torch.device("cpu"))
    index = (draws.reshape(-1, 4) * torch.tensor([27, 9, 3, 1])).sum(1)
    freq = torch.bincount(index, minlength=81).double() / len(draws)
    se = (p * (1 - p) / len(draws)).sqrt()
    assert ((freq - p).abs() < 4 * se + 1e-12).all()


# -- errors ---------------------------------------------------------------------------------------------------------------
def test_one_line_errors_for_k_below_two_and_a_grid_that_does_not_fit(digits):
    with pytest.raises(UserError, match="at least 2 codes"):
        VQVAE(digits.x_shape, codes=1)
    with pytest.raises(UserError, match="does not fit a 8x8 image"):
        VQVAE(digits.x_shape, downsample=4)
    with pytest.raises(UserError, match="does not fit a 28x28"):
        VQVAE((1, 28, 28), downsample=3)
    with pytest.raises(UserError, match="images"):
        VQVAE((2,), codes=4)


# -- the commands ---------------------------------------------------------------------------------------------------------
def test_cli_train_resume_is_bit_exact_with_the_ema_state(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", "vqvae", *FAST, "--epochs", "3", "--select", "last", "--out", str(straight)]) == 0
    assert main(["train", "vqvae", *FAST, "--epochs", "1", "--select", "last", "--out", str(split)]) == 0
    assert main(["train", "vqvae", "--resume", str(split), "--epochs", "3", "--no-progress"]) == 0
    a = torch.load(straight / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(split / "checkpoint.pt", weights_only=True)["model"]
    assert set(a) == set(b) and int(a["quantizer.steps"]) == 3 * (1257 // 64)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    history = (straight / "history.csv").read_text().splitlines()
    assert "val_codebook_usage" in history[0] and "val_perplexity" in history[0]


def test_a_point_mass_guide_is_evaluated_with_one_draw(trained, digits):
    """IWAE_K and the K-draw ELBO of the point-mass guide use one draw (the decoder sees each example once, not K
    times: the old code decoded 1,000 copies) and equal the exact bound; the protocol's default keeps K draws."""
    x = digits.test[:40]
    rows = []
    look = 2  # each estimator's one look at the pair's sites (are any discrete?) decodes two examples
    handle = trained.decoder.register_forward_hook(lambda m, i, o: rows.append(i[0].reshape(-1, *i[0].shape[-3:])
                                                                                 .shape[0]))
    try:
        ll = evaluation.iwae(trained, x, k=1000)
        assert sum(rows) == len(x) + look
        rows.clear()
        bound = evaluation.elbo(trained, x, num_samples=10)
        assert sum(rows) == len(x) + look
    finally:
        handle.remove()
    log_px, log_pk = trained.log_bound_parts(x)
    torch.testing.assert_close(ll, log_px + log_pk, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(bound, log_px + log_pk, rtol=1e-6, atol=1e-4)
    assert trained.guide_draws(1000) == 1 and ppgen.models.VAE((1, 8, 8), z_dim=2).guide_draws(1000) == 1000


def test_cli_train_evaluate_prior_sample(tmp_path, capsys):
    run = tmp_path / "vq"
    assert main(["prior", str(tmp_path / "missing")]) == 2
    assert main(["train", "vqvae", *FAST, "--epochs", "2", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0  # the default IWAE-1000: one draw of the point mass
    uniform = json.loads(capsys.readouterr().out)
    stats = uniform["family_metrics"]
    assert 0 < stats["codebook_usage"] <= 1 and 1 <= stats["perplexity"] <= 16
    assert uniform["iwae_1000"] == pytest.approx(uniform["elbo"], abs=1e-3) and "point mass" in uniform["iwae_note"]
    assert main(["evaluate", str(run), "--iwae", "1"]) == 0
    assert "codebook usage" in capsys.readouterr().out
    assert main(["prior", str(run), "--epochs", "2"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["prior"]["test_elbo"] > uniform["elbo"]
    assert (run / "prior_history.csv").exists()
    assert main(["sample", str(run), "-n", "4", "--out", str(tmp_path / "s.npy")]) == 0

    # stage one resumed after the prior keeps the prior (the old code resumed from a checkpoint without it and
    # wrote model.pt with the untrained, unused PixelCNN: the bound back to the uniform prior's)
    fitted = torch.load(run / "model.pt", weights_only=True)
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    for state in (checkpoint["model"], checkpoint["state"]["best"]):
        assert all(torch.equal(state[k], v) for k, v in fitted.items() if k.startswith("prior_net."))
        assert bool(state["prior_fitted"])
    assert checkpoint["state"]["best_score"] == pytest.approx(metrics["prior"]["val_elbo"])
    assert main(["train", "vqvae", "--resume", str(run), "--epochs", "3", "--no-progress"]) == 0
    resumed = ppgen.load(run)
    assert bool(resumed.prior_fitted)
    log_pk = resumed.log_bound_parts(ppgen.data.load("digits").test)[1]
    uniform_log_pk = -16 * math.log(16)  # 4x4 grid, K = 16
    assert float(log_pk.mean()) > uniform_log_pk + 5  # the learned prior, still in use (uniform: −44.4 exactly)


def test_cli_one_line_errors(tmp_path, capsys):
    assert main(["train", "vqvae", *FAST, "--codes", "1", "--out", str(tmp_path / "a")]) == 2
    assert main(["train", "vqvae", *FAST, "--downsample", "4", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "at least 2 codes" in err[0] and "does not fit" in err[1]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # a prior asked for before stage one has finished: a run with a checkpoint but no model.pt
    run = tmp_path / "unfinished"
    assert main(["train", "vqvae", *FAST, "--epochs", "1", "--out", str(run)]) == 0
    (run / "model.pt").unlink()
    capsys.readouterr()
    assert main(["prior", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stage one" in err[0]
    # a run of another family
    vae = tmp_path / "vae"
    assert main(["train", "vae", "--data", "digits", "--z-dim", "2", "--hidden", "16", "--epochs", "1",
                 "--no-progress", "--out", str(vae)]) == 0
    capsys.readouterr()
    assert main(["prior", str(vae)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "for vqvae runs" in err[0]


@pytest.mark.parametrize("likelihood", ["bernoulli", "cbernoulli", "gaussian"])
def test_mnist_shapes_and_every_likelihood(likelihood):
    """The default grid on 28x28 is 7x7; every VAE likelihood gives a finite per-example objective and bound."""
    torch.manual_seed(0)
    pair = VQVAE((1, 28, 28), codes=8, code_dim=4, channels=8, likelihood=likelihood, prior_channels=8,
                 prior_layers=1)
    assert pair.grid == (7, 7)
    x = torch.rand(3, 1, 28, 28)
    x = torch.bernoulli(x) if likelihood == "bernoulli" else x
    loss = pair.objective(x)
    assert loss.shape == (3,) and torch.isfinite(loss).all()
    assert int(pair.quantizer.steps) == 1  # the training step updated the codebook statistics
    log_px, log_pk = pair.eval().log_bound_parts(x)
    torch.testing.assert_close(log_pk, torch.full((3,), -49 * math.log(8)))
    torch.testing.assert_close(evaluation.elbo(pair, x), log_px + log_pk, rtol=1e-6, atol=1e-3)
