"""Tests of ``make_pharmacokinetics`` and of ``simulate`` on ragged per-series grids."""

import math
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from skhds import HierarchicalODEVAE
from skhds._validation import check_times
from skhds.datasets import make_pharmacokinetics, simulate
from skhds.models import OneCompartmentPK


def closed_form(t, dose, ka, CL, V):
    ke = CL / V
    return dose * ka / (V * (ka - ke)) * (np.exp(-ke * t) - np.exp(-ka * t))


def truth_curve(data, times=None):
    """Closed-form concentrations ``(n_subjects, n_times)`` of the dataset's true parameters."""
    p = data.params
    t = data.times if times is None else times
    return closed_form(t, data.inputs, p["ka"][:, None], p["CL"][:, None], p["V"][:, None])


@pytest.fixture(scope="module")
def data():
    return make_pharmacokinetics()


def test_shapes_and_contents(data):
    n = 40
    counts = (~np.isnan(data.times)).sum(1)
    assert data.X.shape == (n, 1, counts.max())
    assert data.times.shape == (n, counts.max())
    assert data.clean.shape == data.X.shape
    assert data.inputs.shape == (n, 1)
    assert data.groups is None
    assert isinstance(data.model, OneCompartmentPK)
    np.testing.assert_array_equal(data.inputs[:, 0], np.tile([50.0, 100.0, 200.0], 14)[:n])
    assert "one-compartment" in data.DESCR


def test_irregular_ragged_sampling(data):
    t = data.times
    valid = ~np.isnan(t)
    counts = valid.sum(1)
    assert counts.min() >= 4 and counts.max() <= 8
    assert len(np.unique(counts)) >= 3  # a varying number of samples per subject
    # NaN only as trailing padding, in times and observations alike.
    np.testing.assert_array_equal(valid, np.arange(t.shape[1])[None] < counts[:, None])
    np.testing.assert_array_equal(np.isnan(data.X[:, 0]), ~valid)
    np.testing.assert_array_equal(np.isnan(data.clean[:, 0]), ~valid)
    assert counts.min() < t.shape[1]  # some padding exists
    # Sorted, distinct times in (0, t_max], different for every subject.
    tv = t[valid]
    assert tv.min() > 0 and tv.max() <= 24.0
    for i in range(len(t)):
        assert np.all(np.diff(t[i, :counts[i]]) > 0)
    assert len(np.unique(t[:, 0])) == len(t)
    # Spread over the window rather than on a shared grid.
    assert tv.min() < 2.0 and tv.max() > 20.0
    # The package's validator accepts the grid as ragged per-series times.
    checked, mask = check_times(t, len(t), t.shape[1])
    np.testing.assert_array_equal(mask, valid)


def test_truth_and_clean_signal(data):
    p = data.params
    for name in ("ka", "CL", "V"):
        assert p[name].shape == (40,) and np.all(p[name] > 0)
    assert p["mu_ka"] == pytest.approx(math.log(1.0)) and p["omega_ka"] == pytest.approx(0.5)
    assert p["mu_CL"] == pytest.approx(math.log(4.0)) and p["omega_CL"] == pytest.approx(0.4)
    assert p["mu_V"] == pytest.approx(math.log(30.0)) and p["omega_V"] == pytest.approx(0.3)
    assert (p["a_C"], p["b_C"]) == (0.05, 0.1)
    # Individual parameters really vary around the population values.
    assert np.std(np.log(p["CL"])) > 0.2
    assert abs(np.mean(np.log(p["V"])) - math.log(30.0)) < 0.2
    valid = ~np.isnan(data.times)
    ref = truth_curve(data)
    np.testing.assert_allclose(data.clean[:, 0][valid], ref[valid], rtol=1e-4)
    # Concentrations of a typical oral drug (mg/L).
    assert 0.5 < np.nanmax(data.clean) < 20.0
    assert np.nanmin(data.clean) > 0


def test_combined_noise_is_simulated(data):
    valid = ~np.isnan(data.times)
    clean, y = data.clean[:, 0][valid], data.X[:, 0][valid]
    z = (y - clean) / np.sqrt(0.05 ** 2 + (0.1 * clean) ** 2)
    assert len(z) > 150
    assert 0.8 < z.std() < 1.2
    assert abs(z.mean()) < 0.25
    quiet = make_pharmacokinetics(noise=(0.0, 0.0))
    np.testing.assert_array_equal(quiet.X, quiet.clean)
    proportional = make_pharmacokinetics(noise=(0.0, 0.2))
    v = ~np.isnan(proportional.X)
    rel = proportional.X[v] / proportional.clean[v] - 1
    assert 0.15 < rel.std() < 0.25


