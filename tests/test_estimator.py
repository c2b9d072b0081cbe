"""Behaviour of ``HierarchicalODEVAE``: recovery, return contracts, missing data,
reproducibility, persistence and the options of the training loop."""

import copy
import io
import math
import pickle
import warnings

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from skhds import HierarchicalODEVAE, ODEModel, Parameter
from skhds.datasets import make_logistic_growth, simulate
from skhds.distributions import LogNormal
from skhds.models import LogisticGrowth

ignore_convergence = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _kw(data, **extra):
    """Keyword arguments describing ``data`` for fit/predict/score."""
    return dict(groups=data.groups, times=data.times, **extra)


def _fit(data, **params):
    params.setdefault("random_state", 0)
    est = HierarchicalODEVAE(data.model, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(data.X, **_kw(data))


@pytest.fixture(scope="module")
def data():
    return make_logistic_growth(n_series=24, n_times=15, random_state=0)


@pytest.fixture(scope="module")
def fitted(data):
    """One small fitted estimator shared by the read-only API tests (do not mutate)."""
    return _fit(data, max_iter=20)


# --------------------------------------------------------------------------- acceptance
@pytest.fixture
def two_threads():
    """Pin torch to 2 intra-op threads: float reductions, hence the seeded fit, depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_recovers_truth_on_logistic_growth(two_threads):
    # Default settings, as a user would run it (the acceptance test).
    data = make_logistic_growth(random_state=0)
    est = HierarchicalODEVAE(data.model, random_state=0)
    est.fit(data.X, groups=data.groups, times=data.times)
    assert est.n_iter_ < est.max_iter  # converged by the stopping rule
    post = est.sample_posterior(data.X, groups=data.groups, times=data.times, n_draws=500)
    truth = data.params

    def z(name, draws=post):
        mean, sd = draws[name].mean(0), draws[name].std(0)
        return np.abs(mean - truth[name]) / sd

    assert z("x0") < 2
    # The variational noise level is biased upwards (measured: 1.9-2.3 posterior sds,
    # by seed and thread count, while proposals followed every level's group value;
    # 1.07 since they follow their own level's only, seed 0, two threads, where x0 went
    # from 2.57 to 0.35); the importance-reweighted posterior below removes it.
    assert z("sigma_x") < 3
    assert post["K"].shape == (500, 3)
    assert np.all(z("K") < 2), (post["K"].mean(0), truth["K"])
    # Population locations of the individual parameters (true value: prior loc). The
    # variational posterior of these is too narrow: over eight fits (random_state 0-3,
    # two versions of the likelihood's code that differ only in round-off) z reached
    # 3.07 (mu_r) and 3.03 (mu_tlag), median 1.9 and 1.8; the reweighted checks below
    # are the strict ones.
    assert z("mu_r") < 3.5
    assert z("mu_tlag") < 3.5
    # The generating omega is the *prior* scale from which the 60 individual values
    # were drawn; the data only inform about the spread of the values actually drawn
    # (the realised sample), so compare with that, on the same (log) scale.
    for name in ("r", "tlag"):
        realised = np.std(np.log(truth[name]), ddof=1)
        omega = post[f"omega_{name}"].mean()
        assert abs(omega - realised) < 0.35 * realised, (name, omega, realised)

    # Reweighted by the data (agrees with NUTS on this data set, benchmarks/bench_nuts.py):
    # the truth is within 2 posterior sds everywhere, the noise level within 1.
    imp = est.sample_posterior(data.X, groups=data.groups, times=data.times, n_draws=500,
                               method="importance", refine=3, n_proposals=400)
    assert z("sigma_x", imp) < 1
    for name in ("x0", "mu_r", "mu_tlag"):
        assert z(name, imp) < 2, name
    assert np.all(z("K", imp) < 2)
    assert np.corrcoef(np.log(imp["r"]).mean(0), np.log(truth["r"]))[0, 1] > 0.9

    feats = est.transform(data.X, groups=data.groups, times=data.times)
    names = list(est.get_feature_names_out())
    r_hat = feats[:, names.index("r")]
    assert np.corrcoef(r_hat, truth["r"])[0, 1] > 0.9


# ---------------------------------------------------------------------- return contracts
def test_predict_shape_and_finite(fitted, data):
    pred = fitted.predict(data.X, **_kw(data))
    assert pred.shape == data.X.shape
    assert pred.dtype == np.float64
    assert np.isfinite(pred).all()


def test_predict_return_std(fitted, data):
    mean, std = fitted.predict(data.X, **_kw(data), return_std=True)
    assert mean.shape == std.shape == data.X.shape
    assert np.isfinite(std).all()
    assert (std > 0).all()
    # Same draws as without return_std.
    np.testing.assert_array_equal(mean, fitted.predict(data.X, **_kw(data)))


def test_predict_on_dense_grid_interpolates(fitted, data):
    # With the default dt=None the solver takes one step per interval of the output
    # grid, so a coarse and a dense grid are solved to different accuracy. Use a small
    # dt on a copy so both grids are solved accurately and must agree.
    est = pickle.loads(pickle.dumps(fitted)).set_params(dt=0.05)
    n, _, T = data.X.shape
    grid = np.linspace(data.times[0], data.times[-1], 4 * (T - 1) + 1)  # contains every data time
    dense = est.predict(data.X, **_kw(data), prediction_times=grid)
    assert dense.shape == (n, 1, len(grid))
    assert np.isfinite(dense).all()
    coarse = est.predict(data.X, **_kw(data))
    shared = np.searchsorted(grid, data.times)
    np.testing.assert_allclose(grid[shared], data.times, atol=1e-12)
    # Same importance weights; only the output grid differs: agreement far below the
    # noise level 0.05.
    np.testing.assert_allclose(dense[..., shared], coarse, atol=0.01)
    # In between, dense predictions lie near the neighbouring values (smooth curves).
    mid = shared[:-1] + 2
    between = 0.5 * (coarse[..., :-1] + coarse[..., 1:])
    assert np.max(np.abs(dense[..., mid] - between)) < 0.1


def test_dt_wider_than_the_grid_steps_across_observations():
    # On a dense grid, dt spanning two observation intervals takes half the steps (the
    # times in between interpolated) and gives the curve of a fine solve.
    dense = make_logistic_growth(n_series=12, n_times=61, random_state=1)
    spacing = float(np.max(np.diff(dense.times)))
    fitted = _fit(dense, max_iter=3, solver="rk4")
    calls = []

    def predict(**params):
        est = pickle.loads(pickle.dumps(fitted)).set_params(**params)
        rhs = est.model_.rhs

        def counting(*args, **kwargs):
            calls.append(1)
            return rhs(*args, **kwargs)

        est.model_.rhs = counting  # an instance attribute shadows the method
        calls.clear()
        return est.predict(dense.X, **_kw(dense)), len(calls)

    fine, _ = predict(dt=spacing / 8)
    grid, n_grid = predict(dt=None)
    wide, n_wide = predict(dt=2 * spacing * (1 + 1e-6))
    assert n_grid == 4 * 60 + 1  # +1: the model's output check at the first call
    assert n_wide == 4 * 30 + 2  # and the derivative at the end of the last step
    np.testing.assert_allclose(grid, fine, atol=1e-4)
    np.testing.assert_allclose(wide, fine, atol=1e-3)  # measured 1.2e-4; noise sd 0.05
    assert not np.allclose(wide, grid, atol=1e-6, rtol=0)  # really a different solve


def test_predict_per_series_prediction_times(fitted, data):
    n = data.X.shape[0]
    pt = np.tile(np.linspace(0.0, 16.0, 9), (n, 1))  # forecast beyond the last observation
    out = fitted.predict(data.X, **_kw(data), prediction_times=pt)
    assert out.shape == (n, 1, 9)
    assert np.isfinite(out).all()


def test_predict_is_deterministic(fitted, data):
    a = fitted.predict(data.X, **_kw(data))
    b = fitted.predict(data.X, **_kw(data))
    assert np.array_equal(a, b)


def test_score_samples_and_score(fitted, data):
    s = fitted.score_samples(data.X, **_kw(data))
    assert s.shape == (data.X.shape[0],)
    assert np.isfinite(s).all()
    score = fitted.score(data.X, **_kw(data))
    assert isinstance(score, float)
    assert score == pytest.approx(float(np.mean(s)), rel=1e-12, abs=1e-12)


def test_transform_contract(fitted, data):
    feats = fitted.transform(data.X, **_kw(data))
    assert feats.shape == (data.X.shape[0], 2)
    assert list(fitted.get_feature_names_out()) == ["r", "tlag"]
    assert np.isfinite(feats).all()
    assert (feats > 0).all()  # log-normal parameters on their own scale


def test_series_whose_samples_all_fail_are_nan_with_a_warning(fitted, data):
    # residuals of 1e30 overflow the float32 likelihood: no sample of series 0 has a
    # finite weight; its results say so instead of averaging zero weights into 0
    X = data.X.copy()
    X[0] = 1e30
    kw = _kw(data)
    with pytest.warns(RuntimeWarning, match="1 of 24 series have no importance sample"):
        feats = fitted.transform(X, **kw)
    assert np.isnan(feats[0]).all() and np.isfinite(feats[1:]).all()
    with pytest.warns(RuntimeWarning, match="1 of 24 series"):
        post = fitted.sample_posterior(X, **kw, n_draws=5, random_state=0)
    assert np.isnan(post["r"][:, 0]).all() and np.isfinite(post["r"][:, 1:]).all()
    with pytest.warns(RuntimeWarning, match="their scores are -inf"):
        scores = fitted.score_samples(X, **kw)
    assert scores[0] == -np.inf and np.isfinite(scores[1:]).all()
    diag = fitted.importance_diagnostics(X, **kw)
    assert diag["flagged"].iloc[0] and diag["ess"].iloc[0] == 0


class PopulationGrowth(ODEModel):
    """Logistic growth whose only parameter is a population constant."""

    states = ("x",)

    def declare_parameters(self):
        return [Parameter("r", LogNormal(math.log(0.8), 0.25), level="population")]

    def initial_state(self, params, inputs):
        return (0.05 * torch.ones_like(params["r"])).unsqueeze(-1)

    def rhs(self, t, x, params, inputs):
        return (params["r"] * x[..., 0] * (1.0 - x[..., 0])).unsqueeze(-1)


def test_model_without_individual_parameters(data):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no torch warning about an empty layer
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = HierarchicalODEVAE(PopulationGrowth(), max_iter=3, random_state=0)
        est.fit(data.X, times=data.times)
    assert len(est.get_feature_names_out()) == 0
    assert est.transform(data.X, times=data.times).shape == (24, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # three epochs: an unreliable reweighting
        post = est.sample_posterior(data.X, times=data.times, n_draws=5, method="importance",
                                    n_proposals=50, random_state=0)
    assert post["r"].shape == (5,) and (post["r"] > 0).all()


def test_sample_posterior_keys_and_shapes(fitted, data):
    n_draws, n = 7, data.X.shape[0]
    post = fitted.sample_posterior(data.X, **_kw(data), n_draws=n_draws, random_state=0)
    for key in ("x0", "sigma_x", "mu_r", "omega_r", "mu_tlag", "omega_tlag", "mu_K", "tau_K"):
        assert post[key].shape == (n_draws,), key
    assert post["K"].shape == (n_draws, 3)
    assert post["r"].shape == post["tlag"].shape == (n_draws, n)
    for key, value in post.items():
        assert np.isfinite(value).all(), key
    for key in ("x0", "sigma_x", "K", "r", "tlag", "omega_r", "tau_K"):
        assert (post[key] > 0).all(), key
    again = fitted.sample_posterior(data.X, **_kw(data), n_draws=n_draws, random_state=0)
    assert all(np.array_equal(post[k], again[k]) for k in post)
    other = fitted.sample_posterior(data.X, **_kw(data), n_draws=n_draws, random_state=1)
    assert not np.array_equal(post["x0"], other["x0"])


def test_summary_table(fitted):
    summary = fitted.summary_
    assert isinstance(summary, pd.DataFrame)
    for col in ("mean", "sd", "q05", "median", "q95"):
        assert col in summary.columns
    names = summary["parameter"].tolist()
    assert names.count("x0") == 1
    assert names.count("sigma_x") == 1
    k_rows = summary[summary["parameter"] == "K"]
    assert sorted(k_rows["group_level"]) == list(fitted.categories_["strain"])
    assert (summary["q05"] <= summary["median"]).all()
    assert (summary["median"] <= summary["q95"]).all()
    assert (summary["sd"] > 0).all()


def test_training_records(fitted):
    assert fitted.n_iter_ == 20
    assert len(fitted.loss_curve_) == fitted.n_iter_
    assert np.isfinite(fitted.loss_curve_).all()
    hist = fitted.history_
    assert {"loss", "ess", "time"} <= set(hist.columns)
    assert len(hist) == fitted.n_iter_
    np.testing.assert_allclose(hist["loss"], fitted.loss_curve_)
    # best_loss_ tracks a smoothed loss: within the range of the epoch losses.
    assert min(fitted.loss_curve_) - 1e-9 <= fitted.best_loss_ <= max(fitted.loss_curve_) + 1e-9
    assert fitted.n_features_in_ == 1
    assert list(fitted.categories_["strain"]) == ["s0", "s1", "s2"]


# ------------------------------------------------------------------------ training works
def test_training_improves_loss_and_score(data):
    one = _fit(data, max_iter=1)
    many = _fit(data, max_iter=30)
    assert many.loss_curve_[0] == one.loss_curve_[0]  # same seed, same first epoch
    assert many.loss_curve_[-1] < many.loss_curve_[0]
    assert many.score(data.X, **_kw(data)) > one.score(data.X, **_kw(data))


def test_held_out_series_from_same_model_score_higher():
    full = make_logistic_growth(n_series=48, n_times=15, random_state=0)
    train, test = np.arange(24), np.arange(24, 48)  # strains alternate: both halves see all
    est = HierarchicalODEVAE(full.model, max_iter=60, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(full.X[train], groups=full.groups[train], times=full.times)
    kw = dict(groups=full.groups[test], times=full.times)
    same = est.score(full.X[test], **kw)
    scaled = est.score(3.0 * full.X[test], **kw)
    rng = np.random.RandomState(0)
    shuffled = est.score(full.X[test][..., rng.permutation(full.X.shape[-1])], **kw)
    assert np.isfinite([same, scaled, shuffled]).all()
    assert same > scaled + 10
    assert same > shuffled + 10


# -------------------------------------------------------------------------- missing data
@ignore_convergence
def test_fit_with_missing_entries(data):
    rng = np.random.RandomState(0)
    X = data.X.copy()
    X[rng.rand(*X.shape) < 0.3] = np.nan
    est = HierarchicalODEVAE(data.model, max_iter=5, random_state=0).fit(X, **_kw(data))
    assert np.isfinite(est.loss_curve_).all()
    pred = est.predict(X, **_kw(data))
    assert pred.shape == X.shape
    assert np.isfinite(pred).all()
    assert np.isfinite(est.score_samples(X, **_kw(data))).all()


@ignore_convergence
def test_per_series_ragged_time_grids():
    rng = np.random.RandomState(0)
    n, T = 18, 12
    # Each series its own sorted random grid (jittered, so intervals stay >= 0.4).
    times = np.arange(T) * 1.0 + rng.uniform(0.0, 0.6, size=(n, T))
    times[:, 0] = 0.0
    lengths = np.full(n, T)
    lengths[::4] = rng.randint(4, T, size=len(lengths[::4]))
    for i, L in enumerate(lengths):
        times[i, L:] = np.nan
    groups = np.array([f"s{i % 3}" for i in range(n)], dtype=object)
    sim = simulate(LogisticGrowth(), n, times=times, groups=groups, params={"sigma_x": 0.05},
                   random_state=0)
    X = sim.X.copy()
    X[np.isnan(times)[:, None, :]] = np.nan
    est = HierarchicalODEVAE(LogisticGrowth(), max_iter=5, random_state=0)
    est.fit(X, groups=groups, times=times)
    assert np.isfinite(est.loss_curve_).all()
    pred = est.predict(X, groups=groups, times=times)
    assert pred.shape == X.shape
    padded = np.broadcast_to(np.isnan(times)[:, None, :], X.shape)
    assert np.isfinite(pred[~padded]).all() and np.isnan(pred[padded]).all()
    assert np.isfinite(est.score_samples(X, groups=groups, times=times)).all()
    assert est.transform(X, groups=groups, times=times).shape == (n, 2)


def test_ragged_padding_is_ignored(fitted, data):
    """Values under NaN time padding do not enter the likelihood."""
    n, _, T = data.X.shape
    times = np.tile(data.times, (n, 1))
    times[0, 10:] = np.nan
    X = data.X.copy()
    a = fitted.score_samples(X, groups=data.groups, times=times)
    X[0, 0, 10:] = 123.0  # under padding: ignored
    b = fitted.score_samples(X, groups=data.groups, times=times)
    np.testing.assert_array_equal(a, b)


@ignore_convergence
def test_all_missing_series_warns(data):
    X = data.X.copy()
    X[3] = np.nan
    est = HierarchicalODEVAE(data.model, max_iter=2, random_state=0)
    with pytest.warns(UserWarning, match="no observed values"):
        est.fit(X, **_kw(data))
    assert np.isfinite(est.predict(X, **_kw(data))).all()
    assert np.isfinite(est.score_samples(X, **_kw(data))).all()


def test_score_counts_only_observed_entries(fitted, data):
    full = fitted.score_samples(data.X, **_kw(data))
    X = data.X.copy()
    X[0, 0, 5:] = np.nan
    partial = fitted.score_samples(X, **_kw(data))
    assert partial[0] != full[0]
    # Other series are unaffected by series 0's missing values.
    np.testing.assert_allclose(partial[1:], full[1:], rtol=1e-5, atol=1e-5)


def test_log_likelihood_masks_unobserved_entries(fitted):
    vae = fitted.vae_
    dtype = vae.q_global.loc.dtype
    gen = torch.Generator().manual_seed(0)
    S, K, T = 3, 4, 6
    y = torch.randn((S, 1, T), generator=gen, dtype=torch.float64)
    mask = torch.rand((S, 1, T), generator=gen) > 0.4
    mask[0, 0, 0] = False
    mask[1, 0, 1] = True
    means = y.unsqueeze(1) + 0.3 * torch.randn((S, K, 1, T), generator=gen, dtype=torch.float64)
    sigma = torch.full((S, K), 0.2, dtype=torch.float64)

    def ll(y_values):
        batch = {"y": y_values.to(dtype), "mask": mask}
        return vae.log_likelihood(means.to(dtype), batch, {"sigma_x": sigma.to(dtype)}).double()

    got = ll(torch.where(mask, y, torch.zeros_like(y)))
    # Manual Gaussian log density over observed entries only.
    yn, mn, m = y.numpy()[:, None], means.numpy(), mask.numpy()[:, None]
    dens = -0.5 * ((yn - mn) / 0.2) ** 2 - math.log(0.2) - 0.5 * math.log(2 * math.pi)
    manual = np.where(m, dens, 0.0).sum((-2, -1))
    assert got.shape == (S, K)
    np.testing.assert_allclose(got.numpy(), manual, rtol=1e-4, atol=1e-3)
    # Values under the mask are irrelevant, however wild.
    wild = torch.where(mask, y, torch.full_like(y, 1e6))
    np.testing.assert_allclose(ll(wild).numpy(), got.numpy(), rtol=0, atol=0)


def test_predictive_ignores_zero_weight_samples_that_overflow(fitted, monkeypatch):
    """A sample whose simulation is finite but huge (1e30) and has weight zero must
    not turn the predictive mean or variance into NaN (0 * inf)."""
    vae = pickle.loads(pickle.dumps(fitted)).vae_
    dtype = vae.q_global.loc.dtype
    means = torch.tensor([1.0, 1e30, 2.0], dtype=dtype).reshape(1, 3, 1, 1)
    log_w = torch.tensor([[0.0, -math.inf, 0.0]], dtype=dtype)
    out = {"log_w": log_w, "means": means, "params": {"sigma_x": torch.full((1, 1), 0.1, dtype=dtype)},
           "noise_scale": None}
    monkeypatch.setattr(vae, "evaluate", lambda batch, K, gen, **kw: out)
    mean, var, _ = vae.predictive(None, 3, None)
    assert torch.isfinite(mean).all() and torch.isfinite(var).all()
    assert float(mean) == pytest.approx(1.5, rel=1e-6)
    # Mixture of two equally weighted points 1 and 2 plus noise 0.1 ** 2.
    assert float(var) == pytest.approx(0.25 + 0.01, rel=1e-5)


# ------------------------------------------------------------------------ reproducibility
def test_same_seed_reproducible_different_seed_differs(data):
    a = _fit(data, max_iter=4)
    b = _fit(data, max_iter=4)
    c = _fit(data, max_iter=4, random_state=1)
    assert a.loss_curve_ == b.loss_curve_
    assert np.array_equal(a.predict(data.X, **_kw(data)), b.predict(data.X, **_kw(data)))
    assert a.loss_curve_ != c.loss_curve_


# --------------------------------------------------------------------------- group levels
def test_unseen_group_level_warns_zero_shot(fitted, data):
    groups = np.array(data.groups, dtype=object).copy()
    groups[:4] = "new_strain"
    with pytest.warns(UserWarning, match="zero-shot"):
        pred = fitted.predict(data.X, groups=groups, times=data.times)
    assert np.isfinite(pred).all()
    with pytest.warns(UserWarning, match="zero-shot"):
        scores = fitted.score_samples(data.X, groups=groups, times=data.times)
    assert np.isfinite(scores).all()
    with pytest.warns(UserWarning, match="zero-shot"):
        post = fitted.sample_posterior(data.X, groups=groups, times=data.times, n_draws=5)
    assert post["K"].shape == (5, 3)  # only training levels are summarised


def test_batches_say_on_the_host_whether_all_levels_are_seen(fitted, data):
    groups = np.array(data.groups, dtype=object).copy()
    seen = fitted._prepare(data.X, groups, None, data.times, reset=False)
    groups[:4] = "new_strain"
    with pytest.warns(UserWarning, match="zero-shot"):
        mixed = fitted._prepare(data.X, groups, None, data.times, reset=False)
    dev = torch.device("cpu")
    assert seen.batch(np.arange(8), fitted.scaling_, None, dev, torch.float32)["all_seen"] is True
    assert mixed.batch(np.arange(8), fitted.scaling_, None, dev, torch.float32)["all_seen"] is False
    assert mixed.batch(np.arange(4, 8), fitted.scaling_, None, dev, torch.float32)["all_seen"] is True


class CrossedGrowth(ODEModel):
    """Logistic growth with capacity by factor ``medium`` and rate by factor ``strain``."""

    states = ("x",)
    factors = ("medium", "strain")

    def declare_parameters(self):
        return [
            Parameter("r", LogNormal(math.log(0.8), 0.3), level="group", factor="strain"),
            Parameter("K", LogNormal(0.0, 0.4), level="group", factor="medium"),
            Parameter("x0", LogNormal(math.log(0.05), 0.3), level="individual"),
        ]

    def initial_state(self, params, inputs):
        return params["x0"].unsqueeze(-1)

    def rhs(self, t, x, params, inputs):
        return (params["r"] * x[..., 0] * (1.0 - x[..., 0] / params["K"])).unsqueeze(-1)


@ignore_convergence
def test_crossed_factors_dataframe_groups():
    n = 24
    groups = pd.DataFrame({
        "strain": [f"s{i % 3}" for i in range(n)],
        "medium": [f"m{(i // 3) % 2}" for i in range(n)],
        "plate": np.arange(n),  # extra columns are ignored
    })
    times = np.linspace(0.0, 10.0, 12)
    sim = simulate(CrossedGrowth(), times=times, groups=groups, params={"sigma_x": 0.05},
                   random_state=0)
    est = HierarchicalODEVAE(CrossedGrowth(), max_iter=5, random_state=0)
    est.fit(sim.X, groups=groups, times=times)
    assert list(est.categories_["strain"]) == ["s0", "s1", "s2"]
    assert list(est.categories_["medium"]) == ["m0", "m1"]
    pred = est.predict(sim.X, groups=groups, times=times)
    assert pred.shape == sim.X.shape and np.isfinite(pred).all()
    post = est.sample_posterior(sim.X, groups=groups, times=times, n_draws=6)
    assert post["r"].shape == (6, 3)
    assert post["K"].shape == (6, 2)
    assert post["x0"].shape == (6, n)
    assert {"mu_r", "tau_r", "mu_K", "tau_K"} <= set(post)
    # Column order of the DataFrame does not matter.
    reordered = groups[["plate", "medium", "strain"]]
    np.testing.assert_array_equal(est.predict(sim.X, groups=reordered, times=times), pred)


class DerivedGrowth(CrossedGrowth):
    """``CrossedGrowth`` with ``r / K`` and an output gain computed once per solve."""

    observables = ("od",)

    def derived(self, params, inputs):
        return {"r_over_K": params["r"] / params["K"], "gain": 2.0 + 0.0 * params["x0"]}

    def rhs(self, t, x, params, inputs):
        x0 = x[..., 0]
        return (params["r"] * x0 - params["r_over_K"] * x0 * x0).unsqueeze(-1)

    def observe(self, x, params, inputs):
        return params["gain"].unsqueeze(-1) * x


class GainGrowth(CrossedGrowth):
    """The same model written without ``derived``."""

    observables = ("od",)

    def observe(self, x, params, inputs):
        return 2.0 * x


@ignore_convergence
def test_derived_quantities_reach_rhs_and_observe():
    n = 12
    groups = pd.DataFrame({"strain": [f"s{i % 3}" for i in range(n)],
                           "medium": [f"m{i % 2}" for i in range(n)]})
    times = np.linspace(0.0, 10.0, 12)
    kw = dict(times=times, groups=groups, params={"sigma_od": 0.05}, random_state=0)
    sim, ref = simulate(DerivedGrowth(), **kw), simulate(GainGrowth(), **kw)
    np.testing.assert_allclose(sim.X, ref.X, rtol=1e-10)
    assert "r_over_K" not in sim.params  # derived quantities are not parameters
    # The estimator's solves use them too: same training and predictions as the inline model.
    preds = []
    for model in (DerivedGrowth(), GainGrowth()):
        est = HierarchicalODEVAE(model, max_iter=3, random_state=0).fit(sim.X, groups=groups,
                                                                        times=times)
        preds.append(est.predict(sim.X, groups=groups, times=times))
    np.testing.assert_allclose(preds[0], preds[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("derived, match", [
    ({"r": None}, r"returned names that are parameters: \['r'\]"),
    ([1.0], "must return a dict"),
])
def test_derived_errors_name_the_model(derived, match):
    class Bad(CrossedGrowth):
        def derived(self, params, inputs):
            return derived

    with pytest.raises(ValueError, match=rf"Bad\.derived\(\) {match}"):
        simulate(Bad(), times=np.linspace(0, 1, 3), groups=pd.DataFrame(
            {"strain": ["a", "b"], "medium": ["m", "m"]}), random_state=0)


# ---------------------------------------------------------------------------- persistence
def test_pickle_and_joblib_round_trip(fitted, data):
    expected = fitted.predict(data.X, **_kw(data))
    loaded = pickle.loads(pickle.dumps(fitted))
    assert np.array_equal(loaded.predict(data.X, **_kw(data)), expected)
    buf = io.BytesIO()
    joblib.dump(fitted, buf)
    buf.seek(0)
    loaded2 = joblib.load(buf)
    assert np.array_equal(loaded2.predict(data.X, **_kw(data)), expected)
    assert np.array_equal(loaded2.score_samples(data.X, **_kw(data)),
                          fitted.score_samples(data.X, **_kw(data)))
    assert loaded2.loss_curve_ == fitted.loss_curve_
    # Pickling does not disturb the original.
    assert np.array_equal(fitted.predict(data.X, **_kw(data)), expected)


def test_pickled_state_holds_numpy_not_torch(fitted):
    state = fitted.__getstate__()
    assert "vae_" not in state
    assert state["_vae_state"]
    for key, value in state["_vae_state"].items():
        assert isinstance(value, np.ndarray), key

    def tensors(obj):
        if torch.is_tensor(obj):
            return 1
        if isinstance(obj, dict):
            return sum(tensors(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(tensors(v) for v in obj)
        return 0

    assert tensors(state) == 0
    # Models travel as their class and constructor hyperparameters, not as modules:
    # the trained weights of model_ are in _vae_state.
    assert state["model_"]["__odemodel__"] is type(fitted.model_)
    assert not any(isinstance(v, torch.nn.Module) for v in state.values())
    assert "_optimizer" not in state
    # __getstate__ must not edit the live estimator.
    assert hasattr(fitted, "vae_")


@ignore_convergence
def test_loaded_model_continues_training_with_warm_start(fitted, data):
    loaded = pickle.loads(pickle.dumps(fitted))
    before = list(loaded.loss_curve_)
    loaded.set_params(warm_start=True, max_iter=3)
    loaded.fit(data.X, **_kw(data))
    assert loaded.n_iter_ == fitted.n_iter_ + 3
    assert loaded.loss_curve_[: len(before)] == before
    assert len(loaded.loss_curve_) == len(before) + 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_load_cuda_pickle_on_cpu_warns(fitted, data):
    state = fitted.__getstate__()
    state["_vae_device"] = "cuda:0"
    blob = pickle.dumps(state)
    restored = HierarchicalODEVAE.__new__(HierarchicalODEVAE)
    with pytest.warns(UserWarning, match="cuda:0"):
        restored.__setstate__(pickle.loads(blob))
    assert restored.vae_.q_global.loc.device.type == "cpu"
    np.testing.assert_array_equal(restored.predict(data.X, **_kw(data)),
                                  fitted.predict(data.X, **_kw(data)))


# ------------------------------------------------------------------------ training options
def test_partial_fit_one_epoch_per_call(data):
    est = HierarchicalODEVAE(data.model, random_state=0, max_iter=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est.partial_fit(data.X, **_kw(data))
        assert est.n_iter_ == 1 and len(est.loss_curve_) == 1
        first = list(est.loss_curve_)
        est.partial_fit(data.X, **_kw(data))
        est.partial_fit(data.X, **_kw(data))
    assert est.n_iter_ == 3
    assert len(est.loss_curve_) == 3
    assert est.loss_curve_[:1] == first
    assert np.isfinite(est.predict(data.X, **_kw(data))).all()


def test_partial_fit_calls_match_fit_epochs(data):
    """N calls of partial_fit continue the optimisation exactly like N epochs of fit
    (including the optimiser's state, as scikit-learn's MLP does)."""
    est = HierarchicalODEVAE(data.model, random_state=0)
    for _ in range(4):
        est.partial_fit(data.X, **_kw(data))
    full = _fit(data, max_iter=4)
    np.testing.assert_allclose(est.loss_curve_, full.loss_curve_, rtol=1e-5)


@ignore_convergence
def test_learning_rate_schedule_pairs_switch_after_complete_epochs(data):
    est = _fit(data, max_iter=5, learning_rate_schedule=[(2, 0.002), (4, 1e-4)])
    np.testing.assert_allclose(est.history_["learning_rate"], [0.01, 0.01, 0.002, 0.002, 1e-4])
    # the same epochs without a schedule differ only from epoch 3 on (same draws before)
    plain = _fit(data, max_iter=3)
    np.testing.assert_allclose(est.loss_curve_[:2], plain.loss_curve_[:2], rtol=1e-6)
    assert est.loss_curve_[2] == pytest.approx(plain.loss_curve_[2], rel=0.05)


def _inverse_decay(n_done):
    """A learning-rate schedule (module level: picklable)."""
    return 0.01 / (1 + n_done)


@ignore_convergence
def test_learning_rate_schedule_callable_and_continued_count(data):
    """A callable gets the number of complete epochs, counted across partial_fit calls and
    warm starts (also after a pickle round trip)."""
    schedule = _inverse_decay
    est = HierarchicalODEVAE(data.model, random_state=0, learning_rate_schedule=schedule)
    for _ in range(2):
        est.partial_fit(data.X, **_kw(data))
    est = pickle.loads(pickle.dumps(est))
    est.set_params(warm_start=True, max_iter=2).fit(data.X, **_kw(data))
    np.testing.assert_allclose(est.history_["learning_rate"], [0.01 / (1 + e) for e in range(4)])
    full = _fit(data, max_iter=4, learning_rate_schedule=schedule)
    np.testing.assert_allclose(est.loss_curve_, full.loss_curve_, rtol=1e-5)


@ignore_convergence
def test_learning_rate_schedule_rate_is_the_optimisers(data):
    """A (near) zero scheduled rate freezes the parameters: the optimiser uses the rate."""
    est = _fit(data, max_iter=1, learning_rate_schedule=[(1, 1e-12)])
    before = {k: v.clone() for k, v in est.vae_.state_dict().items()}
    est.set_params(warm_start=True, max_iter=2).fit(data.X, **_kw(data))
    after = est.vae_.state_dict()
    assert max(float((after[k] - v).abs().max()) for k, v in before.items()) < 1e-9
    moved = _fit(data, max_iter=3)  # the same epochs at the default rate do move them
    assert max(float((moved.vae_.state_dict()[k] - v).abs().max()) for k, v in before.items()) > 1e-3


@ignore_convergence
def test_estimator_saved_before_schedules_keeps_its_halved_rate(data):
    """Pickles from before learning_rate_schedule carry halvings only in the optimiser's rate."""
    est = _fit(data, max_iter=1)
    state = est.__getstate__()
    del state["_lr_factor"]
    for name in ("learning_rate_schedule", "compile_solver"):  # hyperparameters added since
        del state[name]
    _as_saved_with_one_parameter_group(state)
    state["_optimizer_state"]["param_groups"][0]["lr"] = 0.005  # one rollback, old style
    old = HierarchicalODEVAE.__new__(HierarchicalODEVAE)
    old.__setstate__(state)
    params = old.get_params()  # the added hyperparameters take their defaults
    assert params["learning_rate_schedule"] is None and params["compile_solver"] is False
    old.set_params(warm_start=True, max_iter=1).fit(data.X, **_kw(data))
    np.testing.assert_allclose(old.history_["learning_rate"], [0.01, 0.005])


def _as_saved_with_one_parameter_group(state):
    """An estimator's state as pickles from before ``encoder_learning_rate`` hold it."""
    groups = state["_optimizer_state"]["param_groups"]
    merged = {k: v for k, v in groups[0].items() if k not in ("params", "encoder")}
    merged["params"] = [i for g in groups for i in g["params"]]
    state["_optimizer_state"]["param_groups"] = [merged]
    del state["encoder_learning_rate"]


@ignore_convergence
def test_encoder_learning_rate_is_the_encoders_step(data):
    """The encoder trains at its own rate, scaled by the schedule in proportion; the other
    parameters at learning_rate."""
    start = _fit(data, max_iter=1, learning_rate=1e-12)  # the same initial weights, unmoved
    est = _fit(data, max_iter=2, encoder_learning_rate=1e-12, learning_rate_schedule=[(1, 0.005)])
    np.testing.assert_allclose(est.history_["learning_rate"], [0.01, 0.005])
    rates = {g["encoder"]: g["lr"] for g in est._optimizer.param_groups}
    assert rates[False] == pytest.approx(0.005) and rates[True] == pytest.approx(5e-13)

    def moved(part):
        before, after = getattr(start.vae_, part).state_dict(), getattr(est.vae_, part).state_dict()
        return max(float((v - before[k]).abs().max()) for k, v in after.items())

    assert moved("encoder") < 1e-9 and moved("q_global") > 1e-3
    # None: one step size for all, the training of before
    plain, same = _fit(data, max_iter=2), _fit(data, max_iter=2, encoder_learning_rate=0.01)
    assert len({g["lr"] for g in plain._optimizer.param_groups}) == 1
    np.testing.assert_allclose(plain.loss_curve_, same.loss_curve_, rtol=1e-6)


@ignore_convergence
def test_estimator_saved_with_one_parameter_group_warm_starts(data):
    """Pickles from before encoder_learning_rate (one Adam group) keep their optimiser state."""
    est = _fit(data, max_iter=2)
    state = copy.deepcopy(est.__getstate__())  # a pickle's copy: shares nothing with est
    _as_saved_with_one_parameter_group(state)
    old = HierarchicalODEVAE.__new__(HierarchicalODEVAE)
    old.__setstate__(state)
    assert old.get_params()["encoder_learning_rate"] is None
    old.set_params(warm_start=True, max_iter=1).fit(data.X, **_kw(data))
    assert [g["encoder"] for g in old._optimizer.param_groups] == [True, False]
    continued = pickle.loads(pickle.dumps(est)).set_params(warm_start=True, max_iter=1)
    continued.fit(data.X, **_kw(data))
    # the continued update (Adam's moments carried over) is the unmodified estimator's
    after, expected = old.vae_.state_dict(), continued.vae_.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(after[k], v, rtol=1e-6, atol=1e-7)
    # and without the saved moments it would differ
    restarted = pickle.loads(pickle.dumps(est)).set_params(warm_start=True, max_iter=1)
    del restarted._optimizer_state
    restarted.fit(data.X, **_kw(data))
    diff = max(float((restarted.vae_.state_dict()[k] - v).abs().max()) for k, v in expected.items())
    assert diff > 1e-4


@ignore_convergence
def test_warm_start_after_a_dtype_change_converts_the_optimiser(data):
    """A new dtype between warm starts converts Adam's moments with the parameters."""
    est = _fit(data, max_iter=2)
    est.set_params(warm_start=True, max_iter=1, dtype="float64").fit(data.X, **_kw(data))
    assert all(p.dtype == torch.float64 for p in est.vae_.parameters())
    assert all(st["exp_avg"].dtype == torch.float64 for st in est._optimizer.state.values())
    # the moments were carried over, not restarted: three steps in all
    assert all(int(st["step"]) == 3 for st in est._optimizer.state.values())
    est.set_params(dtype="float32").partial_fit(data.X, **_kw(data))
    assert len(est.loss_curve_) == 4 and np.isfinite(est.loss_curve_).all()


@ignore_convergence
def test_warm_start_warns_about_structural_changes_and_takes_new_times(data):
    est = _fit(data, max_iter=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # unchanged: no warning
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.set_params(warm_start=True).partial_fit(data.X, **_kw(data))
    est.set_params(n_hidden=8, covariance_type="diag")
    with pytest.warns(UserWarning, match="n_hidden, covariance_type changed since"):
        est.partial_fit(data.X, **_kw(data))
    assert est.vae_.encoder.norm.normalized_shape == (2 * 64,)  # the fitted network, unchanged
    # a warm start given another grid makes it the default grid of later calls
    est.set_params(n_hidden=64, covariance_type="full")
    est.fit(data.X, groups=data.groups, times=2 * data.times)
    np.testing.assert_array_equal(est.fit_times_, 2 * data.times)
    np.testing.assert_array_equal(est.predict(data.X, groups=data.groups),
                                  est.predict(data.X, groups=data.groups, times=2 * data.times))


def test_warm_start_with_new_group_levels_keeps_the_fitted_levels_and_says_so(data):
    est = _fit(data, max_iter=1)
    levels = est.categories_["strain"].copy()
    n_global = est.vae_.q_global.loc.numel()
    groups = np.array(data.groups, dtype=object).copy()
    groups[:4] = "new_strain"
    with pytest.warns(UserWarning, match=r"not in categories_ in a warm start .*'new_strain'") as rec:
        est.partial_fit(data.X, groups=groups, times=data.times)
    assert rec[0].filename == __file__  # points at the caller
    np.testing.assert_array_equal(est.categories_["strain"], levels)
    assert est.vae_.q_global.loc.numel() == n_global and est.n_iter_ == 2


@ignore_convergence
def test_declared_categories_are_learned_by_a_later_warm_start(data):
    # strain s2 is declared but absent from the first fit: its K keeps about the width of
    # its prior (not the narrow start of a level with data); a warm start with its series
    # moves it to the truth and narrows it
    first = np.array(data.groups) != "s2"
    est = HierarchicalODEVAE(data.model, max_iter=40, batch_size=8, random_state=0,
                             categories={"strain": ["s0", "s1", "s2"]})
    est.fit(data.X[first], groups=data.groups[first], times=data.times)
    assert list(est.categories_["strain"]) == ["s0", "s1", "s2"]
    # where q(g) starts: a declared level without series at its prior's width
    series = est._prepare(data.X[first], data.groups[first], None, data.times, reset=False)
    scale = est._build(series, torch.device("cpu"), torch.float32,
                       codes=series.codes).q_global.scale.detach()
    i_v, hier = est.vae_.hierarchy.grp_index["K"][2], est.vae_.hierarchy
    np.testing.assert_allclose(scale[i_v + 2], hier.prior_scale[i_v + 2], rtol=1e-5)
    assert float(scale[i_v : i_v + 2].max()) <= 0.1 * hier.prior_scale[i_v]

    def log_k():
        draws = est.sample_posterior(data.X, **_kw(data), n_draws=400)["K"]
        err = np.abs(np.log(np.median(draws, 0)) - np.log(data.params["K"]))
        return np.log(draws).std(0), err

    sd_before, err_before = log_k()
    assert sd_before[2] > 4 * sd_before[:2].max()  # 0.24 against 0.04
    est.set_params(warm_start=True, max_iter=60)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a declared level: no warning
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(data.X, **_kw(data))
    sd_after, err_after = log_k()
    assert sd_after[2] < 0.8 * sd_before[2]  # 0.12
    assert err_after[2] < 0.5 * err_before[2]  # 0.07 against 0.79


@pytest.mark.parametrize("categories, error, match", [
    ({"site": ["a"]}, ValueError, r"categories names factors \['site'\].*\['strain'\]"),
    ({"strain": ["s0", "s1"]}, ValueError, r"levels \['s2'\] of factor 'strain' that categories"),
    ({"strain": ["s0", "s0", "s1", "s2"]}, ValueError, r"categories\['strain'\] must hold"),
    ({"strain": "s0"}, TypeError, r"categories\['strain'\] must be a sequence"),
    ({"strain": {"s0", "s1", "s2"}}, TypeError, r"categories\['strain'\] must be a sequence"),
    (["s0", "s1", "s2"], TypeError, r"categories must be None or a dict"),
])
def test_categories_errors_name_the_argument(data, categories, error, match):
    with pytest.raises(error, match=match):
        HierarchicalODEVAE(data.model, max_iter=1, categories=categories).fit(data.X, **_kw(data))


def test_sample_posterior_needs_two_variational_draws(fitted, data):
    with pytest.raises(ValueError, match=r"n_draws must be at least 2 \(the Monte Carlo"):
        fitted.sample_posterior(data.X, **_kw(data), n_draws=1)


def test_solver_change_takes_effect_without_refitting(fitted, data):
    est = copy.deepcopy(fitted)
    heun = est.predict(data.X, **_kw(data))
    est.set_params(solver="euler")
    euler = est.predict(data.X, **_kw(data))
    assert est.vae_.solver == "euler"
    assert np.abs(euler - heun).max() > 1e-4  # a first-order method on the same grid
    est.set_params(solver="heun")
    np.testing.assert_array_equal(est.predict(data.X, **_kw(data)), heun)


def test_learning_rate_schedule_callable_bad_rate_names_it(data):
    est = HierarchicalODEVAE(data.model, max_iter=3, random_state=0,
                             learning_rate_schedule=lambda n: math.nan if n == 1 else 0.01)
    with pytest.raises(ValueError, match=r"learning_rate_schedule\(1\) must return a finite"):
        est.fit(data.X, **_kw(data))
    assert est.n_iter_ == 1 and np.isfinite(est.predict(data.X, **_kw(data))).all()


@ignore_convergence
def test_compile_solver_trains_and_scores_like_eager(data):
    """compile_solver=True solves with the compiled step (same numbers up to round-off);
    set_params takes effect for scoring too, without refitting."""
    eager = _fit(data, max_iter=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a machine without a C++ compiler
        compiled = _fit(data, max_iter=2, compile_solver=True)
        assert compiled.vae_.compile_solver
        np.testing.assert_allclose(compiled.loss_curve_, eager.loss_curve_, rtol=1e-4)
        np.testing.assert_allclose(compiled.score_samples(data.X, **_kw(data)),
                                   eager.score_samples(data.X, **_kw(data)), rtol=1e-4, atol=1e-3)
    compiled.set_params(compile_solver=False).predict(data.X, **_kw(data))
    assert not compiled.vae_.compile_solver


@ignore_convergence
def test_warm_start_continues_like_one_long_fit(data):
    """fit(3 epochs) + warm-start fit(2 epochs) == fit(5 epochs), in memory and after a
    pickle round trip (the optimiser state is part of the continued state)."""
    full = _fit(data, max_iter=5)
    first = _fit(data, max_iter=3)
    loaded = pickle.loads(pickle.dumps(first))
    for est in (loaded, first):
        est.set_params(warm_start=True, max_iter=2).fit(data.X, **_kw(data))
        assert est.n_iter_ == 5
    np.testing.assert_allclose(loaded.loss_curve_, full.loss_curve_, rtol=1e-5)
    np.testing.assert_allclose(first.loss_curve_, full.loss_curve_, rtol=1e-5)


@ignore_convergence
def test_early_stopping_records_validation_and_restores_best(data):
    est = HierarchicalODEVAE(data.model, max_iter=12, early_stopping=True, validation_fraction=0.25,
                             n_iter_no_change=3, random_state=0)
    est.fit(data.X, **_kw(data))
    assert est.best_loss_ is None
    assert len(est.validation_scores_) == est.n_iter_ == len(est.loss_curve_)
    assert np.isfinite(est.validation_scores_).all()
    assert "validation_score" in est.history_.columns
    np.testing.assert_allclose(est.history_["validation_score"], est.validation_scores_)
    # The restored state is the best epoch's: re-scoring the validation split with that
    # epoch's Monte Carlo seed reproduces the best recorded validation score.
    # (Uses private helpers: the split and the validation scorer.)
    probe = pickle.loads(pickle.dumps(est))
    prepared = probe._prepare(data.X, data.groups, None, data.times, reset=False)
    _, val = probe._split(prepared)
    best = int(np.argmax(est.validation_scores_))
    rescored = float(np.mean(probe._score_data(val, probe.n_importance_samples, best)))
    assert rescored == pytest.approx(max(est.validation_scores_), rel=1e-5)


def test_early_stopping_stops_before_max_iter(data):
    est = HierarchicalODEVAE(data.model, max_iter=200, early_stopping=True, validation_fraction=0.25,
                             n_iter_no_change=2, tol=1e6, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est.fit(data.X, **_kw(data))
    # With an unreachable tolerance only the first epoch counts as progress.
    assert est.n_iter_ == 3


def test_max_iter_reached_warns(data):
    # n_iter_no_change == max_iter: the first epoch always counts as progress, so the
    # run cannot converge and must warn.
    est = HierarchicalODEVAE(data.model, max_iter=3, n_iter_no_change=3, random_state=0)
    with pytest.warns(ConvergenceWarning, match="maximum iterations"):
        est.fit(data.X, **_kw(data))
    assert est.n_iter_ == 3


@ignore_convergence
@pytest.mark.parametrize("estimator", ["dreg", "iwae"])
def test_gradient_estimators_fit(data, estimator):
    est = _fit(data, max_iter=8, gradient_estimator=estimator)
    assert np.isfinite(est.loss_curve_).all()
    assert est.loss_curve_[-1] < est.loss_curve_[0]
    assert np.isfinite(est.predict(data.X, **_kw(data))).all()


def test_gradient_estimators_differ(data):
    a = _fit(data, max_iter=4, gradient_estimator="dreg")
    b = _fit(data, max_iter=4, gradient_estimator="iwae")
    assert a.loss_curve_ != b.loss_curve_


@ignore_convergence
def test_fixed_random_effects(data):
    est = _fit(data, max_iter=4, random_effects="fixed")
    post = est.sample_posterior(data.X, **_kw(data), n_draws=5)
    assert not any(k.startswith(("mu_", "omega_", "tau_")) for k in post)
    assert {"x0", "sigma_x", "K", "r", "tlag"} <= set(post)
    assert not est.summary_["parameter"].str.startswith(("mu_", "omega_", "tau_")).any()
    assert np.isfinite(est.predict(data.X, **_kw(data))).all()


class TrainableGrowth(ODEModel):
    """Logistic growth with a trainable (torch) offset on the rate."""

    states = ("x",)

    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = scale
        self.offset = torch.nn.Parameter(torch.zeros(1))

    def declare_parameters(self):
        return [Parameter("r", LogNormal(math.log(0.8), 0.25)),
                Parameter("x0", LogNormal(math.log(0.05), 0.3), level="population")]

    def initial_state(self, params, inputs):
        return params["x0"].unsqueeze(-1)

    def rhs(self, t, x, params, inputs):
        rate = self.scale * params["r"] + self.offset
        return (rate * x[..., 0] * (1.0 - x[..., 0])).unsqueeze(-1)


@ignore_convergence
def test_user_model_not_mutated(data):
    model = TrainableGrowth(scale=1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    est = HierarchicalODEVAE(model, max_iter=5, learning_rate=0.05, random_state=0)
    est.fit(data.X, times=data.times)
    assert est.model_ is not est.model
    assert est.model is model
    assert model.get_params() == {"scale": 1.0}
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert model.offset.dtype == torch.float32
    # The fitted clone's neural part was trained.
    assert not torch.equal(est.model_.offset.detach(), before["offset"])


@ignore_convergence
def test_set_params_model_hyperparameter(data):
    est = HierarchicalODEVAE(LogisticGrowth(), max_iter=3, random_state=0)
    est.set_params(model__lag=False)
    assert est.get_params()["model__lag"] is False
    est.fit(data.X, **_kw(data))
    assert list(est.get_feature_names_out()) == ["r"]
    feats = est.transform(data.X, **_kw(data))
    assert feats.shape == (data.X.shape[0], 1)
    post = est.sample_posterior(data.X, **_kw(data), n_draws=3)
    assert "tlag" not in post


@ignore_convergence
def test_default_model_is_logistic_growth(data):
    est = HierarchicalODEVAE(max_iter=2, random_state=0).fit(data.X, **_kw(data))
    assert isinstance(est.model_, LogisticGrowth)
    assert est.model is None


@ignore_convergence
def test_fit_transform_matches_fit_then_transform(data):
    a = HierarchicalODEVAE(data.model, max_iter=3, random_state=0).fit_transform(data.X, **_kw(data))
    b = _fit(data, max_iter=3).transform(data.X, **_kw(data))
    np.testing.assert_array_equal(a, b)


@ignore_convergence
def test_float64(data):
    est = _fit(data, max_iter=3, dtype="float64")
    assert est.vae_.q_global.loc.dtype == torch.float64
    assert np.isfinite(est.predict(data.X, **_kw(data))).all()


# ------------------------------------------------------------- refined proposals
@pytest.fixture(scope="module")
def undertrained():
    # A short fit: the encoder's proposals are still far from the series' posteriors.
    data = make_logistic_growth(n_series=24, n_times=15, random_state=1)
    return _fit(data, max_iter=40), data


def test_refine_repairs_poor_proposals(undertrained):
    est, data = undertrained
    before = est.importance_diagnostics(data.X, **_kw(data))
    after = est.importance_diagnostics(data.X, **_kw(data), refine=3)
    # measured (1 thread): median ESS 6.7 -> 22 of 256, median Pareto-k 5.2 -> 0.46,
    # flagged series 24 -> 5 of 24
    assert after.ess.median() > 2 * before.ess.median()
    assert before.pareto_k.median() > 1.0 and after.pareto_k.median() < 0.7
    assert after.flagged.sum() <= before.flagged.sum() // 2


def test_refine_tightens_the_bound_and_keeps_predictions_sane(undertrained):
    est, data = undertrained
    s0 = est.score_samples(data.X, **_kw(data))
    s3 = est.score_samples(data.X, **_kw(data), refine=3)
    assert np.isfinite(s3).all()
    # Better proposals: a tighter importance-weighted bound for most series.
    assert s3.mean() > s0.mean()
    pred = est.predict(data.X, **_kw(data), refine=3)
    assert np.isfinite(pred).all()
    assert np.sqrt(np.nanmean((pred - data.clean) ** 2)) < 2 * data.params["sigma_x"]
    post = est.sample_posterior(data.X, **_kw(data), refine=3, n_draws=50)
    assert post["r"].shape == (50, 24) and np.isfinite(post["r"]).all()


def test_refine_is_reproducible_and_leaves_the_estimator_untouched(undertrained):
    est, data = undertrained
    state = {k: v.clone() for k, v in est.vae_.state_dict().items()}
    a = est.transform(data.X, **_kw(data), refine=2)
    b = est.transform(data.X, **_kw(data), refine=2)
    np.testing.assert_array_equal(a, b)
    for k, v in est.vae_.state_dict().items():
        assert torch.equal(v, state[k]), k


# ------------------------------------------------------------- refinement blocks
@ignore_convergence
def test_refinement_block_refines_several_minibatches_at_one_shared_draw(data, monkeypatch):
    # 24 series in minibatches of 5 (5, 5, 5, 5, 4), blocks of 3: two batched refinements
    # per epoch, of 15 and 9 series; the minibatches of a block share the noise of one
    # global draw and get their own rows of the block's proposals.
    from skhds._vae import HierarchicalVAE

    refine, loss = HierarchicalVAE.refined_proposals, HierarchicalVAE.training_loss
    sizes, steps = [], []

    def spy_refine(self, batch, g, n_iter):
        sizes.append(batch["y"].shape[0])
        return refine(self, batch, g, n_iter)

    def spy_loss(self, batch, n_total, K, generator, estimator="iwae", refine=0, eps=None,
                 refined=None):
        # at a learning rate of 1e-9 the model does not move within a block: refining this
        # minibatch alone at the shared draw must give its rows of the block's proposals
        alone = HierarchicalVAE.__dict__["_refine_alone"](self, batch, eps, refine)
        steps.append((eps, refined, alone))
        return loss(self, batch, n_total, K, generator, estimator, refine, eps, refined)

    def refine_alone(self, batch, eps, n_iter):
        with torch.no_grad():
            return refine(self, batch, self.q_global.from_noise(eps), n_iter)

    monkeypatch.setattr(HierarchicalVAE, "refined_proposals", spy_refine)
    monkeypatch.setattr(HierarchicalVAE, "training_loss", spy_loss)
    monkeypatch.setattr(HierarchicalVAE, "_refine_alone", refine_alone, raising=False)
    est = _fit(data, max_iter=2, batch_size=5, training_refinement=2, refinement_block=3,
               learning_rate=1e-9)
    assert sizes == [15, 9, 15, 9]
    eps = [s[0] for s in steps]
    assert len(eps) == 10
    for first, last in ((0, 3), (3, 5), (5, 8), (8, 10)):
        assert all(e is eps[first] for e in eps[first:last])
    assert not torch.equal(eps[0], eps[3]) and not torch.equal(eps[0], eps[5])
    for _, refined, alone in steps:
        assert refined[0].shape == alone[0].shape
        # float32 reductions over 3 and 5 series round differently: a few 1e-3 apart,
        # where another series' proposal is 0.4-1.7 away
        torch.testing.assert_close(refined[0], alone[0], rtol=0, atol=1e-2)
        torch.testing.assert_close(refined[1], alone[1], rtol=0, atol=1e-2)
        assert float((refined[0] - alone[0].roll(1, 0)).abs().max()) > 0.1
    assert np.isfinite(est.loss_curve_).all()


@ignore_convergence
def test_refinement_block_epoch_refines_each_epoch_in_one_call(data, monkeypatch):
    # "epoch" is one block of all the epoch's minibatches, whatever their number: the same
    # fit as any number that covers them, and one refinement of all 24 series per epoch
    from skhds._vae import HierarchicalVAE

    refine, sizes = HierarchicalVAE.refined_proposals, []

    def spy_refine(self, batch, g, n_iter):
        sizes.append(batch["y"].shape[0])
        return refine(self, batch, g, n_iter)

    monkeypatch.setattr(HierarchicalVAE, "refined_proposals", spy_refine)
    kw = dict(max_iter=3, batch_size=5, training_refinement=2, n_importance_samples=8)
    whole = _fit(data, refinement_block="epoch", **kw)
    assert sizes == [24, 24, 24]
    sizes.clear()
    covering = _fit(data, refinement_block=7, **kw)
    assert sizes == [24, 24, 24]
    assert whole.loss_curve_ == covering.loss_curve_
    sizes.clear()
    _fit(data, refinement_block=3, **kw)
    assert sizes == [15, 9] * 3


@ignore_convergence
def test_refinement_block_changes_nothing_without_refinement(data):
    a = _fit(data, max_iter=3, batch_size=8)
    b = _fit(data, max_iter=3, batch_size=8, refinement_block=4)
    assert a.loss_curve_ == b.loss_curve_


@ignore_convergence
def test_refinement_blocks_are_reproducible_and_resume_exactly(data):
    # a seeded blocked fit repeats itself, and two epochs then a warm start of two more
    # (blocks restart with the epoch) equal four epochs in one fit
    kw = dict(batch_size=6, training_refinement=2, refinement_block=3, n_importance_samples=8)
    a, b = _fit(data, max_iter=4, **kw), _fit(data, max_iter=4, **kw)
    assert a.loss_curve_ == b.loss_curve_
    c = _fit(data, max_iter=2, **kw)
    c.set_params(warm_start=True).fit(data.X, **_kw(data))
    np.testing.assert_allclose(c.loss_curve_, a.loss_curve_, rtol=1e-6)
    other = _fit(data, max_iter=4, random_state=1, **kw)
    assert other.loss_curve_ != a.loss_curve_


@ignore_convergence
def test_refinement_blocks_train_as_well_as_per_minibatch_refinement(data):
    # the shared draw and proposals up to two steps old do not hurt the fit on this problem
    # (one-sided, and 20%: the two runs draw differently and either may end ahead, by about
    # 10% on some machines; 10 and 20 epochs of blocks score 4 and 17 against about 18 at 30)
    kw = dict(max_iter=30, batch_size=6, training_refinement=3, n_importance_samples=16)
    per_batch = _fit(data, **kw)
    blocked = _fit(data, refinement_block=4, **kw)
    score = lambda est: est.score(data.X, **_kw(data))  # noqa: E731
    assert score(blocked) > score(per_batch) - 0.2 * abs(score(per_batch))
    assert blocked.loss_curve_[-1] < blocked.loss_curve_[0] - 0.5 * abs(blocked.loss_curve_[0])


def test_refinement_block_is_refused_with_cuda_graphs(data, monkeypatch):
    import skhds._estimator as module

    monkeypatch.setattr(module, "graphs_supported", lambda device: True)
    est = HierarchicalODEVAE(data.model, max_iter=1, training_refinement=2, refinement_block=4)
    with pytest.raises(ValueError, match="refinement_block=4 cannot be combined with CUDA graphs"):
        est.fit(data.X, **_kw(data))
    est.set_params(refinement_block="epoch")
    with pytest.raises(ValueError, match="refinement_block=epoch cannot be combined with CUDA"):
        est.fit(data.X, **_kw(data))
    # without refinement the block has no effect and is accepted (a grid over
    # training_refinement with a fixed block must not fail at its 0 points)
    est.set_params(training_refinement=0)._check_hyperparameters()
    est.set_params(training_refinement=2)
    # with the graphs off it is accepted
    est.set_params(cuda_graphs=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(data.X, **_kw(data))
