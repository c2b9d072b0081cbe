"""HierarchicalODEVAE inside scikit-learn: model selection, routing, pipelines,
cloning, persistence and the conventions of iterative estimators.

The data are tiny (24-30 series, 10-12 times) and most fits run a handful of
epochs; only the model-selection tests train long enough for the choice to be
meaningful.
"""

import warnings

import joblib
import numpy as np
import pandas as pd
import pytest
import sklearn
import torch
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, GroupKFold, cross_val_score, cross_validate
from sklearn.pipeline import Pipeline, make_pipeline

from skhds import HierarchicalODEVAE
from skhds.datasets import make_logistic_growth, simulate
from skhds.models import LogisticGrowth
from skhds.preprocessing import SignalScaler

pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning",
    # zero-shot scoring of strains held out by GroupKFold
    "ignore:Group levels not seen in training:UserWarning",
)

def routing():
    """Metadata routing enabled for the duration of a ``with`` block only."""
    return sklearn.config_context(enable_metadata_routing=True)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny tensors: one intra-op thread is fastest, and avoids OpenMP spin-waiting
    (tens of times slower) when other processes share the two cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    return make_logistic_growth(n_series=24, n_times=10, random_state=0)


def _grid(data):
    n, _, T = data.X.shape
    return np.broadcast_to(data.times, (n, T))


def _est(**kw):
    params = dict(max_iter=2, random_state=0, n_eval_samples=32)
    params.update(kw)
    return HierarchicalODEVAE(LogisticGrowth(), **params)


class _Recording(HierarchicalODEVAE):
    """Records the group labels and time-grid shape every fit/score receives."""

    calls = []

    def fit(self, X, y=None, *, groups=None, inputs=None, times=None):
        labels = groups if groups is not None else y
        _Recording.calls.append(("fit", _levels(labels), len(X), np.shape(times)))
        return super().fit(X, y, groups=groups, inputs=inputs, times=times)

    def score(self, X, y=None, *, groups=None, inputs=None, times=None, sample_weight=None):
        labels = groups if groups is not None else y
        _Recording.calls.append(("score", _levels(labels), len(X), np.shape(times)))
        return super().score(X, y, groups=groups, inputs=inputs, times=times,
                             sample_weight=sample_weight)


def _levels(labels):
    return None if labels is None else frozenset(np.asarray(labels, dtype=object).ravel())


def _check_recorded_folds(calls, n_splits, n_series, T, times_reach_score=True):
    """fit/score pairs of a 1-candidate search: group-disjoint, grids sliced per series."""
    assert [c[0] for c in calls] == ["fit", "score"] * n_splits + ["fit"]
    seen_test = set()
    for fit, score in zip(calls[0:-1:2], calls[1::2]):
        assert fit[1] is not None and score[1] is not None, "labels did not arrive"
        assert fit[1].isdisjoint(score[1]), "splitter did not get the groups"
        assert fit[3] == (fit[2], T)
        assert score[3] == ((score[2], T) if times_reach_score else ())
        assert fit[2] + score[2] == n_series
        seen_test |= score[1]
    assert calls[-1][2] == n_series  # refit on everything
    return seen_test


# --------------------------------------------------------------------------
# 1. GridSearchCV + GroupKFold with metadata routing
# --------------------------------------------------------------------------
def test_gridsearch_routing_sends_groups_and_times_to_fit_score_and_splitter(data):
    n, _, T = data.X.shape
    _Recording.calls = []
    with routing():
        gs = GridSearchCV(_Recording(LogisticGrowth(), max_iter=2, random_state=0,
                                     n_eval_samples=32),
                          {"learning_rate": [0.01]}, cv=GroupKFold(3), error_score="raise")
        gs.fit(data.X, groups=data.groups, times=_grid(data))
    seen_test = _check_recorded_folds(_Recording.calls, 3, n, T)
    assert seen_test == {"s0", "s1", "s2"}  # every strain was a (zero-shot) test fold once
    # each test fold is a strain never seen in training: the zero-shot score is finite
    scores = [gs.cv_results_[f"split{k}_test_score"][0] for k in range(3)]
    assert np.all(np.isfinite(scores))
    assert list(gs.best_estimator_.categories_["strain"]) == ["s0", "s1", "s2"]


