"""Tests for SignalScaler (3-D per-signal scaling and per-series minimum removal)."""

import pickle
import warnings

import numpy as np
import pytest
from sklearn.base import BaseEstimator, clone
from sklearn.pipeline import make_pipeline
from sklearn.utils.validation import check_is_fitted, validate_data

from skhds.preprocessing import SignalScaler


@pytest.fixture
def X():
    rng = np.random.default_rng(0)
    X = rng.uniform(1.0, 10.0, size=(6, 3, 8))
    X[:, 1] *= 100.0  # signals on very different scales
    return X


def test_max_scale_uses_training_data_only(X):
    train, test = X[:4], X[4:] * 7.0
    scaler = SignalScaler(subtract_min=False).fit(train)

    np.testing.assert_allclose(scaler.scale_, train.max(axis=(0, 2)))
    assert scaler.n_features_in_ == 3
    out = scaler.transform(test)
    np.testing.assert_allclose(out, test / train.max(axis=(0, 2))[None, :, None])
    assert out.max() > 1.0  # test data are not re-normalised
    np.testing.assert_allclose(scaler.transform(train).max(axis=(0, 2)), 1.0)


def test_subtract_min_after_scaling(X):
    scaler = SignalScaler()
    out = scaler.fit_transform(X)
    scaled = X / X.max(axis=(0, 2))[None, :, None]
    np.testing.assert_allclose(out, scaled - scaled.min(axis=2, keepdims=True))
    np.testing.assert_allclose(np.nanmin(out, axis=2), 0.0, atol=0)

    # At transform time the minima come from the new series themselves.
    new = X[:2] + 5.0
    out_new = scaler.transform(new)
    np.testing.assert_allclose(np.nanmin(out_new, axis=2), 0.0, atol=0)
    np.testing.assert_allclose(out_new, out[:2])  # a constant offset is removed


def test_nan_preserved_and_ignored(X):
    X = X.copy()
    X[0, 0, 3] = np.nan
    X[1, 2, :] = np.nan  # an all-missing series
    X[2, 1, 0] = 1e6  # the maximum sits next to missing values
    X[3, 1, 1] = np.nan

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the all-NaN series must not warn
        out = SignalScaler().fit_transform(X)

    np.testing.assert_array_equal(np.isnan(out), np.isnan(X))
    finite = ~np.isnan(X).all(axis=2)
    mins = np.min(np.where(np.isnan(out), np.inf, out), axis=2)
    np.testing.assert_allclose(mins[finite], 0.0, atol=0)
    scaler = SignalScaler(subtract_min=False).fit(X)
    assert scaler.scale_[1] == 1e6
    np.testing.assert_allclose(scaler.scale_, np.nanmax(X, axis=(0, 2)))


def test_scale_none(X):
    scaler = SignalScaler(scale="none", subtract_min=False).fit(X)
    np.testing.assert_array_equal(scaler.scale_, np.ones(3))
    np.testing.assert_array_equal(scaler.transform(X), X)
    out = SignalScaler(scale="none").fit_transform(X)
    np.testing.assert_allclose(out, X - X.min(axis=2, keepdims=True))


def test_degenerate_max_does_not_divide_by_zero():
    X = np.zeros((2, 2, 3))
    X[:, 1] = np.nan
    scaler = SignalScaler(subtract_min=False).fit(X)
    np.testing.assert_array_equal(scaler.scale_, [1.0, 1.0])


def test_inverse_transform_roundtrip(X):
    scaler = SignalScaler(subtract_min=False).fit(X)
    np.testing.assert_allclose(scaler.inverse_transform(scaler.transform(X)), X)


def test_inverse_transform_unavailable_with_subtract_min(X):
    scaler = SignalScaler().fit(X)
    assert not hasattr(scaler, "inverse_transform")
    with pytest.raises(AttributeError, match="inverse_transform") as excinfo:
        scaler.inverse_transform(X)
    assert "subtract_min=True" in str(excinfo.value.__cause__)


def test_float32_kept(X):
    out = SignalScaler().fit_transform(X.astype(np.float32))
    assert out.dtype == np.float32


def test_wrong_ndim_error_names_X(X):
    with pytest.raises(ValueError, match="X must be a 3-D"):
        SignalScaler().fit(X[:, :, 0])
    scaler = SignalScaler().fit(X)
    with pytest.raises(ValueError, match="X must be a 3-D"):
        scaler.transform(X[0])
    with pytest.raises(ValueError, match="X must be a 3-D"):
        scaler.transform(X[..., None])


def test_transform_with_different_n_signals_errors(X):
    scaler = SignalScaler().fit(X)
    with pytest.raises(ValueError, match="X has 2 features"):
        scaler.transform(X[:, :2])


def test_invalid_scale(X):
    with pytest.raises(ValueError, match="scale"):
        SignalScaler(scale="std").fit(X)


def test_unfitted_transform_raises(X):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        SignalScaler().transform(X)


def test_tags_clone_and_pickle(X):
    tags = SignalScaler().__sklearn_tags__()
    assert tags.input_tags.three_d_array
    assert tags.input_tags.allow_nan
    assert not tags.input_tags.two_d_array
    scaler = SignalScaler(scale="none", subtract_min=False)
    assert clone(scaler).get_params() == {"scale": "none", "subtract_min": False}
    fitted = SignalScaler().fit(X)
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.transform(X), fitted.transform(X))


class _MeanCurve(BaseEstimator):
    """Dummy 3-D estimator: predicts the mean training curve for every series."""

    def fit(self, X, y=None):
        X = validate_data(self, X, allow_nd=True, ensure_all_finite="allow-nan")
        self.mean_ = np.nanmean(X, axis=0)
        return self

    def predict(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, allow_nd=True, ensure_all_finite="allow-nan", reset=False)
        return np.broadcast_to(self.mean_, X.shape).copy()


def test_in_pipeline(X):
    X = X.copy()
    X[0, 1, 2] = np.nan
    pipe = make_pipeline(SignalScaler(), _MeanCurve()).fit(X[:4])

    scaler = pipe[0]
    expected = SignalScaler().fit_transform(X[:4])
    np.testing.assert_allclose(pipe[-1].mean_, np.nanmean(expected, axis=0))
    assert pipe[-1].n_features_in_ == 3
    assert pipe.predict(X[4:]).shape == (2, 3, 8)
    np.testing.assert_allclose(scaler.scale_, np.nanmax(X[:4], axis=(0, 2)))
    pipe.set_params(signalscaler__scale="none")
    pipe.fit(X)
    np.testing.assert_array_equal(pipe[0].scale_, np.ones(3))


@pytest.mark.parametrize(
    "check",
    [
        "check_no_attributes_set_in_init",
        "check_get_params_invariance",
        "check_set_params",
        "check_parameters_default_constructible",
    ],
)
def test_data_free_estimator_checks(check):
    from sklearn.utils import estimator_checks

    getattr(estimator_checks, check)("SignalScaler", SignalScaler())
