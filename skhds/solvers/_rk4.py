"""Classical fourth-order Runge-Kutta: four evaluations per step."""

from ._base import ExplicitRungeKutta

rk4 = ExplicitRungeKutta(
    "rk4",
    order=4,
    a=[[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]],
    b=[1 / 6, 1 / 3, 1 / 3, 1 / 6],
    c=[0.0, 0.5, 0.5, 1.0],
)
