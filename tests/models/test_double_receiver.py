"""Tests of the double-receiver models (``DoubleReceiver``, ``DoubleReceiverBlackBox``
and ``DoubleReceiverMixed``).

The white-box right-hand side is checked against an independent float64 numpy
transcription of the equations of the class docstring (and of the vi-hds
reference model), the simulator against ``scipy.integrate.solve_ivp``, the
black box and the mixed model against numpy evaluations of their networks, and
the models through one training epoch on a few wells of the real plate-reader
data.
"""

import math

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.integrate import solve_ivp
from sklearn.base import clone

from skhds import HierarchicalODEVAE
from skhds.datasets import fetch_double_receiver, simulate
from skhds.distributions import LogNormal, Normal
from skhds.models import DoubleReceiver, DoubleReceiverBlackBox, DoubleReceiverMixed, Gaussian, check_model
from skhds.preprocessing import SignalScaler
from skhds.solvers import odeint

F64 = torch.float64

STATES = ("x", "rfp", "yfp", "cfp", "f530", "f480", "luxR", "lasR")
SIGNALS = ("OD", "mRFP1", "EYFP", "ECFP")
INDIVIDUAL = ("r", "K", "tlag", "rc")
GROUP = {"aR": "luxR_rbs", "aS": "lasR_rbs"}
# The 21 shared parameters and their LogNormal(loc, scale) priors (vi-hds dr_constant).
POPULATION = {
    "e76": (-3.0, 1.0), "e81": (-3.0, 1.0),
    "KGR_76": (2.0, 3.0), "KGR_81": (-2.0, 3.0), "KGS_76": (-2.0, 3.0), "KGS_81": (2.0, 3.0),
    "KR6": (-6.0, 3.0), "KR12": (-12.0, 3.0), "KS6": (-12.0, 3.0), "KS12": (-6.0, 3.0),
    "nR": (0.0, 0.25), "nS": (0.0, 0.25), "aYFP": (0.0, 2.0), "aCFP": (0.0, 2.0),
    "dR": (-2.0, 1.0), "dS": (-2.0, 1.0),
    "drfp": (-2.0, 1.5), "dyfp": (-2.0, 1.5), "dcfp": (-2.0, 1.5),
    "a530": (-5.0, 2.0), "a480": (-5.0, 2.0),
}
ALL_PARAMS = INDIVIDUAL + tuple(GROUP) + tuple(POPULATION)


# --------------------------------------------------------------------------- #
# Independent numpy reference of the white-box equations
# --------------------------------------------------------------------------- #
def _np_promoters(luxR, lasR, p, c6, c12):
    """The white box's (P81, P76) from the receptors and signals."""
    fR = ((p["KR6"] * c6) ** p["nR"] + (p["KR12"] * c12) ** p["nR"]) / (
        1.0 + p["KR6"] * c6 + p["KR12"] * c12) ** p["nR"]
    fS = ((p["KS6"] * c6) ** p["nS"] + (p["KS12"] * c12) ** p["nS"]) / (
        1.0 + p["KS6"] * c6 + p["KS12"] * c12) ** p["nS"]
    bR = luxR ** 2 * fR
    bS = lasR ** 2 * fS
    P76 = (p["e76"] + p["KGR_76"] * bR + p["KGS_76"] * bS) / (1.0 + p["KGR_76"] * bR + p["KGS_76"] * bS)
    P81 = (p["e81"] + p["KGR_81"] * bR + p["KGS_81"] * bS) / (1.0 + p["KGR_81"] * bR + p["KGS_81"] * bS)
    return P81, P76


def _np_rhs(t, x, p, c6, c12, promoters=_np_promoters):
    """dx/dt of the double receiver; arrays broadcast, states on the last axis.

    ``promoters(luxR, lasR, p, c6, c12)`` gives ``(P81, P76)`` (default: the
    white box's mechanism).
    """
    xx, rfp, yfp, cfp, f530, f480, luxR, lasR = np.moveaxis(x, -1, 0)
    gamma = p["r"] / (1.0 + np.exp(-4.0 * (t - p["tlag"]))) * (1.0 - xx / p["K"])
    P81, P76 = promoters(luxR, lasR, p, c6, c12)
    rc = p["rc"]
    d = [
        gamma * xx,
        rc - (gamma + p["drfp"]) * rfp,
        rc * p["aYFP"] * P81 - (gamma + p["dyfp"]) * yfp,
        rc * p["aCFP"] * P76 - (gamma + p["dcfp"]) * cfp,
        rc * p["a530"] - gamma * f530,
        rc * p["a480"] - gamma * f480,
        rc * p["aR"] - (gamma + p["dR"]) * luxR,
        rc * p["aS"] - (gamma + p["dS"]) * lasR,
    ]
    return np.stack(np.broadcast_arrays(*d), axis=-1)


def _np_observe(x):
    xx, rfp, yfp, cfp, f530, f480 = (x[..., i] for i in range(6))
    return np.stack([xx, xx * rfp, xx * (yfp + f530), xx * (cfp + f480)], axis=-1)


def _np_sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _np_activation(name):
    """numpy ``tanh`` or ``relu``, by the models' ``hidden_activation`` name."""
    return np.tanh if name == "tanh" else (lambda a: np.maximum(a, 0.0))


# --------------------------------------------------------------------------- #
# White box: declarations
# --------------------------------------------------------------------------- #
def test_white_box_declarations():
    model = DoubleReceiver()
    assert model.states == STATES
    assert model.observable_names == SIGNALS
    assert tuple(model.inputs) == ("C6", "C12")
    assert tuple(model.factors) == ("luxR_rbs", "lasR_rbs")

    specs = check_model(model)
    by_name = {s.name: s for s in specs}
    declared = model.declare_parameters()
    assert len(declared) == 4 + 2 + 21
    assert {s.name for s in declared} == set(ALL_PARAMS)

    for name in INDIVIDUAL:
        assert by_name[name].level == "individual"
        assert by_name[name].factor is None
    for name, factor in GROUP.items():
        assert by_name[name].level == "group"
        assert by_name[name].factor == factor
        assert by_name[name].prior == LogNormal(0.0, 2.0)
    pop = [s.name for s in declared if s.level == "population"]
    assert sorted(pop) == sorted(POPULATION)
    for name, (loc, scale) in POPULATION.items():
        assert by_name[name].prior == LogNormal(loc, scale), name
    # A few spelled out.
    assert (by_name["KR12"].prior.loc, by_name["KR12"].prior.scale) == (-12.0, 3.0)
    assert (by_name["nR"].prior.loc, by_name["nR"].prior.scale) == (0.0, 0.25)
    assert (by_name["KGR_76"].prior.loc, by_name["KGR_76"].prior.scale) == (2.0, 3.0)
    assert by_name["K"].prior.loc == 1.0 and by_name["K"].prior.scale == pytest.approx(2 ** -0.5, abs=1e-3)
    assert by_name["tlag"].prior.scale == pytest.approx(2 ** -0.5, abs=1e-3)
    assert by_name["r"].prior == LogNormal(0.0, 0.25)
    assert by_name["rc"].prior == LogNormal(0.0, 2.0)

    # Noise: one population sd per signal, sd ~ LogNormal(-4, 1).
    assert isinstance(model.noise, Gaussian)
    assert model.noise.declare() == {"sigma": LogNormal(-4.0, 1.0)}
    for sig in SIGNALS:
        assert by_name[f"sigma_{sig}"].level == "population"
        assert by_name[f"sigma_{sig}"].prior == LogNormal(-4.0, 1.0)
    assert len(specs) == 27 + 4


