"""Evaluation: log-likelihood estimates and posterior-collapse diagnostics."""

from ppgen.evaluation.collapse import active_units, kl_per_dim, mutual_information, report
from ppgen.evaluation.likelihood import bits_per_dim, elbo, iwae, log_weights

__all__ = ["active_units", "bits_per_dim", "elbo", "iwae", "kl_per_dim", "log_weights", "mutual_information", "report"]
