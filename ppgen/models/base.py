"""The pair protocol: what every backend, estimator and workflow may ask of a model/guide pair.

A family subclasses :class:`GenerativeModel`, sets ``name`` and ``Config`` (a frozen
dataclass that round-trips through JSON, each field declared once with its default,
check and help by :func:`ppgen.declare.option`) and writes ``model`` and ``guide`` side
by side. ``Family(**options)`` builds ``Config(**options)``, whose ``__post_init__`` checks
them (:func:`ppgen.declare.validate`, then the checks that involve several fields); the
family's ``__init__(*args, **options)`` then builds its networks from ``self.config``.
Defining the class registers it under ``name`` (``ppgen models`` lists it); no
other file needs to know it. Nothing outside this module probes a pair with
``getattr``/``hasattr``: everything a caller may ask is declared here, with a default.

The protocol
------------
``model(x)`` / ``guide(x)``
    The generative program and the amortized posterior, written against
    :mod:`ppgen.ppl` so they run on Pyro and NumPyro. Examples sit in the plate named
    ``data_plate``; plates nested inside it (words of a document, pixels) are summed
    per example by :mod:`ppgen.sites`, the one place where log densities become
    per-example numbers.
``inputs`` / ``model(x, *inputs)``, ``guide(x, *inputs)``
    The names of the data set's input columns (:mod:`ppgen.data`: labels, covariates) the pair
    takes beside x, in the order ``model`` and ``guide`` take them; ``()`` by default, and then
    everything calls ``model(x)``. Every engine, estimator and NUTS hands each example's row of
    each column beside it (the same shuffle, the same chunks; inside a ``particles`` plate the
    columns keep the data plate's shape, so a network broadcasts them against z). A missing
    entry is −1 in an integer column and NaN in a float one (``ppgen.data.observed`` gives the
    mask); ``check_inputs`` says whether the pair accepts the columns.
``has_guide``
    False for an implicit generator without an encoder: no ELBO, no q(z|x).
``latent_sites``
    Names of the latent sample sites, outermost first; their priors are the model's
    sites (read them from a trace, never assume N(0, I)).
``max_plate_nesting``
    Plates around the sample sites (the data plate and any nested plate); estimators
    add their particle plate outside them.
``default_backend``
    The backend ``ppgen train`` uses unless told otherwise ("svi" or "adversarial").
``svi_engines`` / ``engine_preference`` / ``unsupported_options(engine)``
    The SVI engines that can train the pair, in the order ``engine="auto"`` prefers them: the family's
    ``engine_preference`` ("jax", "torch" by default: a compiled epoch; one that runs faster on torch lists it
    first, the VAE's PixelCNN decoder) less the engines that an option of its config in use cannot run — a
    ``Config`` field declared with :func:`ppgen.declare.supported` (the VAE's flows, ProdLDA's batch norm);
    ``unsupported_options(engine)`` lists them, (option, reason), so that ``--engine jax`` is refused naming the
    option and ``auto`` picks torch saying which option made it. A family whose training step has side effects a
    compiled JAX epoch cannot have whatever its options (EMA codebooks) sets ``svi_engines = ("torch",)``.
``generate(n)`` / ``can_generate``
    n draws of E[x | z] at z ~ p(z) (or of the generator); a pair with inputs takes them after ``n``
    (the conditional VAE: ``generate(n, labels)``, an int for all n draws or one per draw).
``encode(x)`` / ``has_encoder``; ``reconstruct(x)`` / ``can_reconstruct``
    Mean and scale of the bottom latent under q(z | x); E[x | mean of q(z | x)].
``nuts_refusal``
    Why NUTS cannot sample the pair's latents (discrete codes: NUTS follows gradients of log p(x, z) in z), or
    None (the default): it can. ``ppgen compare`` and ``ppgen.fit(..., backend="nuts")`` refuse a pair that
    declares one, in one line, before any work.
``gaussian_observation_refusal``
    Why the pair's observed site cannot be replaced by N(E[x | latents], σ² I) for a likelihood under a Gaussian
    observation model (:class:`ppgen.models.observation.GaussianObservation`, Wu et al. 2017: AIS on a GAN's or a
    VAE's generator), or None (the default): it can. An autoregressive decoder declares it (its site's mean depends
    on x itself).
``training_notice``
    One line that ``ppgen train`` (the SVI engines) says before training where the pair's settings are known to
    train badly, naming what to change (the DDPM's MLP denoiser narrower than the values it predicts), or None (the
    default).
``point_mass_guide`` / ``guide_draws(k)``
    True for a guide that is a point mass q(z | x) = δ(z − z(x)) (a deterministic encoder: the VQ-VAE's
    codes). All its draws coincide, so an estimator averaging over K draws of it (IWAE_K, a Monte Carlo
    ELBO) gets its exact value from one: ``guide_draws(k)`` is 1 for it and ``k`` otherwise.
``objective(x)`` / ``has_objective``
    A family's own unbiased estimator of the per-example negative ELBO (DDPM's
    uniformly sampled timestep), written against :mod:`ppgen.ppl` so both SVI engines
    train it; draw its randomness with :func:`ppgen.ppl.uniform` (``normal``, ``randint``). Without it the
    engines use their ELBO on ``model``/``guide``.
``closed_form_elbo(x)`` / ``has_closed_form_elbo``
    A family's per-example ELBO with its terms in closed form where the traced ELBO would
    sample them (DDPM: all T Gaussian KLs); same expectation, less variance.
    :func:`ppgen.evaluation.elbo` (``ppgen evaluate``, the validation ELBO) uses it.
``trains_on_grey_levels(options)``
    Whether a run with these model options is given grey levels where ``ppgen train`` binarizes by default (M2's
    ``grey_levels``); False by default.
``likelihood``
    The observation model's name ("bernoulli", "cbernoulli", "gaussian"), which ``check_data`` and the
    commands (binarization) read: the config's ``likelihood`` field, else "gaussian"; a family whose
    config has no such field and observes binary data sets it as a class attribute (as NADE does).
    ``likelihood_note``: what ``ppgen evaluate`` prints beside the bound where it is not a log-likelihood of the
    data (M2's Bernoulli on grey levels); ``None`` by default.
``family_metrics(x, *columns)`` / ``metric_inputs``
    A family's own held-out figures on examples ``x`` (VQ-VAE: codebook usage and perplexity), shown by
    ``ppgen evaluate`` and added to each epoch's history row; ``{}`` by default. ``metric_inputs`` names the data
    set's columns it scores against (labels: the accuracy of a classifier, of a clustering), handed to it as
    ``columns`` where the split has them (and nothing where it lacks one); ``()`` by default. They never reach
    ``model`` or ``guide``.
``check_data(x)`` / ``observes_word_counts``
    Raises :class:`~ppgen.errors.UserError` (one line, what to do) when ``x`` cannot
    be observed. A family whose model observes bags of words (a text corpus's word counts, which reach it as
    sparse rows: :class:`ppgen.data.text.SparseCounts`) sets ``observes_word_counts``; given a text corpus, any
    other pair says in one line which families take text data.
``topic_words()`` / ``sample_proportions(x, n)`` / ``word_distribution(theta)`` / ``has_topics``
    A topic model's topic-word scores (topics × vocabulary: β for a product of experts, log p(w | topic) for a
    mixture), ``n`` draws of the topic proportions θ ~ q(θ | x) per document, (n, documents, topics), and
    p(w | θ); ``ppgen topics`` and the topic figures of ``ppgen evaluate`` work on any pair that has them.
``select_by`` / ``select_by_words``
    The validation figure (a history column, larger is better) by which ``ppgen train --select best`` keeps an
    epoch: ``"val_elbo"`` by default; a topic model's is its validation NPMI. ``None``: the family keeps the last
    epoch.
``default_select`` / ``train_defaults``
    What ``ppgen train`` keeps without ``--select`` ("best" by default; "last" for the topic models, measured
    to give topics as coherent as the best validation NPMI does and never an untrained early epoch), and
    training options the family trains well with over the command's defaults (the topic models: 100 epochs).
``sample_steps_option`` / ``sample_steps_config`` / ``in_steps(steps)`` / ``samples_in_steps``
    For a family that samples in a chosen number of steps: the config field that sets it and any other
    config values sampling in steps needs (a DDIM sampler); ``in_steps(S)`` is the pair rebuilt with them, the
    same weights (``ppgen sample --steps S``). ``None`` (the default) for the others.
``stages``
    Training stages the family adds after ``ppgen train`` (:class:`Stage`: a second fit on the trained pair,
    e.g. a learned prior over discrete codes). The ``ppgen`` command makes one subcommand per declared stage
    and the one training loop trains it; no other file names the stage.
``check_inputs(x, inputs)``
    Likewise for the input columns beside ``x``: by default one row per example of each.

Parameters
----------
Everything a pair registers is its own, trained by both SVI engines and carried by ``state_dict``
(checkpoints, ``model.pt``, ``ppgen.load``, ``--resume``): the weights of its torch modules (``pyro.module``
networks), its ``pyro.param`` sites and the parameters an autoguide makes on its first call. ``model``,
``guide``, ``objective``, ``closed_form_elbo`` and ``generate`` run with the pair owning its ``pyro.param``
values (:func:`ppgen.ppl.param_owner`): a new one becomes an ``nn.Parameter`` (its unconstrained value u; the
model sees T(u) for its constraint's transform T) in ``pyro_params``, keyed by name (``state_dict`` key
``pyro_params.NAME``, "." written "%2E"); Pyro's param store is the pair's own scope, so two pairs with a
``pyro.param("df")`` never share it, and Pyro's own SVI on ``pair.model``/``pair.guide`` trains the same
values. ``param_value(name)`` reads one. ``trial_run(x)`` runs guide and model once so that every parameter
made on first call exists (engines call it before building their optimizer); where that made any, the pair
keeps one example of the inputs and their number of rows (buffers ``trial_arg_I``, ``trial_rows``) so that a fresh pair can make them again, with their
constraints, before ``load_state_dict`` (a state dict holds tensors only). An autoguide as the guide:
``self.auto = ppgen.ppl.autoguide("AutoNormal", self.model)`` and ``def guide(self, x): self.auto(x)`` (Pyro's
on torch, NumPyro's namesake on the JAX engine, see :class:`ppgen.ppl.AutoGuide`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from pyro.poutine.runtime import _PYRO_STACK
from torch import nn

from ppgen import ppl
from ppgen.data.text import SparseCounts
from ppgen.declare import one_of, option, shape, unsupported
from ppgen.errors import UserError
from ppgen.nn.networks import ACTIVATIONS

LIKELIHOODS = ("bernoulli", "cbernoulli", "gaussian")
ACTIVATION_NAMES = tuple(ACTIVATIONS)


def x_shape_option(default: tuple[int, ...]) -> Any:
    """The ``x_shape`` field every family's ``Config`` has: set from the data by ``ppgen train``, not a flag."""
    return option(default, shape, "shape of one example (ppgen train sets it from the data)", cli=False)


