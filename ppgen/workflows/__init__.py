"""What the ``ppgen`` commands do, as functions on run directories: one module per command.

:mod:`~ppgen.workflows.train` (``make_config``, ``train_run``), :mod:`~ppgen.workflows.evaluate`,
:mod:`~ppgen.workflows.sample`, :mod:`~ppgen.workflows.compare`, :mod:`~ppgen.workflows.rejection` (the ratio
classifier cache), :mod:`~ppgen.workflows.topics`, :mod:`~ppgen.workflows.stages` (a family's own training
stages), and :mod:`~ppgen.workflows.common` (a run's data, loaded one way). Run directories are read and
written only through :mod:`ppgen.runs`.
"""

from ppgen.workflows.common import has_density, mode_metrics, quick_metrics, run_data
from ppgen.workflows.compare import compare_run
from ppgen.workflows.evaluate import evaluate_run, evaluate_run_samples
from ppgen.workflows.rejection import REJECTION, evaluate_rejection, ratio_sampler
from ppgen.workflows.sample import sample_run
from ppgen.workflows.stages import declared_stages, stage_run
from ppgen.workflows.topics import topic_metrics, topics_run
from ppgen.workflows.train import CLI_DEFAULTS, backend_options, make_config, posterior_fits, train_run

__all__ = ["CLI_DEFAULTS", "REJECTION", "backend_options", "compare_run", "declared_stages", "evaluate_rejection",
           "evaluate_run", "evaluate_run_samples", "has_density", "make_config", "mode_metrics",
           "posterior_fits", "quick_metrics", "ratio_sampler", "run_data", "sample_run", "stage_run",
           "topic_metrics", "topics_run", "train_run"]
