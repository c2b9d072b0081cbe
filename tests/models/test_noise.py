"""Tests for the observation noise models in ``skhds.models``.

Densities are checked element-wise against ``scipy.stats`` on the broadcast
shapes used by the library: parameters ``(1, K, n_obs, 1)``, means
``(S, K, n_obs, T)``.
"""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from skhds.distributions import LogNormal, Normal, Prior
from skhds.models import Combined, Gaussian, Laplace, NoiseModel, Proportional, StudentT

F64 = torch.float64
S, K, N_OBS, T = 3, 4, 2, 5
DF = 6.0

# Parameter values per (sample, observable), shaped (1, K, n_obs, 1).
_P1 = np.array([[0.1, 0.3], [0.5, 0.05], [1.0, 0.2], [0.25, 2.0]])[None, :, :, None]
_P2 = np.array([[0.02, 0.4], [0.3, 0.1], [0.15, 0.6], [0.5, 0.05]])[None, :, :, None]


def _params(names):
    arrays = {"first": _P1, "second": _P2}
    return {n: torch.tensor(arrays[k], dtype=F64) for n, k in zip(names, ("first", "second"))}


def _ref_gaussian(mean, p):
    return scipy.stats.norm(mean, p["sigma"])


def _ref_proportional(mean, p):
    return scipy.stats.norm(mean, p["b"] * np.abs(mean))


def _ref_combined(mean, p):
    return scipy.stats.norm(mean, np.sqrt(p["a"] ** 2 + (p["b"] * mean) ** 2))


def _ref_laplace(mean, p):
    return scipy.stats.laplace(mean, p["scale"])


def _ref_student(mean, p):
    return scipy.stats.t(DF, mean, p["sigma"])


# name -> (factory, parameter names, frozen scipy reference given numpy mean and params)
MODELS = {
    "gaussian": (Gaussian, ("sigma",), _ref_gaussian),
    "proportional": (Proportional, ("b",), _ref_proportional),
    "combined": (Combined, ("a", "b"), _ref_combined),
    "laplace": (Laplace, ("scale",), _ref_laplace),
    "student": (lambda: StudentT(df=DF), ("sigma",), _ref_student),
}


def _mean_and_y(seed=0):
    rng = np.random.default_rng(seed)
    mean = rng.uniform(0.5, 3.0, size=(S, K, N_OBS, T)) * rng.choice([-1.0, 1.0], size=(S, K, N_OBS, T))
    y = mean + rng.normal(scale=0.7, size=mean.shape) * np.abs(mean)
    return mean, y


def _np(params):
    return {k: v.numpy() for k, v in params.items()}


