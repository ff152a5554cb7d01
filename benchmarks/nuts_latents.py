"""NUTS on p(z | x, θ) of a trained VAE decoder for test digits: ppgen vs hand-written NumPyro vs Pyro.

    python benchmarks/nuts_latents.py [RUN_DIR] [--digits 16] [--chains 2] [--warmup 500] [--samples 1000]
                                      [--pyro-digits N]

RUN_DIR is a run written by ``ppgen train vae`` (z-dim 50, the decoder is used as
trained); without it a VAE is trained here by ``ppgen.fit`` for ``--epochs``
epochs on the bundled MNIST digits. All three samplers run in this process on the
same digits, chains, warmup and draws:

* ppgen — ``ppgen.fit(pair, data, backend="nuts", points=...)``: the pair's own
  model on NumPyro, all digits × chains in one vmapped, compiled run. Timed cold
  (first call: tracing and compilation included) and warm (second call, new seed).
* NumPyro — the model written by hand in ``jax.numpy`` with the decoder's weights,
  ``numpyro.infer.MCMC(NUTS)``, chains vectorized, one run per digit; the MCMC
  object is reused so the compiled sampler is too (``jit_model_args=True``).
  Timed cold (the first loop over the digits) and warm (the loop again).
* Pyro — the model written by hand with the trained torch decoder, ``NUTS(jit_compile=True)``,
  one run per digit and chain (Pyro runs several chains in separate processes).
  It is slow: ``--pyro-digits`` runs it on the first N digits only, and its rate is
  its smallest ESS over those digits per second of their wall time.

Each prints the smallest bulk ESS (ArviZ) over all digits and latent dimensions,
the wall time and their ratio, and the ratios ppgen / baseline.
"""

from __future__ import annotations

import argparse
import functools
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import ppgen

warnings.filterwarnings("ignore", category=FutureWarning)
print = functools.partial(print, flush=True)  # noqa: A001  (progress shows when the output is a file)


def min_bulk_ess(draws: np.ndarray) -> float:
    """Smallest bulk ESS over every coordinate of draws shaped (chain, draw, ...)."""
    import arviz as az

    return float(az.ess(az.convert_to_dataset({"z": draws}), method="bulk")["z"].min())


def trained_vae(run: Path | None, epochs: int):
    data = ppgen.data.load("mnist")
    if run is not None:
        return ppgen.load(run), data
    pair = ppgen.models.VAE(z_dim=50)
    fit = ppgen.fit(pair, data, epochs=epochs, engine="torch", progress=False)  # the README's pair: torch engine
    print(f"trained a VAE for {epochs} epochs: ELBO {fit.last['elbo']:.1f}, validation {fit.last.get('val_elbo', 0):.1f}")
    return pair, data


def run_ppgen(pair, data, digits, chains, warmup, samples, seed):
    out = {}
    for label, s in (("cold", seed), ("warm", seed + 1)):
        t = time.perf_counter()
        fit = ppgen.fit(pair, data, backend="nuts", points=digits, chains=chains, warmup=warmup, samples=samples,
                        seed=s)
        wall = time.perf_counter() - t
        z = fit.samples["z"]
        ess = min(min_bulk_ess(z[:, :, i]) for i in range(z.shape[2]))
        out[label] = {"wall": wall, "ess": ess, "divergences": int(fit.state["sample_stats"]["diverging"].sum())}
    return out