def likelihood_option(default: str = "bernoulli", choices: tuple[str, ...] = LIKELIHOODS) -> Any:
    """The observation model p(x | z), one of ``choices``."""
    return option(default, one_of(choices, "likelihood"), "observation model p(x|z): " + ", ".join(choices))


def activation_option() -> Any:
    """The hidden-layer nonlinearity of a family's MLP networks: softplus, or tanh as in Burda et al. (2016)."""
    return option("softplus", one_of(ACTIVATION_NAMES, "activation"), "hidden-layer nonlinearity of the MLP networks: "
                  "softplus, or tanh (Burda et al. 2016's 784-200-200-50 nets)")


@dataclasses.dataclass(frozen=True)
class Stage:
    """A training stage a family adds after ``ppgen train``: ``ppgen <name> RUN`` fits ``module(pair)`` (the rest of
    the pair stays fixed) by minimizing the mean of ``loss(pair, batch)`` over ``examples(pair, x)`` of the run's
    training data, in the one training loop (NaN stop with the last good weights, a checkpoint per epoch,
    resume), then calls ``finish(pair)`` (the pair uses what it learned).

    ``ready(pair)`` says why the stage cannot run yet (``None``: it can); ``metric`` names the per-example loss in
    the history (``val_<metric>`` on the validation split); ``weights`` are the prefixes of the ``state_dict``
    entries the stage writes (they go into the run's checkpoint, so training stage one on keeps them);
    ``options`` overrides the stage's training defaults (epochs, batch_size, lr); ``samples`` ends the title of
    the samples.png the stage redraws.
    """

    name: str
    help: str
    description: str
    module: Callable[[Any], nn.Module]
    examples: Callable[[Any, torch.Tensor], torch.Tensor]
    loss: Callable[[Any, torch.Tensor], torch.Tensor]
    metric: str
    weights: tuple[str, ...]
    finish: Callable[[Any], None]
    ready: Callable[[Any], str | None] = lambda pair: None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    samples: str = "after the stage"


