r"""ArviZ ``InferenceData`` for every backend's posterior, summaries and comparison plots.

* :func:`to_inference_data` — a NUTS fit (its draws and per-draw statistics) or
  an SVI fit (draws from the guide q(z | x) at the given examples) as ArviZ
  groups ``posterior``, ``sample_stats`` (NUTS), ``observed_data`` and
  ``log_likelihood`` (log p(x_n | z) per example and draw). Dimension names come
  from the plates and event shapes: ``data`` for the examples, ``z_dim`` for
  the latent's coordinates.
* :func:`combine` — several of those (e.g. SVI and NUTS at the same points) in
  one object with a method coordinate (dimension ``inference``: svi / nuts), so ``az.summary`` / ``az.plot_forest``
  / ``az.plot_trace`` see both side by side.
* :func:`summary` — ``az.summary`` (r_hat, ess_bulk, ess_tail, mcse).

ArviZ 1.x has no ``from_pyro`` and 0.x's needs an ``MCMC`` object, so everything
is built with ``az.from_dict``, which both have. ``az.plot_energy`` wants
(chain, draw) statistics: select one point first, ``idata.isel(data=i)``
(:func:`point`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppgen.errors import UserError

#: the dimension that tells the methods apart in a combined object. Not "method": xarray's
#: ``.sel(method=...)`` takes that keyword as its fill method, and ``az.summary`` selects with ``sel(**coords)``.
METHOD_DIM = "inference"


def _az():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
    return az


# -- log-likelihood and guide draws with Pyro (every backend's draws go through the same code) --------
def log_likelihood(pair, x: torch.Tensor, latents: dict[str, torch.Tensor], dims: dict[str, list[str]],
                   budget: int = 4_000_000, inputs: tuple[torch.Tensor, ...] = ()) -> dict[str, np.ndarray]:
    """log p(x_n | latents) of every observed site, per draw and example: {site: (draws, data)}; for a pair with
    input columns, log p(x_n | latents, inputs_n) (``inputs``: one row per example, beside ``x``).

    ``latents[site]`` is in the :func:`ppgen.inference.mcmc.canonical` layout, (draws, [data], *other plates,
    *event); each is placed back at its own plate dims (:func:`place`) and the densities reduced per example by
    :mod:`ppgen.sites` (plates nested in the data plate summed, the site's scale applied once).
    """
    from ppgen import sites

    n = next(iter(latents.values())).shape[0]
    chunk = max(1, budget // max(1, x.numel()))
    traced = model_sites(pair, x, inputs)
    parts: dict[str, list] = {}
    with torch.no_grad():
        for start in range(0, n, chunk):
            sl = slice(start, min(n, start + chunk))
            values = {k: place(v[sl], traced[k], pair.max_plate_nesting, pair.data_plate) for k, v in latents.items()}
            tr = sites.trace_conditioned(pair.model, pair, x, values, sl.stop - sl.start, inputs)
            if sites.layout(tr, pair.data_plate).examples != x.shape[0]:
                raise UserError(f"the model subsamples its data plate {pair.data_plate!r} itself, so its log-likelihood "
                                f"covers a random few of the {x.shape[0]} examples: pass log_lik=False, or declare the "
                                "plate over the rows it is given (subsample_size=len(x))")
            for name, lp in sites.observed_log_likelihood(tr, pair.data_plate, exclude=values).items():
                parts.setdefault(name, []).append(lp.cpu().numpy())
    return {k: np.concatenate(v, 0) for k, v in parts.items()}


def model_sites(pair, x: torch.Tensor, inputs: tuple[torch.Tensor, ...] = ()) -> dict[str, dict]:
    """The model's sample sites from one Pyro trace at ``x`` and its input columns (their plates and event
    shapes)."""
    from ppgen.inference.mcmc import pyro_sample_sites

    with torch.no_grad():
        return pyro_sample_sites(pair, x, inputs)


def place(value: torch.Tensor, site: dict, max_plate_nesting: int, data_plate: str = "data") -> torch.Tensor:
    """The inverse of :func:`~ppgen.inference.mcmc.canonical` inside a ``particles`` plate: (P, [data], *other
    plates, *event) to (P, *batch, *event), each plate's axis at its own dim, size-1 axes elsewhere."""
    from ppgen.inference.mcmc import site_plates

    plates = site_plates(site, data_plate)
    value = torch.as_tensor(value)
    order = sorted(range(len(plates)), key=lambda i: plates[i][1])  # outermost plate first
    value = value.permute(0, *[1 + i for i in order], *range(1 + len(plates), value.dim()))
    batch = [1] * max_plate_nesting
    for axis, i in enumerate(order):
        batch[max_plate_nesting + plates[i][1]] = value.shape[1 + axis]
    return value.reshape((value.shape[0], *batch, *value.shape[1 + len(plates):]))


