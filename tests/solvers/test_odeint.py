"""Tests for the fixed-step integrators in ``skhds.solvers``.

Convergence orders are checked against exact solutions (matrix exponential,
closed forms) in float64, nonlinear accuracy against ``scipy.integrate.solve_ivp``,
and gradients with ``torch.autograd.gradcheck`` and central finite differences.
"""

import math
import warnings

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import torch

import skhds.solvers._odeint as _odeint
from skhds.solvers import (
    SOLVERS,
    ExplicitRungeKutta,
    euler,
    get_solver,
    heun,
    midpoint,
    odeint,
    rk4,
    step_plan,
    substeps_for_grid,
)

F64 = torch.float64

# A stable, non-symmetric (non-normal) matrix: eigenvalues -0.79 +- 1.73i, -1.12.
A_NP = np.array([[-1.0, 2.0, 0.0], [-1.5, -0.5, 0.4], [0.3, -0.2, -1.2]])
T_END = 2.0

# Step counts per method chosen so that the asymptotic regime is reached and
# roundoff (~1e-16) stays far below the truncation error.
ORDER_CASES = {
    "euler": (1, [64, 128, 256, 512]),
    "heun": (2, [16, 32, 64, 128]),
    "midpoint": (2, [16, 32, 64, 128]),
    "rk4": (4, [8, 16, 32, 64]),
}


def _x0(S=2, K=3, n=3, seed=0):
    rng = np.random.default_rng(seed)
    return torch.tensor(rng.normal(size=(S, K, n)), dtype=F64)


def _linear_rhs():
    A = torch.tensor(A_NP, dtype=F64)
    return lambda t, x: x @ A.T


def _slope(n_steps, errors):
    h = T_END / np.asarray(n_steps, dtype=float)
    return np.polyfit(np.log(h), np.log(np.asarray(errors)), 1)[0]


# ---------------------------------------------------------------------------
# Convergence orders
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", list(ORDER_CASES))
def test_order_linear_system(method):
    order, n_steps = ORDER_CASES[method]
    x0 = _x0()
    assert len({tuple(r) for r in x0.reshape(-1, 3).tolist()}) == 6  # distinct initial states
    exact = x0.numpy() @ scipy.linalg.expm(A_NP * T_END).T
    times = torch.tensor([0.0, T_END], dtype=F64)
    errors = []
    for n in n_steps:
        out = odeint(_linear_rhs(), x0, times, method=method, n_substeps=n)
        errors.append(np.abs(out[..., -1].numpy() - exact).max())
    assert all(e1 > e2 for e1, e2 in zip(errors, errors[1:])), errors
    assert abs(_slope(n_steps, errors) - order) < 0.3, errors


@pytest.mark.parametrize("method", list(ORDER_CASES))
def test_order_non_autonomous(method):
    # dx/dt = cos(t) x  =>  x(t) = x0 exp(sin t): checks the stage nodes ``c``.
    order, n_steps = ORDER_CASES[method]
    x0 = _x0(n=2, seed=1)
    exact = x0.numpy() * math.exp(math.sin(T_END))

    def f(t, x):
        return torch.cos(t).unsqueeze(-1) * x

    times = torch.tensor([0.0, T_END], dtype=F64)
    errors = []
    for n in n_steps:
        out = odeint(f, x0, times, method=method, n_substeps=n)
        errors.append(np.abs(out[..., -1].numpy() - exact).max())
    assert abs(_slope(n_steps, errors) - order) < 0.3, errors


def test_solver_orders_declared():
    assert set(SOLVERS) == {"euler", "heun", "midpoint", "rk4"}
    for name, (order, _) in ORDER_CASES.items():
        assert SOLVERS[name].order == order
        assert SOLVERS[name].name == name
    assert (euler.n_stages, heun.n_stages, midpoint.n_stages, rk4.n_stages) == (1, 2, 2, 4)


# ---------------------------------------------------------------------------
# Accuracy on a nonlinear problem
# ---------------------------------------------------------------------------


