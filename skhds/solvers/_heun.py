"""Heun's method (modified Euler, explicit trapezoid): second order, two evaluations."""

from ._base import ExplicitRungeKutta

heun = ExplicitRungeKutta("heun", order=2, a=[[], [1.0]], b=[0.5, 0.5], c=[0.0, 1.0])