def test_noise_prior_is_precision_lognormal_8_2():
    """sd ~ LogNormal(-4, 1)  <=>  precision = sd**-2 ~ LogNormal(8, 2) (change of variables)."""
    sd_prior = DoubleReceiver().noise.declare()["sigma"]
    tau = torch.tensor([1.0, 30.0, 3000.0, 2.0e5], dtype=F64)
    sd = tau ** -0.5
    # p_tau(tau) = p_sd(sd(tau)) |d sd / d tau|,  d sd / d tau = -tau**-1.5 / 2
    lp_tau = sd_prior.log_prob(sd) + torch.log(0.5 * tau ** -1.5)
    np.testing.assert_allclose(lp_tau.numpy(), LogNormal(8.0, 2.0).log_prob(tau).numpy(), rtol=1e-12)


def test_white_box_hyperparameters_and_initial_state():
    model = DoubleReceiver(x0=0.01)
    assert model.get_params(deep=False)["x0"] == 0.01
    cloned = clone(model)
    assert type(cloned) is DoubleReceiver and cloned.x0 == 0.01
    assert cloned.noise == model.noise
    params = {"r": torch.ones(3, 2, dtype=F64)}
    x0 = DoubleReceiver(x0=0.01).initial_state(params, {})
    x0 = torch.broadcast_to(x0, (3, 2, 8))
    assert x0.dtype == F64
    expected = np.zeros((3, 2, 8))
    expected[..., 0] = 0.01
    np.testing.assert_array_equal(x0.numpy(), expected)
    assert DoubleReceiver().initial_state(params, {})[0].item() == pytest.approx(0.002)


# --------------------------------------------------------------------------- #
# White box: rhs and observe against numpy
# --------------------------------------------------------------------------- #
S, K = 6, 3
# Zero concentrations (both, one, the other) and strong induction.
C6 = np.array([0.0, 0.0, 12.0, 0.0, 800.0, 3.0])
C12 = np.array([0.0, 40.0, 0.0, 2500.0, 0.0, 7.0])


def _random_problem(seed):
    rng = np.random.default_rng(seed)
    p = {}
    for name in INDIVIDUAL + tuple(GROUP):
        p[name] = np.exp(rng.normal(0.0, 0.7, size=(S, K)))
    for name in POPULATION:
        p[name] = np.exp(rng.normal(0.0, 0.7, size=(1, 1)))
    # Hill exponents away from 1 (fractional powers of the concentrations).
    p["nR"] = np.full((1, 1), 0.7)
    p["nS"] = np.full((1, 1), 1.6)
    x = np.exp(rng.normal(-0.5, 1.0, size=(S, K, 8)))
    t = rng.uniform(0.0, 5.0, size=(S, 1))
    return p, x, t


@pytest.mark.parametrize("seed", [0, 1])
def test_white_box_rhs_matches_numpy(seed):
    p, x, t = _random_problem(seed)
    model = DoubleReceiver()
    tp = {k: torch.as_tensor(v) for k, v in p.items()}
    inputs = {"C6": torch.as_tensor(C6).reshape(-1, 1), "C12": torch.as_tensor(C12).reshape(-1, 1)}
    out = model.rhs(torch.as_tensor(t), torch.as_tensor(x), model.with_derived(tp, inputs), inputs)
    assert out.shape == (S, K, 8)
    assert out.dtype == F64
    ref = _np_rhs(t, x, p, C6[:, None], C12[:, None])
    assert ref.shape == (S, K, 8)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-11, atol=1e-13)

    # The inducers matter: without them, the reporter rates change where receptors bind.
    zero = {"C6": torch.zeros(S, 1, dtype=F64), "C12": torch.zeros(S, 1, dtype=F64)}
    out0 = model.rhs(torch.as_tensor(t), torch.as_tensor(x), model.with_derived(tp, zero), zero).numpy()
    np.testing.assert_allclose(out0, _np_rhs(t, x, p, 0.0, 0.0), rtol=1e-11, atol=1e-13)
    induced = (C6 > 0) | (C12 > 0)
    assert np.all(np.abs(out0[induced][..., [2, 3]] - ref[induced][..., [2, 3]]) > 1e-8)
    np.testing.assert_allclose(out0[~induced], ref[~induced], rtol=1e-12)


def test_white_box_rhs_float32_keeps_dtype():
    p, x, t = _random_problem(3)
    tp = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in p.items()}
    inputs = {"C6": torch.as_tensor(C6, dtype=torch.float32).reshape(-1, 1),
              "C12": torch.as_tensor(C12, dtype=torch.float32).reshape(-1, 1)}
    model = DoubleReceiver()
    out = model.rhs(torch.as_tensor(t, dtype=torch.float32), torch.as_tensor(x, dtype=torch.float32),
                    model.with_derived(tp, inputs), inputs)
    assert out.dtype == torch.float32 and out.shape == (S, K, 8)
    np.testing.assert_allclose(out.numpy(), _np_rhs(t, x, p, C6[:, None], C12[:, None]),
                               rtol=1e-4, atol=1e-5)


def test_white_box_observe_formulas():
    rng = np.random.default_rng(5)
    T = 7
    x = np.exp(rng.normal(size=(S, K, T, 8)))
    p, _, _ = _random_problem(5)
    p_t = {k: torch.as_tensor(v).unsqueeze(-1) for k, v in p.items()}
    obs = DoubleReceiver().observe(torch.as_tensor(x), p_t, {}).numpy()
    assert obs.shape == (S, K, T, 4)
    np.testing.assert_allclose(obs[..., 0], x[..., 0], rtol=1e-14)
    np.testing.assert_allclose(obs[..., 1], x[..., 0] * x[..., 1], rtol=1e-14)
    np.testing.assert_allclose(obs[..., 2], x[..., 0] * (x[..., 2] + x[..., 4]), rtol=1e-14)
    np.testing.assert_allclose(obs[..., 3], x[..., 0] * (x[..., 3] + x[..., 5]), rtol=1e-14)
    # The receptor states are not observed.
    x2 = x.copy()
    x2[..., 6:] *= 10.0
    np.testing.assert_array_equal(DoubleReceiver().observe(torch.as_tensor(x2), p_t, {}).numpy(), obs)