def test_lotka_volterra_matches_solve_ivp():
    # Per-series parameters shaped (S, 1, 1) broadcast against states (S, K, 2).
    params = np.array([[1.1, 0.4, 0.4, 0.1], [0.8, 0.5, 0.6, 0.2]])  # alpha, beta, gamma, delta
    p = torch.tensor(params, dtype=F64)[:, :, None, None]  # (S, 4, 1, 1)
    x0 = torch.tensor(
        [[[10.0, 5.0], [4.0, 2.0], [6.0, 8.0]], [[3.0, 3.0], [7.0, 1.0], [2.0, 4.0]]], dtype=F64
    )
    times = torch.tensor([0.0, 0.3, 1.1, 2.5, 4.0, 6.0], dtype=F64)

    def f(t, x):
        a, b, g, d = p[:, 0], p[:, 1], p[:, 2], p[:, 3]
        u, v = x[..., 0:1], x[..., 1:2]
        return torch.cat([a * u - b * u * v, d * u * v - g * v], dim=-1)

    n_sub = substeps_for_grid(times.numpy(), 0.01)
    out = odeint(f, x0, times, method="rk4", n_substeps=n_sub).numpy()
    assert out.shape == (2, 3, 2, 6)

    for s in range(2):
        a, b, g, d = params[s]
        for k in range(3):
            sol = scipy.integrate.solve_ivp(
                lambda t, y: [a * y[0] - b * y[0] * y[1], d * y[0] * y[1] - g * y[1]],
                (0.0, 6.0),
                x0[s, k].numpy(),
                t_eval=times.numpy(),
                method="DOP853",
                rtol=1e-10,
                atol=1e-12,
            )
            assert sol.success
            np.testing.assert_allclose(out[s, k], sol.y, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------
# Grids, shapes, padding
# ---------------------------------------------------------------------------


def _cos_rhs(t, x):
    return torch.cos(t).unsqueeze(-1) * x


def test_output_shape_and_initial_state():
    x0 = _x0(S=2, K=3, n=3)
    times = torch.linspace(0, 1, 5, dtype=F64)
    out = odeint(_linear_rhs(), x0, times, method="rk4", n_substeps=2)
    assert out.shape == (2, 3, 3, 5)
    assert out.dtype == F64
    assert torch.equal(out[..., 0], x0)


def test_float32_is_kept():
    x0 = _x0().float()
    A = torch.tensor(A_NP, dtype=torch.float32)
    out = odeint(lambda t, x: x @ A.T, x0, torch.linspace(0, 1, 3), method="heun")
    assert out.dtype == torch.float32


def test_single_time_returns_x0():
    x0 = _x0()
    out = odeint(_linear_rhs(), x0, torch.tensor([0.5], dtype=F64))
    assert out.shape == (2, 3, 3, 1)
    assert torch.equal(out[..., 0], x0)


def test_non_uniform_shared_grid_matches_exact():
    x0 = _x0(n=2)
    times = torch.tensor([0.0, 0.05, 0.4, 0.45, 1.7, 3.0], dtype=F64)
    out = odeint(_cos_rhs, x0, times, method="rk4", n_substeps=substeps_for_grid(times, 0.01))
    exact = x0.numpy()[..., None] * np.exp(np.sin(times.numpy()))
    np.testing.assert_allclose(out.numpy(), exact, rtol=0, atol=1e-9)


def test_per_series_grids_match_separate_solves():
    x0 = _x0(S=2, K=3, n=2)
    grids = torch.tensor([[0.0, 0.2, 0.5, 1.3, 2.0], [1.0, 1.1, 1.9, 2.0, 4.0]], dtype=F64)
    n_sub = substeps_for_grid(grids.numpy(), 0.05)
    out = odeint(_cos_rhs, x0, grids, method="rk4", n_substeps=n_sub)
    assert out.shape == (2, 3, 2, 5)
    for s in range(2):
        alone = odeint(_cos_rhs, x0[s : s + 1], grids[s], method="rk4", n_substeps=n_sub)
        torch.testing.assert_close(out[s : s + 1], alone, rtol=1e-13, atol=1e-13)
        # and each series really followed its own grid (x(t) = x(t0) exp(sin t - sin t0))
        g = grids[s].numpy()
        exact = x0[s].numpy()[..., None] * np.exp(np.sin(g) - np.sin(g[0]))
        np.testing.assert_allclose(out[s].numpy(), exact, rtol=0, atol=1e-7)


def test_rhs_receives_time_shapes_and_values():
    seen = []

    def f(t, x):
        seen.append(t.clone())
        return -x

    x0 = _x0(S=2, K=1, n=1)
    odeint(f, x0, torch.tensor([0.0, 1.0], dtype=F64), method="euler", n_substeps=4)
    assert [tuple(t.shape) for t in seen] == [(1, 1)] * 4
    np.testing.assert_allclose([float(t) for t in seen], [0.0, 0.25, 0.5, 0.75], atol=1e-15)

    seen.clear()
    grids = torch.tensor([[0.0, 1.0], [2.0, 4.0]], dtype=F64)
    odeint(f, x0, grids, method="rk4", n_substeps=1)
    assert [tuple(t.shape) for t in seen] == [(2, 1)] * 4
    nodes = np.array([0.0, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(np.stack([t[:, 0].numpy() for t in seen]), np.stack([nodes, 2 + 2 * nodes], 1))


def test_number_of_rhs_evaluations():
    calls = []

    def f(t, x):
        calls.append(1)
        return -x

    x0 = _x0(S=1, K=1, n=1)
    times = torch.tensor([0.0, 0.5, 1.0, 2.0], dtype=F64)
    for method, stages in [("euler", 1), ("heun", 2), ("midpoint", 2), ("rk4", 4)]:
        calls.clear()
        odeint(f, x0, times, method=method, n_substeps=[3, 1, 5])
        assert len(calls) == stages * 9
    # Steps across several intervals cost no extra evaluation (the derivative at a
    # step's end is the next step's first stage), except after the last step.
    times = torch.linspace(0.0, 1.0, 7, dtype=F64)
    for plan, extra in [([(3, 1), (1, 2), (2, 1)], 1), ([(3, 1), (2, 1), (1, 1)], 0)]:
        for method, stages in [("heun", 2), ("rk4", 4)]:
            calls.clear()
            odeint(f, x0, times, method=method, plan=plan)
            assert len(calls) == stages * sum(n for _, n in plan) + extra


def test_repeated_time_leaves_state_unchanged():
    x0 = _x0(n=2)
    times = torch.tensor([0.0, 0.5, 0.5, 0.5, 1.0], dtype=F64)
    out = odeint(_cos_rhs, x0, times, method="rk4", n_substeps=[4, 7, 1, 4])
    assert torch.equal(out[..., 2], out[..., 1])
    assert torch.equal(out[..., 3], out[..., 1])
    ref = odeint(
        _cos_rhs, x0, torch.tensor([0.0, 0.5, 1.0], dtype=F64), method="rk4", n_substeps=[4, 4]
    )
    torch.testing.assert_close(out[..., [0, 1, 4]], ref, rtol=1e-14, atol=1e-14)


def test_ragged_padding_per_series():
    # Series 1 has fewer observations and is padded by repeating its last time.
    x0 = _x0(S=2, K=2, n=2)
    grids = torch.tensor([[0.0, 0.5, 1.0, 1.5], [0.0, 0.7, 0.7, 0.7]], dtype=F64)
    out = odeint(_cos_rhs, x0, grids, method="heun", n_substeps=3)
    assert torch.equal(out[1, ..., 2], out[1, ..., 1])
    assert torch.equal(out[1, ..., 3], out[1, ..., 1])
    alone = odeint(_cos_rhs, x0[1:], grids[1, :2], method="heun", n_substeps=3)
    torch.testing.assert_close(out[1:, ..., :2], alone, rtol=1e-14, atol=1e-14)
    # the unpadded series still moves
    assert not torch.allclose(out[0, ..., 3], out[0, ..., 2])


# ---------------------------------------------------------------------------
# substeps_for_grid / n_substeps
# ---------------------------------------------------------------------------


def test_substeps_dt_none_gives_ones():
    assert substeps_for_grid(np.linspace(0, 3, 7), None) == [1] * 6
    assert substeps_for_grid(np.zeros((3, 4)), None) == [1, 1, 1]


def test_substeps_shared_grid_exact_counts():
    counts = substeps_for_grid([0.0, 0.25, 1.0, 1.05], 0.1)
    assert counts == [3, 8, 1]
    assert all(isinstance(c, int) for c in counts)


def test_substeps_tolerates_roundoff_on_multiples_of_dt():
    # linspace diffs are 0.1 up to roundoff: one step each, not two.
    assert substeps_for_grid(np.linspace(0.0, 1.0, 11), 0.1) == [1] * 10
    assert substeps_for_grid([0.0, 0.3, 1.0], 0.1) == [3, 7]


def _random_grids(seed, n_intervals, mean_width):
    """A shared grid with one zero-length interval, and four per-series grids."""
    rng = np.random.default_rng(seed)
    shared = np.concatenate([[0.0], np.cumsum(rng.exponential(mean_width, size=n_intervals))])
    shared[4] = shared[3]  # a zero-length interval
    per_series = np.concatenate(
        [np.zeros((4, 1)), np.cumsum(rng.exponential(mean_width, size=(4, n_intervals)), axis=1)],
        axis=1,
    )
    return shared, per_series


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_substeps_bound_step_and_are_minimal(seed):
    dt = 0.07
    for grid in _random_grids(seed, 9, 0.3):
        counts = np.array(substeps_for_grid(grid, dt))
        assert counts.shape == (9,)
        assert (counts >= 1).all()
        widths = np.atleast_2d(np.diff(grid, axis=-1))
        assert (widths / counts <= dt + _odeint._slack(np.asarray(grid), dt)).all()
        # minimal: one step fewer would exceed dt in the widest series
        widest = widths.max(axis=0)
        more = counts > 1
        assert (widest[more] / (counts[more] - 1) > dt).all()


def test_substeps_accepts_torch_grid():
    grid = torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.1, 1.4]], dtype=F64)
    assert substeps_for_grid(grid, 0.1) == [5, 13]


