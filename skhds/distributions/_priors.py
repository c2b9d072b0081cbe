"""Prior distributions for model parameters.

All priors are *transformed normals*: a Normal(``loc``, ``scale``) on the
unconstrained scale pushed through a bijector. This single family is what makes
the hierarchy cheap and exact: an individual parameter ``z_i = mu + omega *
eta_i`` stays Gaussian on the unconstrained scale, and every KL divergence
between Gaussian variational factors and their priors is analytic.
"""

import math
import numbers

import numpy as np
import torch

from ._bijectors import Exp, Identity, Sigmoid
from ._normal import normal_log_prob

__all__ = ["Prior", "Normal", "LogNormal", "LogitNormal"]

def _check_float(value, name, positive=False):
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}.")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}.")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}.")
    return value


class Prior:
    """Normal distribution on an unconstrained scale, pushed through a bijector.

    Parameters
    ----------
    loc : float
        Mean on the unconstrained scale.
    scale : float
        Standard deviation on the unconstrained scale, ``> 0``.
    bijector : Identity, Exp or Sigmoid
        Map from the unconstrained scale to the parameter's support.
    """

    def __init__(self, loc, scale, bijector):
        self.loc = _check_float(loc, "loc")
        self.scale = _check_float(scale, "scale", positive=True)
        self.bijector = bijector

    @property
    def support(self):
        """Name of the support: ``"real"``, ``"positive"`` or ``"bounded"``."""
        return self.bijector.support

    def log_prob_unconstrained(self, z):
        """Log density of the unconstrained value ``z`` (Normal(loc, scale))."""
        return normal_log_prob(z, self.loc, self.scale)

    def log_prob(self, x):
        """Log density of a value ``x`` on the parameter's own scale (``-inf`` outside the support)."""
        if not torch.is_tensor(x):
            x = torch.as_tensor(x, dtype=torch.get_default_dtype())
        inside = self.bijector.in_support(x)
        safe = torch.where(inside, x, self.bijector.forward(torch.zeros_like(x)))
        z = self.bijector.inverse(safe)
        lp = self.log_prob_unconstrained(z) - self.bijector.log_abs_det_jacobian(z)
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    def sample(self, sample_shape=(), generator=None, dtype=torch.float32, device="cpu"):
        """Draw values on the parameter's own scale."""
        eps = torch.randn(sample_shape, generator=generator, dtype=dtype, device=device)
        return self.bijector.forward(self.loc + self.scale * eps)

    def median(self):
        """Median on the parameter's own scale (a monotone image of ``loc``)."""
        return float(self.bijector.forward(torch.tensor(self.loc, dtype=torch.float64)))

    def __repr__(self):
        return f"{type(self).__name__}(loc={self.loc:g}, scale={self.scale:g})"

    def __eq__(self, other):
        return (
            type(other) is type(self)
            and (self.loc, self.scale) == (other.loc, other.scale)
            and self.bijector == other.bijector
        )


class Normal(Prior):
    """Normal prior for a real-valued parameter.

    Parameters
    ----------
    loc : float
        Mean.
    scale : float
        Standard deviation, ``> 0``.
    """

    def __init__(self, loc=0.0, scale=1.0):
        super().__init__(loc, scale, Identity())


class LogNormal(Prior):
    """Log-normal prior for a positive parameter: ``log(x) ~ Normal(loc, scale)``.

    Parameters
    ----------
    loc : float
        Mean of ``log(x)`` (so ``exp(loc)`` is the median).
    scale : float
        Standard deviation of ``log(x)``, ``> 0``.
    """

    def __init__(self, loc=0.0, scale=1.0):
        super().__init__(loc, scale, Exp())


class LogitNormal(Prior):
    """Prior on ``(low, high)``: ``logit((x - low) / (high - low)) ~ Normal(loc, scale)``.

    Parameters
    ----------
    loc : float
        Mean on the logit scale (``loc = 0`` puts the median mid-interval).
    scale : float
        Standard deviation on the logit scale, ``> 0``.
    low, high : float
        Bounds of the support.
    """

    def __init__(self, loc=0.0, scale=1.0, low=0.0, high=1.0):
        super().__init__(loc, scale, Sigmoid(low, high))

    def __repr__(self):
        b = self.bijector
        return (
            f"LogitNormal(loc={self.loc:g}, scale={self.scale:g}, low={b.low:g}, high={b.high:g})"
        )