# --------------------------------------------------------------------------- #
# White box: finite gradients at zero inducer (the fractional-power guard)
# --------------------------------------------------------------------------- #
def test_white_box_gradients_finite_at_zero_concentration():
    torch.manual_seed(0)
    model = DoubleReceiver().to(F64)
    n = 4
    # (0, 0), (0, c12), (c6, 0), (0, 0): pow(0, n) with fractional n everywhere but one term.
    c6 = torch.tensor([0.0, 0.0, 30.0, 0.0], dtype=F64).reshape(-1, 1)
    c12 = torch.tensor([0.0, 50.0, 0.0, 0.0], dtype=F64).reshape(-1, 1)
    inputs = {"C6": c6, "C12": c12}
    leaves = {}
    for name in ALL_PARAMS:
        shape = (n, 2) if name in INDIVIDUAL + tuple(GROUP) else (1, 1)
        leaves[name] = torch.exp(0.3 * torch.randn(shape, dtype=F64)).requires_grad_(True)
    with torch.no_grad():
        leaves["nR"].fill_(0.6)
        leaves["nS"].fill_(1.4)
        leaves["KR6"].fill_(0.05)
        leaves["KS12"].fill_(0.05)
    x0 = torch.broadcast_to(model.initial_state(leaves, inputs), (n, 2, 8))
    times = torch.linspace(0.0, 3.0, 7, dtype=F64)
    full = model.with_derived(leaves, inputs)
    traj = odeint(lambda t, x: model.rhs(t, x, full, inputs), x0, times, method="rk4", n_substeps=2)
    assert traj.shape == (n, 2, 8, 7)
    obs = model.observe(traj.transpose(-1, -2), {k: v.unsqueeze(-1) for k, v in leaves.items()},
                        {k: v.unsqueeze(-1) for k, v in inputs.items()})
    assert torch.isfinite(obs).all()
    obs.sum().backward()
    for name, leaf in leaves.items():
        assert leaf.grad is not None, name
        assert torch.isfinite(leaf.grad).all(), f"non-finite gradient of {name}: {leaf.grad}"
    # The induced series do carry gradient to the binding constants and Hill exponents.
    for name in ("KR6", "KS12", "nR", "nS", "KGR_76", "aCFP", "r", "rc"):
        assert leaves[name].grad.abs().sum() > 0, name

    # A series with no inducer at all: every binding-term gradient exactly zero, still finite.
    for leaf in leaves.values():
        leaf.grad = None
    zero = {"C6": torch.zeros(1, 1, dtype=F64), "C12": torch.zeros(1, 1, dtype=F64)}
    sub = {k: (v[:1] if v.shape[0] == n else v) for k, v in leaves.items()}
    x0 = torch.broadcast_to(model.initial_state(sub, zero), (1, 2, 8))
    full = model.with_derived(sub, zero)
    traj = odeint(lambda t, x: model.rhs(t, x, full, zero), x0, times, method="rk4")
    traj.sum().backward()
    for name in ("KR6", "KR12", "KS6", "KS12", "nR", "nS"):
        assert torch.isfinite(leaves[name].grad).all(), name
        assert leaves[name].grad.abs().sum() == 0, name


# --------------------------------------------------------------------------- #
# White box: simulation
# --------------------------------------------------------------------------- #
# Groups: two LuxR RBS levels, one LasR level; per group no inducer, C6, C12.
SIM_GROUPS = pd.DataFrame({"luxR_rbs": [0, 0, 0, 1, 1, 1], "lasR_rbs": [0, 0, 0, 0, 0, 0]})
SIM_INPUTS = np.array([[0.0, 0.0], [1000.0, 0.0], [0.0, 1000.0]] * 2)
SIM_TIMES = np.linspace(0.0, 16.0, 33)
SIM_POP = {
    "e76": 0.05, "e81": 0.05, "KGR_76": 10.0, "KGR_81": 0.001, "KGS_76": 0.001, "KGS_81": 10.0,
    "KR6": 0.1, "KR12": 1e-7, "KS6": 1e-7, "KS12": 0.1, "nR": 1.2, "nS": 0.8,
    "aYFP": 1.0, "aCFP": 1.0, "dR": 0.2, "dS": 0.2, "drfp": 0.2, "dyfp": 0.2, "dcfp": 0.2,
    "a530": 0.01, "a480": 0.01,
    "sigma_OD": 0.002, "sigma_mRFP1": 0.01, "sigma_EYFP": 0.01, "sigma_ECFP": 0.01,
}


def _sim_params():
    n = len(SIM_GROUPS)
    params = dict(SIM_POP)
    params.update(r=np.full(n, 1.0), K=np.full(n, 1.5), tlag=np.full(n, 1.0), rc=np.full(n, 1.0),
                  aR=np.array([1.0, 2.0]), aS=np.array([1.5]))
    return params


@pytest.fixture(scope="module")
def simulated():
    return simulate(DoubleReceiver(), times=SIM_TIMES, groups=SIM_GROUPS, inputs=SIM_INPUTS,
                    params=_sim_params(), random_state=0)


def test_simulate_shapes_truth_and_induction(simulated):
    sim = simulated
    assert sim.X.shape == (6, 4, 33) and sim.clean.shape == (6, 4, 33)
    assert np.isfinite(sim.X).all() and np.isfinite(sim.clean).all()
    np.testing.assert_array_equal(sim.params["aR"], [1.0, 2.0])
    assert sim.params["KR6"] == 0.1 and sim.params["sigma_ECFP"] == 0.01
    np.testing.assert_allclose(sim.clean[:, 0, 0], 0.002)  # OD starts at x0
    assert np.all(sim.clean[:, 0, -1] > 1.0)  # cells grew towards K = 1.5
    # Noise at the requested level.
    resid = (sim.X - sim.clean)[:, 1:]
    assert 0.007 < resid.std() < 0.013

    ecfp, eyfp = sim.clean[:, 3, -1], sim.clean[:, 2, -1]
    for base in (0, 3):  # each LuxR RBS level: none, C6, C12
        none, c6, c12 = base, base + 1, base + 2
        # C6 binds LuxR, which activates P76 -> cfp: ECFP up several-fold.
        assert ecfp[c6] > 5 * ecfp[none]
        assert ecfp[c6] > 3 * ecfp[c12]
        # C12 binds LasR, which activates P81 -> yfp: EYFP up.
        assert eyfp[c12] > 5 * eyfp[none]
        assert eyfp[c12] > 3 * eyfp[c6]
        # OD and mRFP1 do not depend on the inducers.
        np.testing.assert_allclose(sim.clean[[none, c6, c12], :2], np.broadcast_to(
            sim.clean[none, :2], (3, 2, 33)), rtol=1e-12)
        # Also visible in the noisy data.
        assert sim.X[c6, 3, -5:].mean() > 3 * sim.X[none, 3, -5:].mean()
    # Stronger LuxR expression (aR = 2 vs 1) gives a weakly larger induced response.
    assert ecfp[4] >= ecfp[1]


