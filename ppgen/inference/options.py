"""Training options: one frozen dataclass per backend, every option declared once and validated here.

A field carries its help text, its CLI flag and its check in ``metadata``; the
``ppgen`` command derives its flags from these declarations (:func:`cli_flags`), the
engines read the validated values, and a run's ``config.json`` stores them (the
dataclasses round-trip through JSON). A bad value raises :class:`OptionError`, which
names the *option* (``lr``); the CLI rewrites it to name the *flag* (``--lr``). The declaration
machinery (:func:`option`, the checks, :func:`validate`, :class:`OptionError`) lives in the leaf
:mod:`ppgen.declare`, which the model families' configs use too; its names are importable from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ppgen.declare import (  # noqa: F401  (the checks and the declaration are importable from here too)
    ALL_ENGINES,
    OptionError,
    adam_betas,
    boolean,
    cli_flags,
    decay_rate,
    device_name,
    in_use,
    nonnegative_float,
    nonnegative_int,
    one_of,
    option,
    optional_name,
    optional_sizes,
    positive_float,
    positive_int,
    probability,
    refuse_unsupported,
    seed_int,
    share_of_one,
    supported,
    unsupported,
    validate,
)
from ppgen.ppl import ELBOS

ENGINES = ("auto", "torch", "jax")
LOSSES = ("ns", "minimax", "wgan-gp", "lsgan", "ali")
OPTIMIZERS = ("adam", "rmsprop", "sgd")
X_DRAWS = ("rsample", "mean")
CRITIC_NETS = ("auto", "mlp", "conv")


def _epochs() -> Any:
    return option(10, positive_int, "number of epochs (the new total when resuming)")


def _batch_size() -> Any:
    return option(256, positive_int, "examples per step (at most the training set: larger means the whole set)")


def _seed() -> Any:
    return option(0, seed_int, "random seed of weights, shuffling and sampling")


def _device() -> Any:
    return option("cpu", device_name, "cpu, cuda or cuda:N")


def one_process_only(options: Any) -> list[tuple[str, str]]:
    """(option, why) for every option in use that cannot be split over data-parallel processes."""
    return [(f.name, f.metadata["one_process"]) for f in dataclasses.fields(options)
            if f.metadata.get("one_process") and in_use(options, f)]


def elbo_options_in_use(options: Any) -> list[str]:
    """The options in use that shape the ELBO (meaningless for a pair trained on its own objective)."""
    return [f.name for f in dataclasses.fields(options) if f.metadata.get("shapes_elbo") and in_use(options, f)]


@dataclass(frozen=True)
class SVIOptions:
    """Options of the SVI backend (both engines; an option declared ``supported(engines=...)`` runs on those only)."""

    epochs: int = _epochs()
    batch_size: int = _batch_size()
    lr: float = option(1e-3, positive_float, "Adam learning rate")
    adam_beta1: float = option(0.9, decay_rate, "Adam's first-moment decay beta1 (the ProdLDA paper's code: 0.99)")
    lr_final: float = option(1.0, share_of_one, "learning rate of the last epoch as a share of lr: it falls "
                             "geometrically epoch by epoch from lr to lr * lr_final (1: constant; 0.1: ten times "
                             "lower at the end, as Burda et al.'s schedule over its run)")
    elbo: str = supported(option("trace", one_of(ELBOS, "ELBO"), "objective: trace (Trace_ELBO), analytic "
                                 "(closed-form KL), iwae"), shapes_elbo=True)
    num_particles: int = supported(option(1, positive_int, "samples of q per example (the IWAE K)", flag="particles"),
                                   shapes_elbo=True)
    beta: float = supported(option(1.0, nonnegative_float, "KL weight (beta-VAE)"), shapes_elbo=True)
    anneal_epochs: float = supported(option(0.0, nonnegative_float, "linear KL warm-up from 0 to beta over this many "
                                            "epochs"), shapes_elbo=True)
    free_bits: float = supported(
        option(0.0, nonnegative_float, "free-bits floor per latent dimension, in nats (torch engine)"),
        engines=("torch",), feature="free bits", why="NumPyro has no free-bits ELBO", shapes_elbo=True,
        one_process="the free-bits floor is taken on the batch mean of each KL, which does not split over processes")
    mcmc_steps: int = supported(
        option(0, nonnegative_int, "MCMC inside training (Hoffman 2017): HMC transitions that refine the guide's z "
               "toward p(z|x) before the model's gradient; 0 is off (torch engine)"),
        engines=("torch",), feature="MCMC inside training (mcmc_steps)",
        why="its HMC transitions run on Pyro traces (ppgen.inference.hmc)",
        shapes_elbo=True)
    mcmc_step_size: float = option(0.05, positive_float, "initial HMC step size of --mcmc-steps, adapted toward "
                                   "--mcmc-accept between minibatches")
    mcmc_leapfrog: int = option(5, positive_int, "leapfrog steps per HMC transition of --mcmc-steps")
    mcmc_accept: float = option(0.8, probability, "target acceptance rate of the --mcmc-steps step size")
    aggressive_epochs: float = supported(
        option(0.0, nonnegative_float, "aggressive encoder updates (He et al. 2019) for this many epochs: before "
               "each model step, guide-only steps until the loss stops improving (torch engine)"),
        engines=("torch",), feature="the aggressive encoder phase (aggressive_epochs)",
        why="its inner loop stops on the loss, which a compiled epoch cannot",
        shapes_elbo=True,
        one_process="the aggressive phase's guide-only steps draw their own minibatches in each process")
    aggressive_steps: int = option(50, positive_int, "most guide-only steps per model step in the aggressive phase",
                                   cli=False)
    seed: int = _seed()
    device: str = _device()
    engine: str = option("auto", one_of(ENGINES, "SVI engine"), "auto (jax where the pair lowers and the options allow, else "
                         "torch), torch (Pyro) or jax (NumPyro, each epoch one compiled call)")
    monitor: str | None = option(None, optional_name, "keep the best epoch by this history column", cli=False)

    def __post_init__(self) -> None:
        validate(self)
        if self.elbo == "iwae" and self.num_particles < 2:
            raise OptionError("num_particles", self.num_particles, "the IWAE objective needs num_particles >= 2 (e.g. 5)")
        if self.engine != "auto":
            refuse_unsupported(self, self.engine)
        if self.mcmc_steps > 0 and self.elbo == "iwae":
            raise OptionError("mcmc_steps", self.mcmc_steps, "MCMC inside training refines one draw of q per "
                              "example; use elbo='trace' or 'analytic' with it")


def optional_positive(v: Any) -> str | None:
    return None if v is None else positive_float(v)


@dataclass(frozen=True)
class AdversarialOptions:
    """Options of the adversarial backend (see :mod:`ppgen.inference.adversarial`)."""

    loss: str = option("ns", one_of(LOSSES, "adversarial loss"), "adversarial loss")
    epochs: int = _epochs()
    batch_size: int = _batch_size()
    n_critic: int = option(1, positive_int, "critic steps per generator step (WGAN-GP usually 5)")
    lr: float = option(2e-4, positive_float, "Adam learning rate of both players (lr_g / lr_d set one of them)")
    lr_g: float | None = option(None, optional_positive, "generator (and encoder) learning rate (default: lr)",
                                cli=False)
    lr_d: float | None = option(None, optional_positive, "critic learning rate (default: lr)", cli=False)
    betas: tuple[float, float] = option((0.5, 0.999), adam_betas, "Adam betas of both players", cli=False)
    optimizer_g: str = option("adam", one_of(OPTIMIZERS, "optimizer"), "generator optimizer", cli=False)
    optimizer_d: str = option("adam", one_of(OPTIMIZERS, "optimizer"), "critic optimizer", cli=False)
    gp_weight: float = option(10.0, nonnegative_float, "WGAN-GP gradient-penalty weight", cli=False)
    pack: int = option(1, positive_int, "PacGAN: the critic scores this many examples at once")
    lr_decay: bool = option(False, boolean, "learning rates decay linearly to 0")
    x_draw: str = option("rsample", one_of(X_DRAWS, "x_draw"), "x from the model: its reparameterized draw or its mean",
                         cli=False)
    critic_hidden: tuple[int, ...] | None = option(None, optional_sizes, "critic MLP hidden sizes (default "
                                                   "128,128,128)")
    critic_net: str = option("auto", one_of(CRITIC_NETS, "critic network"), "critic network (auto: by data shape)", cli=False)
    seed: int = _seed()
    device: str = _device()

    def __post_init__(self) -> None:
        validate(self)
        if self.batch_size % self.pack:
            raise OptionError("batch_size", self.batch_size, f"must be a multiple of pack={self.pack}")

    @property
    def generator_lr(self) -> float:
        """The generator's (and encoder's) learning rate: ``lr_g``, else ``lr``."""
        return self.lr if self.lr_g is None else self.lr_g

    @property
    def critic_lr(self) -> float:
        """The critic's learning rate: ``lr_d``, else ``lr``."""
        return self.lr if self.lr_d is None else self.lr_d


