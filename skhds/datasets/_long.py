"""Conversion between long-format tables and the estimator's arrays.

NLME users keep data in long format: one row per observation, with a series
(subject) id, a time, the observed value(s), per-series inputs (doses,
covariates) and group columns. ``from_long_format`` builds the 3-D array,
per-series time grids (NaN-padded when ragged; shared when every series has the
same times), inputs and groups; ``to_long_format`` turns predictions back into
a table.
"""

import numpy as np
import pandas as pd
from sklearn.utils import Bunch

__all__ = ["from_long_format", "to_long_format"]


def from_long_format(data, *, series, time, observables=None, value=None, observable=None,
                     inputs=None, groups=None):
    """Arrays for :class:`~skhds.HierarchicalODEVAE` from a long-format table.

    Give either ``observables`` (wide: one column per observable) or
    ``value`` and ``observable`` (one value column and a column naming the
    observable of each row).

    Parameters
    ----------
    data : pandas.DataFrame
        One row per observation (or per time point, in the wide form).
    series : str
        Column identifying the series (well, subject).
    time : str
        Column of observation times.
    observables : list of str, optional
        Columns holding observed values (wide form).
    value, observable : str, optional
        Value column and observable-name column (stacked form).
    inputs : list of str, optional
        Per-series input columns (must be constant within a series).
    groups : list of str, optional
        Group columns (constant within a series).

    Returns
    -------
    sklearn.utils.Bunch
        ``X`` ``(n_series, n_observables, n_times)`` with NaN where not
        observed; ``times`` ``(n_times,)`` if all series share their times,
        else ``(n_series, n_times)`` NaN-padded at the end; ``inputs``
        ``(n_series, n_inputs)`` or None; ``groups`` DataFrame or None;
        ``series_ids``; ``observable_names``.
    """
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"data must be a pandas DataFrame, got {type(data).__name__}.")
    wide = observables is not None
    if wide == (value is not None or observable is not None):
        raise ValueError("Give either observables=[...] or both value= and observable=.")
    if not wide and (value is None or observable is None):
        raise ValueError("The stacked form needs both value= and observable=.")
    cols = [series, time] + (list(observables) if wide else [value, observable])
    cols += list(inputs or []) + list(groups or [])
    missing = [c for c in cols if c not in data.columns]
    if missing:
        raise ValueError(f"data lacks columns {missing}.")
    df = data
    if not wide:
        obs_names = list(pd.unique(df[observable]))
        dup = df.duplicated([series, time, observable])
        if dup.any():
            first = df[dup].iloc[0]
            raise ValueError(
                f"{int(dup.sum())} repeated rows for the same series, time and observable "
                f"(e.g. series {first[series]!r} at {time}={first[time]!r}, {first[observable]!r})."
            )
        df = df.pivot(index=[series, time], columns=observable, values=value).reset_index()
        meta_cols = list(inputs or []) + list(groups or [])
        if meta_cols:
            meta = data.groupby(series, sort=False)[meta_cols].first().reset_index()
            df = df.merge(meta, on=series, how="left")
    else:
        obs_names = list(observables)
    if df[time].isna().any():
        raise ValueError(f"Column {time!r} has missing times.")
    ids = list(pd.unique(data[series]))
    per_series = []
    for sid in ids:
        rows = df[df[series] == sid].sort_values(time)
        if rows[time].duplicated().any():
            raise ValueError(f"Series {sid!r} has repeated times in column {time!r}.")
        per_series.append(rows)
    T = max(len(r) for r in per_series)
    n, n_obs = len(ids), len(obs_names)
    X = np.full((n, n_obs, T), np.nan)
    times = np.full((n, T), np.nan)
    for i, rows in enumerate(per_series):
        k = len(rows)
        times[i, :k] = rows[time].to_numpy(dtype=float)
        X[i, :, :k] = rows[obs_names].to_numpy(dtype=float).T
    if np.all(times == times[:1]):
        times = times[0]
    out_inputs = out_groups = None
    if inputs or groups:
        first = data.groupby(series, sort=False)
        for c in list(inputs or []) + list(groups or []):
            if (first[c].nunique(dropna=False) > 1).any():
                raise ValueError(f"Column {c!r} varies within a series; it must be per-series.")
        meta = first[list(inputs or []) + list(groups or [])].first().loc[ids]
        if inputs:
            out_inputs = meta[list(inputs)].to_numpy(dtype=float)
        if groups:
            out_groups = meta[list(groups)].reset_index(drop=True)
    return Bunch(X=X, times=times, inputs=out_inputs, groups=out_groups,
                 series_ids=np.asarray(ids, dtype=object), observable_names=obs_names)


def to_long_format(X, times, *, series_ids=None, observable_names=None, std=None):
    """A long-format table (one row per series, time and observable) from an array.

    Parameters
    ----------
    X : array-like of shape (n_series, n_observables, n_times)
        Observations or predictions.
    times : array-like of shape (n_times,) or (n_series, n_times)
        Observation times, shared by all series or one row per series.
    series_ids : sequence, optional
        Default ``0..n_series-1``.
    observable_names : sequence of str, optional
        Default ``"y0", "y1", ...``.
    std : array-like of the shape of ``X``, optional
        Predictive standard deviations, added as a column ``std``.

    Returns
    -------
    pandas.DataFrame
        Columns ``series``, ``time``, ``observable``, ``value`` (and ``std``);
        entries with NaN time (padding) are dropped.
    """
    X = np.asarray(X, dtype=float)
    if X.ndim != 3:
        raise ValueError(f"X must be 3-D (n_series, n_observables, n_times); got shape {X.shape}.")
    n, n_obs, T = X.shape
    t = np.asarray(times, dtype=float)
    if t.ndim == 1 and t.shape[0] == T:
        t = np.broadcast_to(t, (n, T))
    if t.shape != (n, T):
        raise ValueError(f"times must have shape ({T},) or ({n}, {T}); got {np.shape(times)}.")
    ids = np.arange(n) if series_ids is None else np.asarray(series_ids, dtype=object)
    names = [f"y{j}" for j in range(n_obs)] if observable_names is None else list(observable_names)
    if len(ids) != n or len(names) != n_obs:
        raise ValueError("series_ids / observable_names do not match the shape of X.")
    out = {
        "series": np.repeat(ids, n_obs * T),
        "time": np.tile(t[:, None, :], (1, n_obs, 1)).ravel(),
        "observable": np.tile(np.repeat(np.asarray(names, dtype=object), T), n),
        "value": X.ravel(),
    }
    if std is not None:
        std = np.asarray(std, dtype=float)
        if std.shape != X.shape:
            raise ValueError(f"std must have the shape of X {X.shape}; got {std.shape}.")
        out["std"] = std.ravel()
    df = pd.DataFrame(out)
    return df[~np.isnan(df["time"].to_numpy())].reset_index(drop=True)
