"""The importance-weighted bound, gradient estimators and importance-sampling diagnostics."""

from ._bound import (
    effective_sample_size,
    iwae_per_series,
    log_normal,
    minibatch_objective,
    normalized_weights,
    sanitize_log_weights,
)

__all__ = [
    "effective_sample_size",
    "iwae_per_series",
    "log_normal",
    "minibatch_objective",
    "normalized_weights",
    "sanitize_log_weights",
]