@pytest.mark.parametrize("n_substeps", [[1], [1, 1, 1], []])
def test_wrong_length_n_substeps_raises(n_substeps):
    x0 = _x0()
    times = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    with pytest.raises(ValueError, match="n_substeps"):
        odeint(_linear_rhs(), x0, times, n_substeps=n_substeps)


def test_list_of_substeps_equals_refined_grid():
    # 4 substeps on [0, 1] equal 1 step each on the refined grid.
    x0 = _x0()
    coarse = odeint(_linear_rhs(), x0, torch.tensor([0.0, 1.0], dtype=F64), method="rk4", n_substeps=[4])
    fine = odeint(_linear_rhs(), x0, torch.linspace(0, 1, 5, dtype=F64), method="rk4", n_substeps=1)
    torch.testing.assert_close(coarse[..., -1], fine[..., -1], rtol=1e-14, atol=1e-14)


# ---------------------------------------------------------------------------
# step_plan / plan: steps across several output times, interpolated
# ---------------------------------------------------------------------------


def test_step_plan_dt_none_is_one_step_per_interval():
    assert step_plan(np.linspace(0, 3, 7), None) == [(1, 1)] * 6
    assert step_plan(np.zeros((3, 4)), None) == [(1, 1)] * 3


def test_step_plan_merges_and_splits():
    assert step_plan([0.0, 0.1, 0.2, 0.3, 1.0], 0.25) == [(2, 1), (1, 1), (1, 3)]
    # multiples of dt up to roundoff merge exactly (linspace diffs are 0.1 +- 1 ulp)
    assert step_plan(np.linspace(0.0, 1.0, 11), 0.2) == [(2, 1)] * 5
    # the widest series decides
    # float32 grids (as the estimator solves in) too: 0.2 is stored as 0.2000000030
    assert step_plan(np.linspace(0, 12, 61).astype(np.float32), 0.4) == [(2, 1)] * 30
    assert step_plan(torch.linspace(0, 1, 11, dtype=torch.float32), 0.2) == [(2, 1)] * 5
    assert substeps_for_grid(np.linspace(0, 12, 61).astype(np.float32), 0.2) == [1] * 60
    assert step_plan([0.0, 0.1, 0.2, 0.3], 0.3) == [(3, 1)]
    grids = np.array([[0.0, 0.1, 0.2, 0.3], [0.0, 0.2, 0.25, 0.4]])
    assert step_plan(grids, 0.3) == [(2, 1), (1, 1)]
    with pytest.raises(ValueError, match="dt"):
        step_plan([0.0, 1.0], -1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_step_plan_steps_bounded_and_greedy(seed):
    dt = 0.5
    for grid in _random_grids(seed, 29, 0.2):
        plan = step_plan(grid, dt)
        g = np.atleast_2d(grid)
        assert sum(m for m, _ in plan) == 29
        assert all(m == 1 or n == 1 for m, n in plan)
        assert any(m > 1 for m, _ in plan)  # merging happens on this grid
        j = 0
        for i, (m, n) in enumerate(plan):
            span = np.max(g[:, j + m] - g[:, j])
            assert span / n <= dt + _odeint._slack(g, dt)
            if n == 1 and j + m < 29 and plan[i + 1][1] == 1:
                # greedy: the next interval would not have fitted into this step
                assert np.max(g[:, j + m + 1] - g[:, j]) > dt
            j += m


@pytest.mark.parametrize("method", ["heun", "rk4"])
def test_plan_step_ends_equal_a_solve_on_the_coarse_grid(method):
    x0 = _x0(n=2)
    fine = torch.linspace(0.0, 2.0, 13, dtype=F64)
    out = odeint(_cos_rhs, x0, fine, method=method, plan=[(3, 1), (1, 2), (2, 1), (3, 1), (3, 1)])
    coarse = odeint(_cos_rhs, x0, fine[[0, 3, 4, 6, 9, 12]], method=method, n_substeps=[1, 2, 1, 1, 1])
    torch.testing.assert_close(out[..., [0, 3, 4, 6, 9, 12]], coarse, rtol=1e-14, atol=1e-14)
    # the inner times are neither copies of the step ends nor linear interpolation
    lin = (2 * out[..., 0] + out[..., 3]) / 3
    assert not torch.allclose(out[..., 1], lin, atol=1e-6)


def test_interpolation_is_exact_for_a_cubic_solution():
    # dx/dt = 3 t^2: x = x0 + t^3. RK4 integrates it exactly and the cubic
    # Hermite interpolant reproduces a cubic, so the inner times are exact too.
    x0 = _x0(n=2)
    times = torch.linspace(0.0, 2.0, 9, dtype=F64)

    def f(t, x):
        return (3 * t.square()).unsqueeze(-1).expand_as(x)

    out = odeint(f, x0, times, method="rk4", plan=[(4, 1), (4, 1)])
    exact = x0.unsqueeze(-1) + times.pow(3)
    torch.testing.assert_close(out, exact, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("method", list(ORDER_CASES))
def test_order_at_interpolated_times(method):
    # The error at the inner output times shrinks like the method's order.
    order, n_steps = ORDER_CASES[method]
    x0 = _x0()
    errors = []
    for n in n_steps:
        times = torch.linspace(0.0, T_END, 4 * n + 1, dtype=F64)
        exact = np.stack([x0.numpy() @ scipy.linalg.expm(A_NP * t).T for t in times.numpy()], -1)
        out = odeint(_linear_rhs(), x0, times, method=method, plan=[(4, 1)] * n)
        inner = np.arange(4 * n + 1) % 4 != 0
        errors.append(np.abs(out.numpy() - exact)[..., inner].max())
    assert all(e1 > e2 for e1, e2 in zip(errors, errors[1:])), errors
    assert abs(_slope(n_steps, errors) - order) < 0.3, errors


def test_plan_without_reusable_first_stage():
    # A tableau whose first node is not 0 cannot reuse func(t, x); it still works.
    odd = ExplicitRungeKutta("odd", order=1, a=[[]], b=[1.0], c=[0.5])
    assert not odd.first_stage_at_start and rk4.first_stage_at_start
    x0 = _x0(n=2)
    times = torch.linspace(0.0, 1.0, 5, dtype=F64)
    out = odeint(_cos_rhs, x0, times, method=odd, plan=[(2, 1), (2, 1)])
    coarse = odeint(_cos_rhs, x0, times[[0, 2, 4]], method=odd)
    torch.testing.assert_close(out[..., [0, 2, 4]], coarse, rtol=1e-14, atol=1e-14)
    with pytest.raises(ValueError, match="c\\[0\\]"):
        odd.step(_cos_rhs, times[:1].reshape(1, 1), x0, times[1:2].reshape(1, 1), k0=x0)


def test_plan_on_per_series_grids_interpolates_each_series_on_its_own_grid():
    # theta and the derivative weights (times the step) are per series: each series of
    # a batch with its own spacing equals that series solved alone with the same plan.
    def f(t, x):
        return torch.cos(t).unsqueeze(-1) - 0.5 * x

    x0 = torch.tensor([[[0.3, -0.2]], [[1.0, 0.5]], [[-0.4, 0.1]]], dtype=F64)
    grids = torch.tensor([[0.0, 0.1, 0.2, 0.35, 0.5, 0.9, 1.0],
                          [0.0, 0.3, 0.4, 0.8, 1.1, 1.3, 1.9],
                          [0.0, 0.05, 0.3, 0.3, 0.45, 0.5, 0.5]], dtype=F64)
    plan = [(3, 1), (1, 2), (2, 1)]
    out = odeint(f, x0, grids, method="rk4", plan=plan)
    for s in range(3):
        alone = odeint(f, x0[s : s + 1], grids[s], method="rk4", plan=plan)
        torch.testing.assert_close(out[s : s + 1], alone, rtol=1e-14, atol=1e-14)


def test_plan_with_user_solvers_of_the_old_interface():
    # A duck-typed solver (step and order only) and a subclass whose step takes no k0
    # still work, with or without steps across intervals: they evaluate every stage.
    class DuckEuler:
        name, order = "duck", 1

        def step(self, func, t, x, h):
            return x + h.unsqueeze(-1) * func(t, x)

    class OldHeun(ExplicitRungeKutta):
        def step(self, func, t, x, h):
            return super().step(func, t, x, h)

    x0 = _x0(n=2)
    times = torch.linspace(0.0, 1.0, 7, dtype=F64)
    old_heun = OldHeun("old-heun", 2, heun.a, heun.b, heun.c)
    for solver, same_as in [(DuckEuler(), euler), (old_heun, heun)]:
        for plan in ([(1, 1)] * 6, [(3, 1), (1, 2), (2, 1)]):
            out = odeint(_cos_rhs, x0, times, method=solver, plan=plan)
            torch.testing.assert_close(out, odeint(_cos_rhs, x0, times, method=same_as, plan=plan),
                                       rtol=1e-13, atol=1e-13)


def test_plan_with_ragged_padding_inside_a_step():
    # Series 1 ends at 0.5 and is padded by repeating that time; its padding
    # lies inside a step that spans three intervals.
    x0 = _x0(S=2, K=2, n=2)
    grids = torch.tensor([[0.0, 0.25, 0.5, 0.75, 1.0], [0.0, 0.25, 0.5, 0.5, 0.5]], dtype=F64)
    out = odeint(_cos_rhs, x0, grids, method="rk4", plan=[(1, 1), (3, 1)])
    assert torch.isfinite(out).all()
    assert torch.equal(out[1, ..., 3], out[1, ..., 2])
    assert torch.equal(out[1, ..., 4], out[1, ..., 2])
    alone = odeint(_cos_rhs, x0[1:], grids[1, :3], method="rk4", plan=[(1, 1), (1, 1)])
    torch.testing.assert_close(out[1:, ..., :3], alone, rtol=1e-14, atol=1e-14)


def test_plan_with_and_without_autograd_agree():
    x0 = _x0(n=2)
    times = torch.linspace(0.0, 1.0, 8, dtype=F64)
    plan = [(3, 1), (1, 2), (3, 1)]
    with torch.no_grad():
        a = odeint(_cos_rhs, x0, times, method="rk4", plan=plan)
    b = odeint(_cos_rhs, x0.clone().requires_grad_(), times, method="rk4", plan=plan)
    torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)


def test_gradcheck_through_interpolated_times():
    times = torch.linspace(0.0, 1.0, 7, dtype=F64)

    def inner(rate, x0):
        def f(t, x):
            return rate * x * (1.0 - x) + 0.1 * torch.sin(t).unsqueeze(-1)

        return odeint(f, x0, times, method="rk4", plan=[(3, 1), (3, 1)])[..., [1, 2, 4, 5]]

    rate = torch.tensor([[[1.3]], [[0.7]]], dtype=F64, requires_grad=True)
    x0 = torch.tensor([[[0.1, 0.3]], [[0.5, 0.2]]], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(inner, (rate, x0), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"plan": [(2, 1)], "n_substeps": 2}, "not both"),
        ({"plan": [(2, 2)]}, "n_intervals == 1 or n_steps == 1"),
        ({"plan": [(0, 1), (2, 1)]}, ">= 1"),
        ({"plan": [(1, 1)]}, "covers 1 intervals; the grid has 2"),
        ({"plan": [1, 1]}, "pairs"),
    ],
)
def test_bad_plan_raises(kwargs, match):
    x0 = _x0()
    times = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    with pytest.raises(ValueError, match=match):
        odeint(_linear_rhs(), x0, times, **kwargs)


