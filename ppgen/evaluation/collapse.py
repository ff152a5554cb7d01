r"""Posterior-collapse diagnostics for a pair with a Gaussian-like guide.

* KL per latent dimension: E_x KL(q(z_j|x) ‖ p(z_j)), closed form for Normal q and p, with
  p the model's own prior site (read from a trace of the model replayed on a guide draw,
  never assumed N(0, I)); for any other factorized prior (Laplace, Student-t, ...) the Monte
  Carlo estimate E_q[log q(z_j|x) − log p(z_j)] over 64 draws per example.
* Active units (Burda et al., 2016): A_u = Cov_x(E_{q(z|x)}[z_u]); a unit is active if
  A_u > 0.01.
* Mutual information I(x; z) under q(x, z) = p_data(x) q(z|x) (Hoffman & Johnson,
  2016; estimator of He et al., 2019): I = E_x E_q[log q(z|x)] − E_q(z)[log q(z)],
  with the aggregate posterior q(z) ≈ (1/N) Σ_n q(z|x_n) over the evaluated examples.

* Linear-probe accuracy: how useful the code is as a representation — a multinomial logistic
  regression (scikit-learn) fitted on the posterior means E_q[z | x] of labelled training
  examples, scored on held-out ones (the probe of Alain & Bengio, 2016, as collapse papers
  report it, e.g. Razavi et al., 2019). The means are not standardized (rescaling a unit whose
  mean moves by 0.01 while q's spread is 1 to unit variance would amplify what the noise of q
  hides); the L2 penalty is sklearn's default (C = 1). A constant code gives exactly the
  majority-class share; a collapsed one, whose means still move a little with x, more than that
  (the probe reads the means, not what survives q's noise: I(x; z) says that).

For pairs with several latent layers (DLGM, hierarchical and Ladder VAEs) :func:`layer_report`
gives the same three numbers per layer from the pair's own sample sites: the guide is
traced with S draws and the model replayed on them, so layer l's KL is
E_x E_q KL(q(z_l | ·) ‖ p(z_l | z_{l+1})) (closed form per dimension given the sampled
parents, as Sønderby et al. report it), activity is Cov_x of E_q[z_l] (the guide mean
averaged over the S draws of the layers it depends on), and I is the mutual information
between z_l and the guide's inputs to it (x and the drawn parent layers), by the same
estimator. :func:`report` uses it whenever a pair has more than one latent site.

A pair with input columns (``pair.inputs``: a label, covariates) takes them beside x in every function
(``inputs``, one row per example): q(z | x, inputs), the prior p(z | inputs), and I(x; z) then is the
information z carries about x under the inputs observed with it.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Independent, Normal, kl_divergence

from ppgen import sites
from ppgen.errors import UserError

Inputs = tuple[torch.Tensor, ...]


def _gaussian_q(pair, x: torch.Tensor, inputs: Inputs = ()) -> Normal:
    if not pair.has_encoder:
        raise UserError(f"{pair.who} has no encoder q(z | x): no per-dimension collapse diagnostics")
    with torch.no_grad():
        loc, scale = pair.encode(x, *inputs)
    return Normal(loc, scale)


def prior(pair, x: torch.Tensor, seed: int = 0, inputs: Inputs = ()) -> Normal:
    """The model's prior site of the bottom latent (``pair.latent_sites[-1]``) per example and dimension,
    (N, k), its parents (if any) drawn from the guide; a :class:`UserError` unless it is Normal."""
    name = pair.latent_sites[-1]
    with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []), torch.no_grad():
        torch.manual_seed(seed)
        guide_tr, model_tr = sites.trace_pair(pair, x, 1, inputs)
    site = model_tr.nodes[name]
    p = _base_normal(site["fn"])
    if p is None:
        raise UserError(f"{pair.who}'s prior on {name!r} is {type(_base(site['fn'])).__name__}, not Normal: "
                        "no closed-form KL per dimension")
    value = guide_tr.nodes[name]["value"]
    event = len(site["fn"].event_shape)
    return Normal(*(sites.unplace(t.expand_as(value), event, True)[0].reshape(x.shape[0], -1)
                    for t in (p.loc, p.scale)))


def kl_per_dim(pair, x: torch.Tensor, samples: int = 64, seed: int = 0, inputs: Inputs = ()) -> torch.Tensor:
    """Average over examples of KL(q(z_j|x) ‖ p(z_j)) for every latent dimension j, p the model's prior site:
    closed form for a Normal prior, else a Monte Carlo estimate from ``samples`` guide draws per example."""
    q = _gaussian_q(pair, x, inputs)
    name = pair.latent_sites[-1]
    with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []), torch.no_grad():
        torch.manual_seed(seed)
        _, model_tr = sites.trace_pair(pair, x, 1, inputs)
    if _base_normal(model_tr.nodes[name]["fn"]) is not None:
        return kl_divergence(q, prior(pair, x, inputs=inputs)).mean(0)
    with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []), torch.no_grad():
        torch.manual_seed(seed)
        guide_tr, model_tr = sites.trace_pair(pair, x, samples, inputs)
    g_site, p_site = guide_tr.nodes[name], model_tr.nodes[name]
    z = g_site["value"]
    per_dim = _base(g_site["fn"]).log_prob(z) - _base(p_site["fn"]).log_prob(z)  # event dims kept
    per_dim = sites.unplace(per_dim.expand_as(z), len(g_site["fn"].event_shape), True)
    return per_dim.reshape(samples, x.shape[0], -1).mean((0, 1))


def active_units(pair, x: torch.Tensor, threshold: float = 0.01, inputs: Inputs = ()) -> tuple[int, torch.Tensor]:
    """Number of active units and the per-unit activity Cov_x(E_q[z_u])."""
    q = _gaussian_q(pair, x, inputs)
    activity = q.loc.var(0, unbiased=True)
    return int((activity > threshold).sum()), activity


def mutual_information(pair, x: torch.Tensor, seed: int = 0, inputs: Inputs = ()) -> float:
    """Estimate of I(x; z) in nats (one draw of z per example)."""
    q = _gaussian_q(pair, x, inputs)
    g = torch.Generator(device=x.device).manual_seed(seed)
    z = q.loc + q.scale * torch.randn(q.loc.shape, generator=g, device=x.device)
    neg_entropy = q.log_prob(z).sum(-1).mean()
    # log q(z_m) = logmeanexp_n log q(z_m | x_n)
    cross = Normal(q.loc[None], q.scale[None]).log_prob(z[:, None]).sum(-1)  # (M, N)
    log_qz = torch.logsumexp(cross, 1) - math.log(x.shape[0])
    return float(neg_entropy - log_qz.mean())


def linear_probe(pair, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                 seed: int = 0) -> float:
    """Accuracy on (x_test, y_test) of a logistic regression fitted on the posterior means of x_train."""
    from sklearn.linear_model import LogisticRegression

    if y_train is None or y_test is None:
        raise UserError("the linear probe needs labels; this data set has none")
    means = [_gaussian_q(pair, x).loc.reshape(len(x), -1).cpu().numpy() for x in (x_train, x_test)]
    probe = LogisticRegression(max_iter=2000, random_state=seed)
    probe.fit(means[0], y_train.cpu().numpy())
    return float(probe.score(means[1], y_test.cpu().numpy()))


def _base(fn):
    """The distribution under its ``Independent`` wrappers: per-dimension log densities."""
    while isinstance(fn, Independent):
        fn = fn.base_dist
    return fn


def _base_normal(fn):
    while isinstance(fn, Independent) or hasattr(fn, "base_dist") and not isinstance(fn, Normal):
        fn = fn.base_dist
    return fn if isinstance(fn, Normal) else None


def layer_report(pair, x: torch.Tensor, samples: int = 10, seed: int = 0, threshold: float = 0.01,
                 inputs: Inputs = ()) -> dict[str, dict]:
    """Per latent site, outermost first (the pair's ``latent_sites`` order): KL per dimension, active units, I."""
    with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []), torch.no_grad():
        torch.manual_seed(seed)
        guide_tr, model_tr = sites.trace_pair(pair, x, samples, inputs)
    out = {}
    for name, site in sites.sample_sites(guide_tr).items():
        if site["is_observed"]:
            continue
        q, p, z = _base_normal(site["fn"]), _base_normal(model_tr.nodes[name]["fn"]), site["value"]
        in_data = any(f.name == pair.data_plate for f in site["cond_indep_stack"])
        if q is None or p is None or not in_data or len(site["fn"].event_shape) != 1:
            continue  # only Gaussian layers of vectors, one per example, have per-dimension diagnostics
        q_loc, q_scale, p_loc, p_scale = (sites.unplace(t.expand_as(z), 1, True)
                                          for t in (q.loc, q.scale, p.loc, p.scale))
        z = sites.unplace(z, 1, True)
        if z.dim() != 3:
            continue
        q = Normal(q_loc, q_scale)
        kl = kl_divergence(q, Normal(p_loc, p_scale)).mean((0, 1))
        activity = q.loc.mean(0).var(0, unbiased=True)
        loc, scale, draw = q.loc[0], q.scale[0], z[0]
        cross = Normal(loc[None], scale[None]).log_prob(draw[:, None]).sum(-1)
        mi = q.log_prob(z)[0].sum(-1).mean() - (torch.logsumexp(cross, 1) - math.log(x.shape[0])).mean()
        out[name] = {"kl_total": float(kl.sum()), "kl_per_dim": [round(float(v), 4) for v in kl],
                     "active_units": int((activity > threshold).sum()), "activity": [round(float(v), 4) for v in activity],
                     "mutual_information": float(mi)}
    order = [name for name in pair.latent_sites if name in out]
    return {name: out[name] for name in order + [n for n in out if n not in order]}  # outermost first


