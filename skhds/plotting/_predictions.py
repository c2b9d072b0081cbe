"""Posterior predictive curves: per series, per group, and against an input (dose-response)."""

import numpy as np

from ._utils import (
    Z50,
    Z90,
    dense_grid,
    figure_and_axes,
    grid,
    group_labels,
    observable_index,
    observations,
    series_times,
    sorted_levels,
    subset,
)

__all__ = ["plot_predictions", "plot_group_predictions", "plot_dose_response"]


def plot_predictions(estimator, X, *, groups=None, inputs=None, times=None, prediction_times=None,
                     series=None, observables=None):
    """Data and posterior predictive curves of a few series.

    One panel per (series, observable): the observations as points, the
    importance-weighted posterior predictive mean, and 50% and 90% predictive
    bands. The bands are a Gaussian approximation built from the predictive
    mean and standard deviation of :meth:`HierarchicalODEVAE.predict`
    (``mean +- 0.674 std`` and ``mean +- 1.645 std``); they include
    observation noise.

    Parameters
    ----------
    estimator : HierarchicalODEVAE
        A fitted estimator.
    X : array-like of shape (n_series, n_observables, n_times)
        Observations (they condition the predictions).
    groups : array-like or DataFrame, optional
        Group labels, as in ``fit``.
    inputs : array-like of shape (n_series, n_inputs), optional
        Inputs, as in ``fit``.
    times : array-like of shape (n_times,) or (n_series, n_times), optional
        Observation times, as in ``fit``.
    prediction_times : array-like of shape (n_out,), optional
        Grid of the predicted curves; default 100 points spanning the
        observation times.
    series : sequence of int, optional
        Series to show (rows); default the first four.
    observables : sequence of int or str, optional
        Observables to show (columns); default all.

    Returns
    -------
    matplotlib.figure.Figure
        The figure, with a ``(len(series), len(observables))`` grid of axes.
    """
    X = np.asarray(X, dtype=float)
    series = list(range(min(4, X.shape[0]))) if series is None else [int(i) for i in series]
    if not series:
        raise ValueError("series must select at least one series.")
    obs = [observable_index(estimator, o) for o in
           (range(len(estimator.model_.observable_names)) if observables is None else observables)]
    Xs, gs, us, ts = subset(X, groups, inputs, times, np.asarray(series))
    data = estimator._prepare(Xs, gs, us, ts, reset=False)
    t_obs = series_times(data)
    y_obs = observations(data)
    pt = dense_grid(t_obs) if prediction_times is None else np.asarray(prediction_times, dtype=float)
    mean, std = estimator.predict(Xs, groups=gs, inputs=us, times=ts, prediction_times=pt,
                                  return_std=True)
    fig, axes = grid(len(series), len(obs), sharex=True)
    for r, i in enumerate(series):
        for c, (j, name) in enumerate(obs):
            ax = axes[r, c]
            tp = pt if pt.ndim == 1 else pt[r]
            m, s = mean[r, j], std[r, j]
            ax.fill_between(tp, m - Z90 * s, m + Z90 * s, color="C0", alpha=0.2, lw=0, label="90%")
            ax.fill_between(tp, m - Z50 * s, m + Z50 * s, color="C0", alpha=0.35, lw=0, label="50%")
            ax.plot(tp, m, color="C0", label="predictive mean")
            ax.plot(t_obs[r], y_obs[r, j], "o", color="k", ms=3, label="data")
            ax.set_title(f"series {i}", fontsize="small")
            ax.set_ylabel(name)
            if r == len(series) - 1:
                ax.set_xlabel("time")
    axes[0, 0].legend(fontsize="x-small")
    fig.tight_layout()
    return fig