def lr_at(epoch: int, epochs: int, lr: float, lr_final: float) -> float:
    """The learning rate of ``epoch`` (0-based) of ``epochs``: ``lr · lr_final^(epoch / (epochs − 1))``, a geometric
    fall from ``lr`` at the first epoch to ``lr · lr_final`` at the last (constant within an epoch). A run resumed
    with more epochs than it was planned for follows the schedule of its new total from the epoch it stands at,
    so its rate steps up there (both engines alike: the JAX engine's schedule reads the same total)."""
    if lr_final == 1.0 or epochs <= 1:
        return lr
    return lr * lr_final ** (epoch / (epochs - 1))


def beta_at(epoch: int, step: int, steps_per_epoch: int, beta: float, anneal_epochs: float) -> float:
    """The KL weight at ``step`` of ``epoch``: linear warm-up from 0 to ``beta`` over ``anneal_epochs`` epochs."""
    if anneal_epochs <= 0:
        return beta
    progress = (epoch + step / steps_per_epoch) / anneal_epochs
    return beta * min(1.0, progress)


def make(cls: type, values: dict[str, Any]) -> Any:
    """``cls(**values)`` with an unknown name refused in one line; lists from JSON become tuples."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise OptionError(unknown[0], values[unknown[0]], f"is not an option of {cls.__name__}; known: "
                          f"{', '.join(sorted(names))}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def as_dict(options: Any) -> dict[str, Any]:
    """The options as JSON-able values (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(options).items()}


def flag_of(option_name: str) -> str:
    """The CLI flag of an option, for messages (``num_particles`` -> ``--particles``): a training option's, else
    a model option's (a family's ``Config`` field with ``metadata["flag"]``), else the name with dashes."""
    from ppgen.models import REGISTRY

    configs = [cls.Config for cls in REGISTRY.values() if dataclasses.is_dataclass(cls.Config)]
    for cls in (SVIOptions, AdversarialOptions, *configs):
        for flag, f in cli_flags(cls):
            if f.name == option_name:
                return "--" + flag
    return "--" + option_name.replace("_", "-")
