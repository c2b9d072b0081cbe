"""Integrate a batch of ODEs on fixed steps and return states at given times.

``odeint`` is the one entry point. Between consecutive output times it takes
``n_substeps[j]`` equal steps; every series takes the same number of steps, with
its own step length when series have their own grids.
"""

import math
import warnings

import numpy as np
import torch

from ._euler import euler
from ._heun import heun
from ._midpoint import midpoint
from ._rk4 import rk4

__all__ = ["odeint", "get_solver", "substeps_for_grid", "SOLVERS"]

SOLVERS = {s.name: s for s in (euler, heun, midpoint, rk4)}


def get_solver(method):
    """Return the solver named ``method`` (or ``method`` itself if it is a solver).

    Parameters
    ----------
    method : str or ExplicitRungeKutta
        One of ``"euler"``, ``"heun"``, ``"midpoint"``, ``"rk4"``.

    Returns
    -------
    ExplicitRungeKutta
        The solver registered under ``method`` in ``SOLVERS``, or ``method``
        itself if it already is a solver.
    """
    if hasattr(method, "step") and hasattr(method, "order"):
        return method
    if not isinstance(method, str) or method not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {method!r}.")
    return SOLVERS[method]


def substeps_for_grid(times, dt):
    """Number of steps per output interval so that no step exceeds ``dt``.

    Parameters
    ----------
    times : array-like of shape (n_times,) or (n_series, n_times)
        Output grid(s), non-decreasing along the last axis (NaN not allowed).
    dt : float or None
        Largest step. ``None`` takes one step per interval (the data grid).

    Returns
    -------
    list of int
        ``n_times - 1`` step counts, each ``>= 1``, shared by all series.
    """
    t = np.asarray(times, dtype=float)
    if t.ndim == 1:
        t = t[None, :]
    n = t.shape[-1] - 1
    if dt is None:
        return [1] * n
    if not (isinstance(dt, (int, float, np.floating)) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a finite number > 0 or None, got {dt!r}.")
    widest = np.max(np.diff(t, axis=-1), axis=0) if n > 0 else np.zeros(0)
    return [max(1, int(math.ceil(w / dt - 1e-9))) for w in widest]


# Compiled steps, one per solver, shared by every solve in the process (see compiled_step).
_COMPILED = {}
_COMPILE_FAILED = set()


def compiled_step(solver):
    """``solver.step`` compiled with ``torch.compile``, or None where compilation failed.

    Compiling the whole step, the right-hand side's operations included,
    lets the compiler fuse them into a few loops over the batch: on a CPU the
    cost of a solve is mostly the number of small operations per step, not
    their arithmetic (benchmarks/README.md). Shapes are dynamic, so one
    compilation serves every batch size and number of samples; it is made
    once per process and solver (and again for a new right-hand side or
    without autograd), at the first call, and takes 10-30 s.

    Parameters
    ----------
    solver : ExplicitRungeKutta

    Returns
    -------
    callable or None
        A drop-in replacement for ``solver.step``; None after a failure
        (no C++ compiler, an operation the compiler does not support), in
        which case :func:`odeint` steps eagerly.
    """
    if solver in _COMPILE_FAILED:
        return None
    if solver not in _COMPILED:
        _COMPILED[solver] = torch.compile(solver.step, dynamic=True)
    return _COMPILED[solver]


def _step_function(solver, compile):
    """``solver.step``, or its compiled version that falls back to it for good on a failure."""
    compiled = compiled_step(solver) if compile else None
    if compiled is None:
        return solver.step

    def step(func, t, x, h):
        if solver in _COMPILE_FAILED:  # an earlier step of this solve failed to compile
            return solver.step(func, t, x, h)
        try:
            return compiled(func, t, x, h)
        except Exception as exc:  # the compiler's errors have no common base class
            _COMPILE_FAILED.add(solver)
            warnings.warn(
                f"Compiling the {solver.name} step failed, so the solver runs eagerly (slower; "
                f"set compile_solver=False to silence this). {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}",
                RuntimeWarning,
                stacklevel=3,
            )
            return solver.step(func, t, x, h)

    return step


def odeint(func, x0, times, *, method="heun", n_substeps=1, compile=False):
    """Solve ``dx/dt = func(t, x)`` for a batch and return states at ``times``.

    Parameters
    ----------
    func : callable
        Right-hand side ``func(t, x)``; ``t`` is a tensor ``(S, 1)`` (or
        ``(1, 1)`` for a shared grid), ``x`` is ``(S, K, n_states)``; returns
        a tensor shaped like ``x``.
    x0 : torch.Tensor of shape (S, K, n_states)
        State at ``times[..., 0]``.
    times : torch.Tensor of shape (n_times,) or (S, n_times)
        Output times, non-decreasing; a repeated time (zero step) is allowed
        and is how ragged series are padded.
    method : str or ExplicitRungeKutta, default="heun"
        Fixed-step method.
    n_substeps : int or sequence of int, default=1
        Steps per output interval (see :func:`substeps_for_grid`).
    compile : bool, default=False
        Take the steps with the compiled step of :func:`compiled_step`
        (eagerly where compilation fails, with a warning).

    Returns
    -------
    torch.Tensor of shape (S, K, n_states, n_times)
        Trajectory; ``[..., 0]`` is ``x0``.
    """
    solver = get_solver(method)
    if times.dim() == 1:
        times = times.unsqueeze(0)
    n_times = times.shape[-1]
    if isinstance(n_substeps, int):
        n_substeps = [n_substeps] * (n_times - 1)
    if len(n_substeps) != n_times - 1:
        raise ValueError(
            f"n_substeps has {len(n_substeps)} entries; expected {n_times - 1} (one per interval)."
        )
    if any(int(n) != n or n < 1 for n in n_substeps):
        raise ValueError(f"n_substeps must be integers >= 1, got {list(n_substeps)}.")
    # With autograd, writing into a preallocated tensor would make every write
    # an in-place CopySlices node whose backward clones the whole trajectory
    # (quadratic traffic); a list stacked once is linear. Without autograd the
    # preallocated tensor saves the extra copy.
    record_grad = torch.is_grad_enabled()
    if record_grad:
        states = [x0]
    else:
        out = x0.new_empty(x0.shape + (n_times,))
        out[..., 0] = x0
    step = _step_function(solver, compile)
    x = x0
    for j in range(n_times - 1):
        t0 = times[:, j : j + 1]
        h = (times[:, j + 1 : j + 2] - t0) / n_substeps[j]
        t = t0
        for _ in range(n_substeps[j]):
            x = step(func, t, x, h)
            t = t + h
        if record_grad:
            states.append(x)
        else:
            out[..., j + 1] = x
    return torch.stack(states, dim=-1) if record_grad else out