def test_simulate_matches_solve_ivp(simulated):
    params = _sim_params()
    for series, lux_level in ((1, 0), (5, 1)):
        p = {k: v for k, v in SIM_POP.items()}
        p.update(r=1.0, K=1.5, tlag=1.0, rc=1.0, aR=params["aR"][lux_level], aS=1.5)
        c6, c12 = SIM_INPUTS[series]
        y0 = np.zeros(8)
        y0[0] = 0.002
        sol = solve_ivp(lambda t, y: _np_rhs(t, y, p, c6, c12), (0.0, SIM_TIMES[-1]), y0,
                        t_eval=SIM_TIMES, method="DOP853", rtol=1e-11, atol=1e-13)
        assert sol.success
        ref = _np_observe(sol.y.T).T  # (4, T)
        np.testing.assert_allclose(simulated.clean[series], ref, rtol=1e-5, atol=1e-8)


def test_simulate_draws_from_priors_when_not_fixed():
    # Only the factor levels: everything drawn from the priors; the result stays finite.
    sim = simulate(DoubleReceiver(), times=np.linspace(0.0, 4.0, 9), groups=SIM_GROUPS,
                   inputs=SIM_INPUTS, params={"KR6": 0.01}, random_state=1)
    assert sim.X.shape == (6, 4, 9)
    assert np.isfinite(sim.X).all()
    assert sim.params["aR"].shape == (2,) and sim.params["aS"].shape == (1,)
    assert sim.params["r"].shape == (6,)
    assert sim.params["mu_r"] == 0.0 and sim.params["omega_r"] == 0.25


# --------------------------------------------------------------------------- #
# Black box
# --------------------------------------------------------------------------- #
def test_black_box_declarations():
    model = DoubleReceiverBlackBox(noise_states=False)
    assert model.states == ("s0", "s1", "s2", "s3", "s4", "s5")
    assert model.observable_names == SIGNALS
    assert tuple(model.inputs) == ("C6", "C12")
    assert tuple(model.factors) == ("luxR_rbs", "lasR_rbs")
    specs = check_model(model)
    declared = model.declare_parameters()
    assert [s.name for s in declared] == ["z0", "z1", "z2", "z3", "z4", "eR", "eS"]
    for s in declared[:5]:
        assert s.level == "individual" and s.prior == Normal(0.0, 1.0)
    std = Normal(0.0, 1.0)
    assert (declared[5].level, declared[5].factor, declared[5].prior) == ("group", "luxR_rbs", std)
    assert (declared[6].level, declared[6].factor, declared[6].prior) == ("group", "lasR_rbs", std)
    assert [s.name for s in specs[7:]] == [f"sigma_{o}" for o in SIGNALS]
    assert all(s.prior == LogNormal(-4.0, 1.0) for s in specs[7:])

    other = DoubleReceiverBlackBox(n_latent=3, n_hidden=7, n_latent_species=1, noise_states=False)
    assert other.states == ("s0", "s1", "s2", "s3", "s4")
    assert [s.name for s in other.declare_parameters()] == ["z0", "z1", "z2", "eR", "eS"]
    assert other.hidden.in_features == 5 + 3 + 4 and other.hidden.out_features == 7
    assert other.activation.out_features == 5 and other.degradation.out_features == 5
    assert model.hidden.in_features == 6 + 5 + 4 and model.hidden.out_features == 50
    # the defaults are the configuration that passed the paper's bound (see the docstring)
    default = DoubleReceiverBlackBox()
    assert (default.n_hidden, default.hidden_activation) == (50, "relu")
    assert default.noise_states and default.noise_start == 0.001
    assert default.states == model.states + ("v_OD", "v_mRFP1", "v_EYFP", "v_ECFP")
    np.testing.assert_allclose(default.noise_log_start.detach().exp().numpy(), 0.001, rtol=1e-6)


def _black_box_problem(model, seed):
    rng = np.random.default_rng(seed)
    n_states = len(model.states)
    p = {f"z{i}": rng.normal(size=(S, K)) for i in range(model.n_latent)}
    p["eR"] = rng.normal(size=(S, K))
    p["eS"] = rng.normal(size=(S, K))
    x = np.abs(rng.normal(size=(S, K, n_states)))
    return p, x


def _np_black_box_rhs(model, x, p, c6, c12):
    layers = ("hidden", "activation", "degradation")
    W = {n: getattr(model, n).weight.detach().double().numpy() for n in layers}
    b = {n: getattr(model, n).bias.detach().double().numpy() for n in layers}
    cond = [p[f"z{i}"] for i in range(model.n_latent)]
    cond += [np.broadcast_to(np.log1p(c6), (S, K)), np.broadcast_to(np.log1p(c12), (S, K)), p["eR"], p["eS"]]
    inp = np.concatenate([x, np.stack(cond, -1)], -1)
    h = _np_activation(model.hidden_activation)(inp @ W["hidden"].T + b["hidden"])
    prod = _np_sigmoid(h @ W["activation"].T + b["activation"])
    deg = _np_sigmoid(h @ W["degradation"].T + b["degradation"])
    return prod - deg * x, prod


