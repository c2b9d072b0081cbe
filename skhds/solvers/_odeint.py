"""Integrate a batch of ODEs on fixed steps and return states at given times.

``odeint`` is the one entry point. Its steps follow a plan over the output
grid (:func:`step_plan`): an interval is split into equal steps, or one step
covers several intervals and the output times inside it are interpolated.
Every series takes the same number of steps, with its own step length when
series have their own grids.
"""

import inspect
import math
import warnings

import numpy as np
import torch

from ._euler import euler
from ._heun import heun
from ._midpoint import midpoint
from ._rk4 import rk4

__all__ = ["odeint", "get_solver", "step_plan", "substeps_for_grid", "SOLVERS"]

SOLVERS = {s.name: s for s in (euler, heun, midpoint, rk4)}


def _slack(t, dt):
    """How much longer than ``dt`` a step may be and still count as ``dt``: round-off.

    Grids often come from float32 (the estimator's default dtype) or from
    sums of steps: 0.2 stored as 0.2000000030, a difference of two times
    near 8 off by 1e-6. The slack is a millionth of ``dt`` plus a few float32
    units of the largest time, and never more than a thousandth of ``dt``.
    """
    scale = float(np.max(np.abs(t))) if t.size else 0.0
    return min(1e-3 * dt, 1e-6 * dt + 5e-7 * scale)


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
    t = _grid(times)
    if dt is None:
        return [1] * (t.shape[-1] - 1)
    _check_dt(dt)
    return _substep_counts(t, dt, _slack(t, dt))


def _grid(times):
    """Output grid(s) as a float array of shape ``(n_series, n_times)``."""
    t = np.asarray(times, dtype=float)
    return t[None, :] if t.ndim == 1 else t


