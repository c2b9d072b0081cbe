"""Posteriors against exact answers: a hierarchical model whose posterior is known by quadrature.

Model: one state with zero derivative whose initial value is the individual
parameter ``theta_i ~ N(mu, omega)`` (learned random effects: hyperpriors on
``mu`` and ``log omega`` from the declared prior), observed ``T`` times with
Gaussian noise ``sigma`` (a population parameter with a log-normal prior).
Integrating ``theta_i`` out, ``y_i ~ N(mu 1, sigma^2 I + omega^2 1 1^T)``, so
the posterior of ``(mu, log omega, log sigma)`` is computed on a fine 3-D
grid, and the posterior of each ``theta_i`` is the grid mixture of its
Gaussian conditionals. Both posteriors of the estimator are checked against
it: the variational one and the importance-reweighted one
(``method="importance"``), with the statistical-validity targets (means
within 0.25 posterior sds, sds within 25%; per-series means within 0.5 sd).
"""

import math
import warnings

import numpy as np
import pytest
import torch

from skhds import HierarchicalODEVAE, ODEModel, Parameter
from skhds.datasets import simulate
from skhds.distributions import LogNormal, Normal
from skhds.models import Gaussian

N, T, SIGMA = 30, 5, 0.3


class Level(ODEModel):
    """``x' = 0``, ``x(0) = theta``: each series is a constant level plus noise."""

    states = ("x",)
    noise = Gaussian(LogNormal(math.log(SIGMA), 1.0))

    def declare_parameters(self):
        return [Parameter("theta", Normal(1.0, 0.5), level="individual")]

    def initial_state(self, params, inputs):
        return params["theta"].unsqueeze(-1)

    def rhs(self, t, x, params, inputs):
        return torch.zeros_like(x)


@pytest.fixture(scope="module")
def problem():
    times = np.arange(T, dtype=float)
    sim = simulate(Level(), N, times=times, params={"sigma_x": SIGMA}, random_state=0)
    est = HierarchicalODEVAE(Level(), random_state=0, max_iter=400)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(sim.X, times=times)
    return est, sim, times


def _exact(est, y):
    """Posterior moments by quadrature on (mu, log omega, log sigma)."""
    hier = est.vae_.hierarchy
    i_mu, i_om = hier.ind_index["theta"]
    i_s = hier.pop_index["sigma_x"]
    loc, scale = hier.prior_loc, hier.prior_scale
    ybar = y.mean(1)
    ssw = ((y - ybar[:, None]) ** 2).sum(1)
    mu, lom, ls = np.meshgrid(np.linspace(0.0, 2.0, 101), np.linspace(np.log(0.1), np.log(1.5), 101),
                              np.linspace(np.log(0.15), np.log(0.6), 101), indexing="ij")
    om2, s2 = np.exp(2 * lom)[..., None], np.exp(2 * ls)[..., None]
    v = s2 + T * om2
    log_post = ((-(T - 1) * 0.5 * np.log(s2) - 0.5 * np.log(v) - ssw / (2 * s2)
                 - T * (ybar - mu[..., None]) ** 2 / (2 * v)).sum(-1)
                - 0.5 * ((mu - loc[i_mu]) / scale[i_mu]) ** 2
                - 0.5 * ((lom - loc[i_om]) / scale[i_om]) ** 2
                - 0.5 * ((ls - loc[i_s]) / scale[i_s]) ** 2)
    w = np.exp(log_post - log_post.max())
    w /= w.sum()
    # the grid must hold the whole posterior
    for axis in range(3):
        assert w.sum(tuple(a for a in range(3) if a != axis))[[0, -1]].max() < 1e-6
    out = {}
    for name, grid in (("mu_theta", mu), ("omega_theta", np.exp(lom)), ("sigma_x", np.exp(ls))):
        m = (w * grid).sum()
        out[name] = (m, math.sqrt((w * (grid - m) ** 2).sum()))
    # theta_i | all data: a mixture over the grid of N(c_mean, 1 / precision)
    precision = 1.0 / om2 + T / s2
    c_mean = (mu[..., None] / om2 + T * ybar / s2) / precision
    m = (w[..., None] * c_mean).sum((0, 1, 2))
    var = (w[..., None] * (1.0 / precision + c_mean ** 2)).sum((0, 1, 2)) - m ** 2
    out["theta"] = (m, np.sqrt(var))
    return out


@pytest.fixture(scope="module")
def posteriors(problem):
    est, sim, times = problem
    exact = _exact(est, sim.X[:, 0])
    var = est.sample_posterior(sim.X, times=times, n_draws=4000)
    imp = est.sample_posterior(sim.X, times=times, n_draws=4000, method="importance", refine=3)
    return exact, {"variational": var, "importance": imp}


