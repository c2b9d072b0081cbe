"""scikit-learn API conformance.

With ``three_d_array`` input tags ``check_estimator`` skips almost everything, so
the data-free common checks are called directly and the data checks are written
here in 3-D versions.
"""

import inspect
import pickle
import warnings

import numpy as np
import pytest
from sklearn.base import clone, is_regressor, is_classifier
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.utils import estimator_checks

from skhds import HierarchicalODEVAE
from skhds.datasets import make_logistic_growth
from skhds.models import LogisticGrowth

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

DATA_FREE_CHECKS = [
    "check_no_attributes_set_in_init",
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_get_params_invariance",
    "check_set_params",
    "check_parameters_default_constructible",
    "check_estimator_repr",
    "check_estimators_unfitted",
    "check_estimator_cloneable",
    "check_mixin_order",
]


def _call_check(check, estimator):
    """Call a common check with the arguments its signature asks for."""
    name = type(estimator).__name__
    values = {"name": name, "estimator_orig": estimator, "estimator": estimator,
              "Estimator": type(estimator)}
    args, kwargs = [], {}
    for p in inspect.signature(check).parameters.values():
        if p.name in values:
            if p.kind == p.KEYWORD_ONLY:
                kwargs[p.name] = values[p.name]
            else:
                args.append(values[p.name])
        elif p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            pytest.skip(f"{check.__name__} needs an argument {p.name!r} this test cannot supply")
    return check(*args, **kwargs)


@pytest.mark.parametrize("check_name", DATA_FREE_CHECKS)
@pytest.mark.parametrize("estimator", [HierarchicalODEVAE(),
                                       HierarchicalODEVAE(LogisticGrowth(lag=False), max_iter=3)],
                         ids=["default", "with-model"])
def test_sklearn_data_free_check(check_name, estimator):
    check = getattr(estimator_checks, check_name, None)
    if check is None:
        pytest.skip(f"{check_name} does not exist in this scikit-learn version")
    _call_check(check, estimator)


# ------------------------------------------------------------------- 3-D checks
@pytest.fixture(scope="module")
def data():
    return make_logistic_growth(n_series=16, n_times=10, random_state=0)


def _kw(data):
    return {"groups": data.groups, "times": data.times}