# ---------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------


def _logistic_final(method):
    times = torch.tensor([0.0, 0.4, 1.0], dtype=F64)

    def final(rate, x0):
        def f(t, x):
            return rate * x * (1.0 - x) + 0.1 * torch.sin(t).unsqueeze(-1)

        return odeint(f, x0, times, method=method, n_substeps=3)[..., -1]

    return final


@pytest.mark.parametrize("method", ["heun", "rk4"])
def test_gradcheck_rate_and_initial_state(method):
    rate = torch.tensor([[[1.3]], [[0.7]]], dtype=F64, requires_grad=True)  # (S, 1, 1)
    x0 = torch.tensor([[[0.1, 0.3]], [[0.5, 0.2]]], dtype=F64, requires_grad=True)  # (S, K=1, 2)
    assert torch.autograd.gradcheck(_logistic_final(method), (rate, x0), eps=1e-6, atol=1e-8)


def test_gradient_matches_central_finite_differences():
    params0 = np.array([1.1, 0.4, 0.4, 0.1])
    x0 = torch.tensor([[[2.0, 1.0], [1.0, 3.0]]], dtype=F64)
    times = torch.tensor([0.0, 0.5, 1.5, 2.0], dtype=F64)
    target = torch.linspace(0.5, 2.0, 2 * 2 * 4, dtype=F64).reshape(1, 2, 2, 4)

    def loss(p):
        def f(t, x):
            u, v = x[..., 0:1], x[..., 1:2]
            return torch.cat([p[0] * u - p[1] * u * v, p[3] * u * v - p[2] * v], dim=-1)

        out = odeint(f, x0, times, method="rk4", n_substeps=substeps_for_grid(times, 0.05))
        return ((out - target) ** 2).sum()

    p = torch.tensor(params0, dtype=F64, requires_grad=True)
    (grad,) = torch.autograd.grad(loss(p), p)
    eps = 1e-6
    fd = np.empty(4)
    for i in range(4):
        e = np.zeros(4)
        e[i] = eps
        lp = loss(torch.tensor(params0 + e, dtype=F64)).item()
        lm = loss(torch.tensor(params0 - e, dtype=F64)).item()
        fd[i] = (lp - lm) / (2 * eps)
    assert np.abs(fd).min() > 1e-3  # every parameter matters
    np.testing.assert_allclose(grad.numpy(), fd, rtol=1e-6, atol=1e-8)


