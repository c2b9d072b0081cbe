"""Tests for ``skhds.distributions``: priors (transformed normals) and bijectors."""

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats
import torch

from skhds.distributions import (
    Exp,
    Identity,
    LogitNormal,
    LogNormal,
    Normal,
    Prior,
    Sigmoid,
)

F64 = torch.float64
N_DRAWS = 20000


def _logitnormal_logpdf(x, loc, scale, low, high):
    """Log density of the logit-normal on (low, high) by change of variables."""
    u = (x - low) / (high - low)
    z = np.log(u) - np.log1p(-u)
    return scipy.stats.norm.logpdf(z, loc, scale) - np.log(u * (1 - u) * (high - low))


def _logitnormal_cdf(loc, scale, low, high):
    def cdf(x):
        u = (np.asarray(x) - low) / (high - low)
        return scipy.stats.norm.cdf(scipy.special.logit(u), loc, scale)

    return cdf


# (prior, support points, reference log density, reference cdf, reference median)
CASES = {
    "normal": (
        Normal(0.7, 2.5),
        np.linspace(-6, 8, 29),
        lambda x: scipy.stats.norm.logpdf(x, 0.7, 2.5),
        scipy.stats.norm(0.7, 2.5).cdf,
        0.7,
    ),
    "lognormal": (
        LogNormal(-0.4, 0.6),
        np.geomspace(0.01, 20, 29),
        lambda x: scipy.stats.lognorm.logpdf(x, s=0.6, scale=math.exp(-0.4)),
        scipy.stats.lognorm(s=0.6, scale=math.exp(-0.4)).cdf,
        math.exp(-0.4),
    ),
    "logitnormal": (
        LogitNormal(0.5, 1.2, low=-2.0, high=3.0),
        np.linspace(-1.99, 2.99, 29),
        lambda x: _logitnormal_logpdf(x, 0.5, 1.2, -2.0, 3.0),
        _logitnormal_cdf(0.5, 1.2, -2.0, 3.0),
        -2.0 + 5.0 * scipy.special.expit(0.5),
    ),
}


