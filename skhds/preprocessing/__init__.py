"""Transformers for 3-D time-series arrays of shape ``(n_series, n_signals, n_times)``.

These follow the scikit-learn transformer API (``fit``/``transform``) and can
be used in a :class:`~sklearn.pipeline.Pipeline` in front of the estimator.
"""

from ._scaling import SignalScaler

__all__ = ["SignalScaler"]
