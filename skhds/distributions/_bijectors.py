"""Bijections between a parameter's support and the real line.

Every inferred quantity in skhds lives on an *unconstrained* scale where the
variational families are Gaussian; a bijector maps it to the constrained scale
the model sees (``forward``) and back (``inverse``).
"""

import math
import numbers

import numpy as np
import torch

__all__ = ["Identity", "Exp", "Sigmoid"]


class Identity:
    """The identity map, for real-valued parameters."""

    support = "real"

    def forward(self, z):
        """Map unconstrained ``z`` to the parameter scale (here: unchanged)."""
        return z

    def inverse(self, x):
        """Map a parameter value to the unconstrained scale (here: unchanged)."""
        return x

    def log_abs_det_jacobian(self, z):
        """``log |d forward / dz|`` at ``z`` (zero)."""
        return torch.zeros_like(z)

    def in_support(self, x):
        """Boolean tensor: where ``x`` lies in the support (interior)."""
        return torch.isfinite(x)

    def __repr__(self):
        return "Identity()"

    def __eq__(self, other):
        return type(other) is type(self)


class Exp(Identity):
    """``x = exp(z)``, for positive parameters."""

    support = "positive"

    def forward(self, z):
        """Map unconstrained ``z`` to ``exp(z)``."""
        return torch.exp(z)

    def inverse(self, x):
        """Map a positive value to ``log(x)``."""
        return torch.log(x)

    def log_abs_det_jacobian(self, z):
        """``log |d exp(z) / dz| = z``."""
        return z

    def in_support(self, x):
        """Where ``x > 0`` (and finite)."""
        return torch.isfinite(x) & (x > 0)

    def __repr__(self):
        return "Exp()"


class Sigmoid(Identity):
    """``x = low + (high - low) * sigmoid(z)``, for parameters on ``(low, high)``.

    Parameters
    ----------
    low, high : float
        Bounds of the support, ``low < high``.
    """

    support = "bounded"

    def __init__(self, low=0.0, high=1.0):
        for name, value in (("low", low), ("high", high)):
            if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
                raise TypeError(f"Sigmoid bound {name} must be a real number, got {value!r}.")
        low, high = float(low), float(high)
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(
                f"Sigmoid bounds must be finite with low < high, got low={low}, high={high}."
            )
        self.low, self.high = low, high

    def forward(self, z):
        """Map unconstrained ``z`` into ``(low, high)``."""
        return self.low + (self.high - self.low) * torch.sigmoid(z)

    def inverse(self, x):
        """Map a value in ``(low, high)`` to the real line."""
        u = (x - self.low) / (self.high - self.low)
        return torch.log(u) - torch.log1p(-u)

    def in_support(self, x):
        """Where ``low < x < high``."""
        return (x > self.low) & (x < self.high)

    def log_abs_det_jacobian(self, z):
        """``log |dx/dz|``."""
        return (
            math.log(self.high - self.low)
            - torch.nn.functional.softplus(-z)
            - torch.nn.functional.softplus(z)
        )

    def __repr__(self):
        return f"Sigmoid(low={self.low:g}, high={self.high:g})"

    def __eq__(self, other):
        return type(other) is type(self) and (self.low, self.high) == (other.low, other.high)