def test_gradient_approximates_exact_sensitivity():
    # x(t) = x0 exp(-k t): d x(T) / dk = -T x0 exp(-k T).
    k = torch.tensor(0.8, dtype=F64, requires_grad=True)
    x0 = torch.tensor([[[1.5]]], dtype=F64)
    out = odeint(lambda t, x: -k * x, x0, torch.tensor([0.0, 2.0], dtype=F64), method="rk4", n_substeps=40)
    (g,) = torch.autograd.grad(out[..., -1].sum(), k)
    assert abs(g.item() - (-2.0 * 1.5 * math.exp(-1.6))) < 1e-6


# ---------------------------------------------------------------------------
# Solver selection and custom tableaux
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["euler", "heun", "midpoint", "rk4"])
def test_get_solver_by_name(name):
    solver = get_solver(name)
    assert isinstance(solver, ExplicitRungeKutta)
    assert solver is SOLVERS[name]
    assert repr(solver) == f"ExplicitRungeKutta(name={name!r}, order={solver.order})"


@pytest.mark.parametrize("bad", ["RK4", "dopri5", "", 3, None])
def test_get_solver_unknown_raises(bad):
    with pytest.raises(ValueError) as exc:
        get_solver(bad)
    msg = str(exc.value)
    for name in ("euler", "heun", "midpoint", "rk4"):
        assert name in msg


