"""Evaluation: log-likelihood estimates, posterior-collapse diagnostics, sample quality and mode coverage."""

from ppgen.evaluation.ais import AISResult, BDMCResult, ais, bdmc
from ppgen.evaluation.collapse import active_units, kl_per_dim, layer_report, mutual_information, report
from ppgen.evaluation.likelihood import bits_per_dim, elbo, iwae, log_weights
from ppgen.evaluation.modes import mode_report
from ppgen.evaluation.samples import fid, inception_score, kid, precision_recall, sample_quality
from ppgen.evaluation.sbc import SBCResult, guide_sbc

__all__ = ["AISResult", "BDMCResult", "active_units", "ais", "bdmc", "bits_per_dim", "elbo", "iwae", "kl_per_dim",
           "layer_report", "log_weights", "mutual_information", "report",
           "SBCResult", "guide_sbc", "fid", "inception_score", "kid", "mode_report", "precision_recall", "sample_quality"]