@pytest.mark.parametrize("name", ["mu_theta", "omega_theta", "sigma_x"])
def test_importance_posterior_matches_the_exact_population_posterior(posteriors, name):
    exact, draws = posteriors
    m, sd = exact[name]
    d = draws["importance"][name]
    # measured: mean errors 0.08 / 0.00 / 0.02 sds, sd ratios 1.02 / 1.02 / 1.02
    assert abs(d.mean() - m) < 0.25 * sd
    assert abs(d.std() / sd - 1) < 0.25


def test_importance_reweighting_corrects_the_variational_noise_estimate(posteriors):
    exact, draws = posteriors
    m, sd = exact["sigma_x"]
    err = {k: abs(v["sigma_x"].mean() - m) / sd for k, v in draws.items()}
    # measured: variational 0.20 sds off, reweighted 0.02
    assert err["importance"] < err["variational"]


@pytest.mark.parametrize("method", ["variational", "importance"])
def test_individual_posteriors_match_the_exact_mixture(posteriors, method):
    exact, draws = posteriors
    m, sd = exact["theta"]
    d = draws[method]["theta"]
    assert d.shape == (4000, N)
    err = np.abs(d.mean(0) - m) / sd
    ratio = d.std(0) / sd
    assert err.max() < 0.5, err.max()
    assert np.abs(ratio - 1).max() < 0.25, ratio


def test_importance_sampling_is_reproducible_and_reports_unreliable_reweighting(problem):
    est, sim, times = problem
    a = est.sample_posterior(sim.X, times=times, n_draws=50, method="importance", random_state=3)
    b = est.sample_posterior(sim.X, times=times, n_draws=50, method="importance", random_state=3)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    # Reweighting by data the posterior was not fitted to (shifted by 20 noise sds): the
    # marginal likelihoods behind the global weights are then badly underestimated, and
    # the estimator must say so instead of returning a confident wrong answer.
    with pytest.warns(RuntimeWarning, match="unreliable"):
        est.sample_posterior(sim.X + 6.0, times=times, n_draws=200, method="importance")


def test_bad_method_names_the_argument(problem):
    est, sim, times = problem
    with pytest.raises(ValueError, match="method"):
        est.sample_posterior(sim.X, times=times, method="nuts")
    with pytest.raises(ValueError, match="n_proposals"):
        est.sample_posterior(sim.X, times=times, method="importance", n_proposals=5)


# ------------------------------------------------------- calibration (SBC, coverage)
def _ranks(draws, truth):
    """Rank of each truth among its posterior draws, in 0..n_draws."""
    return (draws < truth[None, :]).sum(0)


@pytest.fixture(scope="module")
def calibration_fit():
    # 1,000 series from one population draw: the amortised individual posteriors are
    # checked against the truths that generated each series.
    times = np.arange(T, dtype=float)
    sim = simulate(Level(), 1000, times=times, params={"sigma_x": SIGMA}, random_state=1)
    est = HierarchicalODEVAE(Level(), random_state=0, max_iter=60, batch_size=128)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(sim.X, times=times)
    return est, sim, times


@pytest.mark.parametrize("method", ["variational", "importance"])
def test_individual_posteriors_are_calibrated(calibration_fit, method):
    from scipy import stats

    est, sim, times = calibration_fit
    post = est.sample_posterior(sim.X, times=times, n_draws=99, method=method, random_state=0,
                                n_proposals=200)
    truth = sim.params["theta"]
    ranks = _ranks(post["theta"], truth)
    # SBC: ranks uniform on 0..99 (10 bins of 10 ranks); chi-square test
    counts = np.bincount(ranks // 10, minlength=10)
    chi2 = stats.chisquare(counts)
    assert chi2.pvalue > 0.001, counts
    # central intervals: 50% and 90% coverage (binomial sd 1.6% and 0.9% at 1,000 series)
    lo50, hi50 = np.percentile(post["theta"], [25, 75], axis=0)
    lo90, hi90 = np.percentile(post["theta"], [5, 95], axis=0)
    cover50 = np.mean((truth >= lo50) & (truth <= hi50))
    cover90 = np.mean((truth >= lo90) & (truth <= hi90))
    assert 0.45 <= cover50 <= 0.55, cover50
    assert 0.85 <= cover90 <= 0.95, cover90


def test_calibration_check_detects_overconfident_posteriors(calibration_fit):
    # The same checks on posteriors shrunk to half their width must fail: the test has power.
    est, sim, times = calibration_fit
    post = est.sample_posterior(sim.X, times=times, n_draws=99, random_state=0)["theta"]
    shrunk = post.mean(0) + 0.5 * (post - post.mean(0))
    lo50, hi50 = np.percentile(shrunk, [25, 75], axis=0)
    cover50 = np.mean((sim.params["theta"] >= lo50) & (sim.params["theta"] <= hi50))
    assert cover50 < 0.4