def _check_dt(dt):
    if not (isinstance(dt, (int, float, np.floating)) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a finite number > 0 or None, got {dt!r}.")


def _substep_counts(t, dt, slack):
    """Steps per interval of the grids ``t`` so that none exceeds ``dt`` (beyond ``slack``)."""
    widest = np.max(np.diff(t, axis=-1), axis=0) if t.shape[-1] > 1 else np.zeros(0)
    return [max(1, int(math.ceil((w - slack) / dt))) for w in widest]


def step_plan(times, dt):
    """Steps of at most ``dt`` over an output grid, as segments of the grid.

    Where an interval is wider than ``dt`` it is split into equal steps (as in
    :func:`substeps_for_grid`); where consecutive intervals together are no
    wider than ``dt`` they are covered by one step, and :func:`odeint`
    interpolates the output times inside it. Steps are taken greedily from
    the start, each as long as ``dt`` and the grid allow, so their number
    follows ``dt`` rather than the density of the output grid.

    Parameters
    ----------
    times : array-like of shape (n_times,) or (n_series, n_times)
        Output grid(s), as for :func:`substeps_for_grid`.
    dt : float or None
        Largest step; ``None`` gives ``(1, 1)`` for every interval.

    Returns
    -------
    list of (int, int)
        ``(n_intervals, n_steps)`` per segment, in order; the intervals sum
        to ``n_times - 1``, and ``n_intervals == 1`` or ``n_steps == 1``.
        Shared by all series: a segment's width is the widest among them.

    Examples
    --------
    >>> step_plan([0.0, 0.1, 0.2, 0.3, 1.0], dt=0.25)
    [(2, 1), (1, 1), (1, 3)]
    """
    t = _grid(times)
    n = t.shape[-1] - 1
    if dt is None:
        return [(1, 1)] * n
    _check_dt(dt)
    slack = _slack(t, dt)
    counts, plan, a = _substep_counts(t, dt, slack), [], 0
    while a < n:
        if counts[a] > 1:
            plan.append((1, counts[a]))
            a += 1
            continue
        b = a + 1  # extend the step while the span from a stays within dt
        while b < n and np.max(t[:, b + 1] - t[:, a]) <= dt + slack:
            b += 1
        plan.append((b - a, 1))
        a = b
    return plan


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
    once per process and solver (and again for a new right-hand side,
    without autograd, or for steps that reuse their first stage), at the
    first call, and takes 10-30 s.

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
        # Two entry points, each with its own compiled code: steps that evaluate
        # their first stage and steps that reuse one (k0, see odeint), so a
        # solve that mixes both does not recompile at every switch.
        fresh = torch.compile(lambda func, t, x, h: solver.step(func, t, x, h), dynamic=True)
        reuse = torch.compile(lambda func, t, x, h, k0: solver.step(func, t, x, h, k0), dynamic=True)
        _COMPILED[solver] = lambda func, t, x, h, k0=None: (
            fresh(func, t, x, h) if k0 is None else reuse(func, t, x, h, k0))
    return _COMPILED[solver]


def _step_function(solver, compile):
    """``solver.step``, or its compiled version that falls back to it for good on a failure."""
    compiled = compiled_step(solver) if compile else None
    if compiled is None:
        return lambda func, t, x, h, k0=None: _eager_step(solver, func, t, x, h, k0)

    def step(func, t, x, h, k0=None):
        if solver in _COMPILE_FAILED:  # an earlier step of this solve failed to compile
            return _eager_step(solver, func, t, x, h, k0)
        try:
            return compiled(func, t, x, h, k0)
        except Exception as exc:  # the compiler's errors have no common base class
            _COMPILE_FAILED.add(solver)
            warnings.warn(
                f"Compiling the {solver.name} step failed, so the solver runs eagerly (slower; "
                f"set compile_solver=False to silence this). {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}",
                RuntimeWarning,
                stacklevel=3,
            )
            return _eager_step(solver, func, t, x, h, k0)

    return step


def _reuses_first_stage(solver):
    """Whether ``solver.step`` can take ``k0``: its first stage is ``func(t, x)`` and it says so.

    A user's solver written before ``k0`` existed (a duck-typed object, or a
    subclass whose ``step`` has no ``k0``) evaluates every stage itself.
    """
    if not getattr(solver, "first_stage_at_start", False):
        return False
    try:
        return "k0" in inspect.signature(solver.step).parameters
    except (TypeError, ValueError):  # no signature to read
        return False


def _eager_step(solver, func, t, x, h, k0=None):
    """``solver.step``, passing ``k0`` only when there is one (user solvers may not take it)."""
    return solver.step(func, t, x, h) if k0 is None else solver.step(func, t, x, h, k0)


def odeint(func, x0, times, *, method="heun", n_substeps=1, plan=None, compile=False):
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
    plan : sequence of (int, int), optional
        The steps as segments of the output grid (see :func:`step_plan`),
        instead of ``n_substeps``: ``(1, n)`` takes ``n`` steps across one
        interval, ``(m, 1)`` one step across ``m`` intervals, whose inner
        output times are interpolated.
    compile : bool, default=False
        Take the steps with the compiled step of :func:`compiled_step`
        (eagerly where compilation fails, with a warning).

    Returns
    -------
    torch.Tensor of shape (S, K, n_states, n_times)
        Trajectory; ``[..., 0]`` is ``x0``.

    Notes
    -----
    Output times inside a step that spans several intervals are read off the
    cubic Hermite interpolant of the step's end states and their derivatives
    (``func`` at both ends). Its own error is ``O(h^4)`` in the step ``h``, so
    the interpolated times keep the order of every method shipped, up to
    ``"rk4"``. It costs no extra evaluation for methods whose first stage is
    ``func(t, x)`` (all shipped ones): the derivative at the end of the step
    is the first stage of the next one. Only a plan that ends with such a
    step pays one evaluation more (and every such step, for other methods).
    """
    solver = get_solver(method)
    if times.dim() == 1:
        times = times.unsqueeze(0)
    n_times = times.shape[-1]
    plan = _as_plan(n_substeps, plan, n_times)
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
    reuse = _reuses_first_stage(solver)
    weights = _hermite_weights(times, plan)
    x, k, j, p = x0, None, 0, 0  # k: func at (times[:, j], x) when already evaluated
    for m, n in plan:
        t0, t1 = times[:, j : j + 1], times[:, j + m : j + m + 1]
        h = (t1 - t0) / n
        if m > 1:  # one step across m intervals; the inner times are interpolated
            xa, ka = x, (func(t0, x) if k is None else k)
            x = step(func, t0, x, h, ka if reuse else None)
            k = func(t1, x)
            inner = _hermite(xa, ka, x, k, weights[:, :, p : p + m - 1])
            p += m - 1
            if record_grad:
                states.extend(inner.unbind(-1))
            else:
                out[..., j + 1 : j + m] = inner
        else:
            t = t0
            for _ in range(n):
                x = step(func, t, x, h, k if reuse else None)
                k = None
                t = t + h
        if record_grad:
            states.append(x)
        else:
            out[..., j + m] = x
        j += m
    return torch.stack(states, dim=-1) if record_grad else out


def _hermite_weights(times, plan):
    """Weights of the cubic Hermite interpolant at every inner output time of ``plan``.

    Computed for the whole solve at once (a dozen operations instead of a
    dozen per step), from views of ``times`` only, so the solve still never
    copies host data to the device (CUDA graphs capture it).

    Returns ``(4, S, n_inner)``: the weights of the start state, the start
    derivative, the end state and the end derivative of each inner time's
    step (the derivative ones times the step length), or None when no step
    spans several intervals. A step of length zero (ragged padding) gives
    its start state.
    """
    ta, tb, inner, j = [], [], [], 0
    for m, _ in plan:  # views of the grid, joined once (no index tensor from host data)
        if m > 1:
            ta.append(times[:, j : j + 1].expand(-1, m - 1))
            tb.append(times[:, j + m : j + m + 1].expand(-1, m - 1))
            inner.append(times[:, j + 1 : j + m])
        j += m
    if not inner:
        return None
    ta, tb, inner = torch.cat(ta, 1), torch.cat(tb, 1), torch.cat(inner, 1)
    h = tb - ta
    positive = h > 0
    theta = torch.where(positive, (inner - ta) / torch.where(positive, h, 1.0), 0.0)
    s, r = theta.square(), 1 - theta
    return torch.stack([(1 + 2 * theta) * r.square(), theta * r.square() * h,
                        s * (3 - 2 * theta), s * (theta - 1) * h])


def _hermite(xa, ka, xb, kb, w):
    """The interpolant at the inner times of one step: ``(S, K, n, m)`` from weights ``(4, S, m)``."""
    w = w[:, :, None, None, :]  # (4, S, 1, 1, m) against states (S, K, n, 1)
    out = w[0] * xa.unsqueeze(-1)
    out = torch.addcmul(out, w[1], ka.unsqueeze(-1))
    out = torch.addcmul(out, w[2], xb.unsqueeze(-1))
    return torch.addcmul(out, w[3], kb.unsqueeze(-1))


def _as_plan(n_substeps, plan, n_times):
    """The checked plan: ``plan`` itself, or ``n_substeps`` as one segment per interval."""
    if plan is None:
        if isinstance(n_substeps, int):
            n_substeps = [n_substeps] * (n_times - 1)
        if len(n_substeps) != n_times - 1:
            raise ValueError(
                f"n_substeps has {len(n_substeps)} entries; expected {n_times - 1} (one per interval)."
            )
        if any(int(n) != n or n < 1 for n in n_substeps):
            raise ValueError(f"n_substeps must be integers >= 1, got {list(n_substeps)}.")
        return [(1, int(n)) for n in n_substeps]
    if not (isinstance(n_substeps, int) and n_substeps == 1):
        raise ValueError("Pass either n_substeps or plan, not both.")
    try:
        plan = [(int(m), int(n)) for m, n in plan]
        valid = all(m >= 1 and n >= 1 and (m == 1 or n == 1) for m, n in plan)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(
            "plan must be a sequence of (n_intervals, n_steps) pairs of integers >= 1 with "
            f"n_intervals == 1 or n_steps == 1, got {plan!r}."
        )
    if sum(m for m, _ in plan) != n_times - 1:
        raise ValueError(
            f"plan covers {sum(m for m, _ in plan)} intervals; the grid has {n_times - 1}."
        )
    return plan
