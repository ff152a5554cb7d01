"""M2's objective on the JAX engine: the same numbers as the torch objective at the same weights, inputs and draws
(each ``y_guide``), the enumerated part equal to the brute-force sum over classes, the same gradients, and a short
training on the digits landing where the torch engine lands.

Tolerances: the torch and JAX objectives are computed in float32 by different kernels in a different order of
summation; on these values (|objective| ≲ 10, gradients ≲ 10) that leaves a few float32 roundings, ~1e-6 relative,
so rtol 1e-5 / atol 1e-5 (a wrong term, a wrong class or a wrong draw is off by ≥ 1e-2). The training comparison:
accuracies of q(y|x) on the 360 test digits, within 4 standard errors of the difference of two independent binomial
accuracies, sqrt(2 p (1 − p) / 360), plus the spread the seeds give on one engine.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ppgen.models.m2 import M2

K, Z = 3, 2


def tiny_m2(**kw) -> M2:
    torch.manual_seed(0)
    return M2(x_shape=(5,), z_dim=Z, hidden=(7,), classes=K, alpha=0.3, **kw)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.bernoulli(torch.rand(6, 5, generator=g)), torch.tensor([0, -1, 2, -1, -1, 1])


def torch_objective_and_its_draws(pair: M2, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The torch objective at torch's seed 9, its gradients, and the same draws replayed from that seed in the order
    the torch objective makes them (labelled rows' ε, then the unlabelled rows' draws), laid out as
    :meth:`M2.jax_objective` takes them."""
    pair.zero_grad()
    torch.manual_seed(9)
    value = pair.objective(x, y)
    value.sum().backward()
    grads = {name: {k: p.grad.clone() for k, p in getattr(pair, name).named_parameters()}
             for name in ("classifier", "encoder", "decoder")}
    torch.manual_seed(9)
    known = y >= 0
    rows_l, rows_u = known.nonzero().squeeze(-1), (~known).nonzero().squeeze(-1)
    eps_l = torch.randn(len(rows_l), Z)
    gumbel = None
    if pair.config.y_guide == "enumerate":
        eps = torch.zeros(len(x), K, Z)
        eps[rows_l, y[rows_l]] = eps_l
        eps[rows_u] = torch.randn(K, len(rows_u), Z).transpose(0, 1)
    else:
        gumbel = torch.zeros(len(x), K)
        if pair.config.y_guide == "sample":  # torch's multinomial draw again, and a Gumbel noise that picks it
            with torch.no_grad():
                probs = torch.softmax(pair.classifier(x[rows_u]), -1)
            gumbel[rows_u, torch.multinomial(probs, 1).squeeze(-1)] = 1e4
        else:
            gumbel[rows_u] = -torch.log(-torch.log(torch.rand(len(rows_u), K).clamp(1e-20, 1.0)))
        eps = torch.zeros(len(x), Z)
        eps[rows_l] = eps_l
        eps[rows_u] = torch.randn(len(rows_u), Z)
    return value.detach(), {"eps": eps, "gumbel": gumbel, "grads": grads}


def jax_objective_and_grads(pair: M2, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor,
                            gumbel: torch.Tensor | None) -> tuple[np.ndarray, dict]:
    """:meth:`M2.jax_objective` per example and the gradient of its sum with respect to the networks' weights, the
    weights bound as the JAX engine binds them (``pyro.module``'s NumPyro param sites, substituted)."""
    import jax
    import jax.numpy as jnp
    from numpyro import handlers

    from ppgen.nn.lower import jax_params
    from ppgen.ppl import backend

    params = {name: jax_params(getattr(pair, name)) for name in ("classifier", "encoder", "decoder")}
    args = [jnp.asarray(t.numpy()) for t in (x, y, eps)] + [None if gumbel is None else jnp.asarray(gumbel.numpy())]

    def per_example(params):
        with backend("numpyro"), handlers.substitute(data=params):
            return pair.jax_objective(*args)

    # compiled whole: run op by op, JAX compiles every operation on its own (many more compilations)
    value, grads = jax.jit(lambda p: (per_example(p), jax.grad(lambda q: per_example(q).sum())(p)))(params)
    return np.asarray(value), grads


@pytest.mark.parametrize("y_guide,likelihood", [("enumerate", "bernoulli"), ("sample", "bernoulli"),
                                                ("relaxed", "bernoulli"), ("enumerate", "gaussian")])