def test_black_box_rhs_and_observe():
    torch.manual_seed(0)
    model = DoubleReceiverBlackBox(n_hidden=9, noise_states=False, hidden_activation="tanh").to(F64)
    p, x = _black_box_problem(model, 0)
    tp = {k: torch.as_tensor(v) for k, v in p.items()}
    inputs = {"C6": torch.as_tensor(C6).reshape(-1, 1), "C12": torch.as_tensor(C12).reshape(-1, 1)}
    t = torch.zeros(1, 1, dtype=F64)
    tp = model.with_derived(tp, inputs)  # the network's constant terms, once per solve
    out = model.rhs(t, torch.as_tensor(x), tp, inputs)
    assert out.shape == (S, K, 6) and out.dtype == F64
    ref, _ = _np_black_box_rhs(model, x, p, C6[:, None], C12[:, None])
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-10, atol=1e-12)

    # Production/degradation form: at x = 0 the rhs is the production term, in (0, 1).
    zero = np.zeros_like(x)
    out0 = model.rhs(t, torch.as_tensor(zero), tp, inputs).detach().numpy()
    _, prod = _np_black_box_rhs(model, zero, p, C6[:, None], C12[:, None])
    np.testing.assert_allclose(out0, prod, rtol=1e-10)
    assert np.all((out0 > 0) & (out0 < 1))
    # Production < 1 and degradation rate > 0: large states decay.
    big = model.rhs(t, torch.as_tensor(zero + 100.0), tp, inputs).detach().numpy()
    assert np.all(big < 0)

    xt = torch.as_tensor(np.abs(np.random.default_rng(1).normal(size=(S, K, 5, 6))))
    obs = model.observe(xt, {}, {}).numpy()
    xn = xt.numpy()
    assert obs.shape == (S, K, 5, 4)
    np.testing.assert_allclose(obs, np.stack([xn[..., 0], xn[..., 0] * xn[..., 1],
                                              xn[..., 0] * xn[..., 2], xn[..., 0] * xn[..., 3]], -1))
    x0 = DoubleReceiverBlackBox(x0=0.05, noise_states=False).initial_state(tp, inputs)
    x0 = torch.broadcast_to(x0, (S, K, 6))
    assert x0[..., 0].eq(0.05).all() and x0[..., 1:].eq(0).all()


def test_black_box_noise_states():
    torch.manual_seed(0)
    model = DoubleReceiverBlackBox(n_hidden=9, noise_start=1.0, hidden_activation="tanh").to(F64)
    assert model.states == ("s0", "s1", "s2", "s3", "s4", "s5", "v_OD", "v_mRFP1", "v_EYFP", "v_ECFP")
    assert model.noise_hidden.in_features == 10 + 5 + 4 and model.noise_activation.out_features == 4
    assert [s.name for s in model.declare_parameters()] == ["z0", "z1", "z2", "z3", "z4", "eR", "eS"]
    p, x = _black_box_problem(model, 2)
    tp = {k: torch.as_tensor(v) for k, v in p.items()}
    inputs = {"C6": torch.as_tensor(C6).reshape(-1, 1), "C12": torch.as_tensor(C12).reshape(-1, 1)}
    t = torch.zeros(1, 1, dtype=F64)
    tp = model.with_derived(tp, inputs)
    out = model.rhs(t, torch.as_tensor(x), tp, inputs).detach().numpy()
    assert out.shape == (S, K, 10)
    # the main states: the network of the model without noise states, on those states only
    ref, _ = _np_black_box_rhs(model, x[..., :6], p, C6[:, None], C12[:, None])
    np.testing.assert_allclose(out[..., :6], ref, rtol=1e-10, atol=1e-12)
    # the noise states: their own network, which sees every state
    layers = ("noise_hidden", "noise_activation", "noise_degradation")
    W = {n: getattr(model, n).weight.detach().numpy() for n in layers}
    b = {n: getattr(model, n).bias.detach().numpy() for n in layers}
    cond = [p[f"z{i}"] for i in range(5)]
    cond += [np.broadcast_to(np.log1p(C6[:, None]), (S, K)), np.broadcast_to(np.log1p(C12[:, None]), (S, K)),
             p["eR"], p["eS"]]
    h = np.tanh(np.concatenate([x, np.stack(cond, -1)], -1) @ W["noise_hidden"].T + b["noise_hidden"])
    want = (_np_sigmoid(h @ W["noise_activation"].T + b["noise_activation"])
            - _np_sigmoid(h @ W["noise_degradation"].T + b["noise_degradation"]) * x[..., 6:])
    np.testing.assert_allclose(out[..., 6:], want, rtol=1e-10, atol=1e-12)
    # v starts at 1 (the noise model's own scale); the noise scale is sqrt(v)
    x0 = torch.broadcast_to(model.initial_state(tp, inputs), (S, K, 10))
    assert x0[..., 0].eq(0.002).all() and x0[..., 1:6].eq(0).all() and x0[..., 6:].eq(1).all()
    xt = torch.as_tensor(np.abs(np.random.default_rng(1).normal(size=(S, K, 5, 10))))
    np.testing.assert_allclose(model.observe_noise_scale(xt, {}, {}).numpy(), np.sqrt(xt[..., 6:].numpy()))
    assert model.observe(xt, {}, {}).shape == (S, K, 5, 4)
    # a noise state near zero grows (its decay is proportional to it): v stays positive
    small = torch.as_tensor(x).clone()
    small[..., 6:] = 0.0
    assert (model.rhs(t, small, tp, inputs)[..., 6:] > 0).all()
    # without the option: no noise scale, and models pickled before it had none
    assert DoubleReceiverBlackBox(noise_states=False).observe_noise_scale(xt[..., :6], {}, {}) is None
    old = DoubleReceiverBlackBox(noise_states=False)
    del old.__dict__["noise_states"]
    assert old.noise_states is False and old.observe_noise_scale(xt[..., :6], {}, {}) is None


def test_black_box_relu_and_learned_noise_start():
    torch.manual_seed(0)
    model = DoubleReceiverBlackBox(n_hidden=9, noise_states=False, hidden_activation="relu").to(F64)
    p, x = _black_box_problem(model, 3)
    tp = {k: torch.as_tensor(v) for k, v in p.items()}
    inputs = {"C6": torch.as_tensor(C6).reshape(-1, 1), "C12": torch.as_tensor(C12).reshape(-1, 1)}
    t = torch.zeros(1, 1, dtype=F64)
    out = model.rhs(t, torch.as_tensor(x), model.with_derived(tp, inputs), inputs)
    ref, _ = _np_black_box_rhs(model, x, p, C6[:, None], C12[:, None])
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-10, atol=1e-12)
    tanh = DoubleReceiverBlackBox(n_hidden=9, noise_states=False, hidden_activation="tanh").to(F64)
    tanh, _ = _np_black_box_rhs(tanh, x, p, C6[:, None], C12[:, None])
    assert not np.allclose(ref, tanh)  # the test tells the activations apart
    # the noise states start at noise_start, a parameter trained with the networks
    model = DoubleReceiverBlackBox(n_hidden=5, noise_states=True, noise_start=1e-3).to(F64)
    x0 = model.initial_state(tp, inputs)
    np.testing.assert_allclose(x0[..., 6:].detach().numpy(), 1e-3)
    assert x0[..., 0].eq(0.002).all() and x0[..., 1:6].eq(0).all()
    assert "noise_log_start" in dict(model.named_parameters())
    x0[..., 6:].sum().backward()
    np.testing.assert_allclose(model.noise_log_start.grad.numpy(), 1e-3)  # d exp(u) / du
    # without noise states there is no such parameter; a model pickled before the option starts at 1
    assert not hasattr(DoubleReceiverBlackBox(noise_states=False, noise_start=0.5), "noise_log_start")
    old = DoubleReceiverBlackBox(n_hidden=5, noise_states=True, noise_start=1e-3)
    del old.noise_log_start
    assert old.initial_state(tp, inputs)[..., 6:].eq(1).all()
    # clone keeps the options
    new = clone(DoubleReceiverBlackBox(noise_states=True, noise_start=1e-3, hidden_activation="relu"))
    assert new.noise_start == 1e-3 and new.hidden_activation == "relu"