#: name -> pair class, filled when a family's class is defined (see ``__init_subclass__``)
REGISTRY: dict[str, type[GenerativeModel]] = {}


class GenerativeModel(nn.Module):
    """Base of every model/guide pair. Holds the networks; defines no loss (see the module docs)."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = object
    #: plates nested around the sample sites (the data plate); estimators add one outside it
    max_plate_nesting: ClassVar[int] = 1
    #: names of the latent sample sites, outermost first
    latent_sites: ClassVar[tuple[str, ...]] = ("z",)
    #: the plate over examples
    data_plate: ClassVar[str] = "data"
    #: the backend ``ppgen train`` picks for this family
    default_backend: ClassVar[str] = "svi"
    #: the SVI engines the family trains on, in the order ``engine="auto"`` prefers them (before options rule any out)
    engine_preference: ClassVar[tuple[str, ...]] = ("jax", "torch")
    #: the validation figure ``ppgen train --select best`` keeps the epoch by: a history column, larger is better
    #: (``val_`` + a key of ``family_metrics``, or ``val_elbo``); ``None``: the family keeps the last epoch
    select_by: ClassVar[str | None] = "val_elbo"
    #: what ``select_by`` measures, in words, for the final line of ``ppgen train``
    select_by_words: ClassVar[str] = "validation ELBO"
    #: the epoch ``ppgen train`` keeps unless ``--select`` says: "best" (by ``select_by``) or "last"
    default_select: ClassVar[str] = "best"
    #: training options the family is measured to train well with, over ``ppgen train``'s defaults (a flag wins)
    train_defaults: ClassVar[dict[str, Any]] = {}
    #: whether ``guide`` is a q(z|x) (an implicit generator without an encoder has none)
    has_guide: bool = True
    #: whether the model observes bags of words (a text corpus's word counts)
    observes_word_counts: ClassVar[bool] = False
    #: why NUTS cannot sample the latents (``ppgen compare``), or None: it can
    nuts_refusal: ClassVar[str | None] = None
    #: why the observed site cannot be replaced by a Gaussian around its mean E[x | latents], or None: it can
    gaussian_observation_refusal: str | None = None
    #: one line said before training where the pair's settings are known to train badly (and what to change), or None
    training_notice: str | None = None
    #: whether ``guide`` is a point mass q(z|x) = δ(z − z(x)): every draw of it is the same z(x)
    point_mass_guide: ClassVar[bool] = False
    #: the config field with the number of sampling steps, for a family that samples in steps (else None)
    sample_steps_option: ClassVar[str | None] = None
    #: other config values that sampling in a chosen number of steps needs
    sample_steps_config: ClassVar[dict[str, Any]] = {}
    #: training stages after ``ppgen train`` (each becomes a ``ppgen`` subcommand)
    stages: ClassVar[tuple[Stage, ...]] = ()
    #: the data set's input columns ``model(x, *inputs)`` and ``guide(x, *inputs)`` take beside x
    inputs: tuple[str, ...] = ()
    #: the data set's columns ``family_metrics(x, *columns)`` scores against (labels), where the split has them
    metric_inputs: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name:
            known = REGISTRY.get(name)
            if known is not None and known.__qualname__ != cls.__qualname__:
                raise TypeError(f"two families named {name!r}: {known.__module__}.{known.__qualname__} and "
                                f"{cls.__module__}.{cls.__qualname__}")
            REGISTRY[name] = cls
        for method in OWNING_METHODS:
            fn = cls.__dict__.get(method)
            if callable(fn) and not getattr(fn, "_owns_params", False):
                setattr(cls, method, _owning(fn))
        for method in RESULT_METHODS:
            fn = cls.__dict__.get(method)
            if callable(fn) and not getattr(fn, "_detached", False):
                setattr(cls, method, _detached(fn))

    def __init__(self, *args: Any, **options: Any):
        """``Family(**options)`` is ``Family(Family.Config(**options))``: the config checks every option against its
        declaration (positional values bind in the Config's field order); the family then builds its networks from
        ``self.config``. A family's ``__init__`` takes ``(*args, **options)`` and repeats no default."""
        super().__init__()
        self.config = self._config_of(args, options)
        self.pyro_params = ppl.OwnParams()
        self._register_load_state_dict_pre_hook(_make_room_hook, with_module=True)

    @classmethod
    def _config_of(cls, args: tuple, options: dict[str, Any]) -> Any:
        if len(args) == 1 and not options and (cls.Config is object or isinstance(args[0], cls.Config)):
            return args[0]  # a built config (any object, for a pair that declares no Config)
        return cls.Config(*args, **options)

    # -- parameters (see the module docs) -------------------------------------------------
    def param_value(self, name: str) -> torch.Tensor:
        """The constrained value of the pair's ``pyro.param`` ``name``."""
        if name not in self.pyro_params:
            raise KeyError(f"{self.who} has no pyro.param {name!r} (it has {self.pyro_params.names()})")
        return self.pyro_params.value(name).detach()

    def epoch_order(self, n: int, inputs: tuple[torch.Tensor, ...], batch: int, steps: int,
                    generator: torch.Generator) -> torch.Tensor:
        """The training rows of one epoch in step order, taken ``batch`` at a time for ``steps`` steps (the torch SVI
        engine): a uniformly random permutation of the ``n`` examples. A family may compose its batches from its
        input columns (M2 puts labelled rows in every batch)."""
        return torch.randperm(n, generator=generator)

    def initialize_from_data(self, train: Any) -> None:
        """Set what the pair fixes from its training examples before a fresh fit (never on a resume, whose
        checkpoint holds it): nothing by default; a topic model's background word frequencies."""

    def trial_run(self, *args: Any, seed: int = 0) -> list[torch.Tensor]:
        """Run guide and model once on ``args`` (x and its input columns; eval mode, torch's RNG forked and seeded
        with ``seed``) so that every parameter made on first call exists; keep one example of the arguments if
        that made any (a ``pyro.param``, an autoguide's), for :meth:`make_room`. Returns the tensors the run's
        param sites train (their unconstrained values, as Pyro's SVI collects them)."""
        from pyro import poutine

        before = {id(p) for p in self.parameters()}
        was_training = self.training
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
        self.eval()
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed)
                guide_trace = poutine.trace(self.guide).get_trace(*args) if self.has_guide else None
                fn = self.model if guide_trace is None else poutine.replay(self.model, trace=guide_trace)
                model_trace = poutine.trace(fn).get_trace(*args)
        finally:
            self.train(was_training)
        self.pyro_params.release(self)
        if any(id(p) not in before for p in self.parameters()):
            # one example of each argument, and how many rows the run had: an autoguide over per-example latents
            # (eight schools' theta) sizes its parameters by the rows, so a fresh pair runs on as many
            for i, a in enumerate(args):
                if isinstance(a, torch.Tensor):
                    self.register_buffer(f"trial_arg_{i}", a[:1].detach().clone())
            rows = next((len(a) for a in args if isinstance(a, torch.Tensor) and a.ndim), 1)
            self.register_buffer("trial_rows", torch.tensor(rows))
        return ppl.trained_tensors([t for t in (guide_trace, model_trace) if t is not None])

    def make_room(self, state: dict[str, torch.Tensor], prefix: str = "") -> None:
        """Create in this (fresh) pair what ``state`` holds and first calls make: its ``pyro.param`` entries and an
        autoguide's parameters (a trial run on the kept example inputs, which also gives the constraints)."""
        examples = sorted((int(k[len(prefix) + 10:]), v) for k, v in state.items()
                          if k.startswith(f"{prefix}trial_arg_") and k[len(prefix) + 10:].isdigit())
        if examples and not any(n.startswith("trial_arg_") for n, _ in self.named_buffers(recurse=False)):
            rows = int(state.get(f"{prefix}trial_rows", torch.tensor(1)))
            args = [None] * (examples[-1][0] + 1)
            for i, v in examples:
                args[i] = v.expand(rows, *v.shape[1:]) if v.ndim else v
            self.trial_run(*args)
            for i, v in examples:
                if f"trial_arg_{i}" not in self._buffers:
                    self.register_buffer(f"trial_arg_{i}", v.detach().clone())
            if "trial_rows" not in self._buffers:
                self.register_buffer("trial_rows", torch.tensor(rows))
        own = f"{prefix}pyro_params."
        for key, value in state.items():
            if key.startswith(own) and "." not in key[len(own):]:
                self.pyro_params.make_room(ppl._decode(key[len(own):]), value)

    # -- the pair -----------------------------------------------------------------
    def model(self, x: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def guide(self, x: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def generate(self, n: int) -> torch.Tensor:  # pragma: no cover - abstract
        """``n`` draws of the likelihood's mean at z from the prior."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - optional
        """(loc, scale) of q(z | x) for the bottom latent, where the family has an encoder."""
        raise NotImplementedError(f"{self.name or type(self).__name__} has no encoder")

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - optional
        """E[x | z] at the mean of q(z | x)."""
        raise NotImplementedError(f"{self.name or type(self).__name__} cannot reconstruct")

    def objective(self, x: Any) -> Any:  # pragma: no cover - optional
        """The family's own per-example negative-ELBO estimate (see the module docs)."""
        raise NotImplementedError

    def closed_form_elbo(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - optional
        """The per-example ELBO with closed-form terms (see the module docs)."""
        raise NotImplementedError

    def family_metrics(self, x: torch.Tensor, *columns: torch.Tensor) -> dict[str, float]:
        """A family's own figures on held-out examples ``x`` and its ``metric_inputs`` columns (see the module docs);
        none by default."""
        return {}

    def topic_words(self) -> torch.Tensor:  # pragma: no cover - optional
        """Topic-word scores, (topics, vocabulary), for a topic model (see the module docs)."""
        raise NotImplementedError(f"{self.name or type(self).__name__} has no topics")

    def sample_proportions(self, x: torch.Tensor, n: int) -> torch.Tensor:  # pragma: no cover - optional
        """``n`` draws of the topic proportions θ ~ q(θ | x), (n, documents, topics), for a topic model."""
        raise NotImplementedError(f"{self.name or type(self).__name__} has no topics")

    def word_distribution(self, theta: torch.Tensor) -> torch.Tensor:  # pragma: no cover - optional
        """p(w | θ), (…, vocabulary), at topic proportions ``theta`` (…, topics), for a topic model."""
        raise NotImplementedError(f"{self.name or type(self).__name__} has no topics")

    # -- what a caller may ask ------------------------------------------------------
    @classmethod
    def declares(cls, method: str) -> bool:
        """Whether the family defines ``method`` of the protocol itself (not the default)."""
        return getattr(cls, method) is not getattr(GenerativeModel, method)

    def _overrides(self, method: str) -> bool:
        return type(self).declares(method)

    @property
    def can_generate(self) -> bool:
        return self._overrides("generate")

    @property
    def has_encoder(self) -> bool:
        return self.has_guide and self._overrides("encode")

    @property
    def can_reconstruct(self) -> bool:
        return self.has_encoder and self._overrides("reconstruct")

    @property
    def has_topics(self) -> bool:
        return all(self._overrides(m) for m in ("topic_words", "sample_proportions", "word_distribution"))

    @property
    def has_objective(self) -> bool:
        return self._overrides("objective")

    def guide_draws(self, k: int) -> int:
        """How many draws of the guide an estimator that averages over ``k`` of them needs.

        ``k``, except for a point-mass guide: its K draws are all z(x), so the log weights
        log w_j = log p(x, z(x)) − log q(z(x) | x) are equal and IWAE_K = log (1/K) Σ_j w_j = log w_1 = the
        ELBO for every K (likewise a K-draw Monte Carlo ELBO): one draw gives the exact value, K − 1 more
        only repeat it.
        """
        return 1 if self.point_mass_guide else k

    @property
    def has_closed_form_elbo(self) -> bool:
        return self._overrides("closed_form_elbo")

    @property
    def svi_engines(self) -> tuple[str, ...]:
        """The SVI engines that can train the pair: ``engine_preference`` less those an option in use cannot run."""
        return tuple(e for e in self.engine_preference if not self.unsupported_options(e))

    def unsupported_options(self, engine: str) -> list[tuple[str, str]]:
        """(option, reason) for every option of the pair's config in use that the SVI ``engine`` cannot run (its
        declaration: :func:`ppgen.declare.supported`)."""
        return unsupported(self.config, engine) if dataclasses.is_dataclass(self.config) else []

    @property
    def who(self) -> str:
        """The family's name for messages."""
        return self.name or type(self).__name__

    # -- shared helpers -------------------------------------------------------------
    @property
    def x_shape(self) -> tuple[int, ...]:
        return tuple(self.config.x_shape)

    @property
    def likelihood(self) -> str:
        return getattr(self.config, "likelihood", "gaussian")

    #: what ``ppgen evaluate`` says beside the bound where it is not a log-likelihood of the data (module docs)
    likelihood_note: str | None = None

    @classmethod
    def trains_on_grey_levels(cls, options: dict[str, Any]) -> bool:
        """Whether a run with these model options takes the data's grey levels where the command would binarize
        them by default (M2 scoring grey pixels by a Bernoulli cross-entropy); False by default."""
        return False

    def config_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self.config)))

    @classmethod
    def from_config(cls, config: dict[str, Any], written: bool = True) -> GenerativeModel:
        """The pair of the JSON options ``config``: by default what a run wrote (a field it lacks was added later and
        takes its declared ``absent`` value); ``written=False``: options given now (a field not given takes its
        default)."""
        if not isinstance(config, dict):
            raise UserError(f"{cls.name}: the model options must be a JSON object, got {type(config).__name__}")
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        unknown = set(config) - fields
        if unknown:
            raise UserError(f"{cls.name}: unknown option(s) {sorted(unknown)}; known: {sorted(fields)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
        # a field added after runs were written may declare the value those runs had ("absent" in its metadata)
        for f in dataclasses.fields(cls.Config) if written else ():
            if f.name not in values and "absent" in f.metadata:
                values[f.name] = f.metadata["absent"]
        return cls(**values)

    @property
    def samples_in_steps(self) -> bool:
        return self.sample_steps_option is not None

    def in_steps(self, steps: int) -> GenerativeModel:
        """The pair rebuilt to sample in ``steps`` steps, with the same weights (see the module docs)."""
        if self.sample_steps_option is None:
            raise UserError(f"{self.who} does not sample in steps")
        config = {**self.config_dict(), **self.sample_steps_config, self.sample_steps_option: steps}
        faster = type(self).from_config(config)
        faster.load_state_dict(self.state_dict())
        return faster.eval()

    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        """Raise :class:`UserError` if ``x`` cannot be observed by this pair."""
        if isinstance(x, SparseCounts) and not self.observes_word_counts:
            raise UserError(f"{what} is a text corpus (word counts), which {self.who} does not model; the families "
                            f"that take text data: {', '.join(text_families())} (see `ppgen models`)")
        check_observations(x, self.x_shape, self.likelihood, what)

    def check_inputs(self, x: torch.Tensor, inputs: tuple[torch.Tensor, ...], what: str = "data") -> None:
        """Raise :class:`UserError` unless ``inputs`` are the pair's columns for ``x``: one per name in
        ``self.inputs``, each with one row per example."""
        if len(inputs) != len(self.inputs):
            raise UserError(f"{self.who} takes the input columns ({', '.join(self.inputs) or 'none'}) beside x but "
                            f"was given {len(inputs)}; pass one column per name, in that order")
        for name, column in zip(self.inputs, inputs):
            if column.shape[:1] != x.shape[:1]:
                raise UserError(f"{what}: input column {name!r} has {column.shape[0] if column.ndim else 0} rows "
                                f"but there are {x.shape[0]} examples; give one row per example")


#: the methods that run with the pair owning its ``pyro.param`` values
OWNING_METHODS = ("model", "guide", "objective", "closed_form_elbo", "generate")


#: what a caller keeps rather than trains through: called from outside a Pyro model/guide run, these run without
#: autograd and return detached tensors (``pair.generate(8).numpy()`` works); inside one they are left alone
RESULT_METHODS = ("generate", "encode", "reconstruct", "sample_proportions")


def _detached(method: Callable) -> Callable:
    @functools.wraps(method)
    def run(self, *args: Any, **kwargs: Any) -> Any:
        if _PYRO_STACK:  # a model or guide being traced may need the gradients
            return method(self, *args, **kwargs)
        with torch.no_grad():
            return _detach(method(self, *args, **kwargs))

    run._detached = True
    return run


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return type(value)(*(_detach(v) for v in value))
    if isinstance(value, tuple | list):
        return type(value)(_detach(v) for v in value)
    return value


def _owning(method: Callable) -> Callable:
    @functools.wraps(method)
    def run(self, *args: Any, **kwargs: Any) -> Any:
        holder = self.__dict__.get("_modules", {}).get("pyro_params")
        if holder is None:  # before GenerativeModel.__init__ ran
            return method(self, *args, **kwargs)
        with ppl.param_owner(holder):
            return method(self, *args, **kwargs)

    run._owns_params = True
    return run


def _make_room_hook(module: GenerativeModel, state: dict, prefix: str, *args: Any) -> None:
    module.make_room(state, prefix)


def text_families() -> list[str]:
    """The names of the registered families that observe word counts (take a text corpus)."""
    return sorted(name for name, cls in REGISTRY.items() if cls.observes_word_counts)


def check_observations(x: torch.Tensor, x_shape: tuple[int, ...], likelihood: str, what: str = "data") -> None:
    """Shape, finiteness and support checks with messages that say what to do."""
    if tuple(x.shape[1:]) != tuple(x_shape):
        raise UserError(
            f"{what} has shape {tuple(x.shape[1:])} per example but the model expects {tuple(x_shape)}; "
            f"build the model with x_shape={tuple(x.shape[1:])} or reshape the data"
        )
    if x.shape[0] == 0:
        raise UserError(f"{what} is empty; give at least one example")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(dim=tuple(range(1, x.ndim))).sum())
        raise UserError(f"{what} holds NaN or infinite values in {bad} example(s); remove or impute them")
    if likelihood == "bernoulli" and not ((x == 0) | (x == 1)).all():
        raise UserError(
            f"{what} is not binary but the likelihood is Bernoulli; binarize it (binarize: dynamic, static or "
            "threshold) or use likelihood cbernoulli or gaussian"
        )
    if likelihood == "cbernoulli" and ((x < 0) | (x > 1)).any():
        raise UserError(f"{what} lies outside [0, 1] but the likelihood is continuous Bernoulli; rescale it to [0, 1]")