def test_jax_objective_equals_the_torch_objective_at_the_same_draws(y_guide, likelihood):
    pair, (x, y) = tiny_m2(y_guide=y_guide, likelihood=likelihood), batch()
    expected, draws = torch_objective_and_its_draws(pair, x, y)
    value, grads = jax_objective_and_grads(pair, x, y, draws["eps"], draws["gumbel"])
    np.testing.assert_allclose(value, expected.numpy(), rtol=1e-5, atol=1e-5)
    for name, by_key in draws["grads"].items():
        for key, g in by_key.items():
            np.testing.assert_allclose(np.asarray(grads[name][key]), g.numpy(), rtol=1e-5, atol=1e-5,
                                       err_msg=f"{name}.{key}")


def test_jax_enumerated_objective_is_the_brute_force_sum_over_classes():
    """Unlabelled rows: −Σ_k q(k | x)(L_z(x, k, ε_k) + log p(k) − log q(k | x)), one class at a time with the torch
    networks; labelled rows: −(L_z(x, y, ε_y) + log p(y)) + α (−log q(y | x))."""
    pair, (x, y) = tiny_m2(), batch()
    eps = torch.randn(len(x), K, Z, generator=torch.Generator().manual_seed(4))
    value, _ = jax_objective_and_grads(pair, x, y, eps, None)
    with torch.no_grad():
        log_q = torch.log_softmax(pair.classifier(x), -1)
        expected = []
        for n in range(len(x)):
            def term(k: int, n: int = n) -> float:
                bound = pair.elbo_given_class(x[n:n + 1], torch.tensor([k]), eps[n, k:k + 1])[0]
                return float(bound + pair.prior_logits[k])

            if y[n] >= 0:
                expected.append(-term(int(y[n])) - 0.3 * float(log_q[n, y[n]]))
            else:
                expected.append(-sum(float(log_q[n, k].exp()) * (term(k) - float(log_q[n, k])) for k in range(K)))
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-5)


def test_a_short_training_lands_where_the_torch_engine_lands():
    """15 epochs on the 8x8 digits with 50 labels (z 4, hidden 64, α 25, batch 64, 10% labelled rows a batch: the
    family's epoch order on both engines), seed 0 on each engine: test accuracy of q(y|x) and the bound U(x) with the
    labels hidden on the 360 test digits. Tolerances: accuracy within 4 standard errors of the difference of two
    binomial accuracies on 360 digits; the bound within 0.6 nats, 4 × √2 × 0.10, the spread of the bound over seeds
    0, 1, 2 on either engine at these settings (jax −25.05 / −24.91 / −25.12, torch −25.01 / −24.99 / −25.18; accuracy
    0.750 / 0.722 / 0.722 and 0.747 / 0.722 / 0.731)."""
    import ppgen
    from ppgen import data as datasets

    digits = datasets.load("digits")
    few = datasets.keep_labels(digits, 50, seed=0)
    results = {}
    for engine in ("jax", "torch"):
        torch.manual_seed(0)
        pair = M2(x_shape=digits.x_shape, z_dim=4, hidden=(64,), alpha=25.0)
        fit = ppgen.fit(pair, few, backend="svi", engine=engine, epochs=15, batch_size=64, lr=3e-3, seed=0,
                        progress=False)
        assert fit.options["engine"] == engine
        torch.manual_seed(0)
        results[engine] = pair.eval().family_metrics(digits.test, digits.test_inputs["y"])
    p = results["torch"]["accuracy"]
    assert p > 0.5  # trained (chance is 0.1)
    assert abs(results["jax"]["accuracy"] - p) <= 4 * np.sqrt(2 * p * (1 - p) / len(digits.test)), results
    assert abs(results["jax"]["elbo_unlabelled"] - results["torch"]["elbo_unlabelled"]) <= 0.6, results


def test_bfloat16_is_refused_on_the_jax_engine_and_auto_picks_by_size():
    import ppgen
    from ppgen import data as datasets
    from ppgen.declare import OptionError
    from ppgen.inference.options import SVIOptions
    from ppgen.inference.svi import choose_engine

    pair = tiny_m2(precision="bfloat16")
    x, y = batch()
    data = datasets.from_tensor(x.repeat(10, 1), inputs={"y": y.repeat(10)})
    with pytest.raises(OptionError, match="precision.*bfloat16 products needs engine='torch'"):
        ppgen.fit(pair, data, backend="svi", engine="jax", epochs=1, batch_size=6, progress=False)
    engine, why = choose_engine(pair, SVIOptions(epochs=50))
    assert engine == "torch" and "bfloat16" in why
    # float32: both engines; JAX first for small networks, torch first at the paper's size (the faster on the CPU)
    assert tiny_m2().svi_engines == ("jax", "torch")
    assert M2(x_shape=(1, 28, 28), hidden=(100,)).svi_engines == ("jax", "torch")
    assert M2(x_shape=(1, 28, 28), hidden=(500,)).svi_engines == ("torch", "jax")
    assert choose_engine(M2(x_shape=(1, 28, 28)), SVIOptions(epochs=50))[0] == "torch"
