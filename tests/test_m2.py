"""The semi-supervised M2 pair and the Gaussian-mixture VAE: their enumerated bounds against the brute-force sum over
the discrete latent, the Gumbel-softmax relaxation's bias against the enumerated bound, labels kept by --labels, and
the command line (training with few labels, accuracy in evaluate, sampling given a label, bad input).

Tolerances: sums compared in float64 are equal to 1e-10; Pyro's TraceEnum_ELBO on the float64 pair agrees with the
brute-force sum to 1.2e-7 absolute on these values (the size of one float32 rounding: not float64 throughout), so
1e-5; Monte Carlo means within 4 standard errors (of the draws themselves, paired where the draws are shared).
"""

from __future__ import annotations

import json

import pytest
import torch
from pyro.infer import TraceEnum_ELBO
from pyro.poutine.messenger import Messenger
from support import mean_se, run_cli

from ppgen import data as datasets
from ppgen import runs
from ppgen.errors import UserError
from ppgen.models.gmvae import GMVAE, clustering_accuracy
from ppgen.models.m2 import M2

K, Z = 3, 2


class FixZ(Messenger):
    """Set the guide's z to given values (still a latent site, not an observation)."""

    def __init__(self, z: torch.Tensor):
        super().__init__()
        self.z = z

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] == "z":
            msg["value"], msg["done"] = self.z, True


def trace_enum_loss(pair: M2, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor) -> float:
    """Pyro's TraceEnum_ELBO on the pair itself (y enumerated in the guide), z = μ + σ ε at the given ε per class."""
    loc, scale = pair.encoder(x, torch.arange(K).unsqueeze(-1))

    def guide(x, y):
        with FixZ(loc + scale * eps):
            pair.guide(x, y)

    return float(TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(pair.model, guide, x, y).detach())


def tiny_m2(**kw) -> M2:
    torch.manual_seed(0)
    return M2(x_shape=(5,), z_dim=Z, hidden=(7,), classes=K, **kw).double()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.bernoulli(torch.rand(6, 5, generator=g)).double(), torch.tensor([0, -1, 2, -1, -1, 1])


