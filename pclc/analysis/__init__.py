"""Analyses behind the paper's figures: predictive behaviour (Fig. 2), t-SNE (Fig. 1, 3), probability gaps."""

from pclc.analysis.behaviour import behaviour_from_eval_files, newly_successful, plot_behaviour
from pclc.analysis.gaps import gap_stats, plot_gaps, probability_gaps
from pclc.analysis.tsne import embed, penultimate_features, plot_tsne, tsne_panels

__all__ = [
    "behaviour_from_eval_files",
    "newly_successful",
    "plot_behaviour",
    "gap_stats",
    "plot_gaps",
    "probability_gaps",
    "embed",
    "penultimate_features",
    "plot_tsne",
    "tsne_panels",
]