def test_gridsearch_routing_group_model_fits_only_because_groups_arrive(data):
    """A group model cannot fit without groups, so success proves they were routed."""
    with pytest.raises(ValueError, match="groups is required"):
        _est().fit(data.X, times=data.times)
    with routing():
        gs = GridSearchCV(_est(), {"max_iter": [1, 2]}, cv=GroupKFold(3), error_score="raise")
        gs.fit(data.X, groups=data.groups, times=_grid(data))
        # routed to score as well: scoring the refitted model through the search
        s = gs.score(data.X, groups=data.groups, times=_grid(data))
    assert np.isfinite(s)
    assert np.all(np.isfinite(gs.cv_results_["mean_test_score"]))
    assert list(gs.best_estimator_.categories_["strain"]) == ["s0", "s1", "s2"]


def test_zero_shot_score_on_unseen_strain_is_finite(data):
    g = np.asarray(data.groups)
    train, test = g != "s2", g == "s2"
    est = _est(max_iter=5).fit(data.X[train], groups=g[train], times=data.times)
    with pytest.warns(UserWarning, match="not seen in training"):
        s = est.score(data.X[test], groups=g[test], times=data.times)
    assert np.isfinite(s)


@pytest.fixture(scope="module")
def lag_data():
    """Series with clearly different lags (1.5-5 time units), three strains."""
    n, times = 30, np.linspace(0.0, 12.0, 12)
    g = np.array([f"s{i % 3}" for i in range(n)], dtype=object)
    rng = np.random.RandomState(1)
    d = simulate(LogisticGrowth(), times=times, groups=g,
                 params={"tlag": rng.uniform(1.5, 5.0, n), "x0": 0.05, "sigma_x": 0.03,
                         "K": np.array([0.8, 1.0, 1.2])}, random_state=1)
    d.groups = g
    return d


def test_gridsearch_selects_lag_model_for_lagged_data(lag_data):
    n, _, T = lag_data.X.shape
    with routing():
        gs = GridSearchCV(HierarchicalODEVAE(LogisticGrowth(), max_iter=40, random_state=0),
                          {"model__lag": [True, False]}, cv=GroupKFold(3), refit=False,
                          error_score="raise")
        gs.fit(lag_data.X, groups=lag_data.groups, times=np.broadcast_to(lag_data.times, (n, T)))
    assert gs.best_params_ == {"model__lag": True}
    res = gs.cv_results_
    lag_first = list(res["param_model__lag"]) == [True, False]
    assert lag_first
    margins = [res[f"split{k}_test_score"][0] - res[f"split{k}_test_score"][1] for k in range(3)]
    # lag wins on every held-out strain, by a margin well above fold-to-fold noise
    assert min(margins) > 1.0, margins
    assert np.mean(margins) > 2.0, margins


# --------------------------------------------------------------------------
# 2. Without routing
# --------------------------------------------------------------------------
def test_no_routing_labels_travel_as_y(data):
    n, _, T = data.X.shape
    _Recording.calls = []
    gs = GridSearchCV(_Recording(LogisticGrowth(), max_iter=2, random_state=0, n_eval_samples=32),
                      {"learning_rate": [0.01]}, cv=GroupKFold(3), error_score="raise")
    gs.fit(data.X, data.groups, groups=data.groups, times=_grid(data))
    # Pitfall: without routing, fit parameters reach fit only; score gets y but no times
    # (it falls back to the default grid 0..T-1). Routing is needed for non-default times.
    _check_recorded_folds(_Recording.calls, 3, n, T, times_reach_score=False)
    assert np.all(np.isfinite(gs.cv_results_["mean_test_score"]))
    assert list(gs.best_estimator_.categories_["strain"]) == ["s0", "s1", "s2"]


def test_no_routing_groups_only_reach_the_splitter(data):
    gs = GridSearchCV(_est(), {"max_iter": [1]}, cv=GroupKFold(3), error_score="raise")
    with pytest.raises(ValueError, match="groups is required"):
        gs.fit(data.X, groups=data.groups, times=_grid(data))


