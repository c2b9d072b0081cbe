"""Tests of ``OneCompartmentPK``: structure, priors, and the ODE against its closed form."""

import math

import numpy as np
import pytest
import torch
from sklearn.base import clone

from skhds.distributions import LogNormal
from skhds.models import Combined, Gaussian, OneCompartmentPK, check_model
from skhds.solvers import odeint, substeps_for_grid

F64 = torch.float64


def closed_form(t, dose, ka, CL, V):
    """``C(t) = D ka / (V (ka - ke)) (exp(-ke t) - exp(-ka t))``, ``ke = CL / V``."""
    ke = CL / V
    return dose * ka / (V * (ka - ke)) * (np.exp(-ke * t) - np.exp(-ka * t))


def solve(model, params, dose, times, dt=0.005, method="rk4"):
    """Concentrations ``(S, K, n_times)`` via the package's solver, in float64."""
    p = {k: torch.as_tensor(v, dtype=F64) for k, v in params.items()}
    u = {"dose": torch.as_tensor(dose, dtype=F64).reshape(-1, 1)}
    S, K = p["ka"].shape
    x0 = torch.broadcast_to(model.initial_state(p, u), (S, K, 2))
    grid = np.concatenate([[0.0], times])
    traj = odeint(lambda t, x: model.rhs(t, x, p, u), x0, torch.as_tensor(grid, dtype=F64),
                  method=method, n_substeps=substeps_for_grid(grid, dt))[..., 1:]
    obs = model.observe(traj.transpose(-1, -2), {k: v.unsqueeze(-1) for k, v in p.items()},
                        {k: v.unsqueeze(-1) for k, v in u.items()})
    assert obs.shape == (S, K, len(times), 1)
    return obs[..., 0].numpy()


# (S, K) = (3, 2): typical, fast absorption, flip-flop (ka < ke), slow clearance.
PARAMS = {
    "ka": np.array([[1.0, 3.5], [0.08, 0.6], [2.0, 1.2]]),
    "CL": np.array([[4.0, 6.0], [5.0, 2.0], [1.5, 9.0]]),
    "V": np.array([[30.0, 22.0], [18.0, 45.0], [35.0, 25.0]]),
}
DOSES = np.array([100.0, 50.0, 200.0])
TIMES = np.array([0.25, 0.5, 1.0, 1.7, 2.5, 4.0, 6.0, 9.5, 12.0, 18.0, 24.0])


def test_structure_and_priors():
    model = OneCompartmentPK()
    assert model.states == ("depot", "central")
    assert model.observable_names == ("C",)
    assert model.inputs == ("dose",)
    assert model.factors == ()
    assert model.t0 == 0.0
    specs = check_model(model)
    assert [(s.name, s.level) for s in specs] == [
        ("ka", "individual"), ("CL", "individual"), ("V", "individual"),
        ("a_C", "population"), ("b_C", "population"),
    ]
    expected = {"ka": (math.log(1.0), 0.5), "CL": (math.log(4.0), 0.4), "V": (math.log(30.0), 0.3)}
    for s in specs[:3]:
        assert isinstance(s.prior, LogNormal)
        assert (s.prior.loc, s.prior.scale) == pytest.approx(expected[s.name])
    # Combined error sized to concentrations of ~0.1-5 mg/L.
    assert isinstance(model.noise, Combined)
    a_prior, b_prior = specs[3].prior, specs[4].prior
    assert math.exp(a_prior.loc) == pytest.approx(0.05)
    assert math.exp(b_prior.loc) == pytest.approx(0.1)


def test_hyperparameters_follow_the_sklearn_contract():
    noise = Gaussian(LogNormal(math.log(0.2), 1.0))
    model = OneCompartmentPK(noise=noise)
    assert model.get_params(deep=False) == {"noise": noise}
    assert [s.name for s in model.parameter_specs()][3:] == ["sigma_C"]
    copy = clone(OneCompartmentPK())
    assert isinstance(copy.noise, Combined) and copy.noise == OneCompartmentPK().noise
    copy.set_params(noise=noise)
    assert copy.noise is noise
    assert repr(OneCompartmentPK()).startswith("OneCompartmentPK(noise=Combined(")


def test_initial_state_rhs_and_observe():
    model = OneCompartmentPK()
    p = {k: torch.as_tensor(v, dtype=F64) for k, v in PARAMS.items()}
    u = {"dose": torch.as_tensor(DOSES, dtype=F64).reshape(-1, 1)}
    x0 = torch.broadcast_to(model.initial_state(p, u), (3, 2, 2))
    np.testing.assert_array_equal(x0[..., 0].numpy(), np.repeat(DOSES[:, None], 2, 1))
    np.testing.assert_array_equal(x0[..., 1].numpy(), 0.0)
    x = torch.tensor([[[7.0, 3.0]]], dtype=F64).expand(3, 2, 2)
    dx = model.rhs(torch.zeros(1, 1, dtype=F64), x, p, u).numpy()
    ka, ke = PARAMS["ka"], PARAMS["CL"] / PARAMS["V"]
    np.testing.assert_allclose(dx[..., 0], -ka * 7.0, rtol=1e-14)
    np.testing.assert_allclose(dx[..., 1], ka * 7.0 - ke * 3.0, rtol=1e-14)
    # Total amount only decreases by elimination.
    np.testing.assert_allclose(dx.sum(-1), -ke * 3.0, rtol=1e-13)
    xt = torch.tensor([7.0, 3.0], dtype=F64).expand(3, 2, 4, 2)
    c = model.observe(xt, {k: v.unsqueeze(-1) for k, v in p.items()}, u).numpy()
    assert c.shape == (3, 2, 4, 1)
    np.testing.assert_allclose(c[..., 0], np.broadcast_to((3.0 / PARAMS["V"])[..., None], (3, 2, 4)))


def test_solution_matches_closed_form():
    C = solve(OneCompartmentPK(), PARAMS, DOSES, TIMES)
    ref = closed_form(TIMES, DOSES[:, None, None], PARAMS["ka"][..., None],
                      PARAMS["CL"][..., None], PARAMS["V"][..., None])
    assert np.all(ref > 0)
    np.testing.assert_allclose(C, ref, rtol=1e-5, atol=0)


def test_typical_subject_concentration_scale():
    """A 100 mg dose at the prior medians peaks at ~2.4 mg/L after ~2.3 h."""
    t = np.linspace(0.05, 24.0, 480)
    med = {"ka": np.array([[1.0]]), "CL": np.array([[4.0]]), "V": np.array([[30.0]])}
    C = solve(OneCompartmentPK(), med, np.array([100.0]), t, dt=0.01)[0, 0]
    assert 2.0 < C.max() < 3.0
    assert 2.0 < t[C.argmax()] < 2.7
    assert 0.1 < C[-1] < 0.25  # half-life ~5.2 h
    # Linear pharmacokinetics: concentrations proportional to the dose.
    C2 = solve(OneCompartmentPK(), med, np.array([200.0]), t, dt=0.01)[0, 0]
    np.testing.assert_allclose(C2, 2 * C, rtol=1e-12)


def test_float32_batch_shapes():
    """The model runs in the estimator's default float32 with (S, K) parameters."""
    model = OneCompartmentPK()
    p = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in PARAMS.items()}
    u = {"dose": torch.as_tensor(DOSES, dtype=torch.float32).reshape(-1, 1)}
    x0 = torch.broadcast_to(model.initial_state(p, u), (3, 2, 2))
    assert x0.dtype == torch.float32
    dx = model.rhs(torch.zeros(1, 1), x0, p, u)
    assert dx.shape == (3, 2, 2) and dx.dtype == torch.float32