def run_numpyro(pair, x, chains, warmup, samples, seed):
    """The model by hand in jax.numpy: softplus MLP decoder, Bernoulli logits, N(0, I) prior."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as nd
    from numpyro.infer import MCMC, NUTS

    layers = [(jnp.asarray(m.weight.detach().numpy()), jnp.asarray(m.bias.detach().numpy()))
              for m in pair.decoder.layers]
    z_dim = pair.config.z_dim

    def model(x):
        z = numpyro.sample("z", nd.Normal(0.0, 1.0).expand([z_dim]).to_event(1))
        h = z
        for i, (w, b) in enumerate(layers):
            h = h @ w.T + b
            if i < len(layers) - 1:
                h = jax.nn.softplus(h)
        numpyro.sample("x", nd.Bernoulli(logits=h).to_event(1), obs=x)

    mcmc = MCMC(NUTS(model), num_warmup=warmup, num_samples=samples, num_chains=chains, chain_method="vectorized",
                progress_bar=False, jit_model_args=True)
    xs = jnp.asarray(x.reshape(len(x), -1).numpy())
    out = {}
    for label, offset in (("cold", 0), ("warm", 1)):  # warm: the same loop again, compiled code reused
        draws, t = [], time.perf_counter()
        for i in range(len(xs)):
            mcmc.run(jax.random.PRNGKey(seed + offset * 7919 + i), xs[i])
            draws.append(np.asarray(mcmc.get_samples(group_by_chain=True)["z"]))
        out[label] = {"wall": time.perf_counter() - t, "ess": min(min_bulk_ess(d) for d in draws)}
    return out


def run_pyro(pair, x, chains, warmup, samples, seed):
    import pyro
    import pyro.distributions as pdist
    from pyro.infer import MCMC, NUTS

    decoder = pair.decoder
    for p in decoder.parameters():
        p.requires_grad_(False)
    z_dim = pair.config.z_dim

    def model(xi):
        z = pyro.sample("z", pdist.Normal(torch.zeros(z_dim), 1.0).to_event(1))
        pyro.sample("x", pdist.Bernoulli(logits=decoder(z)).to_event(3), obs=xi)

    draws, t = [], time.perf_counter()
    for i in range(len(x)):
        chain_draws = []
        for c in range(chains):
            pyro.set_rng_seed(seed + 1000 * i + c)
            mcmc = MCMC(NUTS(model, jit_compile=True, ignore_jit_warnings=True), num_samples=samples,
                        warmup_steps=warmup, disable_progbar=True)
            mcmc.run(x[i])
            chain_draws.append(mcmc.get_samples()["z"].numpy())
        draws.append(np.stack(chain_draws))
    wall = time.perf_counter() - t
    for p in decoder.parameters():
        p.requires_grad_(True)
    return {"wall": wall, "ess": min(min_bulk_ess(d) for d in draws)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", nargs="?", type=Path, help="a trained VAE run directory (default: train one here)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the VAE trained when no run is given")
    parser.add_argument("--digits", type=int, default=16)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--pyro-digits", type=int, default=None, help="run Pyro's NUTS on the first N digits only")
    parser.add_argument("--skip-pyro", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pair, data = trained_vae(args.run, args.epochs)
    pair.eval()
    digits = list(range(args.digits))
    x = data.test[digits]
    print(f"{args.digits} test digits, z-dim {pair.config.z_dim}, {args.chains} chains, {args.warmup} warmup + "
          f"{args.samples} draws each")
    rows = {}
    ours = run_ppgen(pair, data, digits, args.chains, args.warmup, args.samples, args.seed)
    rows["ppgen (cold)"], rows["ppgen (warm)"] = ours["cold"], ours["warm"]
    hand = run_numpyro(pair, x, args.chains, args.warmup, args.samples, args.seed)
    rows["NumPyro by hand (cold)"], rows["NumPyro by hand (warm)"] = hand["cold"], hand["warm"]
    if not args.skip_pyro:
        n = args.pyro_digits or args.digits
        rows[f"Pyro NUTS jit ({n} digits)"] = run_pyro(pair, x[:n], args.chains, args.warmup, args.samples, args.seed)
    print(f"{'sampler':28s} {'wall s':>9s} {'min ESS':>9s} {'ESS/s':>9s}")
    for name, r in rows.items():
        r["rate"] = r["ess"] / r["wall"]
        print(f"{name:28s} {r['wall']:9.1f} {r['ess']:9.0f} {r['rate']:9.1f}")
    print(f"divergences (ppgen): cold {ours['cold']['divergences']}, warm {ours['warm']['divergences']}")
    cold, warm = rows["ppgen (cold)"]["rate"], rows["ppgen (warm)"]["rate"]
    print(f"ratio ppgen / NumPyro by hand: cold/cold {cold / rows['NumPyro by hand (cold)']['rate']:.2f}x, "
          f"warm/warm {warm / rows['NumPyro by hand (warm)']['rate']:.2f}x")
    for name, r in rows.items():
        if name.startswith("Pyro"):
            print(f"ratio ppgen / {name}: cold {cold / r['rate']:.2f}x, warm {warm / r['rate']:.2f}x")


if __name__ == "__main__":
    main()