def test_odeint_unknown_method_raises():
    with pytest.raises(ValueError, match="rk4"):
        odeint(_linear_rhs(), _x0(), torch.tensor([0.0, 1.0], dtype=F64), method="rk45")


def test_custom_tableau_object():
    ralston = ExplicitRungeKutta(
        "ralston", order=2, a=[[], [2 / 3]], b=[0.25, 0.75], c=[0.0, 2 / 3]
    )
    assert get_solver(ralston) is ralston
    x0 = _x0(n=2, seed=3)
    exact = x0.numpy() * math.exp(math.sin(T_END))
    times = torch.tensor([0.0, T_END], dtype=F64)
    n_steps = [16, 32, 64, 128]
    errors = []
    for n in n_steps:
        out = odeint(_cos_rhs, x0, times, method=ralston, n_substeps=n)
        errors.append(np.abs(out[..., -1].numpy() - exact).max())
    assert abs(_slope(n_steps, errors) - 2) < 0.3
    # a different method from heun on a non-autonomous problem
    h = odeint(_cos_rhs, x0, times, method="heun", n_substeps=16)
    r = odeint(_cos_rhs, x0, times, method=ralston, n_substeps=16)
    assert not torch.allclose(h, r, rtol=0, atol=1e-8)


def test_custom_tableau_with_negative_coefficients():
    # Kutta's 3/8 rule: fourth order, with negative entries in ``a``.
    three_eighths = ExplicitRungeKutta(
        "3/8",
        order=4,
        a=[[], [1 / 3], [-1 / 3, 1.0], [1.0, -1.0, 1.0]],
        b=[1 / 8, 3 / 8, 3 / 8, 1 / 8],
        c=[0.0, 1 / 3, 2 / 3, 1.0],
    )
    x0 = _x0()
    exact = x0.numpy() @ scipy.linalg.expm(A_NP * T_END).T
    times = torch.tensor([0.0, T_END], dtype=F64)
    n_steps = [8, 16, 32, 64]
    errors = []
    for n in n_steps:
        out = odeint(_linear_rhs(), x0, times, method=three_eighths, n_substeps=n)
        errors.append(np.abs(out[..., -1].numpy() - exact).max())
    assert abs(_slope(n_steps, errors) - 4) < 0.3, errors


