"""Priors and bijections (pure torch).

Every prior is a Normal on an unconstrained scale pushed through a bijector;
see :class:`Prior`.
"""

from ._bijectors import Exp, Identity, Sigmoid
from ._normal import (gaussian_kl, gaussian_log_prob, gaussian_log_prob_of_draw, gaussian_rsample,
                      normal_kl, normal_log_prob)
from ._priors import LogitNormal, LogNormal, Normal, Prior

__all__ = [
    "Prior",
    "Normal",
    "LogNormal",
    "LogitNormal",
    "Identity",
    "Exp",
    "Sigmoid",
    "normal_log_prob",
    "normal_kl",
    "gaussian_rsample",
    "gaussian_log_prob",
    "gaussian_log_prob_of_draw",
    "gaussian_kl",
]
