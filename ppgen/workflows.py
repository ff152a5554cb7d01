"""What the ``ppgen`` commands do, as functions: train a run directory, evaluate it, sample from it."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ppgen import data as datasets
from ppgen import evaluation, models, plots, runs
from ppgen.data.text import SparseCounts
from ppgen.errors import UserError
from ppgen.evaluation.likelihood import validation_callback
from ppgen.evaluation.samples import METRICS
from ppgen.inference import distributed
from ppgen.inference import fit as backend_fit
from ppgen.inference.loop import restore_best
from ppgen.inference.options import AdversarialOptions, OptionError, SVIOptions, as_dict, flag_of
from ppgen.inference.options import make as make_options

#: what ``ppgen train`` sets differently from the library's defaults (a run trains longer than a quick fit)
CLI_DEFAULTS = {"epochs": 30}
#: the adversarial backend's learning rate for both players (``--lr`` sets both)
ADVERSARIAL_LR = 2e-4
#: options of the run, not of an engine
RUN_OPTIONS = {"select": "best"}
BACKENDS = ("svi", "adversarial")


def _option_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def backend_options(backend: str, train: dict) -> Any:
    """The validated options dataclass of ``backend`` for a run's ``train`` section (without run options)."""
    values = {k: v for k, v in train.items() if k not in RUN_OPTIONS and k != "backend"}
    if backend == "adversarial":
        lr = values.pop("lr", ADVERSARIAL_LR)
        values.setdefault("lr_g", lr)
        values.setdefault("lr_d", lr)
        return make_options(AdversarialOptions, values)
    return make_options(SVIOptions, values)


def make_config(model: str, model_options: dict, data_options: dict, train_options: dict) -> dict:
    """The run's config; ``train_options["backend"]`` defaults to the family's ``default_backend`` (SVI).

    Every training option is validated here (:mod:`ppgen.inference.options`), before anything is written.
    """
    cls = models.get(model)
    train_options = dict(train_options)
    backend = train_options.pop("backend", None) or cls.default_backend
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    adversarial = backend == "adversarial"
    own = _option_names(AdversarialOptions) | {"lr"} if adversarial else _option_names(SVIOptions) | set(RUN_OPTIONS)
    wrong = sorted(k for k in train_options if k not in own)
    if wrong:
        other = "svi" if adversarial else "adversarial"
        raise OptionError(wrong[0], train_options[wrong[0]], f"only for --backend {other}, not {backend}; drop "
                          f"{'it' if len(wrong) == 1 else 'it (and ' + ', '.join(flag_of(k) for k in wrong[1:]) + ')'}"
                          f" or choose --backend {other}")
    train = {**CLI_DEFAULTS, **({} if adversarial else RUN_OPTIONS), **train_options}
    options = backend_options(backend, train)  # validates; the config records every value
    train = {**as_dict(options), **{k: train[k] for k in RUN_OPTIONS if k in train}}
    train.pop("monitor", None)  # set by --select
    declared = {f.name: f.default for f in dataclasses.fields(cls.Config)}
    likelihood = model_options.get("likelihood", declared.get("likelihood"))
    if adversarial and likelihood != "bernoulli" and data_options.get("binarize", "default") == "default":
        data_options = {**data_options, "binarize": None}  # a generator learns grey levels, not binarized digits
    return {"model": cls.name, "model_options": model_options, "data": data_options,
            "train": {**train, "backend": backend}}


def _load_data(options: dict) -> datasets.Dataset:
    return datasets.load(options.get("name", "mnist"), binarize=options.get("binarize", "default"),
                         seed=options.get("seed", 0), split_seed=options.get("split_seed", 0))


def _build(config: dict, data: datasets.Dataset):
    cls = models.get(config["model"])
    options = dict(config["model_options"])
    trained = config.get("model_config", {}).get("x_shape") if isinstance(config.get("model_config"), dict) else None
    options.setdefault("x_shape", trained or data.x_shape)  # a resumed run keeps the shape it was trained on
    if tuple(options["x_shape"]) != data.x_shape:
        raise UserError(f"the model expects examples shaped {tuple(options['x_shape'])} but {data.name} has "
                        f"{data.x_shape}; give data of that shape (a resumed run needs the data it was trained on)")
    if "num_data" in {f.name for f in dataclasses.fields(cls.Config)}:  # a family scaled by the training-set size
        options.setdefault("num_data", (config.get("model_config") or {}).get("num_data") or len(data.train))
    pair = cls.from_config(options)
    config["model_config"] = pair.config_dict()
    return pair


