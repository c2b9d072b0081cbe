"""The importance-weighted bound, gradient estimators and importance-sampling diagnostics."""

from ._adaptive import (
    MultivariateStudentT,
    adaptive_importance_sampling,
    laplace_approximation,
    laplace_per_series,
)
from ._bound import (
    effective_sample_size,
    iwae_per_series,
    log_normal,
    minibatch_objective,
    normalized_weights,
    sanitize_log_weights,
)
from ._diagnostics import pareto_k

__all__ = [
    "MultivariateStudentT",
    "adaptive_importance_sampling",
    "laplace_approximation",
    "laplace_per_series",
    "effective_sample_size",
    "iwae_per_series",
    "log_normal",
    "minibatch_objective",
    "normalized_weights",
    "pareto_k",
    "sanitize_log_weights",
]
