"""Student-t proposals, the Laplace approximation and adaptive importance sampling."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from skhds.inference import (
    MultivariateStudentT,
    adaptive_importance_sampling,
    laplace_approximation,
    laplace_per_series,
)

MEAN = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
A = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.5, 0.0], [-0.3, 0.2, 0.3]], dtype=torch.float64)
COV = A @ A.T


def gaussian_target(x):
    return torch.distributions.MultivariateNormal(MEAN, COV).log_prob(x.double())


def test_student_t_log_prob_matches_scipy():
    dist = MultivariateStudentT(MEAN, A, df=5)
    x = torch.randn((20, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    expected = stats.multivariate_t(MEAN.numpy(), COV.numpy(), df=5).logpdf(x.numpy())
    np.testing.assert_allclose(dist.log_prob(x).numpy(), expected, rtol=1e-10)


def test_student_t_draws_have_the_stated_moments_and_are_seeded():
    dist = MultivariateStudentT.from_moments(MEAN, COV, df=7)
    x = dist.sample(200_000, torch.Generator().manual_seed(1))
    np.testing.assert_allclose(x.mean(0).numpy(), MEAN.numpy(), atol=0.02)
    np.testing.assert_allclose(np.cov(x.numpy().T), COV.numpy(), atol=0.04)
    a = dist.sample(5, torch.Generator().manual_seed(4))
    b = dist.sample(5, torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, dist.sample(5, torch.Generator().manual_seed(5)))


@pytest.mark.parametrize("df", [2, 4.5])
def test_student_t_rejects_bad_df(df):
    with pytest.raises(ValueError, match="df"):
        MultivariateStudentT(MEAN, A, df=df)


def test_laplace_is_exact_for_a_gaussian():
    mode, cov = laplace_approximation(gaussian_target, torch.zeros(3, dtype=torch.float64),
                                      torch.full((3,), 0.01, dtype=torch.float64), max_scale=10.0)
    torch.testing.assert_close(mode, MEAN, atol=1e-5, rtol=0)
    torch.testing.assert_close(cov, COV, atol=1e-5, rtol=0)


def test_laplace_caps_flat_directions():
    def flat(x):  # no information about the second coordinate
        return -0.5 * (x[:, 0].double() - 1.0) ** 2 + 0.0 * x[:, 1]

    _, cov = laplace_approximation(flat, torch.zeros(2, dtype=torch.float64),
                                   torch.full((2,), 0.1, dtype=torch.float64), max_scale=3.0)
    np.testing.assert_allclose(np.diag(cov.numpy()), [1.0, 9.0], rtol=1e-5)


@pytest.mark.parametrize("outside", [-math.inf, math.nan])
def test_laplace_survives_a_target_that_is_not_finite_where_it_increases(outside):
    """The target rises towards the edge of its support (``x0 < 2``) and is
    ``-inf`` or NaN beyond it: L-BFGS's line search steps out of the support.
    The result must be a finite point inside it, at least as good as nearby
    points (with NaN this used to fail inside torch's line search)."""
    def target(x):
        x = x.float()
        v = -0.5 * ((x - 3.0) ** 2).sum(-1)
        return torch.where(x[:, 0] < 2.0, v, torch.full_like(v, outside))

    mode, cov = laplace_approximation(target, torch.zeros(2), torch.full((2,), 0.01), max_scale=3.0)
    assert torch.isfinite(mode).all() and float(mode[0]) < 2.0
    # the supremum is -0.5 (at x = (2, 3)); the start has -9 (measured: -1.0)
    assert float(target(mode.unsqueeze(0))[0]) > -2.0
    assert torch.isfinite(cov).all()


def test_laplace_covariance_is_valid_when_a_difference_step_leaves_the_support():
    """``sqrt(2 - x0)`` and its gradient are NaN beyond ``x0 = 2``; the mode is
    inside (``x0`` about 1.2) and a finite-difference step of 1 crosses the edge.
    The covariance must stay a valid one (that direction counted as flat,
    capped at ``max_scale``)."""
    def target(x):
        x = x.double()
        return -0.5 * ((x - 3.0) ** 2).sum(-1) + torch.sqrt(2.0 - x[:, 0])

    mode, cov = laplace_approximation(target, torch.zeros(2, dtype=torch.float64),
                                      torch.tensor([1.0, 0.01], dtype=torch.float64), max_scale=3.0)
    x0 = float(mode[0])
    assert 0.0 < x0 < 2.0 and abs(3.0 - x0 - 0.5 / math.sqrt(2.0 - x0)) < 1e-4  # stationary
    assert abs(float(mode[1]) - 3.0) < 1e-4
    assert torch.isfinite(cov).all()
    torch.linalg.cholesky(cov)  # positive definite
    np.testing.assert_allclose(np.diag(cov.numpy()), [9.0, 1.0], rtol=1e-4)


def skewed_target(x):
    """log-normal in the first coordinate (skewed), Gaussian in the second."""
    x = x.double()
    return stats_lognormal_logpdf(x[:, 0]) - 0.5 * (x[:, 1] / 0.5) ** 2


def stats_lognormal_logpdf(v, s=0.6):
    out = -torch.log(v.clamp(min=1e-300)) - 0.5 * (torch.log(v.clamp(min=1e-300)) / s) ** 2
    return torch.where(v > 0, out, torch.full_like(out, -math.inf))


def test_adaptive_importance_sampling_recovers_a_skewed_target():
    mode, cov = laplace_approximation(skewed_target, torch.tensor([1.0, 0.3], dtype=torch.float64),
                                      torch.full((2,), 0.01, dtype=torch.float64), max_scale=5.0)
    proposal = MultivariateStudentT.from_moments(mode, 1.44 * cov)
    rounds = []
    x, log_w, khat = adaptive_importance_sampling(skewed_target, proposal, 4000,
                                                  torch.Generator().manual_seed(2),
                                                  callback=lambda r, e: rounds.append(e))
    w = torch.softmax(log_w, 0)
    mean = (w[:, None] * x).sum(0)
    sd = torch.sqrt((w[:, None] * (x - mean) ** 2).sum(0))
    s = 0.6
    true_mean = math.exp(s**2 / 2)
    true_sd = math.sqrt((math.exp(s**2) - 1) * math.exp(s**2))
    # the Laplace approximation alone is centred at the mode exp(-s^2) = 0.70, not 1.20
    assert abs(float(mode[0]) - math.exp(-s**2)) < 1e-3
    assert abs(float(mean[0]) - true_mean) < 0.03
    assert abs(float(sd[0]) / true_sd - 1) < 0.1
    assert abs(float(mean[1])) < 0.03 and abs(float(sd[1]) / 0.5 - 1) < 0.1
    assert khat < 0.7 and rounds[-1] > 0.25 * 4000


def test_adaptive_rounds_repair_a_poor_first_proposal():
    proposal = MultivariateStudentT(torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64),
                                    0.3 * torch.eye(3, dtype=torch.float64))
    ess = []
    x, log_w, khat = adaptive_importance_sampling(gaussian_target, proposal, 3000,
                                                  torch.Generator().manual_seed(3), n_rounds=6,
                                                  callback=lambda r, e: ess.append(e))
    assert ess[0] < 0.05 * 3000 and ess[-1] > 0.25 * 3000
    w = torch.softmax(log_w, 0)
    np.testing.assert_allclose((w[:, None] * x).sum(0).numpy(), MEAN.numpy(), atol=0.05)


