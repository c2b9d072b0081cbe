"""Per-signal scaling of 3-D time-series arrays, as in the double-receiver study."""

import warnings

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["SignalScaler"]

_SCALES = ("max", "none")


def _check_3d(X):
    """Raise a ValueError naming ``X`` unless it is 3-D."""
    ndim = np.ndim(X)
    if ndim != 3:
        raise ValueError(
            f"X must be a 3-D array of shape (n_series, n_signals, n_times), "
            f"got a {ndim}-D array."
        )


def _series_minimum(X):
    """Per-series, per-signal minimum over time, NaN-aware; shape (n, n_signals, 1)."""
    with warnings.catch_warnings():
        # All-NaN series keep NaN (nothing to subtract) without a warning.
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmin(X, axis=2, keepdims=True)


def _inverse_available(scaler):
    """``available_if`` check: the inverse needs the per-series minima, not stored."""
    if scaler.subtract_min:
        raise AttributeError(
            "inverse_transform is not available when subtract_min=True: the "
            "per-series minima subtracted by transform are not stored."
        )
    return True


class SignalScaler(TransformerMixin, BaseEstimator):
    """Scale each signal of 3-D time-series data, then shift each series to start at 0.

    This is the preprocessing of the double-receiver study: each signal is
    divided by its maximum over all training series and times, and then each
    series' own minimum over time is subtracted, signal by signal, so every
    series has minimum 0 in every signal. NaNs are ignored when computing
    maxima and minima, and are kept in the output.

    Parameters
    ----------
    scale : {"max", "none"}, default="max"
        ``"max"`` divides each signal by its maximum over the training data
        (a maximum that is zero, negative or NaN is replaced by 1);
        ``"none"`` leaves the scale unchanged.
    subtract_min : bool, default=True
        Whether to subtract, after scaling, each series' per-signal minimum
        over time. This uses only the series being transformed, at
        ``fit_transform`` and at ``transform`` time alike.

    Attributes
    ----------
    scale_ : ndarray of shape (n_signals,)
        The divisor of each signal.
    n_features_in_ : int
        Number of signals seen during fit (axis 1 of ``X``).

    See Also
    --------
    sklearn.preprocessing.MaxAbsScaler : The 2-D analogue of ``scale="max"``.

    Notes
    -----
    Inputs (treatment concentrations) are not transformed here; models take
    care of them (e.g. as ``log(1 + c)``).

    Examples
    --------
    >>> import numpy as np
    >>> from skhds.preprocessing import SignalScaler
    >>> X = np.array([[[1.0, 2.0, 4.0]], [[2.0, 3.0, 8.0]]])  # (2 series, 1 signal, 3 times)
    >>> SignalScaler().fit_transform(X)
    array([[[0.   , 0.125, 0.375]],
    <BLANKLINE>
           [[0.   , 0.125, 0.75 ]]])
    """

    def __init__(self, scale="max", subtract_min=True):
        self.scale = scale
        self.subtract_min = subtract_min

    def _validate(self, X, reset):
        """Validate ``X`` as a 3-D float array, possibly with NaN."""
        _check_3d(X)
        X = validate_data(
            self,
            X,
            allow_nd=True,
            ensure_all_finite="allow-nan",
            dtype=[np.float64, np.float32],
            reset=reset,
        )
        _check_3d(X)
        return X

    def fit(self, X, y=None):
        """Compute the per-signal scale from training data.

        Parameters
        ----------
        X : array-like of shape (n_series, n_signals, n_times)
            Training time series; may contain NaN.
        y : None
            Ignored.

        Returns
        -------
        self : SignalScaler
            The fitted scaler.
        """
        if self.scale not in _SCALES:
            raise ValueError(f"scale must be one of {_SCALES}, got {self.scale!r}.")
        X = self._validate(X, reset=True)
        if self.scale == "max":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN signals
                scale = np.nanmax(X, axis=(0, 2)).astype(np.float64)
            scale[~np.isfinite(scale) | (scale <= 0)] = 1.0
        else:
            scale = np.ones(X.shape[1])
        self.scale_ = scale
        return self

    def transform(self, X):
        """Scale ``X`` and, if ``subtract_min``, shift each series to minimum 0.

        Parameters
        ----------
        X : array-like of shape (n_series, n_signals, n_times)
            Time series with the signals seen in fit; may contain NaN.

        Returns
        -------
        X_new : ndarray of shape (n_series, n_signals, n_times)
            Transformed series (NaN where ``X`` is NaN).
        """
        check_is_fitted(self)
        X = self._validate(X, reset=False)
        X_new = X / self.scale_.astype(X.dtype)[None, :, None]
        if self.subtract_min:
            X_new = X_new - _series_minimum(X_new)
        return X_new

    @available_if(_inverse_available)
    def inverse_transform(self, X):
        """Undo the scaling (only when ``subtract_min=False``).

        Parameters
        ----------
        X : array-like of shape (n_series, n_signals, n_times)
            Scaled time series.

        Returns
        -------
        X_original : ndarray of shape (n_series, n_signals, n_times)
            Series on the original scale.
        """
        check_is_fitted(self)
        X = self._validate(X, reset=False)
        return X * self.scale_.astype(X.dtype)[None, :, None]

    def __sklearn_tags__(self):
        """Declare 3-D input with missing values (no 2-D input)."""
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.two_d_array = False
        tags.input_tags.allow_nan = True
        return tags
