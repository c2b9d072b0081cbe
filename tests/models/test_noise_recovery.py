"""Recovery of the noise parameters of every noise model from data simulated with it.

Each noise model simulates a seeded hierarchical logistic-growth problem
(individual growth rate, carrying capacity per strain, shared initial density)
with known noise parameters. ``HierarchicalODEVAE`` with that noise model is
fitted to 48 of the series, and its posterior of the noise parameters must
recover the truth. The other 24 series are held out for the discriminating
checks: the right noise model must beat additive Gaussian error in held-out
score on proportional data and on heavy-tailed data with outliers.

The model has no lag term. With the lag, the amortised posterior of the
individual parameters is harder to learn in a short fit, and the leftover misfit
inflates every noise scale by about 7-17 % (measured at 300-1200 epochs). That
would blur the checks below. Without the lag, the fitted scales land within a
few percent of the truth.
"""

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from skhds import HierarchicalODEVAE
from skhds.datasets import simulate
from skhds.distributions import LogNormal
from skhds.models import Combined, Gaussian, Laplace, LogisticGrowth, Proportional, StudentT

N_TRAIN, N_TEST, N_TIMES = 48, 24, 20
TIMES = np.linspace(0.0, 12.0, N_TIMES)
GROUPS = np.array([f"s{i % 3}" for i in range(N_TRAIN + N_TEST)], dtype=object)
TRAIN, TEST = slice(0, N_TRAIN), slice(N_TRAIN, None)
DF = 3.0  # Student-t degrees of freedom: heavy tails (no finite fourth moment)

# name -> (noise model factory, true noise parameters, data seed)
CASES = {
    "gaussian": (Gaussian, {"sigma_x": 0.05}, 0),
    "proportional": (Proportional, {"b_x": 0.25}, 1),
    "combined": (Combined, {"a_x": 0.02, "b_x": 0.15}, 2),
    "laplace": (Laplace, {"scale_x": 0.05}, 3),
    "student": (lambda: StudentT(df=DF), {"sigma_x": 0.05}, 4),
}

# A short fixed budget (about 4 s per fit on one thread). First, small minibatches at
# a high learning rate. Then a few epochs at a lower rate, so the final state is not
# a snapshot of constant-rate Adam noise. Without the second stage, the Laplace scale
# (non-smooth density) jumped by up to +25 % between epochs.
FIT = dict(max_iter=100, n_iter_no_change=10_000, learning_rate=0.02, batch_size=16,
           random_state=0)
ANNEAL = dict(max_iter=30, learning_rate=0.004, warm_start=True)
# Heavy tails converge more slowly: at 100 + 30 epochs, one of six optimiser seeds (0-5)
# ended with the Student-t sigma at 1.26 x the truth (the others 1.06-1.09); with 230 + 30
# all six landed at 1.04-1.10 (measured with learning_rate_schedule=[(230, 0.004)]).
FIRST_STAGE_EPOCHS = {"student": 230}


def _model(noise):
    return LogisticGrowth(lag=False, noise=noise)


def _data(case):
    factory, truth, seed = CASES[case]
    return simulate(_model(factory()), times=TIMES, groups=GROUPS, params=truth,
                    random_state=seed)


def _outlier_data():
    """Student-t data plus gross one-sided outliers: 5 % of the points raised by 0.3-0.6."""
    data = _data("student")
    rng = np.random.default_rng(0)
    hit = rng.random(data.X.shape) < 0.05
    data.X = data.X + hit * rng.uniform(0.3, 0.6, data.X.shape)
    return data


# Restarts (optimiser seeds 0, 1, ...) for fits whose single run is not reliable; the
# restart with the best training score is kept, as a user would. Student-t on the data
# with outliers: seed 0 ended with sigma at 1.54 x the truth and training score 14.3 on
# the current CI host (1 thread), seeds 1-3 at 1.22-1.24 x and 16.8 (seed 1); on an
# earlier host seed 0 gave 1.26 x.
# Combined error: seed 0 ended with a at 1.32 x the truth and training score 19.06 once
# proposals followed only their own group level (2026-11-29); seeds 1 and 2 at 1.03 and
# 1.00 x, scores 19.24 and 19.30. Over seven fits at two data seeds, one missed (two did
# before that change: a at 1.26 and 2.71 x).
RESTARTS = {("outliers", "student"): 2, ("combined", "combined"): 2}