def test_student_t_batches_match_their_members():
    locs = torch.stack([MEAN, -MEAN])
    trils = torch.stack([A, 2.0 * A])
    batched = MultivariateStudentT(locs, trils, df=5)
    x = batched.sample(7, torch.Generator().manual_seed(2))
    assert x.shape == (2, 7, 3)
    lp = batched.log_prob(x)
    for b in range(2):
        single = MultivariateStudentT(locs[b], trils[b], df=5)
        torch.testing.assert_close(lp[b], single.log_prob(x[b]), rtol=1e-12, atol=1e-12)
    # an unbatched distribution draws exactly what it drew before batches existed
    single = MultivariateStudentT(MEAN, A, df=5)
    gen = torch.Generator().manual_seed(3)
    eps = torch.randn((4, 3), generator=gen, dtype=torch.float64)
    chi2 = (torch.randn((4, 5), generator=gen, dtype=torch.float64) ** 2).sum(-1)
    expected = MEAN + (eps @ A.T) * torch.sqrt(5 / chi2).unsqueeze(-1)
    torch.testing.assert_close(single.sample(4, torch.Generator().manual_seed(3)), expected)


def test_laplace_per_series_is_exact_for_gaussians_of_their_own():
    means = torch.stack([MEAN, 3.0 * MEAN, torch.zeros(3, dtype=torch.float64)])
    covs = torch.stack([COV, 0.25 * COV, 4.0 * COV])

    def target(x):  # (S, M, 3) -> (S, M), each series its own Gaussian
        return torch.distributions.MultivariateNormal(means.unsqueeze(1), covs.unsqueeze(1)).log_prob(x)

    start = torch.full((3, 3), 5.0, dtype=torch.float64)
    mode, cov, value = laplace_per_series(target, start, torch.full((3,), 1e-4, dtype=torch.float64),
                                          max_scale=100.0, tol=1e-12)
    torch.testing.assert_close(mode, means, atol=1e-6, rtol=0)
    torch.testing.assert_close(cov, covs, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(value, target(means.unsqueeze(1))[:, 0])


def test_laplace_per_series_climbs_out_of_a_minimum_and_avoids_non_finite_regions():
    def double_well(x):  # modes at +-1 in the first coordinate, -inf beyond 1.5
        f = -((x[..., 0] ** 2 - 1.0) ** 2) - 0.5 * x[..., 1] ** 2
        return torch.where(x[..., 0].abs() > 1.5, torch.full_like(f, -math.inf), f)

    start = torch.tensor([[1e-3, 0.3], [-1e-3, -0.3], [1.2, 0.0]], dtype=torch.float64)
    mode, cov, value = laplace_per_series(double_well, start, torch.full((2,), 1e-5, dtype=torch.float64),
                                          max_scale=10.0, tol=1e-12)
    torch.testing.assert_close(mode, torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]],
                                                  dtype=torch.float64), atol=1e-4, rtol=0)
    # curvature 8 at the modes in the first coordinate, 1 in the second
    torch.testing.assert_close(torch.diagonal(cov, dim1=-2, dim2=-1),
                               torch.tensor([[0.125, 1.0]] * 3, dtype=torch.float64), atol=1e-4, rtol=0)
    assert torch.isfinite(value).all()