def guide_draws(pair, x: torch.Tensor, n: int, seed: int = 0,
                inputs: tuple[torch.Tensor, ...] = ()) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """``n`` draws of every latent site from the guide at ``x`` (and its input columns ``inputs``, one row per
    example): {site: (n, *site shape)} and their dims.

    A site in the data plate comes as (n, data, *event), a global one as (n, *event) (the
    :func:`~ppgen.inference.mcmc.canonical` layout: other plates keep their axes).
    """
    import pyro

    from ppgen import sites
    from ppgen.inference.mcmc import canonical, site_dims

    pyro.set_rng_seed(seed)
    with torch.no_grad():
        guide_tr = sites.trace_conditioned(pair.guide, pair, x, {}, n, inputs)
    # the model's latent sites only: an autoguide's internal draws (``_AutoMultivariateNormal_latent``,
    # ``b_unconstrained``) are auxiliary sites
    latent = {k: s for k, s in sites.sample_sites(guide_tr).items()
              if not s["is_observed"] and not s.get("infer", {}).get("is_auxiliary")}
    out = {}
    for name, site in latent.items():
        v = site["value"].detach()  # (a point-mass guide's value may be its parameter itself)
        v = v.expand((n,) + v.shape[1:]) if v.shape[0] == 1 else v
        out[name] = canonical(v, site, pair.data_plate, lead=1)
    return out, site_dims(latent, list(latent), pair.data_plate)


# -- InferenceData ------------------------------------------------------------------------------------
def to_inference_data(fit, x: torch.Tensor | None = None, *, num_samples: int = 1000, chains: int = 4,
                      seed: int = 0, log_lik: bool = True, inputs: tuple[torch.Tensor, ...] = ()):
    """ArviZ ``InferenceData`` of a fit's posterior (see module docs).

    For an SVI fit the guide is amortized: ``x`` are the examples whose q(z | x)
    is drawn (``num_samples`` draws, arranged as ``chains`` chains); a pair with
    input columns (``pair.inputs``) takes theirs, one row per example, as ``inputs``
    (q(z | x, y), log p(x | z, y)). A NUTS fit knows its examples and their inputs.
    """
    if fit.backend == "nuts":
        return _from_nuts(fit, log_lik)
    if x is None:
        raise UserError("an SVI fit's guide is amortized: give the examples, e.g. "
                        "ppgen.diagnostics.to_inference_data(fit, x=data.test[:16])")
    if chains < 1 or num_samples < chains:
        raise UserError(f"need chains >= 1 and num_samples >= chains, got {chains} and {num_samples}")
    inputs = tuple(inputs)
    fit.pair.check_inputs(x, inputs, "the examples given")
    return _from_guide(fit.pair, x, num_samples=num_samples, chains=chains, seed=seed, log_lik=log_lik,
                       inputs=inputs)


def _chain_draw(a: np.ndarray, chains: int) -> np.ndarray:
    draws = a.shape[0] // chains
    return a[: chains * draws].reshape((chains, draws) + a.shape[1:])


def _coords(dims: dict[str, list[str]], arrays: dict[str, np.ndarray], data_coords: Sequence[int]) -> dict:
    coords: dict[str, Any] = {"data": list(data_coords)}
    for name, ds in dims.items():
        if name not in arrays:
            continue
        for axis, d in enumerate(ds):
            if d != "data":
                coords.setdefault(d, list(range(arrays[name].shape[2 + axis])))
    return coords