# ---------------------------------------------------------------------------
# log densities
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_log_prob_matches_scipy(name):
    factory, names, ref = MODELS[name]
    model, params = factory(), _params(names)
    mean, y = _mean_and_y()
    lp = model.log_prob(torch.tensor(y, dtype=F64), torch.tensor(mean, dtype=F64), params)
    assert lp.shape == (S, K, N_OBS, T)
    assert lp.dtype == F64
    expected = ref(mean, _np(params)).logpdf(y)
    np.testing.assert_allclose(lp.numpy(), expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", list(MODELS))
def test_log_prob_broadcasts_observations_over_samples(name):
    # observations (S, 1, n_obs, T) against means (S, K, n_obs, T)
    factory, names, ref = MODELS[name]
    model, params = factory(), _params(names)
    mean, y = _mean_and_y(1)
    y1 = y[:, :1]
    lp = model.log_prob(torch.tensor(y1, dtype=F64), torch.tensor(mean, dtype=F64), params)
    assert lp.shape == (S, K, N_OBS, T)
    np.testing.assert_allclose(lp.numpy(), ref(mean, _np(params)).logpdf(y1), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", list(MODELS))
def test_log_prob_float32(name):
    factory, names, ref = MODELS[name]
    model = factory()
    params = {k: v.float() for k, v in _params(names).items()}
    mean, y = _mean_and_y(2)
    lp = model.log_prob(torch.tensor(y).float(), torch.tensor(mean).float(), params)
    assert lp.dtype == torch.float32
    np.testing.assert_allclose(lp.numpy(), ref(mean, _np(_params(names))).logpdf(y), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", list(MODELS))
def test_log_prob_sum_is_the_masked_sum_of_the_scipy_density(name):
    # observations (S, 1, n_obs, T) against means (S, K, n_obs, T); a third of the entries
    # unobserved, holding values that would change the sum if they were counted
    factory, names, ref = MODELS[name]
    model, params = factory(), _params(names)
    mean, y = _mean_and_y(3)
    y1 = y[:, :1].copy()
    mask = np.random.default_rng(3).random(y1.shape) > 1 / 3
    y1[~mask] = 1e3
    out = model.log_prob_sum(torch.tensor(y1, dtype=F64), torch.tensor(mean, dtype=F64), params,
                             torch.tensor(mask))
    assert out.shape == (S, K)
    expected = np.where(mask, ref(mean, _np(params)).logpdf(y1), 0.0).sum((-2, -1))
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)  # as log_prob (scale floors)


def test_gaussian_log_prob_sum_gradient_overflows_only_with_its_value():
    # float32, sigma 1e-3, five residuals of 1e14: the sum of squared standardised
    # residuals, 5e34, is finite, and so is its gradient in sigma, sum r^2 / sigma^3 =
    # 5e37; the intermediate sum r^2 / sigma^4 = 5e40 of a naive sum / sigma^2 is not
    sigma = torch.full((1, 1, 1, 1), 1e-3, requires_grad=True)
    mean = torch.full((1, 1, 1, 5), 1e14)
    out = Gaussian().log_prob_sum(torch.zeros(1, 1, 1, 5), mean, {"sigma": sigma},
                                  torch.ones(1, 1, 1, 5, dtype=torch.bool))
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(sigma.grad).all()
    np.testing.assert_allclose(sigma.grad.item(), 5 * 1e14 ** 2 / 1e-3 ** 3, rtol=1e-4)


class _WiderGaussian(Gaussian):
    """A user's subclass with its own density: log_prob_sum must use it."""

    def log_prob(self, y, mean, params):
        return super().log_prob(y, mean, {"sigma": 2.0 * params["sigma"]})


def test_log_prob_sum_of_a_subclass_uses_its_own_density():
    model, params = _WiderGaussian(), _params(("sigma",))
    mean, y = _mean_and_y(4)
    mask = torch.ones(mean.shape, dtype=torch.bool)
    out = model.log_prob_sum(torch.tensor(y), torch.tensor(mean), params, mask)
    expected = scipy.stats.norm(mean, 2.0 * _np(params)["sigma"]).logpdf(y).sum((-2, -1))
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-9)


def test_student_t_log_prob_other_df():
    for df in (1.0, 2.5, 30.0):
        model = StudentT(df=df)
        y = torch.linspace(-5, 5, 11, dtype=F64)
        lp = model.log_prob(y, torch.tensor(0.3, dtype=F64), {"sigma": torch.tensor(0.8, dtype=F64)})
        np.testing.assert_allclose(lp.numpy(), scipy.stats.t.logpdf(y.numpy(), df, 0.3, 0.8), rtol=1e-10)


def test_proportional_zero_mean_is_finite():
    model = Proportional()
    lp = model.log_prob(
        torch.zeros(3, dtype=F64), torch.zeros(3, dtype=F64), {"b": torch.tensor(0.1, dtype=F64)}
    )
    assert torch.isfinite(lp).all()


def test_combined_zero_mean_reduces_to_additive():
    params = {"a": torch.tensor(0.3, dtype=F64), "b": torch.tensor(0.2, dtype=F64)}
    y = torch.linspace(-1, 1, 9, dtype=F64)
    lp = Combined().log_prob(y, torch.zeros(9, dtype=F64), params)
    np.testing.assert_allclose(lp.numpy(), scipy.stats.norm.logpdf(y.numpy(), 0.0, 0.3), rtol=1e-12)


# ---------------------------------------------------------------------------
# variances
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_variance_matches_analytic(name):
    factory, names, ref = MODELS[name]
    model, params = factory(), _params(names)
    mean, _ = _mean_and_y(3)
    var = model.variance(torch.tensor(mean, dtype=F64), params)
    assert var.shape == (S, K, N_OBS, T)
    np.testing.assert_allclose(var.numpy(), ref(mean, _np(params)).var(), rtol=1e-6)


def test_variance_closed_forms():
    mean = torch.tensor([[[[2.0, -4.0]]]], dtype=F64)  # (1, 1, 1, 2)
    s = torch.tensor([[[[0.5]]]], dtype=F64)
    np.testing.assert_allclose(Gaussian().variance(mean, {"sigma": s}).numpy(), 0.25)
    np.testing.assert_allclose(Laplace().variance(mean, {"scale": s}).numpy(), 0.5)
    np.testing.assert_allclose(StudentT(df=6).variance(mean, {"sigma": s}).numpy(), 0.25 * 1.5)
    np.testing.assert_allclose(
        Proportional().variance(mean, {"b": s}).numpy().ravel(), [1.0, 4.0], rtol=1e-7
    )
    np.testing.assert_allclose(
        Combined().variance(mean, {"a": s, "b": s}).numpy().ravel(), [1.25, 4.25], rtol=1e-12
    )


@pytest.mark.parametrize("df", [0.5, 1.0, 2.0])
def test_student_t_variance_infinite_for_small_df(df):
    var = StudentT(df=df).variance(torch.ones(2, 3), {"sigma": torch.tensor(0.1)})
    assert var.shape == (2, 3)
    assert torch.isinf(var).all() and (var > 0).all()


# ---------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------

N_DRAWS = 20000
_CELL_MEANS = np.array([[1.0, -2.0], [0.5, 3.0], [-0.7, 1.5], [2.0, -0.4]])[None, :, :, None]


@pytest.mark.parametrize("name", list(MODELS))
def test_sample_matches_scipy(name):
    factory, names, ref = MODELS[name]
    model, params = factory(), _params(names)
    mean = torch.tensor(_CELL_MEANS, dtype=F64).expand(N_DRAWS, K, N_OBS, 1)
    gen = torch.Generator().manual_seed(2024)
    y = model.sample(mean, params, generator=gen)
    assert y.shape == (N_DRAWS, K, N_OBS, 1)
    assert y.dtype == F64
    y = y.numpy()[..., 0]
    p = _np(params)
    rtol_var = 0.1 if name == "student" else 0.06
    for k in range(K):
        for o in range(N_OBS):
            cell = {n: v[0, k, o, 0] for n, v in p.items()}
            dist = ref(_CELL_MEANS[0, k, o, 0], cell)
            draws = y[:, k, o]
            assert abs(draws.mean() - dist.mean()) < 5 * dist.std() / math.sqrt(N_DRAWS)
            assert draws.var() == pytest.approx(dist.var(), rel=rtol_var)
            assert scipy.stats.kstest(draws, dist.cdf).pvalue > 0.01


@pytest.mark.parametrize("name", list(MODELS))
def test_sample_reproducible_with_generator(name):
    factory, names, _ = MODELS[name]
    model, params = factory(), _params(names)
    mean = torch.tensor(_CELL_MEANS, dtype=F64).expand(10, K, N_OBS, 3)
    a = model.sample(mean, params, generator=torch.Generator().manual_seed(5))
    b = model.sample(mean, params, generator=torch.Generator().manual_seed(5))
    c = model.sample(mean, params, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", list(MODELS))
def test_sample_float32(name):
    factory, names, _ = MODELS[name]
    params = {k: v.float() for k, v in _params(names).items()}
    mean = torch.tensor(_CELL_MEANS).float().expand(4, K, N_OBS, 2)
    y = factory().sample(mean, params, generator=torch.Generator().manual_seed(0))
    assert y.dtype == torch.float32 and y.shape == mean.shape
    assert torch.isfinite(y).all()


# ---------------------------------------------------------------------------
# declarations, construction, equality
# ---------------------------------------------------------------------------


def test_declare_keys_and_defaults():
    assert Gaussian().declare() == {"sigma": LogNormal(math.log(0.1), 1.5)}
    assert Proportional().declare() == {"b": LogNormal(math.log(0.1), 1.0)}
    assert Combined().declare() == {
        "a": LogNormal(math.log(0.05), 1.5),
        "b": LogNormal(math.log(0.1), 1.0),
    }
    assert Laplace().declare() == {"scale": LogNormal(math.log(0.1), 1.5)}
    assert StudentT().declare() == {"sigma": LogNormal(math.log(0.1), 1.5)}
    for name, (factory, names, _) in MODELS.items():
        declared = factory().declare()
        assert tuple(declared) == names, name
        assert all(isinstance(p, Prior) for p in declared.values())


def test_declare_uses_custom_priors_and_returns_a_copy():
    pa, pb = LogNormal(0.0, 0.5), Normal(1.0, 2.0)
    assert Gaussian(sigma_prior=pa).declare() == {"sigma": pa}
    assert Proportional(b_prior=pb).declare() == {"b": pb}
    assert Combined(a_prior=pa, b_prior=pb).declare() == {"a": pa, "b": pb}
    assert Laplace(scale_prior=pb).declare() == {"scale": pb}
    assert StudentT(3.0, sigma_prior=pa).declare() == {"sigma": pa}
    model = Gaussian()
    model.declare()["sigma"] = pb
    assert model.declare()["sigma"] == LogNormal(math.log(0.1), 1.5)


def test_student_t_df_stored_as_float():
    model = StudentT(df=5)
    assert model.df == 5.0 and isinstance(model.df, float)
    assert StudentT().df == 4.0


@pytest.mark.parametrize("df", [0, -1.0, math.inf, math.nan])
def test_student_t_invalid_df_value_raises(df):
    with pytest.raises(ValueError, match="df"):
        StudentT(df=df)


@pytest.mark.parametrize("df", ["4", None, [4.0], True])
def test_student_t_non_numeric_df_raises_type_error(df):
    with pytest.raises(TypeError, match="df"):
        StudentT(df=df)


def test_student_t_accepts_numpy_integer_df():
    assert StudentT(df=np.int64(4)).df == 4.0


def test_equality_and_repr():
    assert Gaussian() == Gaussian()
    assert Gaussian() != Laplace()
    assert StudentT(df=4) == StudentT(df=4.0)
    assert StudentT(df=4) != StudentT(df=5)
    assert Combined() != Combined(a_prior=LogNormal(0.0, 1.0))
    assert repr(Gaussian(sigma_prior=LogNormal(0, 1))) == "Gaussian(sigma_prior=LogNormal(loc=0, scale=1))"
    r = repr(StudentT(df=3, sigma_prior=LogNormal(0, 1)))
    assert r.startswith("StudentT(") and "df=3.0" in r and "sigma_prior=LogNormal(loc=0, scale=1)" in r


def test_base_class_is_abstract():
    base = NoiseModel()
    assert base.declare() == {}
    x = torch.zeros(2)
    with pytest.raises(NotImplementedError):
        base.log_prob(x, x, {})
    with pytest.raises(NotImplementedError):
        base.variance(x, {})
    with pytest.raises(NotImplementedError):
        base.sample(x, {})


# ---------------------------------------------------------------------------
# noise parameters per series (level="individual")
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_log_prob_sum_with_parameters_per_series(name):
    # per-series noise parameters arrive as (S, K, n_obs, 1): each series and sample is
    # scored with its own values
    factory, names, ref = MODELS[name]
    model = factory()
    rng = np.random.default_rng(7)
    params = {n: torch.tensor(rng.uniform(0.05, 1.5, size=(S, K, N_OBS, 1)), dtype=F64) for n in names}
    mean, y = _mean_and_y(4)
    y1 = y[:, :1]
    mask = np.ones(y1.shape, dtype=bool)
    out = model.log_prob_sum(torch.tensor(y1, dtype=F64), torch.tensor(mean, dtype=F64), params,
                             torch.tensor(mask))
    expected = ref(mean, _np(params)).logpdf(y1).sum((-2, -1))
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("factory", [Gaussian, Proportional, Combined, Laplace, StudentT])
def test_level(factory):
    assert factory().level == "population"
    noise = factory(level="individual")
    assert noise.level == "individual"
    assert noise != factory() and noise == factory(level="individual")
    assert "level='individual'" in repr(noise) and "level" not in repr(factory())
    with pytest.raises(ValueError, match="level must be one of"):
        factory(level="group")


def test_noise_pickled_before_the_level_option_is_population_level():
    old = Gaussian()
    del old.__dict__["level"]  # what unpickling an object saved by an earlier version gives
    assert old.level == "population" and old == Gaussian() and Gaussian() == old


# ---------------------------------------------------------------------------
# noise scaled along the trajectory (ODEModel.observe_noise_scale)
# ---------------------------------------------------------------------------


def _scaled_ref(name, mean, params, scale):
    """scipy density with the noise model's scale multiplied by ``scale``."""
    p = _np(params)
    if name == "gaussian":
        return scipy.stats.norm(mean, p["sigma"] * scale)
    if name == "proportional":
        return scipy.stats.norm(mean, p["b"] * np.abs(mean) * scale)
    if name == "combined":
        return scipy.stats.norm(mean, np.sqrt(p["a"] ** 2 + (p["b"] * mean) ** 2) * scale)
    if name == "laplace":
        return scipy.stats.laplace(mean, p["scale"] * scale)
    return scipy.stats.t(DF, mean, p["sigma"] * scale)


@pytest.mark.parametrize("name", list(MODELS))
def test_scaled_log_prob_sum_variance_and_sample(name):
    factory, names, _ = MODELS[name]
    model = factory()
    params = _params(names)
    mean, y = _mean_and_y(5)
    rng = np.random.default_rng(3)
    scale = rng.uniform(0.2, 5.0, size=mean.shape)  # a factor per sample, observable and time
    mask = rng.random(mean.shape) < 0.8
    ref = _scaled_ref(name, mean, params, scale)
    tm, ty, ts = (torch.tensor(a, dtype=F64) for a in (mean, y, scale))
    out = model.scaled_log_prob_sum(ty, tm, params, torch.tensor(mask), ts)
    np.testing.assert_allclose(out.numpy(), np.where(mask, ref.logpdf(y), 0.0).sum((-2, -1)), rtol=1e-6)
    np.testing.assert_allclose(model.scaled_variance(tm, params, ts).numpy(), ref.var(), rtol=1e-6)
    # without a scale: the unscaled methods
    torch.testing.assert_close(model.scaled_log_prob_sum(ty, tm, params, torch.tensor(mask)),
                               model.log_prob_sum(ty, tm, params, torch.tensor(mask)))
    torch.testing.assert_close(model.scaled_variance(tm, params), model.variance(tm, params))
    # draws: deviations from the mean scaled element by element
    gen = torch.Generator().manual_seed(0)
    big = tm[:1, :1].expand(4000, 1, N_OBS, T)  # one sample's means, 4,000 times
    s = ts[:1, :1].expand_as(big)
    draws = model.scaled_sample(big, {k: v[:, :1] for k, v in params.items()}, s, generator=gen)
    sd = (draws - big).std(0)
    want = model.scaled_variance(big[:1], {k: v[:, :1] for k, v in params.items()}, s[:1])[0].sqrt()
    np.testing.assert_allclose(sd.numpy(), want.numpy(), rtol=0.08)