def test_black_box_checks_its_arguments():
    # a clear error naming the argument, not one from deep inside torch
    for bad in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="noise_start"):
            DoubleReceiverBlackBox(noise_start=bad)
    for bad in (True, "1"):
        with pytest.raises(TypeError, match="noise_start"):
            DoubleReceiverBlackBox(noise_start=bad)
    with pytest.raises(ValueError, match="hidden_activation"):
        DoubleReceiverBlackBox(hidden_activation="sigmoid")
    for bad in (1, 0, "no", None):  # not read as truthy: "no" would have meant True
        with pytest.raises(TypeError, match="noise_states"):
            DoubleReceiverBlackBox(noise_states=bad)
    assert DoubleReceiverBlackBox(noise_states=np.bool_(False)).noise_states is False
    for name, bad, error in (("n_hidden", 0, ValueError), ("n_hidden", 2.5, TypeError),
                             ("n_latent", -1, ValueError), ("n_latent", "5", TypeError),
                             ("n_latent_species", -1, ValueError), ("n_latent_species", True, TypeError)):
        with pytest.raises(error, match=name):
            DoubleReceiverBlackBox(**{name: bad})
    # zero latents or zero latent species are valid models
    assert DoubleReceiverBlackBox(n_latent_species=0, noise_states=False).states == ("s0", "s1", "s2", "s3")
    assert [s.name for s in DoubleReceiverBlackBox(n_latent=0).declare_parameters()] == ["eR", "eS"]
    assert DoubleReceiverBlackBox(n_hidden=np.int64(7)).n_hidden == 7


def test_black_box_get_params_and_clone():
    torch.manual_seed(0)
    model = DoubleReceiverBlackBox(n_latent=3, n_hidden=7, n_latent_species=1, x0=0.01)
    params = model.get_params(deep=False)
    assert params["n_latent"] == 3 and params["n_hidden"] == 7
    assert params["n_latent_species"] == 1 and params["x0"] == 0.01
    assert set(params) == {"n_latent", "n_hidden", "n_latent_species", "x0", "noise", "noise_states",
                           "noise_start", "hidden_activation"}
    new = clone(model)
    assert type(new) is DoubleReceiverBlackBox
    assert new.get_params(deep=False)["n_hidden"] == 7
    assert new.states == model.states
    old_sd, new_sd = model.state_dict(), new.state_dict()
    assert list(old_sd) == list(new_sd)
    for key in old_sd:
        assert old_sd[key].shape == new_sd[key].shape, key
        if key == "noise_log_start":  # not random: it starts at log(noise_start) in both
            np.testing.assert_allclose(new_sd[key].numpy(), math.log(model.noise_start), rtol=1e-6)
            continue
        assert not torch.equal(old_sd[key], new_sd[key]), f"{key} was copied, not re-initialised"
    # Through the estimator.
    est = HierarchicalODEVAE(model)
    assert est.get_params()["model__n_hidden"] == 7
    est2 = clone(est).set_params(model__n_hidden=5)
    assert est2.model.n_hidden == 5 and model.n_hidden == 7


# --------------------------------------------------------------------------- #
# Training on a few wells of the real data
# --------------------------------------------------------------------------- #
WELLS = np.arange(0, 312, 13)  # 24 wells, spread over the six devices


def _real_subset(data_home):
    data = fetch_double_receiver(data_home=data_home, download_if_missing=False)
    X = SignalScaler().fit_transform(data.X[WELLS])
    groups = data.groups[["luxR_rbs", "lasR_rbs"]].iloc[WELLS].reset_index(drop=True)
    return X, groups, data.inputs[WELLS], data.times