def _from_guide(pair, x: torch.Tensor, *, num_samples: int, chains: int, seed: int, log_lik: bool,
                data_coords: Sequence[int] | None = None, inputs: tuple[torch.Tensor, ...] = ()):
    az = _az()
    pair.eval()
    latents, dims = guide_draws(pair, x, num_samples, seed, inputs)
    model_latent = {k for k, s in model_sites(pair, x, inputs).items() if not s["is_observed"]}
    latents = {k: v for k, v in latents.items() if k in model_latent}  # an autoguide's own sites left out
    posterior = {k: _chain_draw(v.cpu().numpy(), chains) for k, v in latents.items()}
    data_coords = list(range(len(x))) if data_coords is None else list(data_coords)
    groups: dict[str, Any] = {"posterior": posterior}
    obs_dims = _observed_dims(pair, x, inputs)
    dims = {**dims, **obs_dims}
    groups["observed_data"] = {k: x.detach().cpu().numpy() for k in obs_dims}
    if log_lik:
        groups["log_likelihood"] = {k: _chain_draw(v, chains)
                                    for k, v in log_likelihood(pair, x, latents, dims, inputs=inputs).items()}
    coords = _coords(dims, posterior, data_coords)
    for ds in obs_dims.values():
        for axis, d in enumerate(ds[1:]):
            coords.setdefault(d, list(range(x.shape[1 + axis])))
    return az.from_dict(**groups, coords=coords, dims=dims, attrs={"method": "svi"})


def _observed_dims(pair, x: torch.Tensor, inputs: tuple[torch.Tensor, ...] = ()) -> dict[str, list[str]]:
    import pyro
    from pyro import poutine
    from pyro.poutine.util import site_is_subsample

    with pyro.validation_enabled(False), torch.no_grad():
        tr = poutine.trace(pair.model).get_trace(x, *inputs)
    return {k: ["data"] + [f"{k}_dim_{i}" for i in range(x.dim() - 1)]
            for k, s in tr.nodes.items() if s["type"] == "sample" and s["is_observed"] and not site_is_subsample(s)}


def nuts_inputs(fit) -> tuple[torch.Tensor, ...]:
    """The input columns of a NUTS fit's examples (``fit.state["inputs"]``), in the pair's order; ``()`` without."""
    recorded = fit.state.get("inputs") or {}
    return tuple(recorded[name] for name in fit.pair.inputs)


def _from_nuts(fit, log_lik: bool):
    az = _az()
    x = fit.state["x"]
    inputs = nuts_inputs(fit)
    dims = {k: v for k, v in fit.state["dims"].items() if k in fit.samples}
    posterior = {k: np.asarray(v) for k, v in fit.samples.items()}
    chains, draws = next(iter(posterior.values())).shape[:2]
    stats = {k: np.asarray(v) for k, v in fit.state["sample_stats"].items()}
    per_point = fit.options.get("points") is not None
    stat_dims = {k: ["data"] for k in stats} if per_point else {}
    obs_dims = _observed_dims(fit.pair, x, inputs)
    groups: dict[str, Any] = {"posterior": posterior, "sample_stats": stats,
                              "observed_data": {k: x.numpy() for k in obs_dims}}
    if log_lik:
        flat = {k: torch.tensor(v.reshape((chains * draws,) + v.shape[2:])) for k, v in posterior.items()}
        ll = log_likelihood(fit.pair, x, flat, dims, inputs=inputs)
        groups["log_likelihood"] = {k: v.reshape(chains, draws, -1) for k, v in ll.items()}
    data_coords = fit.state.get("coords", {}).get("data", list(range(len(x))))
    coords = _coords(dims, posterior, data_coords)
    for ds in obs_dims.values():
        for axis, d in enumerate(ds[1:]):
            coords.setdefault(d, list(range(x.shape[1 + axis])))
    return az.from_dict(**groups, coords=coords, dims={**dims, **obs_dims, **stat_dims},
                        attrs={"method": "nuts", "engine": fit.state.get("engine", "numpyro")})