def train_run(config: dict, out: Path, resume: bool = False, overwrite: bool = False, progress: bool | None = None,
              log=print) -> dict:
    """Train the run described by ``config`` into ``out`` (or continue it); return its metrics.

    Every check (output folder, data, model, checkpoint) runs before anything is written; a new run
    appears at ``out`` only with its first checkpoint, and a resumed one changes only from then on.
    """
    out = Path(out)
    if resume:
        runs.open_run(out)
    else:
        runs.check_new_run_dir(out, overwrite)
    data = _load_data(config["data"])
    torch.manual_seed(config["train"].get("seed", 0))  # the networks' initial weights
    pair = _build(config, data)
    train = dict(config["train"])
    backend = train.get("backend", "svi")
    select = train.get("select", "best" if backend == "svi" else "last")
    backend_options(backend, train)  # a damaged or hand-edited config is refused before anything is opened
    pair.check_data(data.train_epoch(0), f"{data.name} training data")
    checkpoint = _resumable_checkpoint(out, pair, backend, train) if resume else None
    if not distributed.is_writer():  # data-parallel: the other processes train their shards and write nothing
        return _train_shard(pair, data, backend, config, checkpoint)
    log(data.describe())
    start = time.perf_counter()

    def body(run: runs.RunWriter) -> dict:
        return _train(pair, data, backend, select, checkpoint, run, progress, log, start)

    opened = runs.resumed_run(out, config) if resume else runs.new_run(out, config, overwrite=overwrite)
    with opened as run:
        return body(run)


def _train_shard(pair, data: datasets.Dataset, backend: str, config: dict, checkpoint: dict | None) -> dict:
    """A data-parallel process other than rank 0: the same training, no files, no log, no progress bar."""
    options = backend_options(backend, config["train"])
    kwargs = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    if backend == "svi":
        kwargs["announce"] = lambda message: None
    fit = backend_fit(pair, data, backend=backend, progress=False, resume=checkpoint, **kwargs)
    return {"epochs": fit.state.epoch, "stopped": fit.stopped}


def _resumable_checkpoint(run_dir: Path, pair, backend: str, train: dict) -> dict:
    """The run's checkpoint, checked against the rebuilt pair, its backend and the new number of epochs."""
    checkpoint = runs.load_checkpoint(run_dir)
    if checkpoint.get("backend", backend) != backend:
        raise UserError(f"{run_dir} was trained with the {checkpoint['backend']} backend, not {backend}; resume it "
                        "with its own backend")
    runs.check_weights(pair, checkpoint["model"], run_dir / runs.CHECKPOINT)
    done = checkpoint["state"].get("epoch", 0)
    if isinstance(train.get("epochs"), int) and done >= train["epochs"]:
        raise UserError(f"{run_dir} already trained {done} epochs; nothing to resume: give --epochs above {done}")
    return checkpoint


