"""Matplotlib figures for fitted estimators (matplotlib is an optional dependency).

Every function returns a :class:`matplotlib.figure.Figure`; matplotlib is
imported only when a function is called.
"""

from ._posteriors import plot_individual_parameters, plot_posteriors
from ._predictions import plot_dose_response, plot_group_predictions, plot_predictions
from ._training import plot_importance_diagnostics, plot_training_curves
from ._vpc import plot_vpc, simulate_replicates

__all__ = [
    "plot_dose_response",
    "plot_group_predictions",
    "plot_importance_diagnostics",
    "plot_individual_parameters",
    "plot_posteriors",
    "plot_predictions",
    "plot_training_curves",
    "plot_vpc",
    "simulate_replicates",
]