def compare_inference_data(pair, nuts_fit, seed: int = 0, log_lik: bool = True):
    """The guide and NUTS on the same data, combined along ``inference`` (svi / nuts): the encoder's q(z | x) at
    NUTS's points, or — a whole-model NUTS fit — the guide's posterior of every unknown (a non-amortized pair:
    global latents), the model's latent sites only."""
    nuts = _from_nuts(nuts_fit, log_lik)
    chains, draws = nuts.posterior.sizes["chain"], nuts.posterior.sizes["draw"]
    data_coords = nuts_fit.state.get("coords", {}).get("data", list(range(len(nuts_fit.state["x"]))))
    svi = _from_guide(pair, nuts_fit.state["x"], num_samples=chains * draws, chains=chains, seed=seed,
                      log_lik=log_lik, data_coords=data_coords, inputs=nuts_inputs(nuts_fit))
    return combine({"svi": svi, "nuts": nuts})


def combine(parts: dict[str, Any]):
    """One ``InferenceData`` with a method coordinate (dimension ``inference``) from several on the same points.

    Posterior variables present in every part are stacked along ``inference``
    (chains and draws cut to the shortest); ``sample_stats`` is taken from the
    parts that have it, with the method's name as a prefix when more than one
    does; ``observed_data`` from the first. ``log_likelihood`` stays in the
    parts: ``az.from_dict`` names its dimensions after the observed variable's,
    which carry no ``inference`` dimension.
    """
    az = _az()
    names = list(parts)
    if not names:
        raise UserError("nothing to combine")
    posts = [parts[n].posterior for n in names]
    chains = min(p.sizes["chain"] for p in posts)
    draws = min(p.sizes["draw"] for p in posts)
    groups: dict[str, dict] = {}
    dims: dict[str, list[str]] = {}
    coords: dict[str, Any] = {METHOD_DIM: names}
    for group in ("posterior",):
        if not all(hasattr(parts[n], group) for n in names):
            continue
        sets = [getattr(parts[n], group) for n in names]
        shared = [v for v in sets[0].data_vars if all(v in s.data_vars for s in sets)]
        groups[group] = {}
        for v in shared:
            arrays = [s[v].isel(chain=slice(chains), draw=slice(draws)) for s in sets]
            other = list(arrays[0].dims[2:])
            groups[group][v] = np.stack([a.transpose("chain", "draw", *other).values for a in arrays], 2)
            dims[v] = [METHOD_DIM, *other]
            coords.update({d: arrays[0].coords[d].values.tolist() for d in other})
    with_stats = [n for n in names if hasattr(parts[n], "sample_stats")]
    if with_stats:
        groups["sample_stats"] = {}
        for n in with_stats:
            ss = parts[n].sample_stats.isel(chain=slice(chains), draw=slice(draws))
            for v in ss.data_vars:
                key = v if len(with_stats) == 1 else f"{n}_{v}"
                groups["sample_stats"][key] = ss[v].values
                dims[key] = list(ss[v].dims[2:])
                coords.update({d: ss[v].coords[d].values.tolist() for d in ss[v].dims[2:]})
    first = parts[names[0]]
    if hasattr(first, "observed_data"):
        groups["observed_data"] = {v: first.observed_data[v].values for v in first.observed_data.data_vars}
        for v in first.observed_data.data_vars:
            dims[v] = list(first.observed_data[v].dims)
            coords.update({d: first.observed_data[v].coords[d].values.tolist() for d in first.observed_data[v].dims})
    return az.from_dict(**groups, coords=coords, dims=dims, attrs={"methods": ",".join(names)})


def point(idata, i: int = 0):
    """The ``InferenceData`` of the i-th point alone (what ``az.plot_energy`` needs)."""
    return idata.isel(data=i)


def summary(idata, var_names: Sequence[str] | None = None, **kwargs):
    """``az.summary``: mean, sd, HDI, mcse, ess_bulk, ess_tail and r_hat per coordinate."""
    return _az().summary(idata, var_names=var_names, **kwargs)