def _train(pair, data: datasets.Dataset, backend: str, select: str, checkpoint: dict | None, run: runs.RunWriter,
           progress, log, start: float) -> dict:
    """Train on either backend with a checkpoint per epoch; then the selected weights, metrics and pictures."""
    config = run.config
    options = backend_options(backend, config["train"])
    kwargs = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    callback = None
    if backend == "svi":
        kwargs["monitor"] = "val_elbo" if select == "best" else None
        kwargs["announce"] = log
        callback = with_family_metrics(validation_callback(data, options.seed), data)

    def on_epoch_end(fit) -> None:
        if backend == "svi" and config["train"].get("engine") != fit.options.get("engine"):
            config["train"]["engine"] = fit.options["engine"]  # what `auto` chose: a resume uses the same
            if run.checkpoints:  # (before the first checkpoint, the config is written with it)
                runs.write_json(run.path / runs.CONFIG, config)
        run.save_checkpoint(fit)
        _log_epoch(fit, log)

    fit = backend_fit(pair, data, backend=backend, progress=progress, resume=checkpoint, callback=callback,
                      on_epoch_end=on_epoch_end, **kwargs)
    run.require_checkpoint(fit.stopped)
    if fit.stopped:
        log(f"training stopped: {fit.stopped}")
    if select == "best":
        restore_best(fit)
    run_dir = run.path
    runs.save_torch(run_dir / runs.MODEL, pair.state_dict())
    density = has_density(pair, data.train[:2])
    metrics: dict[str, Any] = quick_metrics(pair, data) if density else {}
    metrics.update(mode_metrics(pair, data.name))
    last = fit.history[-1] if fit.history else {}
    metrics.update({k: last[k] for k in ("loss_d", "loss_g", "w_distance") if k in last})
    metrics.update(epochs=fit.state.epoch, train_seconds=round(time.perf_counter() - start, 2), stopped=fit.stopped)
    if backend == "svi":
        metrics.update(best_epoch=fit.state.best_epoch, engine=fit.options.get("engine"))
    runs.write_json(run_dir / runs.METRICS, metrics)
    pictures(pair, data, fit.history, run_dir)
    if density and backend == "svi" and posterior_fits(pair, data.train[:1], log=log):
        write_posterior(fit, data, run_dir)
    return metrics


def has_density(pair, x: torch.Tensor) -> bool:
    """Whether ELBO/IWAE apply: the pair has a guide and its observed site is not a Delta (an implicit generator)."""
    from pyro import poutine
    from pyro.distributions import Delta

    if not pair.has_guide:
        return False
    with torch.no_grad():
        trace = poutine.trace(pair.model).get_trace(x)
    observed = [s for s in trace.nodes.values() if s["type"] == "sample" and s["is_observed"]]
    return not any(isinstance(getattr(s["fn"], "base_dist", s["fn"]), Delta) for s in observed)


def mode_metrics(pair, data_name: str, seed: int = 0) -> dict:
    """Mode coverage (modes captured, share of high-quality samples, reverse KL) on ring8/grid25; else {}."""
    from ppgen.data.sources import MIXTURES
    from ppgen.evaluation.modes import evaluate_pair

    if data_name not in MIXTURES:
        return {}
    pair.eval()
    report = evaluate_pair(pair, data_name, seed=seed)
    return {"modes": report["modes"], "n_modes": report["n_modes"], "high_quality": report["high_quality"],
            "reverse_kl": report["reverse_kl"]}


#: the most latent values posterior.nc holds (16 points x 1,000 draws x the latents per example)
POSTERIOR_VALUES = 50_000_000


def posterior_fits(pair, x: torch.Tensor, points: int = 16, draws: int = 1000, log=print) -> bool:
    """Whether posterior.nc (``draws`` of every latent for ``points`` examples) stays under POSTERIOR_VALUES; if not,
    say so (a DDPM's T latents shaped like x are too many to keep)."""
    from pyro import poutine

    from ppgen.sites import sample_sites

    with torch.no_grad():
        guide_tr = poutine.trace(pair.guide).get_trace(x[:1])  # one example
    per_example = sum(s["value"].numel() for s in sample_sites(guide_tr).values() if not s["is_observed"])
    if per_example * points * draws <= POSTERIOR_VALUES:
        return True
    log(f"posterior.nc not written: {points} examples x {draws} draws x {per_example} latent values per example "
        f"exceed {POSTERIOR_VALUES:,}")
    return False


def write_posterior(fit, data: datasets.Dataset, run_dir: Path, points: int = 16, seed: int = 0) -> None:
    """posterior.nc: ArviZ draws of q(z | x) (4 chains x 250) for the first test examples."""
    import os

    from ppgen.diagnostics import to_inference_data

    x = (data.test if len(data.test) else data.train)[:points].to(_device(fit.pair))
    with torch.random.fork_rng(devices=[]):
        idata = to_inference_data(fit, x=x, num_samples=1000, chains=4, seed=seed)
    tmp = run_dir / ".posterior.nc.tmp"
    idata.to_netcdf(str(tmp))
    os.replace(tmp, run_dir / "posterior.nc")


