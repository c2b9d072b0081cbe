"""Shared helpers of the plotting functions: lazy matplotlib, data subsets, labels."""

import numpy as np
import pandas as pd

from .._validation import check_groups

Z50, Z90 = 0.674, 1.645  # Gaussian quantiles of central 50% and 90% intervals


def pyplot():
    """Import ``matplotlib.pyplot`` lazily, with a helpful message if it is missing."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # optional dependency
        raise ImportError("matplotlib is required for skhds.plotting: pip install matplotlib") from exc
    return plt


def figure_and_axes(ax=None, **subplots_kw):
    """``(fig, ax)``: the figure of ``ax``, or a new figure with one axes."""
    plt = pyplot()
    if ax is not None:
        return ax.figure, ax
    return plt.subplots(**subplots_kw)


def grid(n_rows, n_cols, panel=(3.2, 2.4), **kw):
    """A figure with an ``(n_rows, n_cols)`` array of axes."""
    plt = pyplot()
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(panel[0] * n_cols, panel[1] * n_rows),
                             squeeze=False, **kw)
    return fig, axes


def subset(X, groups, inputs, times, idx):
    """The arguments of an estimator method restricted to the series ``idx``."""
    X = np.asarray(X)[idx]
    if groups is not None:
        groups = (groups.iloc[idx] if isinstance(groups, (pd.DataFrame, pd.Series))
                  else np.asarray(groups, dtype=object)[idx])
    if inputs is not None:
        inputs = inputs.iloc[idx] if isinstance(inputs, pd.DataFrame) else np.asarray(inputs)[idx]
    if times is not None and np.ndim(times) == 2:
        times = np.asarray(times)[idx]
    return X, groups, inputs, times


def series_times(data):
    """Observation times ``(n_series, n_times)`` (NaN where no observable is observed)."""
    t = np.asarray(data.times, dtype=float)
    t = np.broadcast_to(t, (data.n_series, t.shape[-1])) if t.ndim == 1 else t
    return np.where(data.mask.any(1), t, np.nan)


def observations(data):
    """Observations ``(n_series, n_observables, n_times)`` with NaN where missing."""
    return np.where(data.mask, data.y, np.nan)


def dense_grid(t, n=100):
    """``n`` evenly spaced times over the range of ``t`` (NaN ignored)."""
    return np.linspace(np.nanmin(t), np.nanmax(t), n)


def group_labels(estimator, groups, n_series, factor=None):
    """Factor name and the labels of every series for that factor.

    ``groups`` is a DataFrame (``factor`` is a column; default the first), a
    1-D array (one factor: the model's first, or ``factor``) or a 2-D array
    whose columns are the model's factors.
    """
    if groups is None:
        raise ValueError("groups is required to split series by a factor.")
    if isinstance(groups, pd.DataFrame):
        factor = groups.columns[0] if factor is None else factor
        if factor not in groups.columns:
            raise ValueError(f"factor {factor!r} is not a column of groups {list(groups.columns)}.")
        return factor, groups[factor].to_numpy(dtype=object)
    if isinstance(groups, pd.Series):
        return (groups.name if factor is None else factor) or "group", groups.to_numpy(dtype=object)
    g = np.asarray(groups, dtype=object)
    names = list(estimator.model_.factors) or ["group"]
    if g.ndim == 1:
        return (names[0] if factor is None else factor), g
    df = check_groups(g, n_series, names[: g.shape[1]])
    factor = df.columns[0] if factor is None else factor
    if factor not in df.columns:
        raise ValueError(f"factor {factor!r} is not one of the model's factors {names}.")
    return factor, df[factor].to_numpy(dtype=object)


def sorted_levels(labels):
    """Unique labels, numbers first in numeric order, then strings."""
    def key(v):
        return (0, v) if isinstance(v, (int, float, np.integer, np.floating)) else (1, str(v))
    return sorted(pd.unique(np.asarray(labels, dtype=object)), key=key)


def observable_index(estimator, observable):
    """Position and name of an observable given by index or name."""
    names = list(estimator.model_.observable_names)
    if isinstance(observable, str):
        if observable not in names:
            raise ValueError(f"Unknown observable {observable!r}; the model has {names}.")
        return names.index(observable), observable
    j = int(observable)
    if not -len(names) <= j < len(names):
        raise ValueError(f"observable index {j} out of range for {len(names)} observables.")
    return j % len(names), names[j]


def kde(values, grid_x):
    """Gaussian kernel density estimate (Scott's bandwidth) of ``values`` on ``grid_x``."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 2 or np.std(v) == 0:
        return np.zeros_like(grid_x)
    bw = 1.06 * np.std(v) * v.size ** (-1 / 5)
    d = (grid_x[:, None] - v[None, :]) / bw
    return np.exp(-0.5 * d * d).sum(1) / (v.size * bw * np.sqrt(2 * np.pi))