@pytest.mark.parametrize("enable_routing", [True, False])
def test_shared_1d_times_sliced_by_cv_gets_explained(enable_routing):
    d = make_logistic_growth(n_series=12, n_times=12, random_state=0)
    assert d.X.shape[0] == d.times.shape[0] == 12
    gs = GridSearchCV(_est(max_iter=1), {"max_iter": [1]}, cv=GroupKFold(3), error_score="raise")
    fit_args = {"groups": d.groups} if enable_routing else {"y": d.groups, "groups": d.groups}
    with sklearn.config_context(enable_metadata_routing=enable_routing):
        with pytest.raises(ValueError, match="broadcast_to") as info:
            gs.fit(d.X, times=d.times, **fit_args)
        assert "cross-validation slices" in str(info.value)
        # the per-series grid is sliced consistently and works
        gs.fit(d.X, times=np.broadcast_to(d.times, (12, 12)), **fit_args)
    assert np.all(np.isfinite(gs.cv_results_["mean_test_score"]))


# --------------------------------------------------------------------------
# 3. cross_validate / cross_val_score
# --------------------------------------------------------------------------
def test_cross_validate_and_cross_val_score_with_params(data):
    params = {"groups": data.groups, "times": _grid(data)}
    with routing():
        res = cross_validate(_est(), data.X, cv=GroupKFold(3), params=params,
                             return_estimator=True, error_score="raise")
        scores = cross_val_score(_est(), data.X, cv=GroupKFold(3), params=params,
                                 error_score="raise")
    assert res["test_score"].shape == (3,) and np.all(np.isfinite(res["test_score"]))
    assert scores.shape == (3,) and np.all(np.isfinite(scores))
    np.testing.assert_allclose(scores, res["test_score"])  # same seeds, same folds
    # every fold's model saw exactly the two strains outside its test fold
    seen = [frozenset(e.categories_["strain"]) for e in res["estimator"]]
    assert all(len(s) == 2 for s in seen) and len(set(seen)) == 3


def test_cross_validate_sample_weight_routed_to_score(data):
    w = np.random.RandomState(0).uniform(0.0, 1.0, len(data.X))
    t = _grid(data)
    params = {"groups": data.groups, "times": t}
    with routing():
        plain = cross_validate(_est(), data.X, cv=GroupKFold(3), params=params)["test_score"]
        res = cross_validate(_est(), data.X, cv=GroupKFold(3), return_estimator=True,
                             return_indices=True, params={**params, "sample_weight": w})
    assert np.all(np.abs(res["test_score"] - plain) > 1e-6)  # the weights made a difference
    g = np.asarray(data.groups)
    for est, test, score in zip(res["estimator"], res["indices"]["test"], res["test_score"]):
        expected = est.score(data.X[test], groups=g[test], times=t[test], sample_weight=w[test])
        assert score == pytest.approx(expected)


# --------------------------------------------------------------------------
# 4. Pipelines
# --------------------------------------------------------------------------
def test_pipeline_with_scaler_routing(data):
    t = _grid(data)
    with routing():
        pipe = make_pipeline(SignalScaler(subtract_min=False), _est())
        pipe.fit(data.X, groups=data.groups, times=t)
        pred = pipe.predict(data.X, groups=data.groups, times=t)
        s = pipe.score(data.X, groups=data.groups, times=t)
    vae = pipe[-1]
    assert list(vae.categories_["strain"]) == ["s0", "s1", "s2"]
    Xs = pipe[0].transform(data.X)
    np.testing.assert_array_equal(pred, vae.predict(Xs, groups=data.groups, times=t))
    assert s == pytest.approx(vae.score(Xs, groups=data.groups, times=t))
    assert pred.shape == data.X.shape