def _fit(est, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(data.X, **_kw(data))


@pytest.fixture(scope="module")
def fitted(data):
    return _fit(HierarchicalODEVAE(LogisticGrowth(), max_iter=3, random_state=0), data)


def test_fit_returns_self(data):
    est = HierarchicalODEVAE(max_iter=1, random_state=0)
    assert _fit(est, data) is est
    assert est.partial_fit(data.X, **_kw(data)) is est


def test_fit_idempotent(data):
    """Fitting twice with the same seed gives the same model (no state leaks
    between fits of one object)."""
    est = HierarchicalODEVAE(max_iter=15, n_iter_no_change=3, random_state=0)
    _fit(est, data)
    first = (est.predict(data.X, **_kw(data)), list(est.loss_curve_), est.n_iter_, est.best_loss_)
    _fit(est, data)
    assert est.n_iter_ == first[2]
    assert est.loss_curve_ == first[1]
    assert est.best_loss_ == first[3]
    np.testing.assert_array_equal(est.predict(data.X, **_kw(data)), first[0])
    # ... and the same as a fresh object's fit.
    fresh = _fit(HierarchicalODEVAE(max_iter=15, n_iter_no_change=3, random_state=0), data)
    assert fresh.loss_curve_ == first[1]
    np.testing.assert_array_equal(fresh.predict(data.X, **_kw(data)), first[0])


def test_refit_on_other_data_resets(data):
    """A second fit (no warm start) on different data forgets the first."""
    other = make_logistic_growth(n_series=10, n_groups=2, n_times=10, random_state=1)
    est = _fit(HierarchicalODEVAE(max_iter=2, random_state=0), data)
    _fit(est, other)
    assert list(est.categories_["strain"]) == ["s0", "s1"]
    assert est.n_iter_ == 2 and len(est.loss_curve_) == 2
    fresh = _fit(HierarchicalODEVAE(max_iter=2, random_state=0), other)
    assert est.loss_curve_ == fresh.loss_curve_


def test_fit_does_not_change_params(data):
    model = LogisticGrowth(lag=True)
    est = HierarchicalODEVAE(model, max_iter=2, random_state=0)
    before = est.get_params(deep=True)
    _fit(est, data)
    after = est.get_params(deep=True)
    assert before.keys() == after.keys()
    for key in before:
        assert after[key] is before[key] or after[key] == before[key], key
    assert est.model is model


def test_n_features_in_set_and_checked(fitted, data):
    assert fitted.n_features_in_ == data.X.shape[1] == 1
    X2 = np.concatenate([data.X, data.X], axis=1)
    with pytest.raises(ValueError, match=r"observables"):
        fitted.predict(X2, **_kw(data))
    with pytest.raises(ValueError, match=r"observables"):
        fitted.score(X2, **_kw(data))


def test_sklearn_tags():
    tags = HierarchicalODEVAE().__sklearn_tags__()
    assert tags.input_tags.three_d_array is True
    assert tags.input_tags.allow_nan is True
    assert tags.input_tags.two_d_array is False
    assert HierarchicalODEVAE(random_state=0).__sklearn_tags__().non_deterministic is False
    assert tags.non_deterministic is True
    assert tags.transformer_tags is not None
    assert not is_regressor(HierarchicalODEVAE()) and not is_classifier(HierarchicalODEVAE())


def test_clone_of_fitted_is_unfitted_with_same_params(fitted, data):
    c = clone(fitted)
    assert not hasattr(c, "vae_") and not hasattr(c, "model_") and not hasattr(c, "n_iter_")
    with pytest.raises(NotFittedError):
        c.predict(data.X, **_kw(data))
    p_fit, p_clone = fitted.get_params(deep=True), c.get_params(deep=True)
    assert p_fit.keys() == p_clone.keys()
    assert "model__lag" in p_clone and "model__noise" in p_clone
    for key, value in p_fit.items():
        if key == "model":
            assert p_clone[key] is not value  # deep clone of the model object
            assert type(p_clone[key]) is type(value)
            assert repr(p_clone[key]) == repr(value)
        elif key.startswith("model__noise"):
            assert repr(p_clone[key]) == repr(value)
        else:
            assert p_clone[key] == value, key


def test_clone_set_model_param(fitted, data):
    c = clone(fitted).set_params(model__lag=False)
    assert c.get_params()["model__lag"] is False
    assert fitted.get_params()["model__lag"] is True  # the original is untouched
    assert fitted.model.lag is True
    _fit(c, data)
    assert list(c.get_feature_names_out()) == ["r"]


def test_set_params_invalid_model_param():
    with pytest.raises(ValueError, match=r"Invalid parameter 'nope'"):
        HierarchicalODEVAE(LogisticGrowth()).set_params(model__nope=1)
    with pytest.raises(ValueError, match=r"Invalid parameter"):
        HierarchicalODEVAE().set_params(nope=1)


def test_pickle_unfitted_round_trip():
    est = HierarchicalODEVAE(LogisticGrowth(lag=False), max_iter=7)
    loaded = pickle.loads(pickle.dumps(est))
    assert repr(loaded) == repr(est)
    assert loaded.get_params()["model__lag"] is False


def test_score_higher_is_better_consistent_with_score_samples(fitted, data):
    s = fitted.score_samples(data.X, **_kw(data))
    assert fitted.score(data.X, **_kw(data)) == pytest.approx(s.mean())
    # A much worse fit (shifted data) must score lower.
    assert fitted.score(data.X + 2.0, **_kw(data)) < fitted.score(data.X, **_kw(data))


def test_fit_transform_is_transform_after_fit(data):
    a = HierarchicalODEVAE(max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        out = a.fit_transform(data.X, **_kw(data))
    np.testing.assert_array_equal(out, a.transform(data.X, **_kw(data)))
    assert out.shape == (data.X.shape[0], len(a.get_feature_names_out()))

