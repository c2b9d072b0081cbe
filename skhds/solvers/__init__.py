"""Batch-first, differentiable, fixed-step ODE integrators (pure torch).

Euler, Heun (modified Euler), explicit midpoint and classical RK4, sharing one
explicit Runge-Kutta base. All work unchanged on CUDA tensors.
"""

from ._base import ExplicitRungeKutta
from ._euler import euler
from ._heun import heun
from ._midpoint import midpoint
from ._odeint import SOLVERS, get_solver, odeint, step_plan, substeps_for_grid
from ._rk4 import rk4

__all__ = [
    "ExplicitRungeKutta",
    "SOLVERS",
    "euler",
    "get_solver",
    "heun",
    "midpoint",
    "odeint",
    "rk4",
    "step_plan",
    "substeps_for_grid",
]