def test_pipeline_with_scaler_without_routing(data):
    pipe = make_pipeline(SignalScaler(subtract_min=False), _est())
    pipe.fit(data.X, hierarchicalodevae__groups=data.groups,
             hierarchicalodevae__times=data.times)
    pred = pipe.predict(data.X, groups=data.groups, times=data.times)
    Xs = pipe[0].transform(data.X)
    np.testing.assert_array_equal(
        pred, pipe[-1].predict(Xs, groups=data.groups, times=data.times))
    # y carries the labels to score
    s = pipe.score(data.X, data.groups)
    assert np.isfinite(s)
    # same fit through routing with the same seed gives the same model
    with routing():
        pipe2 = make_pipeline(SignalScaler(subtract_min=False), _est())
        pipe2.fit(data.X, groups=data.groups, times=data.times)
    np.testing.assert_array_equal(
        pred, pipe2.predict(data.X, groups=data.groups, times=data.times))


@pytest.fixture(scope="module")
def strain_rate_data():
    """Two strains with well separated growth rates, no group parameter in the model."""
    n, times = 30, np.linspace(0.0, 12.0, 12)
    rng = np.random.RandomState(0)
    strain = np.array(["a", "b"] * (n // 2), dtype=object)
    r = np.where(strain == "a", 0.5, 1.2) * np.exp(0.05 * rng.randn(n))
    d = simulate(LogisticGrowth(capacity="population"), n, times=times,
                 params={"r": r, "sigma_x": 0.03}, random_state=0)
    d.strain = strain
    return d


def test_estimator_as_transformer_feeds_a_classifier(strain_rate_data):
    d = strain_rate_data
    pipe = Pipeline([
        ("vae", HierarchicalODEVAE(LogisticGrowth(capacity="population"), max_iter=30,
                                   random_state=0)),
        ("clf", LogisticRegression()),
    ])
    # y is the class label here; the model has no grouping factor to use it for
    pipe.fit(d.X, d.strain, vae__times=d.times)
    assert pipe.score(d.X, d.strain) > 0.8
    assert pipe["vae"].get_feature_names_out().tolist() == ["r", "tlag"]
    assert pipe["vae"].categories_ == {}


def test_transform_features_separate_strains(strain_rate_data):
    """The same check without routing y through the estimator."""
    d = strain_rate_data
    vae = HierarchicalODEVAE(LogisticGrowth(capacity="population"), max_iter=30,
                             random_state=0).fit(d.X, times=d.times)
    Z = vae.transform(d.X, times=d.times)
    assert Z.shape == (30, 2)
    assert vae.get_feature_names_out().tolist() == ["r", "tlag"]
    clf = LogisticRegression().fit(Z, d.strain)
    assert clf.score(Z, d.strain) > 0.8
    assert np.corrcoef(Z[:, 0], d.params["r"])[0, 1] > 0.7


# --------------------------------------------------------------------------
# 5. clone / get_params / set_params
# --------------------------------------------------------------------------
def test_nested_params_and_clone(data):
    est = HierarchicalODEVAE(LogisticGrowth(capacity="individual"), max_iter=2, random_state=0)
    params = est.get_params()
    assert params["model__capacity"] == "individual"
    assert params["model__lag"] is True
    est.set_params(model__lag=False, model__capacity="group", learning_rate=0.02)
    assert est.model.lag is False and est.model.capacity == "group"
    assert est.learning_rate == 0.02
    est.fit(data.X, groups=data.groups, times=data.times)
    assert est.get_feature_names_out().tolist() == ["r"]  # no tlag without the lag

    c = clone(est)
    assert not hasattr(c, "vae_") and not hasattr(c, "n_iter_")
    assert c.model is not est.model
    cp, ep = c.get_params(deep=True), est.get_params(deep=True)
    assert cp.keys() == ep.keys()
    assert all(cp[k] == ep[k] for k in cp if k != "model" and not k.startswith("model__noise"))
    # the fitted model of the original is untouched by cloning and is a distinct object
    assert est.model_ is not est.model and est.model_ is not c.model


def test_gridsearch_over_capacity(data):
    gs = GridSearchCV(_est(), {"model__capacity": ["group", "population"]}, cv=GroupKFold(3),
                      error_score="raise")
    gs.fit(data.X, data.groups, groups=data.groups, times=_grid(data))
    assert np.all(np.isfinite(gs.cv_results_["mean_test_score"]))
    assert gs.best_estimator_.model_.capacity == gs.best_params_["model__capacity"]


# --------------------------------------------------------------------------
# 6. Persistence
# --------------------------------------------------------------------------
def test_joblib_round_trip_predict_bit_identical(data, tmp_path):
    est = _est(max_iter=3).fit(data.X, groups=data.groups, times=data.times)
    path = tmp_path / "est.joblib"
    joblib.dump(est, path)
    loaded = joblib.load(path)
    a = est.predict(data.X, groups=data.groups, times=data.times)
    b = loaded.predict(data.X, groups=data.groups, times=data.times)
    np.testing.assert_array_equal(a, b)
    assert loaded.score(data.X, groups=data.groups, times=data.times) == est.score(
        data.X, groups=data.groups, times=data.times)
    assert path.stat().st_size < 1_000_000


def test_pickle_size_does_not_grow_with_training_series(tmp_path):
    sizes = []
    for n in (24, 96):
        d = make_logistic_growth(n_series=n, n_times=10, random_state=0)
        est = _est(max_iter=2).fit(d.X, groups=d.groups, times=d.times)
        path = tmp_path / f"est{n}.joblib"
        joblib.dump(est, path)
        sizes.append(path.stat().st_size)
    assert abs(sizes[1] - sizes[0]) <= 0.1 * sizes[0], sizes
    assert max(sizes) < 5_000_000


def test_loaded_model_resumes_with_optimizer_state(data, tmp_path):
    est = _est(max_iter=3).fit(data.X, groups=data.groups, times=data.times)
    state = est.__getstate__()
    assert "_optimizer" not in state and "vae_" not in state
    opt_state = state["_optimizer_state"]["state"]
    assert opt_state
    steps = {float(np.asarray(s["step"])) for s in opt_state.values()}
    assert steps == {3.0}  # one minibatch per epoch (24 series, batch_size=32)

    path = tmp_path / "est.joblib"
    joblib.dump(est, path)
    est2 = joblib.load(path).set_params(warm_start=True, max_iter=1)
    est2.fit(data.X, groups=data.groups, times=data.times)
    assert est2.n_iter_ == 4 and len(est2.loss_curve_) == 4
    assert est2.loss_curve_[:3] == est.loss_curve_
    # Adam continued counting rather than restarting from zero
    steps2 = {float(s["step"]) for s in est2._optimizer.state.values()}
    assert steps2 == {4.0}


# --------------------------------------------------------------------------
# 7. Iterative-estimator conventions
# --------------------------------------------------------------------------
def test_max_iter_then_convergence_warning(data):
    # the first epoch always counts as progress, so 3 epochs cannot reach n_iter_no_change=3
    est = _est(max_iter=3, n_iter_no_change=3, tol=0.0)
    with pytest.warns(ConvergenceWarning, match="maximum iterations"):
        est.fit(data.X, groups=data.groups, times=data.times)
    assert est.n_iter_ == 3 and len(est.loss_curve_) == 3


def test_huge_tol_stops_early_without_warning(data):
    est = _est(max_iter=50, n_iter_no_change=3, tol=1e9)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est.fit(data.X, groups=data.groups, times=data.times)
    assert est.n_iter_ == 4 and len(est.loss_curve_) == 4


@pytest.fixture(scope="module")
def ten_strains():
    n, times = 30, np.linspace(0.0, 12.0, 10)
    g = np.array([f"g{i % 10}" for i in range(n)], dtype=object)
    d = simulate(LogisticGrowth(), times=times, groups=g, params={"sigma_x": 0.05},
                 random_state=0)
    d.groups = g
    return d


def test_early_stopping_holds_out_whole_groups(ten_strains):
    d = ten_strains
    est = _est(max_iter=3, early_stopping=True, validation_fraction=0.2)
    est.fit(d.X, groups=d.groups, times=d.times)
    assert len(est.validation_scores_) == est.n_iter_ == 3
    assert np.all(np.isfinite(est.validation_scores_))
    assert est.best_loss_ is None
    assert "validation_score" in est.history_.columns
    prepared = est._prepare(d.X, d.groups, None, d.times, reset=False)
    train, val = est._split(prepared)
    train_levels, val_levels = set(train.codes[:, 0]), set(val.codes[:, 0])
    assert len(val_levels) == 2 and len(train_levels) == 8
    assert train_levels.isdisjoint(val_levels)
    assert val.n_series == 6 and train.n_series == 24


def test_early_stopping_with_few_groups_splits_series(data):
    est = _est(max_iter=2, early_stopping=True, validation_fraction=0.25)
    est.fit(data.X, groups=data.groups, times=data.times)
    train, val = est._split(est._prepare(data.X, data.groups, None, data.times, reset=False))
    assert val.n_series == 6 and train.n_series == 18
    # three strains are too few to hold whole ones out: strains appear on both sides
    assert set(train.codes[:, 0]) & set(val.codes[:, 0])


def test_warm_start_accumulates(data):
    est = _est(max_iter=2, warm_start=True)
    est.fit(data.X, groups=data.groups, times=data.times)
    first = list(est.loss_curve_)
    est.set_params(max_iter=3).fit(data.X, groups=data.groups, times=data.times)
    assert est.n_iter_ == 5 and len(est.loss_curve_) == 5
    assert est.loss_curve_[:2] == first
    assert len(est.history_) == 5 and est.history_["epoch"].tolist() == [1, 2, 3, 4, 5]
    # the optimiser continues too (Adam's step count: one minibatch per epoch)
    assert {float(st["step"]) for st in est._optimizer.state.values()} == {5.0}
    # without warm_start a fit starts afresh
    est.set_params(warm_start=False, max_iter=2).fit(data.X, groups=data.groups, times=data.times)
    assert est.n_iter_ == 2 and est.loss_curve_ == first


def test_partial_fit_one_epoch_per_call(data):
    est = _est(max_iter=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        for k in range(1, 4):
            est.partial_fit(data.X, groups=data.groups, times=data.times)
            assert est.n_iter_ == k and len(est.loss_curve_) == k
    # three partial_fit calls are three epochs of one fit, Adam state included
    assert {float(st["step"]) for st in est._optimizer.state.values()} == {3.0}
    ref = _est(max_iter=3).fit(data.X, groups=data.groups, times=data.times)
    np.testing.assert_allclose(est.loss_curve_, ref.loss_curve_, rtol=1e-5)


def test_verbose(data, capsys):
    _est(max_iter=3, verbose=0).fit(data.X, groups=data.groups, times=data.times)
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    _est(max_iter=3, verbose=2).fit(data.X, groups=data.groups, times=data.times)
    out, _ = capsys.readouterr()
    lines = [line for line in out.splitlines() if line.strip()]
    assert [line.split(",")[0] for line in lines] == ["Iteration 1", "Iteration 2", "Iteration 3"]
    assert all("loss = " in line for line in lines)


def test_training_records(data):
    est = _est(max_iter=3, learning_rate=0.02).fit(data.X, groups=data.groups, times=data.times)
    assert est.n_iter_ == 3
    assert len(est.loss_curve_) == 3 and np.all(np.isfinite(est.loss_curve_))
    assert est.validation_scores_ == []
    assert isinstance(est.history_, pd.DataFrame) and len(est.history_) == 3
    np.testing.assert_allclose(est.history_["loss"], est.loss_curve_)
    assert "learning_rate" in est.history_.columns
    np.testing.assert_allclose(est.history_["learning_rate"], 0.02)
    assert np.isfinite(est.best_loss_)


def test_checkpoint_after_every_epoch_and_resume(data, tmp_path, monkeypatch):
    path = tmp_path / "ckpt.joblib"
    dumped = []
    real_dump = joblib.dump

    def spy(obj, filename, *args, **kwargs):
        dumped.append(obj.n_iter_)
        return real_dump(obj, filename, *args, **kwargs)

    monkeypatch.setattr(joblib, "dump", spy)
    est = _est(max_iter=3, checkpoint_path=str(path))
    est.fit(data.X, groups=data.groups, times=data.times)
    monkeypatch.undo()
    assert dumped == [1, 2, 3]
    assert path.exists() and not (tmp_path / "ckpt.joblib.tmp").exists()

    loaded = joblib.load(path)
    assert loaded.n_iter_ == 3 and loaded.loss_curve_ == est.loss_curve_
    loaded.set_params(warm_start=True, max_iter=2, checkpoint_path=None)
    loaded.fit(data.X, groups=data.groups, times=data.times)
    assert loaded.n_iter_ == 5 and loaded.loss_curve_[:3] == est.loss_curve_


def test_checkpoint_is_usable_for_prediction(data, tmp_path):
    """A checkpoint written during training predicts like the estimator at that epoch."""
    path = tmp_path / "ckpt.joblib"
    est = _est(max_iter=2, checkpoint_path=str(path))
    est.fit(data.X, groups=data.groups, times=data.times)
    loaded = joblib.load(path)
    pred = loaded.predict(data.X, groups=data.groups, times=data.times)
    assert pred.shape == data.X.shape and np.all(np.isfinite(pred))
    np.testing.assert_allclose(
        pred, est.predict(data.X, groups=data.groups, times=data.times), rtol=1e-5)


# --------------------------------------------------------------------------
# 8. Parallel search
# --------------------------------------------------------------------------
def test_gridsearch_n_jobs_matches_sequential(data):
    grid = {"model__lag": [True, False]}
    results = []
    for n_jobs in (1, 2):
        gs = GridSearchCV(_est(max_iter=2), grid, cv=GroupKFold(3), n_jobs=n_jobs,
                          error_score="raise")
        gs.fit(data.X, data.groups, groups=data.groups, times=_grid(data))
        results.append(gs)
    assert results[0].best_params_ == results[1].best_params_
    np.testing.assert_allclose(results[0].cv_results_["mean_test_score"],
                               results[1].cv_results_["mean_test_score"], rtol=1e-4)


# --------------------------------------------------------------------------
# 9. pandas groups
# --------------------------------------------------------------------------
def test_groups_dataframe_named_column_extra_columns_ignored(data):
    gdf = pd.DataFrame({"plate": np.arange(24) % 2, "strain": data.groups,
                        "note": ["x"] * 24})
    a = _est().fit(data.X, groups=gdf, times=data.times)
    b = _est().fit(data.X, groups=data.groups, times=data.times)
    assert list(a.categories_) == ["strain"]
    np.testing.assert_array_equal(a.categories_["strain"], b.categories_["strain"])
    np.testing.assert_array_equal(a.predict(data.X, groups=gdf, times=data.times),
                                  b.predict(data.X, groups=data.groups, times=data.times))
    # a DataFrame lacking the factor column is an error naming it
    with pytest.raises(ValueError, match="strain"):
        _est().fit(data.X, groups=gdf[["plate"]], times=data.times)


def test_groups_dataframe_through_gridsearch_as_y(data):
    gdf = pd.DataFrame({"strain": data.groups, "plate": np.arange(24) % 2})
    gs = GridSearchCV(_est(), {"max_iter": [1, 2]}, cv=GroupKFold(3), error_score="raise")
    gs.fit(data.X, gdf, groups=gdf["strain"], times=_grid(data))
    assert np.all(np.isfinite(gs.cv_results_["mean_test_score"]))
    assert list(gs.best_estimator_.categories_["strain"]) == ["s0", "s1", "s2"]


class _ThreadReporter(HierarchicalODEVAE):
    """Scores with the number of torch threads of the process that fitted it."""

    def fit(self, X, y=None, **kw):
        self.fit_threads_ = torch.get_num_threads()
        return self

    def score(self, X, y=None, **kw):
        return float(self.fit_threads_)


def test_gridsearch_workers_do_not_oversubscribe_torch_threads():
    # joblib's loky workers cap OMP_NUM_THREADS at cpu_count // n_jobs; torch reads it
    # at import, so two workers on two cores use one thread each.
    import os

    X = np.zeros((8, 1, 5))
    search = GridSearchCV(_ThreadReporter(), {"batch_size": [2, 4]}, cv=2, n_jobs=2, refit=False)
    search.fit(X)
    expected = max(1, (os.cpu_count() or 1) // 2)
    assert set(search.cv_results_["mean_test_score"]) == {float(expected)}
