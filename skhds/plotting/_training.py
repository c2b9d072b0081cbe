"""Training curves and importance-sampling diagnostics."""

import numpy as np

from ._utils import grid

__all__ = ["plot_training_curves", "plot_importance_diagnostics"]


def plot_training_curves(estimator):
    """Training loss (and validation score) and effective sample size per epoch.

    Parameters
    ----------
    estimator : HierarchicalODEVAE
        A fitted estimator.

    Returns
    -------
    matplotlib.figure.Figure
        Two axes: the training loss per epoch (``loss_curve_``) with, under
        early stopping, the validation score on a twin axis; and the mean
        effective sample size of the training importance weights
        (``history_["ess"]``).
    """
    loss = np.asarray(estimator.loss_curve_, dtype=float)
    epochs = np.arange(1, loss.size + 1)
    fig, axes = grid(1, 2, panel=(4.0, 3.0))
    ax_loss, ax_ess = axes[0]
    ax_loss.plot(epochs, loss, color="C0", label="training loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss (negative bound per series)")
    val = getattr(estimator, "validation_scores_", None)
    if val:
        twin = ax_loss.twinx()
        twin.plot(np.arange(1, len(val) + 1), val, color="C1", label="validation score")
        twin.set_ylabel("validation score")
        twin.legend(loc="upper center", fontsize="x-small")
    ax_loss.legend(fontsize="x-small")
    hist = estimator.history_
    ep = hist["epoch"].to_numpy() if "epoch" in hist else np.arange(1, len(hist) + 1)
    ax_ess.plot(ep, hist["ess"].to_numpy(dtype=float), color="C2", label="mean ESS")
    ax_ess.axhline(estimator.n_importance_samples, color="0.5", ls=":", lw=1, label="K")
    ax_ess.set_xlabel("epoch")
    ax_ess.set_ylabel("effective sample size")
    ax_ess.legend(fontsize="x-small")
    fig.tight_layout()
    return fig


def plot_importance_diagnostics(estimator, X, *, groups=None, inputs=None, times=None, refine=0,
                                include_global=False):
    """Effective sample size fraction and Pareto-k of every series.

    Parameters
    ----------
    estimator : HierarchicalODEVAE
        A fitted estimator.
    X : array-like of shape (n_series, n_observables, n_times)
        Observations.
    groups : array-like or DataFrame, optional
        Group labels, as in ``fit``.
    inputs : array-like of shape (n_series, n_inputs), optional
        Inputs, as in ``fit``.
    times : array-like of shape (n_times,) or (n_series, n_times), optional
        Observation times, as in ``fit``.
    refine : int, default=0
        Rounds of adaptation of the proposals, as in ``importance_diagnostics``.
    include_global : bool or "adapted", default=False
        Which weights to diagnose, as in ``importance_diagnostics``.

    Returns
    -------
    matplotlib.figure.Figure
        Two axes: ``ess_fraction`` per series, and ``pareto_k`` per series with
        reference lines at 0.5 (good) and 0.7 (unreliable above); flagged
        series are drawn in red, infinite values at the top of the axes.
        The values are those of :meth:`HierarchicalODEVAE.importance_diagnostics`.
    """
    diag = estimator.importance_diagnostics(X, groups=groups, inputs=inputs, times=times,
                                            refine=refine, include_global=include_global)
    idx = np.arange(len(diag))
    flagged = diag["flagged"].to_numpy(dtype=bool)
    colors = np.where(flagged, "C3", "C0")
    fig, axes = grid(1, 2, panel=(4.0, 3.0))
    ax_ess, ax_k = axes[0]
    ax_ess.scatter(idx, diag["ess_fraction"].to_numpy(), c=colors, s=12)
    ax_ess.set_ylim(0, 1.05)
    ax_ess.set_xlabel("series")
    ax_ess.set_ylabel("ESS / n_eval_samples")
    k = diag["pareto_k"].to_numpy(dtype=float)
    finite = np.isfinite(k)
    top = max(1.0, np.max(k[finite]) if finite.any() else 1.0)
    ax_k.scatter(idx, np.where(np.isinf(k), top, k), c=colors, s=12)
    ax_k.axhline(0.5, color="0.4", ls="--", lw=1)
    ax_k.axhline(0.7, color="C3", ls="--", lw=1)
    ax_k.set_xlabel("series")
    ax_k.set_ylabel("Pareto k")
    fig.tight_layout()
    return fig
