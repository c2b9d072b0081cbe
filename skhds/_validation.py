"""Validation of user arrays: clear errors naming the argument, numpy only.

The estimator calls these before anything reaches torch, so bad input never
surfaces as a traceback from deep inside the solver.
"""

import numbers
import warnings

import numpy as np
import pandas as pd

__all__ = [
    "check_observations",
    "check_float32_range",
    "check_float32_times",
    "check_times",
    "check_inputs",
    "check_groups",
    "check_positive_int",
    "check_positive_float",
]


def check_positive_int(value, name, minimum=1):
    """Return ``value`` as int if it is an integer ``>= minimum``; else raise."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    return int(value)


def check_bool(value, name):
    """Return ``value`` as bool if it is ``True`` or ``False`` (numpy's too); else raise."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}.")
    return bool(value)


def check_positive_float(value, name, allow_none=False):
    """Return ``value`` as float if it is a finite number ``> 0``; else raise."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a positive number, got {value!r}.")
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}.")
    return value


def check_learning_rate_schedule(schedule):
    """Validate ``learning_rate_schedule``: None, a callable, or ``(epochs, rate)`` pairs.

    Returns the pairs as a list of ``(int, float)`` (None and callables unchanged).
    """
    name = "learning_rate_schedule"
    if schedule is None or callable(schedule):
        return schedule
    if isinstance(schedule, (str, bytes, dict)) or not hasattr(schedule, "__iter__"):
        raise TypeError(
            f"{name} must be None, a callable epoch -> rate, or a sequence of (epochs, rate) "
            f"pairs, got {schedule!r}."
        )
    pairs = []
    for item in schedule:
        if isinstance(item, (str, bytes)) or not hasattr(item, "__len__") or len(item) != 2:
            raise ValueError(f"{name} entries must be (epochs, rate) pairs, got {item!r}.")
        epochs, rate = item
        epochs = check_positive_int(epochs, f"{name} epochs", minimum=0)
        rate = check_positive_float(rate, f"{name} rate")
        if pairs and epochs <= pairs[-1][0]:
            raise ValueError(f"{name} epochs must increase, got {epochs} after {pairs[-1][0]}.")
        pairs.append((epochs, rate))
    return pairs


def check_observations(X, n_observables=None):
    """Validate observations ``X`` of shape ``(n_series, n_observables, n_times)``.

    NaN marks a missing value; infinite values are errors.

    Parameters
    ----------
    X : array-like
    n_observables : int, optional
        Expected number of observables (the model's).

    Returns
    -------
    numpy.ndarray of float64
    """
    try:
        arr = np.asarray(X)
    except Exception as exc:  # ragged nested lists etc.
        raise ValueError(f"X could not be converted to an array: {exc}") from exc
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"X must be numeric, got an array of dtype {arr.dtype}.") from exc
    if np.iscomplexobj(arr):
        raise TypeError("X must be real-valued, got complex numbers.")
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim != 3:
        raise ValueError(
            f"X must be a 3-D array of shape (n_series, n_observables, n_times), got shape "
            f"{arr.shape}. For a single observable use X[:, None, :]."
        )
    if arr.shape[0] == 0:
        raise ValueError("X has 0 series; at least one is required.")
    if arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(f"X has shape {arr.shape}: it needs at least one observable and one time.")
    if np.isinf(arr).any():
        raise ValueError("X contains infinite values; use NaN for missing observations.")
    if n_observables is not None and arr.shape[1] != n_observables:
        raise ValueError(
            f"X has {arr.shape[1]} observables (axis 1) but the model has {n_observables}."
        )
    return arr


def check_float32_range(arr, name):
    """Refuse values that float32 cannot hold (they would become infinite).

    Parameters
    ----------
    arr : numpy.ndarray
        Validated float64 values (NaN allowed).
    name : str
        Argument name used in the error message.
    """
    limit = np.finfo(np.float32).max
    with np.errstate(invalid="ignore"):
        big = np.abs(arr) > limit
    if big.any():
        raise ValueError(
            f"{name} has values beyond the float32 range (largest magnitude "
            f"{np.nanmax(np.abs(arr)):.3g} > {limit:.3g}); rescale them, or use dtype='float64'."
        )


def check_float32_times(t, valid, name="times"):
    """Refuse a grid that float32 cannot hold: out of range, or steps it rounds to zero.

    Parameters
    ----------
    t : numpy.ndarray
        A grid validated by :func:`check_times` (padding replaced).
    valid : numpy.ndarray of bool or None
        Its mask of real time points.
    name : str, default="times"
        Argument name used in the error message.
    """
    check_float32_range(t, name)
    if not _increasing(t.astype(np.float32), valid):
        raise ValueError(
            f"{name} has steps that float32 rounds to zero (its resolution near {np.abs(t).max():.3g} "
            f"is {np.spacing(np.float32(np.abs(t).max())):.3g}); shift the time origin, change the "
            "unit, or use dtype='float64'."
        )


def check_times(times, n_series, n_times, t0=0.0, name="times"):
    """Validate a shared ``(n_times,)`` or per-series ``(n_series, n_times)`` time grid.

    Per-series grids may be NaN-padded at the end (ragged series); NaN inside
    the observed range is an error.

    Parameters
    ----------
    times : array-like or None
        ``None`` gives ``0, 1, ..., n_times - 1``.
    n_series, n_times : int
        Shape of ``X``.
    t0 : float
        Start time of the model; no time may be earlier.
    name : str, default="times"
        Argument name used in error messages.

    Returns
    -------
    times : numpy.ndarray
        ``(n_times,)`` or ``(n_series, n_times)``; NaN padding replaced by the
        last valid time (zero-length steps).
    valid : numpy.ndarray of bool or None
        ``(n_series, n_times)`` mask of real (non-padding) time points, or
        ``None`` for a shared grid.
    """
    if times is None:
        return np.arange(n_times, dtype=np.float64) + t0, None
    t = _real_array(times, name)
    if t.ndim == 0 or t.shape[-1] == 0:
        raise ValueError(f"{name} must hold at least one time point; got shape {t.shape}.")
    if t.ndim == 1:
        if t.shape[0] != n_times:
            hint = ""
            if t.shape[0] == n_series:
                hint = (
                    " It has as many points as X has series: cross-validation slices every fit "
                    "parameter of length n_series, so a shared grid of that length gets cut. Pass "
                    "a per-series grid instead: np.broadcast_to(times, (n_series, n_times))."
                )
            raise ValueError(f"{name} has {t.shape[0]} points but X has {n_times} time points.{hint}")
        if not np.isfinite(t).all():
            raise ValueError(f"{name} (shared grid) must be finite; NaN padding needs a per-series grid.")
        _check_increasing(t[None], name)
        if t[0] < t0:
            raise ValueError(f"{name} must be >= the model's start time t0={t0}; got {t[0]}.")
        return t, None
    if t.ndim != 2 or t.shape != (n_series, n_times):
        raise ValueError(
            f"{name} must have shape (n_times,)=({n_times},) or (n_series, n_times)="
            f"({n_series}, {n_times}); got {t.shape}."
        )
    if np.isinf(t).any():
        raise ValueError(f"{name} contains infinite values.")
    valid = ~np.isnan(t)
    n_valid = valid.sum(1)
    if (n_valid == 0).any():
        raise ValueError(f"{name}: series {np.flatnonzero(n_valid == 0)[:5].tolist()} have no valid time.")
    # NaN only as trailing padding
    expected = np.arange(n_times)[None, :] < n_valid[:, None]
    if (valid != expected).any():
        bad = np.flatnonzero((valid != expected).any(1))[:5].tolist()
        raise ValueError(
            f"{name} has NaN inside the observed range of series {bad}; NaN is only allowed as "
            "trailing padding of shorter series."
        )
    last = t[np.arange(n_series), n_valid - 1]
    t = np.where(valid, t, last[:, None])
    _check_increasing(t, name, valid)
    if (t[:, 0] < t0).any():
        raise ValueError(f"{name} must be >= the model's start time t0={t0}; got {t[:, 0].min()}.")
    return t, valid


def _real_array(values, name):
    """A float64 copy of ``values``, never a view of the caller's array (a grid may
    become an attribute, and torch warns about read-only arrays); errors name ``name``."""
    try:
        arr = np.array(values)
    except (TypeError, ValueError) as exc:  # ragged nested lists
        raise TypeError(f"{name} must be numeric: {exc}") from exc
    if np.iscomplexobj(arr):
        raise TypeError(f"{name} must be real-valued, got complex numbers.")
    try:
        return arr.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be numeric: {exc}") from exc


def _increasing(t, valid=None):
    """Whether grid(s) ``t`` increase strictly between valid points (padding ignored)."""
    d = np.diff(t, axis=-1)
    if valid is not None:
        d = np.where(valid[:, 1:], d, 1.0)
    return bool((d > 0).all())


def _check_increasing(t, name, valid=None):
    if not _increasing(t, valid):
        raise ValueError(f"{name} must be strictly increasing along the time axis.")


def check_inputs(inputs, n_series, input_names):
    """Validate per-series inputs of shape ``(n_series, n_inputs)``.

    Parameters
    ----------
    inputs : array-like, pandas.DataFrame or None
        A DataFrame is matched to ``input_names`` by column name.
    n_series : int
    input_names : tuple of str
        The model's declared inputs.

    Returns
    -------
    numpy.ndarray of shape (n_series, n_inputs)
    """
    n_in = len(input_names)
    if inputs is None:
        if n_in:
            raise ValueError(f"inputs is required: the model declares inputs {tuple(input_names)}.")
        return np.zeros((n_series, 0))
    if isinstance(inputs, pd.DataFrame):
        missing = [c for c in input_names if c not in inputs.columns]
        if missing:
            raise ValueError(f"inputs DataFrame lacks columns {missing} declared by the model.")
        inputs = inputs[list(input_names)].to_numpy()
    u = _real_array(inputs, "inputs")
    if u.ndim == 1 and n_in == 1:
        u = u[:, None]
    if u.ndim != 2:
        raise ValueError(f"inputs must be 2-D (n_series, n_inputs); got shape {u.shape}.")
    if u.shape[0] != n_series:
        raise ValueError(f"inputs has {u.shape[0]} rows but X has {n_series} series.")
    if u.shape[1] != n_in:
        raise ValueError(
            f"inputs has {u.shape[1]} columns but the model declares {n_in} inputs {tuple(input_names)}."
        )
    if not np.isfinite(u).all():
        raise ValueError("inputs contains NaN or infinite values.")
    return u


def check_groups(groups, n_series, factor_names):
    """Validate group labels into a DataFrame with one column per factor.

    Parameters
    ----------
    groups : array-like, pandas.Series, pandas.DataFrame or None
        ``(n_series,)`` for one factor, ``(n_series, n_factors)`` for several,
        or a DataFrame whose columns name the factors (extra columns ignored).
    n_series : int
    factor_names : tuple of str
        The factors used by the model's group parameters.

    Returns
    -------
    pandas.DataFrame
        ``n_series`` rows, columns ``factor_names``, labels as objects.
    """
    factor_names = list(factor_names)
    if groups is None:
        if factor_names:
            raise ValueError(
                f"groups is required: the model has group-level parameters on factors {factor_names}."
            )
        return pd.DataFrame(index=range(n_series))
    if isinstance(groups, pd.DataFrame):
        missing = [f for f in factor_names if f not in groups.columns]
        if missing and groups.shape[1] == len(factor_names) and all(
            isinstance(c, int) for c in groups.columns
        ):
            df = groups.set_axis(factor_names, axis=1)
        elif missing:
            raise ValueError(
                f"groups DataFrame lacks columns {missing} for the model's factors {factor_names}."
            )
        else:
            df = groups[factor_names]
    else:
        g = np.asarray(groups, dtype=object)
        if g.ndim == 1:
            g = g[:, None]
        if g.ndim != 2:
            raise ValueError(f"groups must be 1-D or 2-D; got shape {g.shape}.")
        if g.shape[1] != len(factor_names):
            raise ValueError(
                f"groups has {g.shape[1]} factor column(s) but the model uses {len(factor_names)} "
                f"factor(s) {factor_names}."
            )
        df = pd.DataFrame(g, columns=factor_names)
    if df.shape[0] != n_series:
        raise ValueError(f"groups has {df.shape[0]} rows but X has {n_series} series.")
    df = df.reset_index(drop=True).astype(object)
    if df.isna().to_numpy().any():
        raise ValueError("groups contains missing labels (NaN/None).")
    return df


def warn_all_missing(mask):
    """Indices of series with no observation at all (warns if any)."""
    empty = np.flatnonzero(~mask.any(axis=(1, 2)))
    if empty.size:
        warnings.warn(
            f"{empty.size} series have no observed values (e.g. {empty[:5].tolist()}); they carry "
            "no information and their scores are the prior predictive only.",
            UserWarning,
            stacklevel=3,
        )
    return empty