def _fit(data, noise, case, restarts=1):
    fit = {**FIT, "max_iter": FIRST_STAGE_EPOCHS.get(case, FIT["max_iter"])}
    kw = dict(groups=data.groups[TRAIN], times=TIMES)
    best, best_score = None, -np.inf
    for seed in range(restarts):
        est = HierarchicalODEVAE(_model(noise), **{**fit, "random_state": seed})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # fixed budget on purpose
            est.fit(data.X[TRAIN], **kw)
            est.set_params(**ANNEAL).fit(data.X[TRAIN], **kw)
        score = est.score(data.X[TRAIN], **kw) if restarts > 1 else 0.0
        if score > best_score:
            best, best_score = est, score
    return best


@pytest.fixture(scope="module")
def fits():
    """Estimators fitted on first use, keyed by (dataset, noise model), shared by the module."""
    cache = {}

    def get(data_case, model_case):
        key = (data_case, model_case)
        if key not in cache:
            data = _outlier_data() if data_case == "outliers" else _data(data_case)
            cache[key] = (data, _fit(data, CASES[model_case][0](), model_case,
                                     RESTARTS.get(key, 1)))
        return cache[key]

    return get


def _oracle_mle(noise, X, clean, start):
    """Noise parameters maximising the model's own log density given the true curves."""
    y = torch.as_tensor(X, dtype=torch.float64)[:, None]  # (S, 1, n_obs, T)
    mean = torch.as_tensor(clean, dtype=torch.float64)[:, None]
    log_p = {k: torch.tensor(np.log(v) + 0.5, dtype=torch.float64, requires_grad=True)
             for k, v in start.items()}  # start 65 % above the truth
    opt = torch.optim.Adam(list(log_p.values()), lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        params = {k.removesuffix("_x"): v.exp().reshape(1, 1, 1, 1) for k, v in log_p.items()}
        loss = -noise.log_prob(y, mean, params).mean()
        loss.backward()
        opt.step()
    return {k: float(v.detach().exp()) for k, v in log_p.items()}


# ------------------------------------------------------------------ simulation side
@pytest.mark.parametrize("case", list(CASES))
def test_simulate_draws_from_the_noise_model(case, monkeypatch):
    # simulate must draw the observation noise with the noise model's sample(),
    # using the noise parameters fixed in params, and report them as the truth.
    factory, truth, seed = CASES[case]
    noise = factory()
    calls = []
    original = type(noise).sample

    def spy(self, mean, params, generator=None):
        calls.append({k: v.flatten().tolist() for k, v in params.items()})
        return original(self, mean, params, generator=generator)

    monkeypatch.setattr(type(noise), "sample", spy)
    data = simulate(_model(noise), times=TIMES, groups=GROUPS, params=truth, random_state=seed)
    assert calls == [{k.removesuffix("_x"): [v] for k, v in truth.items()}]
    assert all(data.params[k] == v for k, v in truth.items())
    assert not np.array_equal(data.X, data.clean)


@pytest.mark.parametrize("case", list(CASES))
def test_simulated_residuals_match_the_log_density(case):
    # Sampler and density agree: maximising the model's own log_prob over the noise
    # parameters, with the noise-free curves known (an oracle, no ODE fit), recovers
    # the truth. This catches a sampler and a density that read a parameter
    # differently (a Laplace scale taken for an sd is off by sqrt(2); a Student-t sigma
    # taken for an sd is off by sqrt(3) at df=3).
    # Measured oracle / truth on the 72 series x 20 times: gaussian 0.960,
    # proportional 0.986, combined a 0.973 and b 1.017, laplace 0.979, student 1.013.
    factory, truth, _ = CASES[case]
    data = _data(case)
    mle = _oracle_mle(factory(), data.X, data.clean, truth)
    for name, value in truth.items():
        assert abs(mle[name] / value - 1) < 0.08, (name, mle[name], value)


# -------------------------------------------------------------------- fit recovery
# Measured at these seeds: posterior mean / truth and z = (mean - truth) / posterior sd:
#   gaussian sigma 0.987 (z -0.3)   proportional b 1.015 (+0.2)
#   combined a 0.990 (-0.1), b 1.039 (+0.6)   laplace scale 1.029 (+0.5)
#   (combined since 2026-11-29 the better of two restarts: a 1.027, b 1.018)
#   student sigma 1.051 (+1.0) (at 100 + 30 epochs; a change of round-off in the solver
#   later moved that fit to 1.26, hence its longer first stage, FIRST_STAGE_EPOCHS)
# At three other seeds (two other datasets, one other estimator seed), |mean / truth - 1|
# stayed below 0.11. The exceptions: combined a reached 1.205, which matches its oracle
# (1.20) on that draw, and one Student-t fit failed at 1.38 (oracle 1.03).
# Mistakes patched into _noise.py move these fits well outside the tolerance:
#   Laplace log_prob reads scale as sd      1.56    Laplace sample reads scale as sd  0.78
#   Student-t log_prob reads sigma as sd    1.85    Student-t sample reads it as sd   0.70
#   Proportional log_prob sd b|y| not b|f|  1.21    Proportional sample additive      0.50
#   Combined log_prob sd a + b|f|           a 0.70  Gaussian log_prob sigma as var    0.09
REL_TOL = 0.15


@pytest.mark.parametrize("case", list(CASES))
def test_recovers_noise_parameters(case, fits):
    data, est = fits(case, case)
    summary = est.summary_.set_index("parameter")
    for name, value in CASES[case][1].items():
        row = summary.loc[name]
        # The truth lies within 3 posterior sd of the posterior mean. The sd is 4-8 % of
        # the truth here (the short fit leaves it about twice the asymptotic standard
        # error), so this alone would let a 20 % error through. Hence the second check.
        assert abs(row["mean"] - value) < 3 * row["sd"], (name, row["mean"], row["sd"], value)
        assert abs(row["mean"] / value - 1) < REL_TOL, (name, row["mean"], value)


# --------------------------------------------------------------- discriminating checks
def _held_out_score(data, est):
    return est.score(data.X[TEST], groups=data.groups[TEST], times=TIMES)


def test_proportional_beats_additive_on_proportional_data(fits):
    # Measured held-out score (mean log density per series): Proportional 8.82 vs
    # Gaussian 1.32, a gap of 7.5 (4.7-7.4 at three other seeds).
    data, right = fits("proportional", "proportional")
    _, wrong = fits("proportional", "gaussian")
    s_right, s_wrong = _held_out_score(data, right), _held_out_score(data, wrong)
    assert s_right > s_wrong + 3.0, (s_right, s_wrong)


def test_student_t_beats_gaussian_on_heavy_tailed_data_with_outliers(fits):
    # Measured held-out score: StudentT 15.76 vs Gaussian 10.62, a gap of 5.1 (3.3-6.0 at
    # three other seeds).
    data, right = fits("outliers", "student")
    _, wrong = fits("outliers", "gaussian")
    s_right, s_wrong = _held_out_score(data, right), _held_out_score(data, wrong)
    assert s_right > s_wrong + 2.0, (s_right, s_wrong)
    # The robust likelihood is not pulled by the outliers: its scale stays near the true
    # 0.05 while the Gaussian sd more than doubles to absorb them (measured 0.063 and
    # 0.064 against 0.130 and 0.128 at estimator seeds 0 and 3 on an earlier host; now the
    # better of two restarts, 0.062 against 0.128).
    sigma = {name: est.summary_.set_index("parameter").loc["sigma_x", "mean"]
             for name, est in (("student", right), ("gaussian", wrong))}
    assert sigma["student"] < 1.5 * 0.05 and sigma["student"] < 0.65 * sigma["gaussian"], sigma
    # (The growth rates of the 8 training series with two or more outliers are usually
    # closer to the truth under Student-t, but not reliably: mean |log r error| 0.079-0.208
    # against 0.11-0.24 for Gaussian over estimator seeds 0-7, Student-t worse at seed 0
    # and level at seed 3; round-off differences change which (two codes equal up to
    # round-off gave loss curves equal to 1e-10 at epoch 20 and apart by epoch 40, in
    # float64: the training path is chaotic), so it is not asserted. The
    # population mean growth rate is not compared either: which fit is less biased
    # depends on the seed, 0.002-0.039 for StudentT and 0.002-0.095 for Gaussian.)


# ------------------------------------------------------------ a noise level per series
PER_SERIES_PRIOR = LogNormal(np.log(0.05), 0.6)  # between-series spread: 0.015-0.17 (95 %)


def _per_series_noise(level="individual"):
    return Gaussian(PER_SERIES_PRIOR, level=level)


@pytest.fixture(scope="module")
def per_series():
    """Data with a noise sd per series, and fits of it with and without per-series noise."""
    data = simulate(_model(_per_series_noise()), times=TIMES, groups=GROUPS, random_state=5)
    fits = {level: _fit(data, _per_series_noise(level), "gaussian") for level in ("individual", "population")}
    refined = HierarchicalODEVAE(_model(_per_series_noise()), **{**FIT, "training_refinement": 3})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        refined.fit(data.X[TRAIN], groups=data.groups[TRAIN], times=TIMES)
    fits["refined"] = refined
    return data, fits


def test_simulate_draws_a_noise_level_per_series(per_series):
    data, _ = per_series
    sigma = data.params["sigma_x"]
    assert sigma.shape == (N_TRAIN + N_TEST,) and np.unique(sigma).size == sigma.size
    resid_sd = (data.X - data.clean)[:, 0].std(-1)
    # 20 residuals per series: the log of their sd is within about 0.16 of the truth
    assert np.corrcoef(np.log(resid_sd), np.log(sigma))[0, 1] > 0.9
    assert abs(np.median(np.log(resid_sd / sigma))) < 0.15


@pytest.mark.parametrize("fit", ["individual", "refined"])
def test_recovers_the_noise_level_of_each_series(per_series, fit):
    # amortised (the encoder reads each series' noise level from its data) and with
    # semi-amortised training (Gauss-Newton steps in the variance): the posterior means
    # follow the true levels (a model with one shared level would give no correlation);
    # the learned population location and spread are those of the true levels
    data, fits = per_series
    est = fits[fit]
    post = est.sample_posterior(data.X[TRAIN], groups=data.groups[TRAIN], times=TIMES, n_draws=200,
                                method="importance", random_state=0)
    log_sigma = np.log(post["sigma_x"]).mean(0)
    truth = np.log(data.params["sigma_x"][TRAIN])
    assert np.corrcoef(log_sigma, truth)[0, 1] > 0.85
    assert abs(np.mean(log_sigma - truth)) < 0.15
    # (log scale; measured: location 0.13 and 0.05 above their mean, spread 0.84 and 0.97
    # of theirs, without and with refinement)
    summary = est.summary_.set_index("parameter")
    assert abs(summary.loc["mu_sigma_x", "mean"] - truth.mean()) < 0.2
    assert 0.7 < summary.loc["omega_sigma_x", "mean"] / truth.std(ddof=1) < 1.3


def test_per_series_noise_beats_one_noise_level_held_out(per_series):
    data, fits = per_series
    with_levels = _held_out_score(data, fits["individual"])
    shared = _held_out_score(data, fits["population"])
    assert with_levels > shared + 2.0, (with_levels, shared)


# ---------------------------------------------------------------------------
# noise that varies along the trajectory (ODEModel.observe_noise_scale)
# ---------------------------------------------------------------------------


class ShotNoiseGrowth(LogisticGrowth):
    """Logistic growth whose noise sd grows with the density: ``sigma * sqrt(x / 0.5)``."""

    def observe_noise_scale(self, x, params, inputs):
        return (x / 0.5).clamp(min=1e-4).sqrt()


@pytest.fixture(scope="module")
def shot_noise():
    """Data whose noise sd grows 10-fold along the curves; fits with and without the scale."""
    sigma = 0.03
    data = simulate(ShotNoiseGrowth(lag=False, noise=Gaussian()), times=TIMES, groups=GROUPS,
                    params={"sigma_x": sigma}, random_state=6)
    fits = {}
    for name, model in [("scaled", ShotNoiseGrowth(lag=False, noise=Gaussian())),
                        ("constant", _model(Gaussian()))]:
        est = HierarchicalODEVAE(model, **{**FIT, "training_refinement": 3})
        kw = dict(groups=data.groups[TRAIN], times=TIMES)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(data.X[TRAIN], **kw)
            est.set_params(**ANNEAL).fit(data.X[TRAIN], **kw)
        fits[name] = est
    return data, sigma, fits


def test_simulate_scales_the_noise_along_the_trajectory(shot_noise):
    data, sigma, _ = shot_noise
    resid = (data.X - data.clean)[:, 0]
    scale = np.sqrt(np.clip(data.clean[:, 0], 1e-4, None) / 0.5)
    early, late = data.clean[:, 0] < 0.1, data.clean[:, 0] > 0.8
    # the raw residuals differ between the low and the high part of the curves; the
    # standardised ones have the declared sd in both
    assert resid[late].std() > 2.0 * resid[early].std()
    for part in (early, late):
        assert abs((resid[part] / scale[part]).std() / sigma - 1) < 0.1


def test_noise_scale_of_the_model_is_learned_and_used(shot_noise):
    data, sigma, fits = shot_noise
    est = fits["scaled"]
    # the noise sd on the model's scale is recovered (measured 0.0311 against 0.03;
    # without semi-amortised training the early, low-noise part of the curves is fitted
    # less closely and the sd came out 0.035-0.038)
    sigma_hat = est.summary_.set_index("parameter").loc["sigma_x", "mean"]
    assert abs(sigma_hat / sigma - 1) < 0.15, sigma_hat
    # predictive bands widen with the density as the data do (measured 4.3x)
    mean, std = est.predict(data.X[TEST], groups=data.groups[TEST], times=TIMES, return_std=True)
    low, high = mean[:, 0] < 0.1, mean[:, 0] > 0.8
    assert std[:, 0][high].mean() > 2.5 * std[:, 0][low].mean()
    # and it fits held-out data better than one constant sd (measured 39.97 against 36.95)
    with_scale, constant = _held_out_score(data, est), _held_out_score(data, fits["constant"])
    assert with_scale > constant + 2.0, (with_scale, constant)
