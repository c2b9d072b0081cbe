"""Forward Euler: first order, one right-hand-side evaluation per step."""

from ._base import ExplicitRungeKutta

euler = ExplicitRungeKutta("euler", order=1, a=[[]], b=[1.0], c=[0.0])
