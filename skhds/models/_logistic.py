"""Logistic growth with a lag: the package's small reference problem."""

import math

import torch

from ..distributions import LogNormal
from ._base import ODEModel
from ._noise import Gaussian
from ._parameters import Parameter

__all__ = ["LogisticGrowth"]


class LogisticGrowth(ODEModel):
    r"""Logistic growth of a population density with a smooth lag.

    .. math::

        \frac{dx}{dt} = r\,\sigma\!\left(4 (t - t_\mathrm{lag})\right) x
        \left(1 - \frac{x}{K}\right), \qquad x(0) = x_0

    with individual growth rate ``r`` and lag ``tlag`` (one per series), a
    carrying capacity ``K`` per level of the factor ``strain`` (by default), a
    population initial density ``x0``, and Gaussian noise with learned scale.

    Parameters
    ----------
    lag : bool, default=True
        Include the lag term; without it growth starts at full rate and
        ``tlag`` is not a parameter.
    capacity : {"group", "individual", "population"}, default="group"
        Level of the carrying capacity ``K``. With ``"individual"`` or
        ``"population"`` the model has no group parameters and needs no
        ``groups``.
    noise : NoiseModel, optional
        Observation noise (default Gaussian with scale prior
        ``LogNormal(log 0.05, 1)``).

    Examples
    --------
    >>> from skhds.models import LogisticGrowth
    >>> model = LogisticGrowth()
    >>> [p.name for p in model.declare_parameters()]
    ['r', 'tlag', 'K', 'x0']
    """

    states = ("x",)
    observables = ("x",)
    factors = ("strain",)

    def __init__(self, lag=True, capacity="group", noise=None):
        super().__init__()
        self.lag = lag
        self.capacity = capacity
        self.noise = noise if noise is not None else Gaussian(LogNormal(math.log(0.05), 1.0))

    def declare_parameters(self):
        """Growth rate and lag per series, capacity per strain, shared initial density."""
        params = [Parameter("r", LogNormal(math.log(0.8), 0.25), level="individual")]
        if self.lag:
            params.append(Parameter("tlag", LogNormal(math.log(2.0), 0.3), level="individual"))
        if self.capacity not in ("group", "individual", "population"):
            raise ValueError(
                "LogisticGrowth: capacity must be 'group', 'individual' or 'population', "
                f"got {self.capacity!r}."
            )
        factor = "strain" if self.capacity == "group" else None
        params += [
            Parameter("K", LogNormal(0.0, 0.4), level=self.capacity, factor=factor),
            Parameter("x0", LogNormal(math.log(0.05), 0.3), level="population"),
        ]
        return params

    def initial_state(self, params, inputs):
        """``x(0) = x0``."""
        return params["x0"].unsqueeze(-1)

    def rhs(self, t, x, params, inputs):
        """Logistic growth with a sigmoid lag."""
        rate = params["r"]
        if self.lag:
            rate = rate * torch.sigmoid(4.0 * (t - params["tlag"]))
        x0 = x[..., 0]
        return (rate * x0 * (1.0 - x0 / params["K"])).unsqueeze(-1)