def observation_dist(likelihood: str, params: Any, event_dims: int):
    """The likelihood p(x|z) as an event distribution on the active backend."""
    from ppgen.ppl import dist

    if likelihood == "bernoulli":
        d = dist.Bernoulli(logits=params)
    elif likelihood == "cbernoulli":
        d = dist.ContinuousBernoulli(logits=params)
    elif likelihood == "gaussian":
        loc, scale = params
        d = dist.Normal(loc, scale)
    else:
        raise UserError(f"unknown likelihood {likelihood!r}; choose one of {', '.join(LIKELIHOODS)}")
    return d.to_event(event_dims)


def observation_mean(likelihood: str, params: Any) -> torch.Tensor:
    """E[x|z] for a likelihood's parameters (torch)."""
    if likelihood == "bernoulli":
        return torch.sigmoid(params)
    if likelihood == "cbernoulli":
        return torch.distributions.ContinuousBernoulli(logits=params).mean
    return params[0]


def samples_from(obj: Any) -> bool:
    """Whether ``obj`` draws samples: a pair that can generate, or any sampler with a ``generate(n)`` method
    (a rejection-corrected sampler, a user's object)."""
    if isinstance(obj, GenerativeModel):
        return obj.can_generate
    return callable(getattr(obj, "generate", None))