def brute_force_m2(pair: M2, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Per example Σ_k q(k | x)(L_z(x, k, ε_k) + log p(k) − log q(k | x)), one class at a time, q the guide's (the
    point mass on a given label)."""
    probs = pair.class_probs(x, y)
    out = torch.zeros(len(x), dtype=torch.double)
    for n in range(len(x)):
        for k in range(K):
            q = probs[n, k]
            if q > 0:
                f = pair.elbo_given_class(x[n:n + 1], torch.tensor([k]), eps[k, n:n + 1])[0] + pair.prior_logits[k]
                out[n] += q * (f - torch.log(q))
    return out


def test_m2_enumerated_bound_is_the_brute_force_sum_over_classes():
    pair, (x, y) = tiny_m2(), batch()
    eps = torch.randn(K, len(x), Z, generator=torch.Generator().manual_seed(4), dtype=torch.double)
    expected = brute_force_m2(pair, x, y, eps)
    unlabelled = y < 0
    with torch.no_grad():
        torch.testing.assert_close(pair.enumerated_elbo(x[unlabelled], eps[:, unlabelled]), expected[unlabelled],
                                   rtol=0, atol=1e-10)
        # a labelled row: its class's term alone, L(x, y) = L_z(x, y) + log p(y)
        labelled = ~unlabelled
        at_label = eps[y[labelled], labelled.nonzero().squeeze(-1)]
        torch.testing.assert_close(pair.elbo_given_class(x[labelled], y[labelled], at_label)
                                   + pair.prior_logits[y[labelled]], expected[labelled], rtol=0, atol=1e-10)
    # Pyro's TraceEnum_ELBO on the pair itself (y enumerated in the guide), z fixed to the same draws
    assert trace_enum_loss(pair, x, y, eps) == pytest.approx(-float(expected.sum()), abs=1e-5)


def test_m2_objective_is_the_bound_plus_the_classification_loss():
    x, y = batch()
    plain, weighted = tiny_m2(alpha=0.0), tiny_m2(alpha=0.3)
    torch.manual_seed(5)
    bound = plain.closed_form_elbo(x, y)
    torch.manual_seed(5)
    assert torch.equal(plain.objective(x, y), -bound)
    torch.manual_seed(5)
    labelled = y >= 0
    nll = -torch.log_softmax(weighted.classifier(x), -1)[labelled, y[labelled]]
    expected = -bound
    expected[labelled] += 0.3 * nll  # α on every labelled row, whatever else the batch holds
    torch.testing.assert_close(weighted.objective(x, y), expected, rtol=0, atol=1e-10)


def test_kingma_alpha_gives_their_classification_term_over_the_data_set():
    """Kingma et al. (2014), eq. 9: J^α = J + α E_labelled[−log q(y|x)] with α = 0.1 N. The batch here is the whole
    data set (N = 6, N_l = 3), so the summed objective at alpha = kingma_alpha(N, N_l) must be −J + 0.1 N × the mean
    over the labelled rows."""
    from ppgen.errors import UserError
    from ppgen.models.m2 import kingma_alpha

    x, y = batch()
    labelled = y >= 0
    plain, weighted = tiny_m2(alpha=0.0), tiny_m2(alpha=kingma_alpha(len(x), int(labelled.sum())))
    torch.manual_seed(5)
    j = plain.objective(x, y).sum()
    mean_nll = -torch.log_softmax(plain.classifier(x), -1)[labelled, y[labelled]].mean()
    torch.manual_seed(5)
    assert float(weighted.objective(x, y).sum()) == pytest.approx(float(j + 0.1 * len(x) * mean_nll), abs=1e-10)
    assert kingma_alpha(50_000, 100) == pytest.approx(50.0)
    with pytest.raises(UserError, match="labelled"):
        kingma_alpha(10, 0)


def test_bfloat16_products_keep_the_objective_within_their_rounding():
    """precision=bfloat16: the networks' linear layers run in bfloat16 (8 significant bits: a relative rounding of
    2^-9 per value), their outputs and the objective come back float32, and the per-example objective stays within
    2^-5 relative of the float32 one on the same noise (a few roundings through three layers, not an accumulation
    over the 5 inputs); precision=float32 is bitwise the default."""
    x, y = batch()
    x, default = x.float(), tiny_m2().float()
    half = tiny_m2(precision="bfloat16").float()
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o.dtype)) for m in half.modules()
             if isinstance(m, torch.nn.Linear)]
    torch.manual_seed(5)
    low = half.objective(x, y)
    for h in hooks:
        h.remove()
    torch.manual_seed(5)
    full = default.objective(x, y)
    assert seen and set(seen) == {torch.bfloat16} and low.dtype == torch.float32
    torch.testing.assert_close(low, full, rtol=2 ** -5, atol=0)
    named = tiny_m2(precision="float32").float()
    torch.manual_seed(5)
    assert torch.equal(named.objective(x, y), full)


def test_gmvae_enumerated_bound_is_the_brute_force_sum_over_components():
    torch.manual_seed(0)
    pair = GMVAE(x_shape=(5,), z_dim=Z, hidden=(7,), components=K).double()
    x, _ = batch()
    eps = torch.randn(K, len(x), Z, generator=torch.Generator().manual_seed(4), dtype=torch.double)
    loc, scale = pair.encoder(x, torch.arange(K).unsqueeze(-1))
    z = loc + scale * eps
    log_q = torch.log_softmax(pair.cluster_net(x), -1)
    expected = torch.zeros(len(x), dtype=torch.double)
    for n in range(len(x)):
        for c in range(K):
            q_z = torch.distributions.Normal(loc[c, n], scale[c, n]).log_prob(z[c, n]).sum()
            p_z = torch.distributions.Normal(pair.component_loc[c], pair.component_log_scale[c].exp()).log_prob(
                z[c, n]).sum()
            p_x = torch.distributions.Bernoulli(logits=pair.decoder(z[c, n:n + 1])[0]).log_prob(x[n]).sum()
            expected[n] += log_q[n, c].exp() * (p_x + p_z - q_z + pair.prior_logits[c] - log_q[n, c])
    with torch.no_grad():
        torch.testing.assert_close(pair.enumerated_elbo(x, eps), expected, rtol=0, atol=1e-10)

    def guide(x):
        with FixZ(z):
            pair.guide(x)

    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(pair.model, guide, x)
    assert float(loss.detach()) == pytest.approx(-float(expected.sum()), abs=1e-5)


def test_relaxed_estimate_tends_to_the_enumerated_bound_as_the_temperature_falls():
    """R_τ (Gumbel-softmax draws, categorical KL exact) and R_0 (the same draws at τ = 0: Gumbel-max, a draw of y ~ q)
    share their noise. R_0 is unbiased for the enumerated bound U; R_τ → R_0 draw by draw as τ → 0, so the bias
    E[R_τ − R_0] vanishes; at τ = 1 it does not (the relaxation is biased, in a direction that depends on x)."""
    pair = tiny_m2()
    with torch.no_grad():
        for p in pair.parameters():
            p.mul_(3)  # sharper networks: a bias well above the noise at τ = 1
    x, _ = batch()
    n = 20_000
    xs = x.repeat(n, 1)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        gumbel = -torch.log(-torch.log(torch.rand(len(xs), K, generator=g, dtype=torch.double)))
        eps = torch.randn(len(xs), Z, generator=g, dtype=torch.double)
        r0 = pair.gumbel_max_elbo(xs, gumbel, eps).reshape(n, len(x))
        enumerated = pair.enumerated_elbo(xs, torch.randn(K, len(xs), Z, generator=g, dtype=torch.double))
        enumerated = enumerated.reshape(n, len(x))
        bias = {tau: pair.relaxed_elbo(xs, tau, gumbel, eps).reshape(n, len(x)) - r0 for tau in (1.0, 0.1, 1e-3)}
    for i in range(len(x)):
        (a, se_a), (b, se_b) = mean_se(r0[:, i]), mean_se(enumerated[:, i])
        assert abs(a - b) < 4 * (se_a ** 2 + se_b ** 2) ** 0.5, (i, a, b)
        small, se = mean_se(bias[1e-3][:, i])
        assert abs(small) < 4 * se + 1e-9, (i, small, se)
    significant = [abs(mean_se(bias[1.0][:, i])[0]) > 4 * mean_se(bias[1.0][:, i])[1] for i in range(len(x))]
    assert sum(significant) >= len(x) // 2, significant
    size = {tau: float(d.mean(0).abs().mean()) for tau, d in bias.items()}
    assert size[1e-3] < size[0.1] < size[1.0], size


def test_keep_labels_keeps_a_balanced_seeded_set():
    data = datasets.load("digits")
    kept = datasets.keep_labels(data, 25, seed=3)
    y = kept.train_inputs["y"]
    counts = torch.bincount(y[y >= 0], minlength=10)
    assert int(counts.sum()) == 25 and int(counts.max()) - int(counts.min()) <= 1
    assert torch.equal(y[y >= 0], data.train_inputs["y"][y >= 0])  # kept labels are the true ones
    assert torch.equal(datasets.keep_labels(data, 25, seed=3).train_inputs["y"], y)
    assert not torch.equal(datasets.keep_labels(data, 25, seed=4).train_inputs["y"], y)
    assert torch.equal(kept.test_inputs["y"], data.test_inputs["y"])


def test_clustering_accuracy_matches_clusters_to_labels_one_to_one():
    labels = [0, 0, 1, 1, 2, 2]
    assert clustering_accuracy(torch.tensor([5, 5, 3, 3, 4, 4]).numpy(), torch.tensor(labels).numpy()) == 1.0
    # two clusters for one class: the second is unmatched
    assert clustering_accuracy(torch.tensor([0, 1, 2, 2, 3, 3]).numpy(), torch.tensor(labels).numpy()) == 5 / 6
    assert clustering_accuracy(torch.tensor([0, 0, 0, 0, 0, 0]).numpy(), torch.tensor(labels).numpy()) == 2 / 6


def one_line_error(capsys, code: int, *words: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    for word in words:
        assert word in err, err


SMALL = ["--data", "digits", "--z-dim", "4", "--hidden", "64", "--batch-size", "64", "--no-progress"]


def test_bad_labels_are_one_line_and_nothing_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    one_line_error(capsys, run_cli("train", "m2", *SMALL, "--labels", 5000, "--out", out), "--labels 5000", "at most")
    one_line_error(capsys, run_cli("train", "m2", *SMALL, "--labels", 1250, "--out", out), "class")
    one_line_error(capsys, run_cli("train", "m2", *SMALL, "--classes", 5, "--out", out), "classes=5")
    one_line_error(capsys, run_cli("train", "m2", *SMALL, "--label-column", "digit", "--out", out), "digit")
    one_line_error(capsys, run_cli("train", "m2", *SMALL, "--label-column", "digit", "--labels", 10, "--out", out),
                   "digit")
    one_line_error(capsys, run_cli("train", "m2", *SMALL, "--label-seed", 1, "--out", out), "--labels")
    one_line_error(capsys, run_cli("train", "vae", "--data", "digits", "--labels", 10, "--out", out),
                   "vae does not take", "drop --labels")  # a family without a label input has no use for it
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def m2_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("m2") / "run"
    assert run_cli("train", "m2", *SMALL, "--labels", 50, "--epochs", 2, "--out", out) == 0
    return out


def test_train_keeps_the_asked_labels_and_evaluate_reports_accuracy(m2_run, capsys):
    config = runs.read_config(m2_run)
    assert config["data"]["labels"] == 50 and config["inputs"] == ["y"]
    capsys.readouterr()
    assert run_cli("evaluate", m2_run, "--iwae", 5, "--limit", 100, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    pair = runs.load_pair(m2_run).eval()
    test = datasets.load("digits")
    expected = float((pair.classify(test.test[:100]) == test.test_inputs["y"][:100]).float().mean())
    assert result["family_metrics"]["accuracy"] == pytest.approx(expected)
    assert result["family_metrics"]["elbo_unlabelled"] < 0


def test_sample_given_a_label(m2_run, tmp_path):
    assert run_cli("sample", m2_run, "--label", 3, "-n", 8, "--out", tmp_path / "s.npy", "--seed", 5) == 0
    pair = runs.load_pair(m2_run).eval()
    torch.manual_seed(5)
    with torch.no_grad():
        expected = pair.generate(8, 3)
    import numpy as np

    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), expected.numpy())
    styles = pair.style_transfer(datasets.load("digits").test[:4])
    assert styles.shape == (4, 10, 1, 8, 8)


def test_gmvae_run_reports_its_clustering_accuracy(tmp_path, capsys):
    out = tmp_path / "gmvae"
    assert run_cli("train", "gmvae", "--data", "digits", "--z-dim", 4, "--hidden", 32, "--epochs", 1, "--batch-size",
                   64, "--no-progress", "--out", out) == 0
    capsys.readouterr()
    assert run_cli("evaluate", out, "--iwae", 5, "--limit", 100, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    pair = runs.load_pair(out).eval()
    test = datasets.load("digits")
    with torch.no_grad():
        clusters = pair.cluster(test.test[:100]).numpy()
    expected = clustering_accuracy(clusters, test.test_inputs["y"][:100].numpy())
    assert result["family_metrics"]["cluster_accuracy"] == pytest.approx(expected)
    assert result["iwae_5"] >= result["elbo"] - 4 * result["elbo_se"]


def test_m2_with_unlabelled_digits_beats_the_classifier_on_the_labels_alone():
    """50 labels of the 1,257 training digits (8x8, seeded balanced set): q(y|x) of M2 trained on all of them against
    the same classifier network trained on the 50 alone (seeded; 0.797 against 0.767 on the 360 test digits, α 25
    per labelled digit, 10% labelled rows a batch)."""
    import ppgen
    from ppgen.models.m2 import Classifier

    digits = datasets.load("digits")
    few = datasets.keep_labels(digits, 50, seed=0)
    y = few.train_inputs["y"]
    known = y >= 0
    torch.manual_seed(0)
    net = Classifier(digits.x_shape, 10, (256,))
    opt = torch.optim.Adam(net.parameters(), 1e-3, weight_decay=1e-4)
    for _ in range(500):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.bernoulli(few.train[known])), y[known]).backward()
        opt.step()
    with torch.no_grad():
        alone = float((net(digits.test).argmax(-1) == digits.test_inputs["y"]).float().mean())
    torch.manual_seed(0)
    pair = M2(x_shape=digits.x_shape, z_dim=10, hidden=(256,), alpha=25.0)
    ppgen.fit(pair, few, backend="svi", engine="torch", epochs=60, batch_size=64, lr=3e-3, seed=0, progress=False)
    accuracy = pair.eval().family_metrics(digits.test, digits.test_inputs["y"])["accuracy"]
    assert accuracy > alone + 0.02, (accuracy, alone)


@pytest.mark.parametrize("y_guide", ["sample", "relaxed"])
def test_the_other_y_guides_train_and_move_the_classifier(y_guide):
    digits = datasets.keep_labels(datasets.load("digits"), 20, seed=0)
    x = torch.bernoulli(digits.train[:256], generator=torch.Generator().manual_seed(0))
    few = datasets.from_tensor(x, inputs={"y": digits.train_inputs["y"][:256]})
    torch.manual_seed(0)
    pair = M2(x_shape=digits.x_shape, z_dim=3, hidden=(16,), alpha=0.0, y_guide=y_guide, temperature=0.5)
    before = [p.detach().clone() for p in pair.classifier.parameters()]
    import ppgen

    fit = ppgen.fit(pair, few, backend="svi", engine="torch", epochs=2, batch_size=64, seed=0, progress=False)
    assert all(torch.isfinite(torch.tensor(row["objective"])) for row in fit.history)
    # with alpha = 0 only the unlabelled rows' estimate reaches q(y|x): by the score function or the relaxation
    assert any(not torch.equal(a, b) for a, b in zip(before, pair.classifier.parameters()))


def test_a_family_epoch_order_is_the_plain_shuffle_by_default():
    from ppgen.models.gmvae import GMVAE

    pair = GMVAE(x_shape=(5,), z_dim=2, hidden=(4,), components=3)
    order = pair.epoch_order(50, (), 10, 5, torch.Generator().manual_seed(7))
    assert torch.equal(order, torch.randperm(50, generator=torch.Generator().manual_seed(7)))


def test_m2_batches_hold_their_share_of_labelled_rows():
    """100 rows, 6 labelled, batch 20 over 5 steps, labelled_share 0.1: every batch holds exactly 2 labelled rows (the
    6 labelled drawn in turn: 10 visits, each row 1 or 2 times) and 18 distinct unlabelled rows; labels common enough,
    or labelled_share 0, leave the plain shuffle."""
    y = torch.full((100,), -1)
    y[torch.tensor([3, 17, 40, 41, 77, 99])] = torch.tensor([0, 1, 2, 0, 1, 2])
    pair = M2(x_shape=(5,), z_dim=2, hidden=(4,), classes=3, labelled_share=0.1)
    order = pair.epoch_order(100, (y,), 20, 5, torch.Generator().manual_seed(0))
    assert order.shape == (100,)
    batches = order.view(5, 20)
    assert ((y[batches] >= 0).sum(1) == 2).all()
    unlabelled = batches[y[batches] < 0]
    assert len(unlabelled.unique()) == len(unlabelled) == 90
    visits = torch.bincount(batches[y[batches] >= 0], minlength=100)[y >= 0]
    assert visits.sum() == 10 and set(visits.tolist()) <= {1, 2}
    plain = torch.randperm(100, generator=torch.Generator().manual_seed(0))
    common = torch.where(torch.arange(100) < 20, torch.arange(100) % 3, torch.tensor(-1))
    assert torch.equal(pair.epoch_order(100, (common,), 20, 5, torch.Generator().manual_seed(0)), plain)
    off = M2(x_shape=(5,), z_dim=2, hidden=(4,), classes=3, labelled_share=0.0)
    assert torch.equal(off.epoch_order(100, (y,), 20, 5, torch.Generator().manual_seed(0)), plain)


def test_m2_labelled_batches_apart_follow_pyros_schedule():
    """1,000 rows, 30 labelled, batch 20 over 50 steps, labelled_batches apart: ⌈30/20⌉ = 2 labelled batches at steps
    1 and 1 + ⌊1000/30⌋ = 34, the first all labelled, the second 10 labelled + 10 unlabelled; no labelled row
    elsewhere; the order a permutation of the 1,000 rows (each at most once an epoch)."""
    y = torch.full((1000,), -1)
    y[torch.randperm(1000, generator=torch.Generator().manual_seed(1))[:30]] = torch.arange(30) % 3
    pair = M2(x_shape=(5,), z_dim=2, hidden=(4,), classes=3, labelled_batches="apart")
    order = pair.epoch_order(1000, (y,), 20, 50, torch.Generator().manual_seed(0))
    assert torch.equal(order.sort().values, torch.arange(1000))
    per_step = (y[order[:1000].view(50, 20)] >= 0).sum(1)
    expected = torch.zeros(50, dtype=torch.long)
    expected[1], expected[34] = 20, 10
    assert torch.equal(per_step, expected)
    # where ⌊N/N_l⌋ steps run past the epoch, the last free steps take the labelled batches
    # (11 labels of 100 at batch 10: steps 1 and 1 + 9 = 10 of 0..9, so 1 and 9)
    crowded = torch.where(torch.arange(100) < 11, torch.arange(100) % 3, torch.tensor(-1))
    steps = (crowded[pair.epoch_order(100, (crowded,), 10, 10, torch.Generator().manual_seed(0)).view(10, 10)] >= 0)
    assert steps.sum(1).tolist() == [0, 10, 0, 0, 0, 0, 0, 0, 0, 1]


def test_m2_grey_levels_score_the_bernoulli_cross_entropy_of_grey_pixels():
    """grey_levels: the enumerated bound of a grey-level x is the hand-computed sum over classes of
    q(k|x)(Σ_d [x_d log σ(l_d) + (1 − x_d) log(1 − σ(l_d))] + log p(z) − log q(z|x,k) + log p(k) − log q(k|x)),
    and Pyro's TraceEnum_ELBO on the pair gives the same; grey data are refused without the option, in one line."""
    pair = tiny_m2(grey_levels=True)
    x = torch.rand(6, 5, generator=torch.Generator().manual_seed(3), dtype=torch.double)
    y = torch.tensor([0, -1, 2, -1, -1, 1])
    eps = torch.randn(K, len(x), Z, generator=torch.Generator().manual_seed(4), dtype=torch.double)
    log_q = torch.log_softmax(pair.classifier(x), -1).detach()
    expected = torch.zeros(len(x), dtype=torch.double)
    with torch.no_grad():
        for n in range(len(x)):
            for k in range(K):
                loc, scale = pair.encoder(x[n], torch.tensor(k))
                z = loc + scale * eps[k, n]
                p = torch.sigmoid(pair.decoder(z, torch.tensor(k)))
                log_px = (x[n] * torch.log(p) + (1 - x[n]) * torch.log1p(-p)).sum()
                log_pz = (-0.5 * z ** 2 - 0.5 * torch.log(torch.tensor(2 * torch.pi, dtype=torch.double))).sum()
                log_qz = torch.distributions.Normal(loc, scale).log_prob(z).sum()
                term = log_px + log_pz - log_qz + pair.prior_logits[k]  # log(1/K), as the pair stores it
                if y[n] >= 0:
                    expected[n] += term if k == y[n] else 0.0
                else:
                    expected[n] += log_q[n, k].exp() * (term - log_q[n, k])
        unlabelled = y < 0
        torch.testing.assert_close(pair.enumerated_elbo(x[unlabelled], eps[:, unlabelled]), expected[unlabelled],
                                   rtol=0, atol=1e-10)
    assert torch.allclose(brute_force_m2(pair, x, y, eps), expected, rtol=0, atol=1e-10)
    assert trace_enum_loss(pair, x, y, eps) == pytest.approx(-float(expected.sum()), abs=1e-5)
    pair.check_data(x)  # grey levels taken
    assert pair.likelihood_note and "no log-likelihood" in pair.likelihood_note
    with pytest.raises(UserError, match="not binary"):
        tiny_m2().check_data(x)
    with pytest.raises(UserError, match=r"outside \[0, 1\]"):
        pair.check_data(x + 1)
    assert tiny_m2().likelihood_note is None


def test_a_grey_level_run_trains_on_grey_digits_and_evaluate_says_its_bound_is_no_likelihood(tmp_path, capsys):
    out = tmp_path / "grey"
    assert run_cli("train", "m2", *SMALL, "--labels", 50, "--epochs", 1, "--grey-levels", "--labelled-batches",
                   "apart", "--out", out) == 0
    config = runs.read_config(out)
    assert config["data"]["binarize"] is None  # the data left grey by default
    assert config["model_config"]["grey_levels"] and config["model_config"]["labelled_batches"] == "apart"
    capsys.readouterr()
    assert run_cli("evaluate", out, "--iwae", 2, "--limit", 20) == 0
    assert "no log-likelihood of binary data" in capsys.readouterr().out