def plot_group_predictions(estimator, X, *, groups, factor=None, inputs=None, times=None,
                           observable=0):
    """Data and predictions of every series, one panel per level of a factor.

    Each panel shows the data of the level's series (thin lines with
    markers), the posterior predictive mean of each series (thin lines of the
    same colour) and the mean of those predictions over the level's series
    (thick black line).

    Parameters
    ----------
    estimator : HierarchicalODEVAE
        A fitted estimator.
    X : array-like of shape (n_series, n_observables, n_times)
        Observations.
    groups : array-like or DataFrame
        Group labels: a DataFrame with one column per factor, or an array
        (1-D for one factor; 2-D with columns in the model's factor order).
    factor : str, optional
        Factor whose levels define the panels; default the first column of
        ``groups`` (or the model's first factor).
    inputs : array-like of shape (n_series, n_inputs), optional
        Inputs, as in ``fit``.
    times : array-like of shape (n_times,) or (n_series, n_times), optional
        Observation times, as in ``fit``.
    observable : int or str, default=0
        Observable to show.

    Returns
    -------
    matplotlib.figure.Figure
        The figure, one axes per level (in sorted level order).
    """
    X = np.asarray(X, dtype=float)
    j, name = observable_index(estimator, observable)
    factor, labels = group_labels(estimator, groups, X.shape[0], factor)
    levels = sorted_levels(labels)
    data = estimator._prepare(X, groups, inputs, times, reset=False)
    t_obs, y_obs = series_times(data), observations(data)[:, j]
    pt = dense_grid(t_obs)
    mean = estimator.predict(X, groups=groups, inputs=inputs, times=times, prediction_times=pt)[:, j]
    n_cols = min(3, len(levels))
    n_rows = -(-len(levels) // n_cols)
    fig, axes = grid(n_rows, n_cols, sharex=True, sharey=True)
    flat = axes.ravel()
    for ax in flat[len(levels):]:
        ax.remove()
    for ax, level in zip(flat, levels):
        members = np.flatnonzero(labels == level)
        for c, i in enumerate(members):
            color = f"C{c % 10}"
            ax.plot(t_obs[i], y_obs[i], "o-", color=color, lw=0.5, ms=2, alpha=0.6)
            ax.plot(pt, mean[i], color=color, lw=1)
        ax.plot(pt, np.nanmean(mean[members], axis=0), color="k", lw=2.5, label="group mean")
        ax.set_title(f"{factor} = {level}", fontsize="small")
        ax.set_xlabel("time")
        ax.set_ylabel(name)
    flat[0].legend(fontsize="x-small")
    fig.tight_layout()
    return fig


def plot_dose_response(estimator, X, *, inputs, input_name, at_times, groups=None, times=None,
                       observable=0, ax=None):
    """Predicted and observed response against an input, at given times.

    For every time in ``at_times`` the posterior predictive mean and a
    Gaussian-approximate 90% band (``mean +- 1.645 std``), averaged over the
    series that share an input value, are drawn as a line and band against
    the input; the observations at the observation time nearest to it are
    drawn as points. The input axis is symmetric-logarithmic (linear around
    zero, so that a zero dose is shown) when the positive input values span
    more than two decades.

    Parameters
    ----------
    estimator : HierarchicalODEVAE
        A fitted estimator whose model declares ``input_name``.
    X : array-like of shape (n_series, n_observables, n_times)
        Observations.
    inputs : array-like of shape (n_series, n_inputs) or DataFrame
        Inputs, as in ``fit``.
    input_name : str
        The input on the horizontal axis.
    at_times : float or sequence of float
        Times at which the response is shown (one line each).
    groups : array-like or DataFrame, optional
        Group labels, as in ``fit``.
    times : array-like of shape (n_times,) or (n_series, n_times), optional
        Observation times, as in ``fit``.
    observable : int or str, default=0
        Observable to show.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into; default a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        The figure holding the axes.
    """
    X = np.asarray(X, dtype=float)
    j, name = observable_index(estimator, observable)
    input_names = list(estimator.model_.inputs)
    if input_name not in input_names:
        raise ValueError(f"input_name {input_name!r} is not one of the model's inputs {input_names}.")
    at = np.atleast_1d(np.asarray(at_times, dtype=float))
    data = estimator._prepare(X, groups, inputs, times, reset=False)
    u = data.inputs[:, input_names.index(input_name)]
    t_obs, y_obs = series_times(data), observations(data)[:, j]
    mean, std = estimator.predict(X, groups=groups, inputs=inputs, times=times,
                                  prediction_times=at, return_std=True)
    mean, std = mean[:, j], std[:, j]
    doses = np.unique(u)
    fig, ax = figure_and_axes(ax)
    for k, t in enumerate(at):
        color = f"C{k % 10}"
        m = np.array([np.nanmean(mean[u == d, k]) for d in doses])
        lo = np.array([np.nanmean(mean[u == d, k] - Z90 * std[u == d, k]) for d in doses])
        hi = np.array([np.nanmean(mean[u == d, k] + Z90 * std[u == d, k]) for d in doses])
        ax.fill_between(doses, lo, hi, color=color, alpha=0.2, lw=0)
        ax.plot(doses, m, color=color, label=f"t = {t:g}")
        dist = np.abs(np.nan_to_num(t_obs, nan=np.inf) - t)
        nearest = np.argmin(dist, axis=1)
        y = y_obs[np.arange(len(u)), nearest]
        ax.plot(u, y, "o", color=color, ms=3, alpha=0.7)
    pos = u[u > 0]
    if pos.size and pos.max() / pos.min() > 100:
        if (u <= 0).any():
            ax.set_xscale("symlog", linthresh=float(pos.min()))
        else:
            ax.set_xscale("log")
    ax.set_xlabel(input_name)
    ax.set_ylabel(name)
    ax.legend(fontsize="x-small")
    return fig