def test_reproducible_by_seed():
    a, b = make_pharmacokinetics(random_state=3), make_pharmacokinetics(random_state=3)
    c = make_pharmacokinetics(random_state=4)
    for key in ("X", "times", "clean", "inputs"):
        np.testing.assert_array_equal(a[key], b[key])
    for key in ("ka", "CL", "V"):
        np.testing.assert_array_equal(a.params[key], b.params[key])
        assert not np.allclose(a.params[key], c.params[key])
    assert a.times.shape != c.times.shape or not np.array_equal(a.times, c.times, equal_nan=True)
    assert a.X.shape != c.X.shape or not np.array_equal(a.X, c.X, equal_nan=True)


def test_arguments():
    d = make_pharmacokinetics(n_subjects=5, n_samples=3, t_max=12.0, doses=(80.0,), random_state=1)
    assert d.X.shape == (5, 1, 3) and not np.isnan(d.X).any()
    assert d.times.max() <= 12.0
    np.testing.assert_array_equal(d.inputs, 80.0)
    with pytest.raises(ValueError, match="min <= max"):
        make_pharmacokinetics(n_samples=(5, 3))
    with pytest.raises(ValueError, match="doses"):
        make_pharmacokinetics(doses=(100.0, -1.0))
    with pytest.raises(ValueError, match="noise"):
        make_pharmacokinetics(noise=(-0.1, 0.1))
    with pytest.raises(TypeError, match="noise"):
        make_pharmacokinetics(noise=0.1)
    with pytest.raises(ValueError, match="n_subjects"):
        make_pharmacokinetics(n_subjects=0)


def test_simulate_keeps_ragged_padding():
    """``simulate`` on a NaN-padded per-series grid: NaN X/clean at the padding, times kept."""
    times = np.array([[0.5, 1.0, 3.0, 8.0], [2.0, 4.0, np.nan, np.nan], [1.0, 6.0, 12.0, np.nan]])
    fixed = {"ka": np.array([1.0, 2.0, 0.5]), "CL": np.array([4.0, 3.0, 5.0]),
             "V": np.array([30.0, 20.0, 40.0]), "a_C": 0.0, "b_C": 0.0}
    dose = np.array([[100.0], [50.0], [200.0]])
    sim = simulate(OneCompartmentPK(), times=times, inputs=dose, params=fixed, dt=0.01,
                   random_state=0)
    np.testing.assert_array_equal(np.isnan(sim.times), np.isnan(times))
    np.testing.assert_array_equal(sim.times[~np.isnan(times)], times[~np.isnan(times)])
    np.testing.assert_array_equal(np.isnan(sim.X[:, 0]), np.isnan(times))
    np.testing.assert_array_equal(np.isnan(sim.clean[:, 0]), np.isnan(times))
    v = ~np.isnan(times)
    ref = closed_form(times, dose, fixed["ka"][:, None], fixed["CL"][:, None], fixed["V"][:, None])
    np.testing.assert_allclose(sim.clean[:, 0][v], ref[v], rtol=1e-6)
    np.testing.assert_array_equal(sim.X, sim.clean)


@pytest.fixture(scope="module")
def fitted(data):
    """Short seeded fit on the ragged data (``dt`` well below ``1 / ka``)."""
    def fit(max_iter):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return HierarchicalODEVAE(data.model, dt=0.5, max_iter=max_iter, random_state=0).fit(
                data.X, inputs=data.inputs, times=data.times)
    return fit(60), fit(1)


def test_fit_score_predict_on_ragged_data(data, fitted):
    est, barely = fitted
    kwargs = dict(inputs=data.inputs, times=data.times)
    score = est.score(data.X, **kwargs)
    assert np.isfinite(score)
    assert score > barely.score(data.X, **kwargs) + 1.0  # training improves the bound
    pred = est.predict(data.X, **kwargs)
    assert pred.shape == data.X.shape
    valid = ~np.isnan(data.times)
    assert np.isfinite(pred[:, 0][valid]).all()
    # Predictions follow the noise-free truth closely (noise cv is 10%).
    rel = np.abs(pred[:, 0][valid] - data.clean[:, 0][valid]) / data.clean[:, 0][valid]
    assert np.median(rel) < 0.08  # 0.06 after training, 0.09 after one iteration