# ---------------------------------------------------------------------------
# log densities
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_log_prob_matches_scipy(case):
    prior, x, ref, _, _ = CASES[case]
    lp = prior.log_prob(torch.tensor(x, dtype=torch.float32))
    assert lp.shape == x.shape
    np.testing.assert_allclose(lp.numpy(), ref(x), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("case", list(CASES))
def test_log_prob_accepts_python_and_numpy(case):
    prior, x, ref, _, _ = CASES[case]
    np.testing.assert_allclose(prior.log_prob(x).numpy(), ref(x), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(float(prior.log_prob(float(x[3]))), ref(x[3]), rtol=1e-5, atol=1e-4)


def test_logitnormal_density_integrates_to_one():
    prior = LogitNormal(-0.3, 0.9, low=1.0, high=4.0)
    val, _ = scipy.integrate.quad(lambda x: math.exp(float(prior.log_prob(x))), 1.0, 4.0)
    assert abs(val - 1.0) < 1e-4


@pytest.mark.parametrize("case", list(CASES))
def test_log_prob_unconstrained_is_normal(case):
    prior = CASES[case][0]
    z = torch.linspace(-5, 5, 21, dtype=F64)
    lp = prior.log_prob_unconstrained(z)
    assert lp.dtype == F64
    np.testing.assert_allclose(
        lp.numpy(), scipy.stats.norm.logpdf(z.numpy(), prior.loc, prior.scale), rtol=1e-12
    )


def test_log_prob_keeps_float64():
    x = torch.tensor([0.5, 1.5], dtype=F64)
    assert LogNormal(0.0, 1.0).log_prob(x).dtype == F64


def test_lognormal_log_prob_outside_support_is_minus_inf():
    lp = LogNormal(0.0, 1.0).log_prob(torch.tensor([0.0, -1.0]))
    assert torch.equal(lp, torch.full((2,), -math.inf))


# ---------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_sample_ks_against_scipy(case):
    prior, _, _, cdf, median = CASES[case]
    gen = torch.Generator().manual_seed(1234)
    draws = prior.sample((N_DRAWS,), generator=gen, dtype=F64)
    assert draws.shape == (N_DRAWS,)
    assert draws.dtype == F64
    x = draws.numpy()
    assert scipy.stats.kstest(x, cdf).pvalue > 0.01
    # a median a quarter of an unconstrained sd away is clearly rejected (test has power)
    shifted = prior.bijector.forward(prior.bijector.inverse(draws) + 0.25 * prior.scale).numpy()
    assert scipy.stats.kstest(shifted, cdf).pvalue < 1e-6
    assert abs(np.median(x) - median) < 0.05 * max(1.0, abs(median))


def test_sample_moments_normal_and_lognormal():
    gen = torch.Generator().manual_seed(7)
    x = Normal(1.5, 0.5).sample((N_DRAWS,), generator=gen, dtype=F64).numpy()
    assert abs(x.mean() - 1.5) < 5 * 0.5 / math.sqrt(N_DRAWS)
    assert abs(x.std() - 0.5) < 0.02
    y = LogNormal(0.2, 0.3).sample((N_DRAWS,), generator=gen, dtype=F64).numpy()
    dist = scipy.stats.lognorm(s=0.3, scale=math.exp(0.2))
    assert abs(y.mean() - dist.mean()) < 5 * dist.std() / math.sqrt(N_DRAWS)
    np.testing.assert_allclose(np.log(y).std(), 0.3, rtol=0.03)


def test_sample_support_shape_dtype_and_reproducibility():
    prior = LogitNormal(0.0, 3.0, low=2.0, high=2.5)
    a = prior.sample((50, 4), generator=torch.Generator().manual_seed(3))
    b = prior.sample((50, 4), generator=torch.Generator().manual_seed(3))
    c = prior.sample((50, 4), generator=torch.Generator().manual_seed(4))
    assert a.shape == (50, 4) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert ((a > 2.0) & (a < 2.5)).all()
    assert (LogNormal(0.0, 2.0).sample((1000,), generator=torch.Generator().manual_seed(0)) > 0).all()
    assert Normal().sample().shape == ()


# ---------------------------------------------------------------------------
# median, support
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_median(case):
    prior, _, _, cdf, median = CASES[case]
    m = prior.median()
    assert isinstance(m, float)
    assert m == pytest.approx(median, rel=1e-12)
    assert cdf(m) == pytest.approx(0.5, abs=1e-12)


def test_support_names():
    assert Normal().support == "real"
    assert LogNormal().support == "positive"
    assert LogitNormal().support == "bounded"
    assert isinstance(LogitNormal(), Prior)


def test_defaults():
    assert (Normal().loc, Normal().scale) == (0.0, 1.0)
    p = LogitNormal()
    assert (p.bijector.low, p.bijector.high) == (0.0, 1.0)
    assert p.median() == pytest.approx(0.5)


# ---------------------------------------------------------------------------
# bijectors
# ---------------------------------------------------------------------------

BIJECTORS = [Identity(), Exp(), Sigmoid(), Sigmoid(-3.0, 7.0)]


@pytest.mark.parametrize("bij", BIJECTORS, ids=repr)
def test_bijector_round_trip(bij):
    z = torch.linspace(-6, 6, 41, dtype=F64)
    torch.testing.assert_close(bij.inverse(bij.forward(z)), z, rtol=1e-10, atol=1e-10)
    x = bij.forward(z)
    torch.testing.assert_close(bij.forward(bij.inverse(x)), x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bij", BIJECTORS, ids=repr)
def test_log_abs_det_jacobian_matches_autograd(bij):
    z = torch.linspace(-6, 6, 41, dtype=F64, requires_grad=True)
    (dxdz,) = torch.autograd.grad(bij.forward(z).sum(), z)
    ladj = bij.log_abs_det_jacobian(z.detach())
    assert ladj.shape == z.shape
    torch.testing.assert_close(ladj, torch.log(dxdz.abs()), rtol=1e-10, atol=1e-10)


def test_sigmoid_log_abs_det_jacobian_stable_in_tails():
    bij = Sigmoid(1.0, 3.0)
    z = torch.tensor([-200.0, -80.0, 80.0, 200.0], dtype=F64)
    ladj = bij.log_abs_det_jacobian(z)
    assert torch.isfinite(ladj).all()
    # log(h - l) + log sigmoid(z) + log sigmoid(-z) = log 2 - |z| - 2 log1p(exp(-|z|))
    expected = math.log(2.0) - z.abs() - 2 * torch.log1p(torch.exp(-z.abs()))
    torch.testing.assert_close(ladj, expected, rtol=1e-12, atol=1e-12)


def test_sigmoid_forward_maps_into_bounds():
    bij = Sigmoid(-3.0, 7.0)
    x = bij.forward(torch.linspace(-30, 30, 101, dtype=F64))
    assert ((x > -3.0) & (x < 7.0)).all()
    assert bij.forward(torch.tensor(0.0, dtype=F64)).item() == pytest.approx(2.0)


def test_bijector_equality_and_repr():
    assert Identity() == Identity()
    assert Exp() == Exp()
    assert Identity() != Exp()
    assert Exp() != Identity()
    assert Sigmoid(0, 2) == Sigmoid(0.0, 2.0)
    assert Sigmoid(0, 2) != Sigmoid(0, 3)
    assert Sigmoid() != Identity()
    assert repr(Identity()) == "Identity()"
    assert repr(Exp()) == "Exp()"
    assert repr(Sigmoid(-1, 2.5)) == "Sigmoid(low=-1, high=2.5)"


@pytest.mark.parametrize(
    "low, high", [(1.0, 1.0), (2.0, 1.0), (-math.inf, 1.0), (0.0, math.inf), (math.nan, 1.0)]
)
def test_sigmoid_invalid_bounds(low, high):
    with pytest.raises(ValueError, match="low"):
        Sigmoid(low, high)


# ---------------------------------------------------------------------------
# argument validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [Normal, LogNormal, LogitNormal])
@pytest.mark.parametrize("loc", [math.nan, math.inf, -math.inf])
def test_non_finite_loc_raises(cls, loc):
    with pytest.raises(ValueError, match="loc"):
        cls(loc=loc)


@pytest.mark.parametrize("cls", [Normal, LogNormal, LogitNormal])
@pytest.mark.parametrize("scale", [0.0, -1.0, math.inf, math.nan])
def test_invalid_scale_raises(cls, scale):
    with pytest.raises(ValueError, match="scale"):
        cls(scale=scale)


@pytest.mark.parametrize("cls", [Normal, LogNormal, LogitNormal])
@pytest.mark.parametrize("name", ["loc", "scale"])
@pytest.mark.parametrize("value", [True, False, "1.0", None, [1.0], torch.tensor(1.0)])
def test_non_real_argument_raises_type_error(cls, name, value):
    with pytest.raises(TypeError, match=name):
        cls(**{name: value})


@pytest.mark.parametrize("low, high", [(1.0, 0.0), (0.5, 0.5), (-math.inf, 0.0)])
def test_logitnormal_invalid_bounds(low, high):
    with pytest.raises(ValueError, match="low"):
        LogitNormal(low=low, high=high)


def test_numpy_scalars_accepted_and_converted():
    p = LogNormal(np.float32(0.5), np.int64(2))
    assert type(p.loc) is float and type(p.scale) is float
    assert (p.loc, p.scale) == (0.5, 2.0)


# ---------------------------------------------------------------------------
# equality and repr
# ---------------------------------------------------------------------------


def test_prior_equality():
    assert Normal(0, 1) == Normal(0.0, 1.0)
    assert Normal(0, 1) != Normal(0, 2)
    assert Normal(0, 1) != Normal(1, 1)
    assert Normal(0, 1) != LogNormal(0, 1)
    assert LogitNormal(0, 1, 0, 2) == LogitNormal(0, 1, 0, 2)
    assert LogitNormal(0, 1, 0, 2) != LogitNormal(0, 1, 0, 3)
    assert Prior(0, 1, Exp()) != LogNormal(0, 1)  # different class
    assert Normal() != "Normal(loc=0, scale=1)"


def test_prior_repr():
    assert repr(Normal(0.5, 2)) == "Normal(loc=0.5, scale=2)"
    assert repr(LogNormal(-1, 0.25)) == "LogNormal(loc=-1, scale=0.25)"
    assert repr(LogitNormal(0, 1, low=-2, high=5)) == "LogitNormal(loc=0, scale=1, low=-2, high=5)"


@pytest.mark.parametrize(
    "prior", [Normal(0.5, 2), LogNormal(-1, 0.25), LogitNormal(0.1, 1.5, low=-2, high=5)], ids=repr
)
def test_repr_round_trip(prior):
    ns = {"Normal": Normal, "LogNormal": LogNormal, "LogitNormal": LogitNormal}
    assert eval(repr(prior), ns) == prior


@pytest.mark.parametrize("low, high", [("0", "1"), (False, True)])
def test_logitnormal_non_real_bounds_raise_type_error(low, high):
    with pytest.raises(TypeError, match="low"):
        LogitNormal(low=low, high=high)