def _log_epoch(fit, log) -> None:
    row = fit.history[-1]
    val = f"  val ELBO {row['val_elbo']:8.2f}" if "val_elbo" in row else ""
    if "elbo" in row or "objective" in row:
        text = (f"train ELBO {row['elbo']:8.2f}" if "elbo" in row else f"train objective {row['objective']:8.4f}") + val
    else:
        text = f"loss D {row['loss_d']:8.4f}  loss G {row['loss_g']:8.4f}" + (
            f"  W estimate {row['w_distance']:8.4f}" if "w_distance" in row else "")
    log(f"epoch {row['epoch']:3d}  {text}  {row['images_per_s']:7.0f} img/s")


def quick_metrics(pair, data: datasets.Dataset, seed: int = 0) -> dict:
    """Single-sample ELBO on train/validation/test (seeded)."""
    out: dict[str, Any] = {}
    pair.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for split in ("train", "val", "test"):
            x = data.train_epoch(0) if split == "train" else getattr(data, split)
            if len(x):
                out[f"{split}_elbo"] = float(evaluation.elbo(pair, x.to(_device(pair))).mean())
    return out


def _device(pair) -> torch.device:
    return next(pair.parameters()).device


def pictures(pair, data: datasets.Dataset, history: list[dict], run_dir: Path, seed: int = 0) -> None:
    """samples.png, reconstructions.png, loss.png and latents.png in ``run_dir``."""
    pair.eval()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        plots.sample_grid(pair.generate(64 if data.is_images else 2500).cpu(), run_dir / "samples.png",
                          f"{pair.name} samples (means of p(x|z), z ~ p(z))")
        test = (data.test if len(data.test) else data.train)[:1000].to(_device(pair))
        if pair.can_reconstruct and data.is_images:
            plots.reconstructions(test[:16].cpu(), pair.reconstruct(test[:16]).cpu(), run_dir / "reconstructions.png")
        if pair.has_encoder:
            labels = data.test_labels if len(data.test) else data.train_labels
            plots.latent_scatter(pair.encode(test)[0].cpu(), None if labels is None else labels[:1000],
                                 run_dir / "latents.png")
    if history:
        plots.loss_curve(history, run_dir / "loss.png")


def evaluate_run(run_dir: Path, iwae_k: int = 1000, split: str = "test", limit: int | None = None, seed: int = 0,
                 elbo_samples: int = 10, ais_steps: int | None = None, ais_chains: int = 16,
                 bdmc_points: int = 0) -> dict:
    """Held-out ELBO, IWAE-K log-likelihood, KL per latent dimension, active units and I(x; z).

    With ``ais_steps`` also AIS with that many intermediate distributions (and, with
    ``bdmc_points``, BDMC's lower/upper bounds on as many points simulated from the model).
    """
    if ais_steps is not None:
        from ppgen.evaluation.ais import check_steps

        check_steps(ais_steps)
    config = runs.read_config(run_dir)
    pair = runs.load_pair(run_dir)
    data = _load_data(config["data"])
    x = getattr(data, split)
    x = x[:limit] if limit or not isinstance(x, torch.Tensor) else x  # a sparse split (SparseCounts) densified
    if len(x) == 0:
        raise UserError(f"the {split} split of {data.name} is empty; choose --split train, val or test")
    pair.check_data(x, f"{split} data")
    if iwae_k < 1:
        raise UserError("--iwae needs K >= 1")
    result: dict[str, Any] = {"run": str(run_dir), "split": split, "n": len(x)}
    result.update(mode_metrics(pair, data.name, seed=seed))
    if not has_density(pair, x[:2]):  # an implicit generator: no likelihood, so no ELBO/IWAE/AIS
        result["seconds"] = 0.0
        result["note"] = (f"{pair.name} has no density p(x|z) or no guide q(z|x): no ELBO or log-likelihood "
                          "(score its samples with --fid, --kid, --is, --pr)")
        return result
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        t = time.perf_counter()
        elbo = evaluation.elbo(pair, x, num_samples=elbo_samples)
        result["elbo"] = float(elbo.mean())
        result["elbo_se"] = float(elbo.std() / len(x) ** 0.5)
        if iwae_k:
            ll = evaluation.iwae(pair, x, k=iwae_k)
            result[f"iwae_{iwae_k}"] = float(ll.mean())
            result[f"iwae_{iwae_k}_se"] = float(ll.std() / len(x) ** 0.5)
            result["nll"] = -float(ll.mean())
            result["bits_per_dim"] = float(evaluation.bits_per_dim(ll, pair.x_shape).mean())
            if pair.guide_draws(iwae_k) < iwae_k:  # the estimators then use one draw of q (guide_draws says why)
                result["iwae_note"] = (f"the guide is a point mass: IWAE-{iwae_k} equals the ELBO exactly, computed "
                                       "from one draw")
        result["seconds"] = round(time.perf_counter() - t, 2)
    if ais_steps is not None:
        from ppgen.evaluation.ais import summary

        t = time.perf_counter()
        result.update(summary(pair, x, ais_steps, chains=ais_chains, bdmc_points=bdmc_points, seed=seed))
        result["ais_seconds"] = round(time.perf_counter() - t, 2)
    if data.info.get("kind") == "text":  # a topic model: perplexity, coherence, diversity (no per-dimension KL)
        result.update(topic_metrics(pair, data, x, elbo, ll if iwae_k else None, iwae_k))
    elif pair.has_encoder:
        result.update(evaluation.report(pair, x))
    family = pair.family_metrics(x)
    if family:
        result["family_metrics"] = family
    return result


