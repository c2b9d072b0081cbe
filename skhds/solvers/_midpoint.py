"""Explicit midpoint method: second order, two evaluations."""

from ._base import ExplicitRungeKutta

midpoint = ExplicitRungeKutta("midpoint", order=2, a=[[], [0.5]], b=[0.0, 1.0], c=[0.0, 0.5])