def nuts_report(fit) -> dict[str, Any]:
    """Worst r_hat, smallest bulk/tail ESS and divergences of a NUTS fit, overall and per point."""
    az = _az()
    stats = fit.state["sample_stats"]
    div = np.asarray(stats["diverging"])
    report: dict[str, Any] = {"divergences": int(div.sum()), "engine": fit.state.get("engine")}
    per_point = fit.options.get("points") is not None
    rows = []
    n_points = len(fit.state["x"]) if per_point else 1
    for i in range(n_points):
        sel = {k: (v[:, :, i] if per_point else v) for k, v in fit.samples.items()}
        ds = az.convert_to_dataset({k: np.asarray(v) for k, v in sel.items()})
        rhat = float(max(float(az.rhat(ds)[k].max()) for k in sel))
        bulk = float(min(float(az.ess(ds, method="bulk")[k].min()) for k in sel))
        tail = float(min(float(az.ess(ds, method="tail")[k].min()) for k in sel))
        d = int(div[:, :, i].sum()) if per_point else int(div.sum())
        rows.append({"r_hat_max": rhat, "ess_bulk_min": bulk, "ess_tail_min": tail, "divergences": d})
    report["per_point"] = rows
    report["r_hat_max"] = max(r["r_hat_max"] for r in rows)
    report["ess_bulk_min"] = min(r["ess_bulk_min"] for r in rows)
    report["ess_tail_min"] = min(r["ess_tail_min"] for r in rows)
    return report


# -- pictures ----------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_forest(combined, path: Path, point_index: int = 0, var: str = "z", max_dims: int = 16) -> Path:
    """The guide (svi) beside NUTS per latent dimension, for one point (a global site: the site): ArviZ's forest
    plot."""
    az = _az()
    methods = combined.posterior.coords[METHOD_DIM].values.tolist()
    one = combined.posterior[var]
    title = f"{var}: 90% intervals"
    if "data" in one.dims:  # a per-point latent: one point's; a global one has no data dim
        one = one.isel(data=point_index)
        title = f"{var} of point {combined.posterior.coords['data'].values[point_index]}: 90% intervals"
    other = [d for d in one.dims if d not in ("chain", "draw", METHOD_DIM)]
    if other:
        one = one.isel({other[0]: slice(max_dims)})
    parts = [az.convert_to_dataset({var: one.sel({METHOD_DIM: m}).transpose("chain", "draw", *other).values},
                                   dims={var: other}) for m in methods]
    axes = az.plot_forest(parts, model_names=methods, var_names=[var], combined=True, hdi_prob=0.9,
                          figsize=(6, 1 + 0.45 * one.shape[-1] if other else 3))
    fig = np.asarray(axes).ravel()[0].figure
    fig.suptitle(title)
    return _save(fig, path)


def plot_pair(combined, path: Path, point_index: int = 0, dims: tuple[int, int] = (0, 1), var: str = "z",
              max_draws: int = 1000) -> Path:
    """Two latent dimensions of one point: draws of each method over each other."""
    plt = _plt()
    post = combined.posterior[var].isel(data=point_index)
    fig, ax = plt.subplots(figsize=(5, 5))
    for m, color in zip(post.coords[METHOD_DIM].values, ("tab:orange", "tab:blue", "tab:green")):
        v = post.sel({METHOD_DIM: m}).values.reshape(-1, post.shape[-1])[:max_draws]
        ax.scatter(v[:, dims[0]], v[:, dims[1]], s=4, alpha=0.35, color=color, label=str(m))
    ax.set_xlabel(f"{var}[{dims[0]}]")
    ax.set_ylabel(f"{var}[{dims[1]}]")
    ax.legend(markerscale=4)
    ax.set_title(f"point {combined.posterior.coords['data'].values[point_index]}")
    return _save(fig, path)


def plot_gaps(table: Sequence[dict], path: Path) -> Path:
    """Approximation and amortization gap per point (stacked bars), from :func:`ppgen.evaluation.amortization.gaps`."""
    plt = _plt()
    labels = [str(r["point"]) for r in table]
    approx = np.array([r["approximation_gap"] for r in table])
    amort = np.array([r["amortization_gap"] for r in table])
    fig, ax = plt.subplots(figsize=(max(4, 0.4 * len(table) + 2), 3.5))
    pos = np.arange(len(table))
    ax.bar(pos, approx, label="approximation gap", color="tab:blue")
    ax.bar(pos, amort, bottom=np.clip(approx, 0, None), label="amortization gap", color="tab:orange")
    ax.set_xticks(pos, labels, rotation=90 if len(table) > 20 else 0)
    ax.set_xlabel("test point")
    ax.set_ylabel("nats")
    ax.legend()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["combine", "compare_inference_data", "guide_draws", "log_likelihood", "nuts_inputs", "nuts_report",
           "plot_forest", "plot_gaps", "plot_pair", "point", "summary", "to_inference_data"]