def topic_metrics(pair, data: datasets.Dataset, x: torch.Tensor, elbo: torch.Tensor, iwae: torch.Tensor | None,
                  iwae_k: int) -> dict:
    """Perplexity from the per-document ELBO (and IWAE-K), NPMI of the top-10 words on ``x``, topic diversity."""
    from ppgen.evaluation import topics

    coefficient = topics.log_multinomial_coefficient(x).to(elbo)
    out = {"words": topics.total_words(x), "perplexity": topics.perplexity_from(elbo, x),
           "perplexity_sequence": topics.perplexity_from(elbo - coefficient, x)}
    if iwae is not None:
        out[f"perplexity_iwae_{iwae_k}"] = topics.perplexity_from(iwae, x)
        out[f"perplexity_sequence_iwae_{iwae_k}"] = topics.perplexity_from(iwae - coefficient, x)
    table = topics.topic_table(pair, data.info["vocabulary"], x)
    out["npmi"] = sum(r["npmi"] for r in table) / len(table)
    out["diversity"] = topics.diversity(pair.topic_words())
    return out


def topics_run(run_dir: Path, n: int = 10, split: str = "test", reference: str | None = None) -> dict:
    """Each topic's top ``n`` words and NPMI on the run's ``split`` documents (or on the corpus ``reference``,
    vectorized with the run's vocabulary); writes topics.json, topics.png and proportions.nc (q's draws of
    the topic proportions of the first 16 ``split`` documents) into the run directory."""
    from ppgen.evaluation import topics

    config = runs.read_config(run_dir)
    data = _load_data(config["data"])
    if data.info.get("kind") != "text":
        raise UserError(f"{run_dir} was not trained on a text corpus ({data.name}); `ppgen topics` needs a topic "
                        "model's run (ppgen train prodlda --data news)")
    pair = runs.load_pair(run_dir)
    pair.eval()
    vocabulary = data.info["vocabulary"]
    ref = getattr(data, split) if reference is None else topics.reference_counts(reference, vocabulary)
    ref = ref.csr if isinstance(ref, SparseCounts) else ref  # NPMI reads presence from the sparse counts
    with torch.no_grad():
        table = topics.topic_table(pair, vocabulary, ref, n=n)
        result = {"run": str(run_dir), "reference": reference or f"{data.name} {split} split",
                  "documents": int(ref.shape[0]), "npmi": sum(r["npmi"] for r in table) / len(table),
                  "diversity": topics.diversity(pair.topic_words()), "topics": table}
        plots_topics(pair, vocabulary, table, Path(run_dir) / "topics.png")
        write_proportions(pair, getattr(data, split)[:16], Path(run_dir) / "proportions.nc")
    runs.write_json(Path(run_dir) / "topics.json", result)
    return result