@pytest.fixture
def one_thread():
    """Run with one intra-op thread (restored afterwards).

    The networks here are tiny: a second thread gains nothing, and when the
    cores are busy with other processes OpenMP spin-waiting makes the
    black-box epoch some 30x slower (about 1 s -> 50 s on 2 cores).
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class _RecordingBlackBox(DoubleReceiverBlackBox):
    """Black box that keeps a copy of its freshly initialised weights."""

    def __init__(self, n_latent=5, n_hidden=25, n_latent_species=2, x0=0.002, noise=None):
        super().__init__(n_latent=n_latent, n_hidden=n_hidden,
                         n_latent_species=n_latent_species, x0=x0, noise=noise)
        self.initial_weights = {k: v.detach().clone() for k, v in self.state_dict().items()}


def test_black_box_trains_on_real_data(data_home, one_thread):
    X, groups, inputs, times = _real_subset(data_home)
    assert X.shape == (24, 4, 86)
    assert groups["luxR_rbs"].nunique() == 3 and groups["lasR_rbs"].nunique() == 4
    model = _RecordingBlackBox(n_hidden=8)
    user_weights = {k: v.clone() for k, v in model.state_dict().items()}
    est = HierarchicalODEVAE(model, n_importance_samples=4, n_eval_samples=4, batch_size=12,
                             random_state=0)
    est.set_params(model__n_hidden=6)
    est.partial_fit(X, groups=groups, inputs=inputs, times=times)

    fitted = est.model_
    assert fitted is not model and fitted.hidden.out_features == 6
    assert np.isfinite(est.loss_curve_).all() and len(est.loss_curve_) == 1
    assert est.history_["skipped_steps"].iloc[0] == 0
    for name, p in est.vae_.named_parameters():
        assert torch.isfinite(p).all(), name
    # Every neural weight of the decoder moved away from its initial value.
    trained = fitted.state_dict()
    # three layers, the noise states' three layers and their learned start (the defaults)
    assert set(trained) == set(fitted.initial_weights) and len(trained) == 13
    for key, init in fitted.initial_weights.items():
        assert trained[key].shape == init.shape
        assert not torch.allclose(trained[key], init), f"{key} was not trained"
    # They are parameters of the variational model, i.e. under the optimiser.
    ids = {id(p) for p in est.vae_.parameters()}
    assert all(id(p) in ids for p in fitted.parameters())
    # The user's model is untouched.
    for key, v in model.state_dict().items():
        assert torch.equal(v, user_weights[key])

    pred = est.predict(X, groups=groups, inputs=inputs, times=times)
    assert pred.shape == (24, 4, 86) and np.isfinite(pred).all()

    # A clone of the fitted model is freshly initialised with the same shapes.
    new = clone(fitted)
    assert new.get_params(deep=False)["n_hidden"] == 6
    for key, v in new.state_dict().items():
        assert v.shape == trained[key].shape
        assert not torch.allclose(v, trained[key])


def test_white_box_one_epoch_on_real_data(data_home, one_thread):
    X, groups, inputs, times = _real_subset(data_home)
    est = HierarchicalODEVAE(DoubleReceiver(), n_importance_samples=4, n_eval_samples=8,
                             batch_size=24, random_state=0)
    est.partial_fit(X, groups=groups, inputs=inputs, times=times)
    assert est.n_iter_ == 1
    assert np.isfinite(est.loss_curve_[0])
    assert est.history_["skipped_steps"].iloc[0] == 0
    assert {k: len(v) for k, v in est.categories_.items()} == {"luxR_rbs": 3, "lasR_rbs": 4}
    for name, p in est.vae_.named_parameters():
        assert torch.isfinite(p).all(), name
    pred, std = est.predict(X, groups=groups, inputs=inputs, times=times, return_std=True)
    assert pred.shape == (24, 4, 86) and std.shape == (24, 4, 86)
    assert np.isfinite(pred).all() and np.isfinite(std).all()
    # OD prediction starts at the model's x0 (the white-box initial state).
    np.testing.assert_allclose(pred[:, 0, 0], 0.002, rtol=1e-4)
    assert np.isfinite(est.score(X, groups=groups, inputs=inputs, times=times))


@pytest.mark.parametrize("options", [{"noise_start": 1.0, "hidden_activation": "tanh"},
                                     {"noise_start": 0.01, "hidden_activation": "relu"}])
def test_black_box_with_noise_states_trains_on_real_data(data_home, one_thread, options):
    X, groups, inputs, times = _real_subset(data_home)
    torch.manual_seed(0)
    model = DoubleReceiverBlackBox(n_hidden=6, noise_states=True, **options)
    est = HierarchicalODEVAE(model, n_importance_samples=4, n_eval_samples=8, batch_size=12,
                             random_state=0, training_refinement=1)
    est.partial_fit(X, groups=groups, inputs=inputs, times=times)
    assert np.isfinite(est.loss_curve_).all() and est.history_["skipped_steps"].iloc[0] == 0
    # the noise network is part of the model and trained with it
    init = model.state_dict()
    for key in ("noise_hidden.weight", "noise_activation.weight", "noise_degradation.bias",
                "noise_log_start"):
        assert not torch.allclose(est.model_.state_dict()[key], init[key]), key
    # at t = 0 every sample starts from the same state, with v at its learned start: the
    # predictive sd there is the noise model's own sd times sqrt(v(0))
    v0 = est.model_.noise_log_start.detach().exp().numpy()
    np.testing.assert_allclose(v0, options["noise_start"], rtol=0.2)  # moved, not far
    pred, std = est.predict(X, groups=groups, inputs=inputs, times=times, return_std=True)
    assert np.isfinite(pred).all() and np.isfinite(std).all()
    sigma = est.summary_.set_index("parameter").loc[[f"sigma_{o}" for o in SIGNALS], "mean"].to_numpy()
    np.testing.assert_allclose(std[:, :, 0].mean(0), sigma * np.sqrt(v0), rtol=0.1)  # measured within 2.5%
    assert np.isfinite(est.score(X, groups=groups, inputs=inputs, times=times))


@pytest.mark.parametrize("v_start", [1.0, 0.25])
def test_black_box_noise_states_scale_simulated_noise(v_start):
    # With the noise network's weights zero, dv/dt = a - d v with a = sigmoid(b_a) and
    # d = sigmoid(b_d): v(t) = a/d + (v(0) - a/d) exp(-d t), and simulated residuals have the
    # sd sigma sqrt(v(t))
    torch.manual_seed(0)
    model = DoubleReceiverBlackBox(n_hidden=4, noise_states=True, noise_start=v_start)
    with torch.no_grad():
        for layer in (model.noise_activation, model.noise_degradation):
            layer.weight.zero_()
        model.noise_activation.bias.copy_(torch.tensor([2.0, 1.0, 0.0, -1.0]))
        model.noise_degradation.bias.fill_(-1.0)
    a = 1 / (1 + np.exp(-np.array([2.0, 1.0, 0.0, -1.0])))
    d = 1 / (1 + np.exp(1.0))
    times = np.linspace(0.0, 10.0, 11)
    v = a[:, None] / d + (v_start - a[:, None] / d) * np.exp(-d * times)  # (4, T): up to 3.3
    sigma = 0.02
    data = simulate(model, times=times, groups=pd.DataFrame({"luxR_rbs": [0] * 2000, "lasR_rbs": [0] * 2000}),
                    inputs=np.zeros((2000, 2)), params={f"sigma_{o}": sigma for o in SIGNALS},
                    random_state=0, solver="rk4", dt=0.01)
    sd = (data.X - data.clean).std(0)  # (4, T)
    np.testing.assert_allclose(sd, sigma * np.sqrt(v), rtol=0.07)


# --------------------------------------------------------------------------- #
# Mixed: the white box with neural promoters
# --------------------------------------------------------------------------- #
PROMOTER_CONSTANTS = ("e76", "e81", "KGR_76", "KGR_81", "KGS_76", "KGS_81",
                      "KR6", "KR12", "KS6", "KS12", "nR", "nS")


def _np_mixed_promoters(model):
    """numpy (P81, P76) of the mixed model's network, as ``_np_rhs`` takes them."""
    W1 = model.promoter_hidden.weight.detach().double().numpy()
    b1 = model.promoter_hidden.bias.detach().double().numpy()
    W2 = model.promoter_output.weight.detach().double().numpy()
    b2 = model.promoter_output.bias.detach().double().numpy()
    act = _np_activation(model.hidden_activation)

    def promoters(luxR, lasR, p, c6, c12):
        u = np.stack(np.broadcast_arrays(np.log1p(luxR), np.log1p(lasR), np.log1p(c6),
                                         np.log1p(c12)), -1)
        out = _np_sigmoid(act(u @ W1.T + b1) @ W2.T + b2)
        return out[..., 0], out[..., 1]

    return promoters


