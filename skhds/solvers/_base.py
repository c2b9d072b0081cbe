"""Explicit Runge-Kutta stepping shared by every fixed-step solver.

A solver is its Butcher tableau (``a``, ``b``, ``c``) plus this base. The
step is written for batch-first tensors: states ``(S, K, n_states)``, the time
``t`` and step ``h`` per series as ``(S, 1)`` (or ``(1, 1)`` when all series
share a grid), so one call advances every series and importance sample at once.
Per-series steps make non-uniform and per-series grids cost nothing extra; a
step of zero (used to pad ragged series) leaves the state unchanged.
"""

import torch

__all__ = ["ExplicitRungeKutta"]


class ExplicitRungeKutta:
    """Fixed-step explicit Runge-Kutta method given by its Butcher tableau.

    Parameters
    ----------
    name : str
        Short name of the method (``"heun"``).
    order : int
        Order of global convergence.
    a : sequence of sequence of float
        Strictly lower-triangular stage coefficients; ``a[i]`` has ``i`` entries.
    b : sequence of float
        Weights of the stages in the update.
    c : sequence of float
        Nodes: stage ``i`` is evaluated at ``t + c[i] h``.
    """

    def __init__(self, name, order, a, b, c):
        if not (len(a) == len(b) == len(c)) or any(len(row) != i for i, row in enumerate(a)):
            raise ValueError(f"Inconsistent Butcher tableau for solver {name!r}.")
        self.name = name
        self.order = order
        self.a = tuple(tuple(float(v) for v in row) for row in a)
        self.b = tuple(float(v) for v in b)
        self.c = tuple(float(v) for v in c)
        self.n_stages = len(b)

    @property
    def first_stage_at_start(self):
        """True when the first stage is ``func(t, x)`` (``c[0] = 0``), so it can be reused."""
        return self.c[0] == 0.0

    def step(self, func, t, x, h, k0=None):
        """Advance ``x`` from ``t`` to ``t + h``.

        Parameters
        ----------
        func : callable
            ``func(t, x) -> dx/dt`` with ``t`` shaped ``(S, 1)`` and ``x``
            shaped ``(S, K, n_states)``.
        t : torch.Tensor
            Current time, ``(S, 1)`` or ``(1, 1)``.
        x : torch.Tensor
            Current state, ``(S, K, n_states)``.
        h : torch.Tensor
            Step size, same shape as ``t``.
        k0 : torch.Tensor, optional
            ``func(t, x)``, when the caller already has it (the derivative at
            the end of the previous step); the first stage then reuses it
            instead of evaluating ``func`` again. Only for tableaux whose
            first node is ``c[0] = 0`` (:attr:`first_stage_at_start`), as in
            every method shipped.

        Returns
        -------
        torch.Tensor
            The state at ``t + h``, shaped like ``x``.
        """
        hx = h.unsqueeze(-1)  # (S, 1, 1) broadcasts against states
        # Each term is one fused multiply-add (addcmul): the step costs one
        # operation per non-zero coefficient, forward and backward alike.
        if k0 is not None and not self.first_stage_at_start:
            raise ValueError(f"Solver {self.name!r} has c[0] != 0: its first stage is not func(t, x), "
                             "so k0 cannot be reused.")
        stages = [] if k0 is None else [k0]
        for ci, ai in zip(self.c[len(stages):], self.a[len(stages):]):
            xi = x
            for aij, kj in zip(ai, stages):
                if aij != 0.0:
                    xi = torch.addcmul(xi, hx, kj, value=aij)
            stages.append(func(t + ci * h if ci != 0.0 else t, xi))
        for bi, ki in zip(self.b, stages):
            if bi != 0.0:
                x = torch.addcmul(x, hx, ki, value=bi)
        return x

    def __repr__(self):
        return f"ExplicitRungeKutta(name={self.name!r}, order={self.order})"