def test_passing_solver_object_equals_name():
    x0 = _x0()
    times = torch.tensor([0.0, 0.3, 1.0], dtype=F64)
    for name, obj in [("euler", euler), ("heun", heun), ("midpoint", midpoint), ("rk4", rk4)]:
        assert torch.equal(
            odeint(_linear_rhs(), x0, times, method=name, n_substeps=2),
            odeint(_linear_rhs(), x0, times, method=obj, n_substeps=2),
        )


def test_default_method_is_heun():
    x0 = _x0()
    times = torch.tensor([0.0, 1.0], dtype=F64)
    assert torch.equal(
        odeint(_linear_rhs(), x0, times, n_substeps=3),
        odeint(_linear_rhs(), x0, times, method="heun", n_substeps=3),
    )


@pytest.mark.parametrize(
    "a, b, c",
    [
        ([[], [1.0]], [0.5, 0.5], [0.0]),  # c too short
        ([[], [1.0]], [1.0], [0.0, 1.0]),  # b too short
        ([[], [1.0, 0.0]], [0.5, 0.5], [0.0, 1.0]),  # row 1 has two entries
        ([[0.0], [1.0]], [0.5, 0.5], [0.0, 1.0]),  # row 0 not empty (implicit)
    ],
)
def test_inconsistent_tableau_raises(a, b, c):
    with pytest.raises(ValueError, match="broken"):
        ExplicitRungeKutta("broken", order=2, a=a, b=b, c=c)


