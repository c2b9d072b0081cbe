"""Bad input: every error is raised early, with the right type and a message naming
the offending argument."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.exceptions import ConvergenceWarning, NotFittedError

from skhds import HierarchicalODEVAE, ODEModel, Parameter
from skhds._validation import check_inputs, check_observations, check_times
from skhds.datasets import make_logistic_growth, simulate
from skhds.distributions import LogNormal
from skhds.models import LogisticGrowth

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def data():
    return make_logistic_growth(n_series=12, n_times=8, random_state=0)


@pytest.fixture(scope="module")
def fitted(data):
    est = HierarchicalODEVAE(data.model, max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(data.X, groups=data.groups, times=data.times)


def _est(**params):
    params.setdefault("max_iter", 1)
    params.setdefault("random_state", 0)
    return HierarchicalODEVAE(LogisticGrowth(), **params)


# ------------------------------------------------------------------- small models
class Dosed(ODEModel):
    """Exponential decay driven by one declared input ``dose``; no groups."""

    states = ("x",)
    inputs = ("dose",)

    def declare_parameters(self):
        return [Parameter("k", LogNormal(math.log(0.5), 0.3)),
                Parameter("x0", LogNormal(0.0, 0.3), level="population")]

    def initial_state(self, params, inputs):
        return (params["x0"] * inputs["dose"]).unsqueeze(-1)

    def rhs(self, t, x, params, inputs):
        return -params["k"].unsqueeze(-1) * x


class _Base(ODEModel):
    states = ("x",)

    def declare_parameters(self):
        return [Parameter("k", LogNormal(0.0, 0.3)),
                Parameter("x0", LogNormal(0.0, 0.3), level="population")]

    def initial_state(self, params, inputs):
        return params["x0"].unsqueeze(-1)

    def rhs(self, t, x, params, inputs):
        return -params["k"].unsqueeze(-1) * x


class NoRhs(ODEModel):
    states = ("x",)

    def declare_parameters(self):
        return [Parameter("x0", LogNormal(0.0, 0.3), level="population")]

    def initial_state(self, params, inputs):
        return params["x0"].unsqueeze(-1)


class NoInitialState(ODEModel):
    states = ("x",)

    def declare_parameters(self):
        return [Parameter("x0", LogNormal(0.0, 0.3), level="population")]

    def rhs(self, t, x, params, inputs):
        return -x


class NoDeclare(ODEModel):
    states = ("x",)

    def initial_state(self, params, inputs):
        return torch.ones(1, 1, 1)

    def rhs(self, t, x, params, inputs):
        return -x


class UnknownFactor(_Base):
    factors = ("strain",)

    def declare_parameters(self):
        return super().declare_parameters() + [
            Parameter("K", LogNormal(0.0, 0.3), level="group", factor="plate")]


class Duplicate(_Base):
    def declare_parameters(self):
        return super().declare_parameters() + [Parameter("k", LogNormal(0.0, 0.5))]


class RhsWrongShape(_Base):
    def rhs(self, t, x, params, inputs):
        return -params["k"] * x[..., 0]  # (S, K): state axis dropped


class RhsWrongDtype(_Base):
    def rhs(self, t, x, params, inputs):
        return (-params["k"].unsqueeze(-1) * x).to(torch.float64)


class InitialWrongShape(_Base):
    def initial_state(self, params, inputs):
        return params["x0"].unsqueeze(-1).expand(-1, -1, 3)  # 3 states for a 1-state model


class NoiseScaleWrongShape(_Base):
    def observe_noise_scale(self, x, params, inputs):
        return torch.ones_like(x[..., 0])  # (S, K, T): observable axis dropped


def _decay_data(n=8, T=6):
    rng = np.random.RandomState(0)
    times = np.linspace(0.0, 5.0, T)
    X = np.exp(-0.5 * times)[None, None, :] + 0.01 * rng.randn(n, 1, T)
    return X, times


# ------------------------------------------------------------------------------ X
@pytest.mark.parametrize("shape", [(12, 8), (12, 1, 8, 1), (8,)])
def test_X_wrong_rank(fitted, data, shape):
    X = np.zeros(shape)
    with pytest.raises(ValueError, match=r"X must be a 3-D array"):
        _est().fit(X, groups=data.groups[: shape[0]] if len(shape) > 1 else None)
    with pytest.raises(ValueError, match=r"X must be a 3-D array"):
        fitted.predict(X)


def test_X_zero_series():
    with pytest.raises(ValueError, match=r"X has 0 series"):
        _est().fit(np.zeros((0, 1, 5)), groups=[])


def test_X_zero_times(data):
    with pytest.raises(ValueError, match=r"X has shape \(12, 1, 0\)"):
        _est().fit(np.zeros((12, 1, 0)), groups=data.groups)


def test_X_zero_observables(data):
    with pytest.raises(ValueError, match=r"X has shape \(12, 0, 8\)"):
        _est().fit(np.zeros((12, 0, 8)), groups=data.groups)


@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_X_infinite(data, fitted, value):
    X = data.X.copy()
    X[2, 0, 3] = value
    with pytest.raises(ValueError, match=r"X contains infinite values"):
        _est().fit(X, groups=data.groups, times=data.times)
    with pytest.raises(ValueError, match=r"X contains infinite values"):
        fitted.score(X, groups=data.groups, times=data.times)


def test_X_strings(data):
    X = np.full(data.X.shape, "a", dtype=object)
    with pytest.raises(TypeError, match=r"X must be numeric"):
        _est().fit(X, groups=data.groups)
    with pytest.raises(TypeError, match=r"X must be numeric"):
        _est().fit(X.astype(str), groups=data.groups)


def test_X_complex(data):
    with pytest.raises(TypeError, match=r"X must be real-valued"):
        _est().fit(data.X + 1j, groups=data.groups, times=data.times)


def test_times_and_inputs_complex(data):
    with pytest.raises(TypeError, match=r"times must be real-valued"):
        _est().fit(data.X, groups=data.groups, times=data.times + 0j)
    with pytest.raises(TypeError, match=r"prediction_times must be real-valued"):
        check_times(data.times + 1j, data.X.shape[0], data.X.shape[2], name="prediction_times")
    with pytest.raises(TypeError, match=r"inputs must be real-valued"):
        check_inputs(np.ones((3, 1)) * 1j, 3, ("u",))


def test_ragged_times_and_inputs_name_the_argument():
    with pytest.raises(TypeError, match=r"times must be numeric"):
        check_times([[0.0, 1.0, 2.0], [0.0, 1.0]], 2, 3)
    with pytest.raises(TypeError, match=r"inputs must be numeric"):
        check_inputs([[1.0], [1.0, 2.0]], 2, ("u",))


def test_read_only_times_are_copied_without_a_torch_warning(data):
    times = data.times.copy()
    times.setflags(write=False)
    out, _ = check_times(times, data.X.shape[0], data.X.shape[2])
    assert out.flags.writeable and not np.shares_memory(out, times)
    X = data.X.copy()
    X.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # torch: "The given NumPy array is not writable"
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = _est(max_iter=1).fit(X, groups=data.groups, times=times)
        est.predict(X, groups=data.groups)
    assert est.fit_times_.flags.writeable


def test_values_beyond_float32_are_refused_in_float32_only(data):
    X = data.X.copy()
    X[2, 0, 3] = 1e39
    with pytest.raises(ValueError, match=r"X has values beyond the float32 range .*dtype='float64'"):
        _est(max_iter=1).fit(X, groups=data.groups, times=data.times)
    with pytest.raises(ValueError, match=r"times has values beyond the float32 range"):
        _est(max_iter=1).fit(data.X, groups=data.groups, times=data.times * 1e38)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = _est(max_iter=1).fit(data.X, groups=data.groups, times=data.times)
        wide = _est(max_iter=1, dtype="float64").fit(data.X, groups=data.groups, times=data.times)
    with pytest.raises(ValueError, match=r"X has values beyond the float32 range"):
        est.predict(X, groups=data.groups)
    assert wide.predict(X, groups=data.groups).shape == X.shape  # float64 holds 1e39
    with pytest.raises(ValueError, match=r"prediction_times has values beyond the float32"):
        est.predict(data.X, groups=data.groups, prediction_times=[0.0, 1.0, 1e39])
    # distinct in float64, one value in float32: zero-length solver steps
    close = 1e8 + np.arange(data.X.shape[2], dtype=float)
    with pytest.raises(ValueError, match=r"times has steps that float32 rounds to zero"):
        _est(max_iter=1).fit(data.X, groups=data.groups, times=close)
    with pytest.raises(ValueError, match=r"prediction_times has steps that float32 rounds"):
        est.predict(data.X, groups=data.groups, prediction_times=close)
    assert wide.predict(data.X, groups=data.groups, prediction_times=close[:3]).shape[-1] == 3
    # values under the NaN padding of a per-series grid are ignored, also here
    times = np.tile(data.times, (X.shape[0], 1))
    times[2, 3:] = np.nan
    assert np.isnan(est.predict(X, groups=data.groups, times=times)[2, :, 3:]).all()


def test_X_ragged_nested_lists():
    X = [[[0.0, 1.0]], [[0.0, 1.0, 2.0]]]
    with pytest.raises(ValueError, match=r"X could not be converted"):
        check_observations(X)


def test_X_wrong_number_of_observables_at_fit(data):
    X = np.concatenate([data.X, data.X], axis=1)
    with pytest.raises(ValueError, match=r"X has 2 observables .* model has 1"):
        _est().fit(X, groups=data.groups, times=data.times)


def test_X_observables_differ_from_fit(fitted, data):
    X = np.concatenate([data.X, data.X], axis=1)
    for method in ("predict", "score", "score_samples", "transform"):
        with pytest.raises(ValueError, match=r"X has 2 observables.*fitted with 1"):
            getattr(fitted, method)(X, groups=data.groups, times=data.times)


# --------------------------------------------------------------------------- times
def test_times_not_increasing(data, fitted):
    times = data.times.copy()
    times[[3, 4]] = times[[4, 3]]
    with pytest.raises(ValueError, match=r"times must be strictly increasing"):
        _est().fit(data.X, groups=data.groups, times=times)
    times = data.times.copy()
    times[4] = times[3]  # repeated time
    with pytest.raises(ValueError, match=r"times must be strictly increasing"):
        fitted.predict(data.X, groups=data.groups, times=times)


def test_times_per_series_not_increasing(data):
    times = np.tile(data.times, (12, 1))
    times[5, [2, 3]] = times[5, [3, 2]]
    with pytest.raises(ValueError, match=r"times must be strictly increasing"):
        _est().fit(data.X, groups=data.groups, times=times)


def test_times_nan_inside_observed_range(data):
    times = np.tile(data.times, (12, 1))
    times[4, 3] = np.nan
    with pytest.raises(ValueError, match=r"times has NaN inside the observed range of series \[4\]"):
        _est().fit(data.X, groups=data.groups, times=times)


def test_times_nan_in_shared_grid(data):
    times = data.times.copy()
    times[-1] = np.nan
    with pytest.raises(ValueError, match=r"times \(shared grid\) must be finite"):
        _est().fit(data.X, groups=data.groups, times=times)


def test_times_all_nan_row(data):
    times = np.tile(data.times, (12, 1))
    times[7] = np.nan
    with pytest.raises(ValueError, match=r"times: series \[7\] have no valid time"):
        _est().fit(data.X, groups=data.groups, times=times)


def test_times_infinite_per_series(data):
    times = np.tile(data.times, (12, 1))
    times[0, -1] = np.inf
    with pytest.raises(ValueError, match=r"times contains infinite values"):
        _est().fit(data.X, groups=data.groups, times=times)


def test_times_before_t0(data, fitted):
    times = data.times - 1.0
    with pytest.raises(ValueError, match=r"times must be >= the model's start time t0=0"):
        _est().fit(data.X, groups=data.groups, times=times)
    with pytest.raises(ValueError, match=r"times must be >= the model's start time"):
        fitted.predict(data.X, groups=data.groups, times=data.times,
                       prediction_times=np.linspace(-1.0, 5.0, 4))


def test_times_wrong_length(data, fitted):
    with pytest.raises(ValueError, match=r"times has 7 points but X has 8 time points"):
        _est().fit(data.X, groups=data.groups, times=data.times[:-1])
    with pytest.raises(ValueError, match=r"times has 7 points"):
        fitted.score(data.X, groups=data.groups, times=data.times[:-1])


@pytest.mark.parametrize("shape", [(11, 8), (12, 7), (12, 8, 1), (1, 8)])
def test_times_per_series_wrong_shape(data, shape):
    times = np.broadcast_to(np.linspace(0, 7, shape[1]), shape[:2])
    times = times.reshape(shape) if len(shape) == 3 else times
    with pytest.raises(ValueError, match=r"times must have shape"):
        _est().fit(data.X, groups=data.groups, times=times)


def test_times_non_numeric(data):
    with pytest.raises(TypeError, match=r"times must be numeric"):
        _est().fit(data.X, groups=data.groups, times=["a"] * 8)


def test_prediction_times_wrong_shape(fitted, data):
    with pytest.raises(ValueError, match=r"times"):
        fitted.predict(data.X, groups=data.groups, times=data.times,
                       prediction_times=np.zeros((5, 3)))


@pytest.mark.parametrize("prediction_times", [[], 5.0, np.zeros((12, 0))],
                         ids=["empty", "scalar", "empty-per-series"])
def test_prediction_times_empty_or_scalar(fitted, data, prediction_times):
    with pytest.raises(ValueError, match=r"times"):
        fitted.predict(data.X, groups=data.groups, times=data.times,
                       prediction_times=prediction_times)


# --------------------------------------------------------------------------- inputs
@pytest.fixture(scope="module")
def dosed():
    X, times = _decay_data()
    return X, times, np.linspace(0.5, 1.5, len(X))


def test_inputs_model_fits(dosed):
    X, times, dose = dosed
    est = HierarchicalODEVAE(Dosed(), max_iter=2, random_state=0)
    est.fit(X, inputs=dose[:, None], times=times)
    assert np.isfinite(est.predict(X, inputs=dose[:, None], times=times)).all()
    # A DataFrame is matched by column name; a 1-D array works for one input.
    frame = pd.DataFrame({"other": 0.0, "dose": dose})
    np.testing.assert_array_equal(est.predict(X, inputs=frame, times=times),
                                  est.predict(X, inputs=dose, times=times))


def test_inputs_missing(dosed):
    X, times, _ = dosed
    with pytest.raises(ValueError, match=r"inputs is required.*dose"):
        HierarchicalODEVAE(Dosed(), max_iter=1).fit(X, times=times)


def test_inputs_wrong_rows(dosed):
    X, times, dose = dosed
    with pytest.raises(ValueError, match=r"inputs has 7 rows but X has 8 series"):
        HierarchicalODEVAE(Dosed(), max_iter=1).fit(X, inputs=dose[:-1, None], times=times)


def test_inputs_nan(dosed):
    X, times, dose = dosed
    bad = dose[:, None].copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match=r"inputs contains NaN"):
        HierarchicalODEVAE(Dosed(), max_iter=1).fit(X, inputs=bad, times=times)


def test_inputs_wrong_columns(dosed):
    X, times, dose = dosed
    with pytest.raises(ValueError, match=r"inputs has 2 columns but the model declares 1"):
        HierarchicalODEVAE(Dosed(), max_iter=1).fit(X, inputs=np.c_[dose, dose], times=times)


def test_inputs_dataframe_missing_column(dosed):
    X, times, dose = dosed
    with pytest.raises(ValueError, match=r"inputs DataFrame lacks columns \['dose'\]"):
        HierarchicalODEVAE(Dosed(), max_iter=1).fit(X, inputs=pd.DataFrame({"d": dose}),
                                                     times=times)


def test_inputs_non_numeric(dosed):
    X, times, _ = dosed
    with pytest.raises(TypeError, match=r"inputs must be numeric"):
        HierarchicalODEVAE(Dosed(), max_iter=1).fit(X, inputs=[["x"]] * 8, times=times)


def test_inputs_wrong_columns_at_predict(dosed):
    X, times, dose = dosed
    est = HierarchicalODEVAE(Dosed(), max_iter=1, random_state=0).fit(X, inputs=dose, times=times)
    with pytest.raises(ValueError, match=r"inputs has 2 columns"):
        est.predict(X, inputs=np.c_[dose, dose], times=times)
    with pytest.raises(ValueError, match=r"inputs is required"):
        est.predict(X, times=times)


# --------------------------------------------------------------------------- groups
def test_groups_wrong_length(data, fitted):
    with pytest.raises(ValueError, match=r"groups has 11 rows but X has 12 series"):
        _est().fit(data.X, groups=data.groups[:-1], times=data.times)
    with pytest.raises(ValueError, match=r"groups has 11 rows"):
        fitted.predict(data.X, groups=data.groups[:-1], times=data.times)


@pytest.mark.parametrize("missing", [None, np.nan, float("nan")])
def test_groups_missing_labels(data, missing):
    groups = np.array(data.groups, dtype=object)
    groups[4] = missing
    with pytest.raises(ValueError, match=r"groups contains missing labels"):
        _est().fit(data.X, groups=groups, times=data.times)


def test_groups_missing_label_in_series(data):
    groups = pd.Series(data.groups)
    groups[2] = None
    with pytest.raises(ValueError, match=r"groups contains missing labels"):
        _est().fit(data.X, groups=groups, times=data.times)


def test_groups_wrong_number_of_factor_columns(data):
    groups = np.c_[data.groups, data.groups]
    with pytest.raises(ValueError, match=r"groups has 2 factor column\(s\) but the model uses 1"):
        _est().fit(data.X, groups=groups, times=data.times)


def test_groups_wrong_rank(data):
    with pytest.raises(ValueError, match=r"groups must be 1-D or 2-D"):
        _est().fit(data.X, groups=np.zeros((12, 1, 1)), times=data.times)


def test_groups_dataframe_missing_factor(data):
    frame = pd.DataFrame({"medium": data.groups})
    with pytest.raises(ValueError, match=r"groups DataFrame lacks columns \['strain'\]"):
        _est().fit(data.X, groups=frame, times=data.times)


def test_groups_missing_when_required(data, fitted):
    with pytest.raises(ValueError, match=r"groups is required.*strain"):
        _est().fit(data.X, times=data.times)
    with pytest.raises(ValueError, match=r"groups is required"):
        fitted.predict(data.X, times=data.times)


# ----------------------------------------------------------------------- not fitted
@pytest.mark.parametrize(
    "method", ["predict", "score", "score_samples", "transform", "sample_posterior"])
def test_not_fitted(data, method):
    est = _est()
    with pytest.raises(NotFittedError):
        getattr(est, method)(data.X, groups=data.groups, times=data.times)


def test_not_fitted_feature_names():
    with pytest.raises(NotFittedError):
        _est().get_feature_names_out()


@pytest.mark.parametrize("method", ["score_samples", "predict", "transform", "sample_posterior",
                                    "importance_diagnostics"])
@pytest.mark.parametrize("refine, exc", [(-1, ValueError), (1.5, TypeError)])
def test_bad_refine_names_the_argument(fitted, data, method, refine, exc):
    with pytest.raises(exc, match=r"refine"):
        getattr(fitted, method)(data.X, groups=data.groups, times=data.times, refine=refine)


def test_sample_posterior_bad_n_draws(fitted, data):
    with pytest.raises(ValueError, match=r"n_draws must be >= 1"):
        fitted.sample_posterior(data.X, groups=data.groups, times=data.times, n_draws=0)
    with pytest.raises(TypeError, match=r"n_draws must be an integer"):
        fitted.sample_posterior(data.X, groups=data.groups, times=data.times, n_draws=2.5)


# ------------------------------------------------------------------ hyperparameters
BAD_HYPERPARAMETERS = [
    ({"learning_rate": -0.1}, ValueError, r"learning_rate"),
    ({"learning_rate": 0.0}, ValueError, r"learning_rate"),
    ({"learning_rate": "fast"}, TypeError, r"learning_rate"),
    ({"warm_start": "yes"}, TypeError, r"warm_start"),
    ({"early_stopping": 1}, TypeError, r"early_stopping"),
    ({"verbose": "x"}, TypeError, r"verbose"),
    ({"verbose": -1}, ValueError, r"verbose"),
    ({"checkpoint_path": 123}, TypeError, r"checkpoint_path"),
    ({"tol": float("nan")}, ValueError, r"tol"),
    ({"encoder_learning_rate": 0.0}, ValueError, r"encoder_learning_rate"),
    ({"encoder_learning_rate": float("nan")}, ValueError, r"encoder_learning_rate"),
    ({"encoder_learning_rate": "slow"}, TypeError, r"encoder_learning_rate"),
    ({"n_importance_samples": 0}, ValueError, r"n_importance_samples"),
    ({"n_importance_samples": 2.0}, TypeError, r"n_importance_samples"),
    ({"n_eval_samples": 0}, ValueError, r"n_eval_samples"),
    ({"solver": "dopri5"}, ValueError, r"solver"),
    ({"device": "not-a-device"}, ValueError, r"device"),
    ({"dtype": "float16"}, ValueError, r"dtype"),
    ({"gradient_estimator": "foo"}, ValueError, r"gradient_estimator"),
    ({"random_effects": "foo"}, ValueError, r"random_effects"),
    ({"covariance_type": "spherical"}, ValueError, r"covariance_type"),
    ({"validation_fraction": 1.5}, ValueError, r"validation_fraction"),
    ({"validation_fraction": 0.0}, ValueError, r"validation_fraction"),
    ({"batch_size": 0}, ValueError, r"batch_size"),
    ({"dt": -1}, ValueError, r"dt"),
    ({"dt": 0.0}, ValueError, r"dt"),
    ({"max_iter": 0}, ValueError, r"max_iter"),
    ({"max_iter": True}, TypeError, r"max_iter"),
    ({"n_iter_no_change": 0}, ValueError, r"n_iter_no_change"),
    ({"n_hidden": 0}, ValueError, r"n_hidden"),
    ({"tol": -1.0}, ValueError, r"tol"),
    ({"training_refinement": -1}, ValueError, r"training_refinement"),
    ({"training_refinement": 2.0}, TypeError, r"training_refinement"),
    ({"refinement_block": 0}, ValueError, r"refinement_block must be a positive integer or 'epoch'"),
    ({"refinement_block": 2.0}, TypeError, r"refinement_block must be a positive integer or 'epoch'"),
    ({"refinement_block": "all"}, ValueError, r"refinement_block must be a positive integer or 'epoch'"),
    ({"cuda_graphs": "yes"}, TypeError, r"cuda_graphs"),
    ({"compile_solver": 1}, TypeError, r"compile_solver"),
    ({"learning_rate_schedule": "step"}, TypeError, r"learning_rate_schedule"),
    ({"learning_rate_schedule": [(2, 0.001, 3)]}, ValueError, r"learning_rate_schedule"),
    ({"learning_rate_schedule": [(2.5, 0.001)]}, TypeError, r"learning_rate_schedule epochs"),
    ({"learning_rate_schedule": [(2, -0.001)]}, ValueError, r"learning_rate_schedule rate"),
    ({"learning_rate_schedule": [(3, 0.01), (2, 0.001)]}, ValueError,
     r"learning_rate_schedule epochs must increase"),
    ({"model": "logistic"}, TypeError, r"model"),
    ({"model": LogisticGrowth}, TypeError, r"model"),
]


@pytest.mark.parametrize("params, exc, match", BAD_HYPERPARAMETERS,
                         ids=[f"{next(iter(p))}={p[next(iter(p))]!r}" for p, _, _ in BAD_HYPERPARAMETERS])
def test_invalid_hyperparameters_raise_at_fit_not_init(data, params, exc, match):
    est = HierarchicalODEVAE(**{"max_iter": 1, **params})  # constructing never raises
    assert est.get_params()[next(iter(params))] is params[next(iter(params))]
    with pytest.raises(exc, match=match):
        est.fit(data.X, groups=data.groups, times=data.times)
    assert not hasattr(est, "vae_")
    # set_params does not validate either.
    est2 = HierarchicalODEVAE().set_params(**params)
    with pytest.raises(exc, match=match):
        est2.fit(data.X, groups=data.groups, times=data.times)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_requested_without_cuda(data, device):
    est = HierarchicalODEVAE(device=device, max_iter=1)
    with pytest.raises(ValueError, match=r"device=.*cuda.*CUDA is not available"):
        est.fit(data.X, groups=data.groups, times=data.times)


# ------------------------------------------------------------------------- models
@pytest.mark.parametrize("model, method", [
    (NoRhs(), "rhs"), (NoInitialState(), "initial_state"), (NoDeclare(), "declare_parameters")])
def test_model_missing_method(model, method):
    X, times = _decay_data()
    with pytest.raises(TypeError, match=rf"Model {type(model).__name__} must implement {method}"):
        HierarchicalODEVAE(model, max_iter=1).fit(X, times=times)


def test_model_unknown_factor():
    X, times = _decay_data()
    with pytest.raises(ValueError, match=r"UnknownFactor: parameter 'K' uses factor 'plate'"):
        HierarchicalODEVAE(UnknownFactor(), max_iter=1).fit(X, groups=["a"] * 8, times=times)


def test_model_duplicate_parameter_names():
    X, times = _decay_data()
    with pytest.raises(ValueError, match=r"Duplicate: duplicate parameter names \['k'\]"):
        HierarchicalODEVAE(Duplicate(), max_iter=1).fit(X, times=times)


def test_parameter_invalid_prior():
    from scipy import stats

    with pytest.raises(TypeError, match=r"Parameter 'k': prior must be"):
        Parameter("k", stats.lognorm(0.3))
    with pytest.raises(TypeError, match=r"prior must be"):
        Parameter("k", 1.0)


def test_parameter_invalid_level_and_factor():
    with pytest.raises(ValueError, match=r"Parameter 'k': level must be one of"):
        Parameter("k", LogNormal(0.0, 1.0), level="series")
    with pytest.raises(ValueError, match=r"Parameter 'k': a group-level parameter needs a factor"):
        Parameter("k", LogNormal(0.0, 1.0), level="group")
    with pytest.raises(ValueError, match=r"Parameter 'k': factor is only allowed"):
        Parameter("k", LogNormal(0.0, 1.0), level="individual", factor="strain")
    with pytest.raises(ValueError, match=r"Parameter name must be a valid identifier"):
        Parameter("k 1", LogNormal(0.0, 1.0))


def test_rhs_wrong_shape():
    X, times = _decay_data()
    with pytest.raises(ValueError, match=r"Model RhsWrongShape: rhs\(\) returned shape"):
        HierarchicalODEVAE(RhsWrongShape(), max_iter=1).fit(X, times=times)


def test_rhs_wrong_dtype():
    X, times = _decay_data()
    with pytest.raises(TypeError, match=r"Model RhsWrongDtype: rhs\(\) returned dtype torch.float64"):
        HierarchicalODEVAE(RhsWrongDtype(), max_iter=1).fit(X, times=times)


def test_initial_state_wrong_shape():
    X, times = _decay_data()
    with pytest.raises(ValueError, match=r"Model InitialWrongShape: initial_state\(\) returned shape"):
        HierarchicalODEVAE(InitialWrongShape(), max_iter=1).fit(X, times=times)


def test_observe_noise_scale_wrong_shape():
    X, times = _decay_data()
    with pytest.raises(ValueError, match=r"Model NoiseScaleWrongShape: observe_noise_scale\(\) returned "
                                         r"shape \(8, 32, 6\); expected that of observe\(\), \(8, 32, 6, 1\)"):
        HierarchicalODEVAE(NoiseScaleWrongShape(), max_iter=1, batch_size=8).fit(X, times=times)
    # simulate() checks it the same way (it shares the estimator's observation step)
    with pytest.raises(ValueError, match=r"Model NoiseScaleWrongShape: observe_noise_scale\(\) returned"):
        simulate(NoiseScaleWrongShape(), 4, times=times)


def test_model_with_string_states():
    class StringStates(_Base):
        states = "x"

    X, times = _decay_data()
    with pytest.raises(TypeError, match=r"states must be a tuple of strings"):
        HierarchicalODEVAE(StringStates(), max_iter=1).fit(X, times=times)


# --------------------------------------------------------------- property tests
_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 1.0]),
)


@st.composite
def _arrays(draw):
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4))
    kind = draw(st.sampled_from(["float", "int", "bool", "complex", "str", "object", "float32"]))
    if kind == "float":
        return draw(hnp.arrays(np.float64, shape, elements=_floats))
    if kind == "float32":
        return draw(hnp.arrays(np.float32, shape, elements=st.floats(width=32, allow_nan=True)))
    if kind == "int":
        return draw(hnp.arrays(np.int64, shape, elements=st.integers(-5, 5)))
    if kind == "bool":
        return draw(hnp.arrays(np.bool_, shape))
    if kind == "complex":
        return draw(hnp.arrays(np.complex128, shape, elements=st.complex_numbers(max_magnitude=10)))
    if kind == "str":
        return draw(hnp.arrays(np.dtype("U3"), shape, elements=st.sampled_from(["a", "1.5", "nan"])))
    return draw(hnp.arrays(object, shape, elements=st.sampled_from([1.0, None, "x", 2])))


@settings(max_examples=60, deadline=None)
@given(arr=_arrays(), n_obs=st.one_of(st.none(), st.integers(1, 3)))
def test_check_observations_property(arr, n_obs):
    try:
        out = check_observations(arr, n_observables=n_obs)
    except (ValueError, TypeError):
        return
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.float64
    assert out.shape == np.shape(arr)
    assert out.ndim == 3 and min(out.shape) > 0
    assert not np.isinf(out).any()
    if n_obs is not None:
        assert out.shape[1] == n_obs


@st.composite
def _time_grids(draw):
    n_series = draw(st.integers(1, 4))
    n_times = draw(st.integers(0, 5))
    form = draw(st.sampled_from(["shared", "per_series", "other"]))
    if form == "shared":
        shape = (draw(st.sampled_from([n_times, n_times + 1, max(n_times - 1, 0)])),)
    elif form == "per_series":
        shape = (n_series, n_times)
    else:
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
    sorted_ = draw(st.booleans())
    t = draw(hnp.arrays(np.float64, shape, elements=st.one_of(
        st.floats(-2.0, 20.0), st.sampled_from([np.nan, np.inf, -np.inf]))))
    if sorted_ and t.ndim >= 1:
        t = np.sort(t, axis=-1)  # NaN sorts to the end: ragged padding
    return t, n_series, n_times


@settings(max_examples=60, deadline=None)
@given(grid=_time_grids(), t0=st.sampled_from([0.0, -1.0]))
def test_check_times_property(grid, t0):
    t, n_series, n_times = grid
    try:
        out, valid = check_times(t, n_series, n_times, t0=t0)
    except (ValueError, TypeError):
        return
    assert out.dtype == np.float64
    assert np.isfinite(out).all()
    assert (out >= t0).all()
    if valid is None:
        assert out.shape == (n_times,)
        assert (np.diff(out) > 0).all()
        np.testing.assert_array_equal(out, t)
    else:
        assert out.shape == valid.shape == (n_series, n_times)
        assert valid.dtype == bool and valid[:, 0].all()
        np.testing.assert_array_equal(out[valid], t[valid])
        assert (np.diff(out, axis=1) >= 0).all()  # padding repeats the last time
        for row, ok in zip(out, valid):
            assert (np.diff(row[ok]) > 0).all()


def test_numpy_scalars_are_accepted_as_hyperparameters(data):
    est = HierarchicalODEVAE(max_iter=1, tol=np.float32(1e-3), validation_fraction=np.float32(0.25),
                             early_stopping=np.bool_(True), verbose=np.int64(0), random_state=0)
    est.fit(data.X, groups=data.groups, times=data.times)
    assert len(est.validation_scores_) == 1


def test_predict_return_std_must_be_a_bool(fitted, data):
    with pytest.raises(TypeError, match="return_std"):
        fitted.predict(data.X, groups=data.groups, times=data.times, return_std="yes")