def write_proportions(pair, x: torch.Tensor, path: Path, draws: int = 1000, seed: int = 0) -> None:
    """proportions.nc: ArviZ draws of the topic proportions θ under q(θ | x) (1 chain) for the documents ``x``."""
    import os

    import arviz as az

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        theta = pair.sample_proportions(x, draws).cpu().numpy()
    idata = az.from_dict(posterior={"theta": theta[None]}, dims={"theta": ["document", "topic"]})
    tmp = path.with_name(f".{path.name}.tmp")
    idata.to_netcdf(str(tmp))
    os.replace(tmp, path)


def plots_topics(pair, vocabulary, table: list[dict], path: Path, words: int = 8) -> None:
    """topics.png: each topic's top words as horizontal bars of their topic-word scores (β for the product of
    experts, log p(w | topic) for the mixture decoder), one panel per topic."""
    import matplotlib.pyplot as plt

    scores = pair.topic_words()
    scores = scores - scores.min(-1, keepdim=True).values  # bars start at the topic's lowest-scoring word
    k = len(table)
    cols = min(5, k)
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.0 * rows), squeeze=False)
    for ax in axes.flat[k:]:
        ax.axis("off")
    for ax, row in zip(axes.flat, table):
        idx = [vocabulary.index(w) for w in row["words"][:words]]
        ax.barh(range(len(idx))[::-1], scores[row["topic"], idx].numpy(), color="tab:blue")
        ax.set_yticks(range(len(idx))[::-1], [vocabulary[i] for i in idx], fontsize=7)
        ax.set_title(f"topic {row['topic']}  NPMI {row['npmi']:.2f}", fontsize=8)
        ax.tick_params(axis="x", labelsize=6)
        ax.set_xlabel("score above the topic's minimum", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


REJECTION = "rejection.pt"


def ratio_sampler(run_dir: Path, steps: int | None = None, quantile: float = 0.999, seed: int = 0,
                  progress: bool | None = None):
    """The run's pair corrected by density-ratio rejection sampling (:mod:`ppgen.inference.rejection`).

    The classifier, an MLP (a convolutional one costs ~6x more per step on a CPU), is trained for
    ``steps`` (default 10,000 on vectors, 2,000 on images: ~2 min on a 2-core CPU for MNIST)
    against the run's grey-level training data and cached in
    ``rejection.pt`` (keyed by the model weights' digest, ``steps`` and ``seed``); the bound
    M is recomputed for ``quantile`` on every call.
    """
    import hashlib

    from ppgen.inference.rejection import fit_ratio_sampler
    from ppgen.nn.critics import critic_for

    run_dir = Path(run_dir)
    pair = runs.load_pair(run_dir)
    data = reference_data(runs.read_config(run_dir))
    steps = steps or (2_000 if len(pair.x_shape) == 3 else 10_000)
    digest = hashlib.sha256((run_dir / runs.MODEL).read_bytes()).hexdigest()
    key = {"model_sha256": digest, "steps": steps, "seed": seed}
    classifier = None
    cache = run_dir / REJECTION
    if cache.exists():
        try:
            saved = runs.load_torch(cache)
        except UserError:  # a damaged cache is only a cache: train the classifier again
            saved = {}
        if isinstance(saved, dict) and saved.get("key") == key:
            classifier = critic_for(pair.x_shape, net="mlp")
            classifier.load_state_dict(saved["classifier"])
    sampler = fit_ratio_sampler(pair, data, steps=steps, net="mlp", quantile=quantile, seed=seed, progress=progress,
                                classifier=classifier)
    if classifier is None:
        runs.save_torch(cache, {"key": key, "classifier": sampler.classifier.state_dict()})
    return sampler


def evaluate_rejection(run_dir: Path, metrics: list[str], steps: int | None = None, quantile: float = 0.999,
                       n: int | None = None, seed: int = 0, progress: bool | None = None) -> dict:
    """The classifier's held-out report, acceptance rate, mode coverage (ring8/grid25) and ``metrics``
    (fid/kid/is/pr) of the run's pair corrected by density-ratio rejection."""
    from ppgen.data.sources import MIXTURES
    from ppgen.evaluation.modes import evaluate_pair
    sampler = ratio_sampler(run_dir, steps=steps, quantile=quantile, seed=seed, progress=progress)
    out = dict(sampler.report)
    name = runs.read_config(run_dir).get("data", {}).get("name")
    if name in MIXTURES:
        report = evaluate_pair(sampler, name, seed=seed)
        out.update({k: report[k] for k in ("modes", "n_modes", "high_quality", "reverse_kl")})
    if metrics:
        out["sample_quality"] = evaluate_run_samples(run_dir, metrics, n=n, seed=seed, sampler=sampler)
    return out


# -- run directories for the evaluation functions (evaluation itself does no file I/O) ---------------
def reference_data(config: dict):
    """A run's data set with its split but no binarization (what generated examples are compared with)."""
    from ppgen.data import load

    options = config.get("data", {})
    return load(options.get("name", "mnist"), binarize=None, seed=options.get("seed", 0),
                split_seed=options.get("split_seed", 0))


def evaluate_run_samples(run_dir, metrics: Sequence[str] = METRICS, n: int | None = None, seed: int = 0,
                         cache_dir=None, sampler=None) -> dict:
    """:func:`sample_quality` of a run directory's pair (or of ``sampler``) against its data set's grey-level test split.

    The reference and the feature classifier use the run's data with the same split but no
    binarization (a Bernoulli VAE's samples are its pixel probabilities, E[x|z]). ``sampler``
    is anything with ``generate(n)``, e.g. the run's pair corrected by rejection sampling.
    """
    from ppgen.evaluation.samples import sample_quality

    data = reference_data(runs.read_config(run_dir))
    if sampler is None:
        sampler = runs.load_pair(run_dir)
        sampler.eval()
    return sample_quality(sampler, data, metrics, n=n, seed=seed, cache_dir=cache_dir)


def compare_run(run_dir, out=None, *, points: int = 16, chains: int = 4, warmup: int = 500, samples: int = 1000,
                split: str = "test", steps: int = 1000, iwae_k: int = 5000, seed: int = 0, log=print) -> dict[str, Any]:
    """NUTS on p(z | x, θ) for the first ``points`` examples of ``split`` beside the run's encoder.

    Writes ``compare.nc`` (ArviZ: svi and nuts along ``inference``), ``nuts.nc``,
    ``compare.json`` (the table) and ``forest.png``, ``pair.png``, ``gaps.png`` into
    ``out`` (default RUN/compare); returns the table.
    """
    from ppgen import diagnostics
    from ppgen.evaluation.amortization import compare, format_table, latent_site

    if points < 1:
        raise UserError(f"--points must be at least 1, got {points}")
    run_dir = Path(run_dir)
    config = runs.read_config(run_dir)
    pair = runs.load_pair(run_dir)
    latent_site(pair)
    options = config.get("data", {})
    data = datasets.load(options.get("name", "mnist"), binarize=options.get("binarize", "default"),
                         seed=options.get("seed", 0), split_seed=options.get("split_seed", 0))
    start = time.perf_counter()
    fit = backend_fit(pair, data, backend="nuts", points=points, split=split, chains=chains, warmup=warmup,
                      samples=samples, seed=seed)
    log(f"NUTS ({fit.state['engine']}): {points} {split} points x {chains} chains, {warmup} warmup + {samples} draws "
        f"in {time.perf_counter() - start:.1f} s")
    result = compare(pair, fit, steps=steps, iwae_k=iwae_k, seed=seed)
    result.update(run=str(run_dir), split=split, chains=chains, warmup=warmup, samples=samples,
                  seconds=round(time.perf_counter() - start, 1))
    out = Path(out) if out is not None else run_dir / "compare"
    out.mkdir(parents=True, exist_ok=True)
    combined = diagnostics.compare_inference_data(pair, fit, seed=seed, log_lik=False)
    combined.to_netcdf(str(out / "compare.nc"))
    diagnostics.to_inference_data(fit).to_netcdf(str(out / "nuts.nc"))
    runs.write_json(out / "compare.json", result)
    diagnostics.plot_forest(combined, out / "forest.png", 0)
    diagnostics.plot_pair(combined, out / "pair.png", 0)
    diagnostics.plot_gaps(result["points"], out / "gaps.png")
    log(format_table(result))
    log(f"wrote {out}/compare.nc, nuts.nc, compare.json, forest.png, pair.png, gaps.png")
    return result


# -- a family's own figures in the history; the VQ-VAE's stage two -----------------------------------
def with_family_metrics(callback, data: datasets.Dataset):
    """``callback`` followed by the pair's own figures on the validation split (``pair.family_metrics``: VQ-VAE's
    codebook usage and perplexity), prefixed ``val_``, in each epoch's history row."""
    def both(fit) -> dict:
        row = dict(callback(fit) or {})
        if len(data.val):
            fit.pair.eval()
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                family = fit.pair.family_metrics(data.val.to(_device(fit.pair)))
            fit.pair.train()
            row.update({f"val_{k}": v for k, v in family.items()})
        return row

    return both


def fit_prior_run(run_dir: Path, epochs: int = 20, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                  log=print) -> dict:
    """Stage two of a VQ-VAE run: fit its autoregressive prior on the codes of its training data
    (:func:`ppgen.models.vqvae.fit_prior`), then write the pair back (model.pt), ``prior_history.csv``, the
    prior's figures into ``metrics.json`` (key ``prior``) and ``samples.png`` drawn from the learned prior.

    The fitted prior also goes into the run's checkpoint (its last epoch's weights and, where kept, the best
    epoch's, whose score becomes the validation bound under the prior), so ``ppgen train vqvae --resume RUN``
    afterwards continues stage one *with* the learned prior (its term −log p(k) then trains it on the current
    codes) instead of restarting from the checkpoint's untrained prior and overwriting model.pt without it.

    Refused in one line for a run of another family and for a run whose stage one has not finished.
    """
    from ppgen.models.vqvae import VQVAE, fit_prior, prior_state

    run_dir = Path(run_dir)
    config = runs.open_run(run_dir)
    if config.get("model") != VQVAE.name:
        raise UserError(f"{run_dir} holds a {config.get('model')} run; a learned prior over codes is for vqvae runs")
    if not (run_dir / runs.MODEL).exists():
        raise UserError(f"stage one of {run_dir} has not finished (no {runs.MODEL}): finish it first "
                        f"(ppgen train vqvae --resume {run_dir}), then fit its prior")
    data = _load_data(config["data"])
    pair = runs.load_pair(run_dir)
    checkpoint = runs.load_checkpoint(run_dir)  # refused here, before the prior is fitted, if it is damaged
    torch.manual_seed(seed)
    history = fit_prior(pair, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, log=log)
    pair.eval()
    prior = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, **history[-1]}
    prior.update(quick_metrics(pair, data, seed=seed))
    runs.save_torch(run_dir / runs.CHECKPOINT, with_prior(checkpoint, prior_state(pair), prior.get("val_elbo")))
    runs.save_torch(run_dir / runs.MODEL, pair.state_dict())
    metrics = _read_metrics(run_dir)
    metrics["prior"] = prior
    runs.write_json(run_dir / runs.METRICS, metrics)
    _write_rows(run_dir / "prior_history.csv", history)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        plots.sample_grid(pair.generate(64).cpu(), run_dir / "samples.png",
                          f"{pair.name} samples (codes from the learned prior)")
    return prior


def with_prior(checkpoint: dict, prior: dict[str, torch.Tensor], val_elbo: float | None) -> dict:
    """``checkpoint`` with the prior's weights ``prior`` in its last and best weights; the best score is then
    ``val_elbo`` (the bound under that prior), so a resumed run compares its epochs with the same bound."""
    checkpoint = {**checkpoint, "model": {**checkpoint["model"], **prior}, "state": dict(checkpoint["state"])}
    state = checkpoint["state"]
    if isinstance(state.get("best"), dict):
        state["best"] = {**state["best"], **prior}
        if val_elbo is not None:
            state["best_score"] = val_elbo
    return checkpoint


def _read_metrics(run_dir: Path) -> dict:
    import json

    try:
        metrics = json.loads((run_dir / runs.METRICS).read_text())
    except (OSError, ValueError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


def _write_rows(path: Path, rows: list[dict]) -> None:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    runs.atomic_write_bytes(path, buffer.getvalue().encode())