def test_mixed_declarations():
    model = DoubleReceiverMixed()
    assert model.states == STATES and model.observable_names == SIGNALS
    assert tuple(model.inputs) == ("C6", "C12") and tuple(model.factors) == ("luxR_rbs", "lasR_rbs")
    specs = check_model(model)
    white = {s.name: s for s in check_model(DoubleReceiver())}
    # the white box's parameters, priors and levels, without its twelve promoter constants
    assert [s.name for s in specs] == [n for n in white if n not in PROMOTER_CONSTANTS]
    assert len(model.declare_parameters()) == 27 - 12
    for s in specs:
        w = white[s.name]
        assert (s.level, s.factor, s.prior) == (w.level, w.factor, w.prior), s.name
    assert (model.n_hidden, model.hidden_activation, model.x0) == (16, "tanh", 0.002)
    assert model.promoter_hidden.in_features == 4 and model.promoter_hidden.out_features == 16
    assert model.promoter_output.in_features == 16 and model.promoter_output.out_features == 2


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_mixed_rhs_matches_numpy(activation):
    torch.manual_seed(0)
    model = DoubleReceiverMixed(n_hidden=7, hidden_activation=activation).to(F64)
    p, x, t = _random_problem(4)
    p = {k: v for k, v in p.items() if k not in PROMOTER_CONSTANTS}
    tp = {k: torch.as_tensor(v) for k, v in p.items()}
    inputs = {"C6": torch.as_tensor(C6).reshape(-1, 1), "C12": torch.as_tensor(C12).reshape(-1, 1)}
    out = model.rhs(torch.as_tensor(t), torch.as_tensor(x), model.with_derived(tp, inputs), inputs)
    assert out.shape == (S, K, 8) and out.dtype == F64
    ref = _np_rhs(t, x, p, C6[:, None], C12[:, None], promoters=_np_mixed_promoters(model))
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-11, atol=1e-13)

    # only the promoter-driven reporters (yfp: P81, cfp: P76) depend on the network
    with torch.no_grad():
        model.promoter_output.bias.add_(torch.tensor([1.0, -2.0], dtype=F64))
    moved = model.rhs(torch.as_tensor(t), torch.as_tensor(x), model.with_derived(tp, inputs),
                      inputs).detach().numpy()
    np.testing.assert_allclose(moved[..., [0, 1, 4, 5, 6, 7]], ref[..., [0, 1, 4, 5, 6, 7]], rtol=1e-12)
    assert np.all(moved[..., 2] > ref[..., 2]) and np.all(moved[..., 3] < ref[..., 3])

    # receptors below zero (a solver step that overshoots) read as zero: finite, no NaN
    below = x.copy()
    below[..., 6:8] = -np.abs(below[..., 6:8]) - 1.5  # log1p would be NaN
    at_zero = x.copy()
    at_zero[..., 6:8] = 0.0
    t_, full = torch.as_tensor(t), model.with_derived(tp, inputs)
    out_below = model.rhs(t_, torch.as_tensor(below), full, inputs)
    out_zero = model.rhs(t_, torch.as_tensor(at_zero), full, inputs)
    assert torch.isfinite(out_below).all()
    np.testing.assert_allclose(out_below[..., :6].detach().numpy(), out_zero[..., :6].detach().numpy(),
                               rtol=1e-12)


def test_mixed_checks_its_arguments_and_clones():
    with pytest.raises(ValueError, match="hidden_activation"):
        DoubleReceiverMixed(hidden_activation="sigmoid")
    with pytest.raises(ValueError, match="n_hidden"):
        DoubleReceiverMixed(n_hidden=0)
    with pytest.raises(TypeError, match="n_hidden"):
        DoubleReceiverMixed(n_hidden=2.5)
    torch.manual_seed(0)
    model = DoubleReceiverMixed(n_hidden=5, hidden_activation="relu", x0=0.01)
    assert model.get_params(deep=False) == {"n_hidden": 5, "hidden_activation": "relu", "x0": 0.01,
                                            "noise": model.noise}
    new = clone(model)
    assert type(new) is DoubleReceiverMixed and new.get_params(deep=False)["n_hidden"] == 5
    for key, v in model.state_dict().items():  # same shapes, freshly initialised
        assert new.state_dict()[key].shape == v.shape
        assert not torch.equal(new.state_dict()[key], v), key
    est = clone(HierarchicalODEVAE(model)).set_params(model__n_hidden=3)
    assert est.model.n_hidden == 3 and model.n_hidden == 5


def test_mixed_trains_on_real_data(data_home, one_thread, tmp_path):
    X, groups, inputs, times = _real_subset(data_home)
    torch.manual_seed(0)
    model = DoubleReceiverMixed(n_hidden=6)
    user_weights = {k: v.clone() for k, v in model.state_dict().items()}
    est = HierarchicalODEVAE(model, n_importance_samples=4, n_eval_samples=8, batch_size=12,
                             random_state=0, training_refinement=2, refinement_block="epoch",
                             solver="rk4", dt=0.79)
    est.partial_fit(X, groups=groups, inputs=inputs, times=times)
    assert np.isfinite(est.loss_curve_).all() and est.history_["skipped_steps"].iloc[0] == 0
    # the promoter network is trained with the rest; the user's model is untouched
    for key, v in est.model_.state_dict().items():
        assert not torch.allclose(v, user_weights[key]), f"{key} was not trained"
    for key, v in model.state_dict().items():
        assert torch.equal(v, user_weights[key]), key
    ids = {id(p) for p in est.vae_.parameters()}
    assert all(id(p) in ids for p in est.model_.parameters())
    assert set(est.summary_["parameter"]) >= {"aYFP", "aCFP", "dR", "a530"}
    assert not set(est.summary_["parameter"]) & set(PROMOTER_CONSTANTS)
    pred, std = est.predict(X, groups=groups, inputs=inputs, times=times, return_std=True)
    assert pred.shape == (24, 4, 86) and np.isfinite(pred).all() and np.isfinite(std).all()
    np.testing.assert_allclose(pred[:, 0, 0], 0.002, rtol=1e-4)  # the white box's x0
    score = est.score(X, groups=groups, inputs=inputs, times=times)
    assert np.isfinite(score)
    # saved and loaded, the fitted network predicts the same
    path = tmp_path / "mixed.joblib"
    joblib.dump(est, path)
    np.testing.assert_allclose(joblib.load(path).predict(X, groups=groups, inputs=inputs, times=times),
                               pred, rtol=1e-6)