# ---------------------------------------------------------------------------
# CUDA
# ---------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
@pytest.mark.parametrize("method", ["euler", "heun", "midpoint", "rk4"])
def test_cuda_matches_cpu(method):
    A = torch.tensor(A_NP, dtype=torch.float32)
    x0 = _x0().float()
    grids = torch.tensor([[0.0, 0.3, 0.9, 2.0], [0.5, 0.6, 0.6, 1.5]])

    def make(dev):
        Ad = A.to(dev)
        return lambda t, x: x @ Ad.T + torch.sin(t).unsqueeze(-1)

    cpu = odeint(make("cpu"), x0, grids, method=method, n_substeps=[3, 5, 7])
    gpu = odeint(make("cuda"), x0.cuda(), grids.cuda(), method=method, n_substeps=[3, 5, 7])
    assert gpu.device.type == "cuda"
    assert gpu.dtype == torch.float32
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-5)


# ------------------------------------------------------------------ compiled steps
def _logistic_problem():
    torch.manual_seed(0)
    rate = (0.5 + torch.rand(6, 3, 1, dtype=torch.float64)).requires_grad_(True)
    x0 = torch.full((6, 3, 1), 0.05, dtype=torch.float64, requires_grad=True)
    times = torch.linspace(0.0, 8.0, 17, dtype=torch.float64)

    def rhs(t, x):
        return rate * x * (1.0 - x)

    return rhs, x0, times, rate


def test_compiled_step_matches_eager_values_and_gradients():
    """``compile=True`` integrates the same trajectories (and gradients) as eager steps;
    where no compiler is available it falls back with a warning, with the same result."""
    rhs, x0, times, rate = _logistic_problem()
    # one step per interval, and steps across three intervals (first stage reused)
    for plan in ([(1, 1)] * 16, step_plan(times, 1.5)):
        failed_before = rk4 in _odeint._COMPILE_FAILED
        eager = odeint(rhs, x0, times, method="rk4", plan=plan)
        g_eager = torch.autograd.grad(eager.square().sum(), (rate, x0))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compiled = odeint(rhs, x0, times, method="rk4", plan=plan, compile=True)
            g_compiled = torch.autograd.grad(compiled.square().sum(), (rate, x0))
        fell_back = any("Compiling the rk4 step failed" in str(w.message) for w in caught)
        # a failure warns once, when it happens
        assert fell_back == (rk4 in _odeint._COMPILE_FAILED and not failed_before)
        torch.testing.assert_close(compiled, eager, rtol=1e-10, atol=1e-12)
        for a, b in zip(g_compiled, g_eager):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_failed_compilation_warns_once_and_steps_eagerly(monkeypatch):
    def broken(fn, **kwargs):
        def raise_(*args):
            raise RuntimeError("no C++ compiler\nsecond line")
        return raise_

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(_odeint, "_COMPILED", {})
    monkeypatch.setattr(_odeint, "_COMPILE_FAILED", set())
    rhs, x0, times, _ = _logistic_problem()
    with pytest.warns(RuntimeWarning, match=r"Compiling the heun step failed.*no C\+\+ compiler"):
        out = odeint(rhs, x0, times, method="heun", compile=True)
    torch.testing.assert_close(out, odeint(rhs, x0, times, method="heun"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # failed once: later solves are eager and silent
        odeint(rhs, x0, times, method="heun", compile=True)