def report(pair, x: torch.Tensor, inputs: Inputs = ()) -> dict:
    """KL per dimension, active units and mutual information, as plain numbers.

    With several latent layers the totals add over layers, ``kl_per_dim`` lists every
    layer's dimensions (bottom layer first), ``mutual_information`` is the bottom layer's,
    and ``layers`` holds :func:`layer_report`.
    """
    if not pair.has_guide:
        raise UserError(f"{pair.who} has no guide q(z | x): no collapse diagnostics")
    if len(pair.latent_sites) > 1 or not pair.has_encoder:
        layers = layer_report(pair, x, inputs=inputs)
        bottom_first = list(layers.values())[::-1]
        return {"kl_total": sum(v["kl_total"] for v in bottom_first),
                "kl_per_dim": [d for v in bottom_first for d in v["kl_per_dim"]],
                "active_units": sum(v["active_units"] for v in bottom_first),
                "activity": [d for v in bottom_first for d in v["activity"]],
                "mutual_information": bottom_first[0]["mutual_information"] if bottom_first else 0.0,
                "layers": layers}
    kl = kl_per_dim(pair, x, inputs=inputs)
    au, activity = active_units(pair, x, inputs=inputs)
    return {
        "kl_total": float(kl.sum()),
        "kl_per_dim": [round(float(v), 4) for v in kl],
        "active_units": au,
        "activity": [round(float(v), 4) for v in activity],
        "mutual_information": mutual_information(pair, x, inputs=inputs),
    }
