"""Reparameterised draws and log densities of diagonal and full-covariance Gaussians."""

import numpy as np
import pytest
import torch
from scipy import stats

from skhds.distributions import (gaussian_kl, gaussian_log_prob, gaussian_log_prob_of_draw, gaussian_rsample,
                                 normal_log_prob)


def _tril(seed, S=3, n=3):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn((S, n, n), generator=gen, dtype=torch.float64)
    L = torch.tril(a, -1) + torch.diag_embed(torch.rand((S, n), generator=gen, dtype=torch.float64) + 0.2)
    loc = torch.randn((S, n), generator=gen, dtype=torch.float64)
    return loc, L


def test_full_log_prob_matches_scipy():
    loc, L = _tril(0)
    z = torch.randn((3, 7, 3), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lp = gaussian_log_prob(z, loc, L).numpy()
    for s in range(3):
        cov = (L[s] @ L[s].T).numpy()
        expected = stats.multivariate_normal(loc[s].numpy(), cov).logpdf(z[s].numpy())
        np.testing.assert_allclose(lp[s], expected, rtol=1e-10)


def test_diagonal_log_prob_matches_elementwise_normal():
    loc = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    sd = torch.tensor([[0.5, 2.0]], dtype=torch.float64)
    z = torch.randn((1, 4, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = normal_log_prob(z, loc.unsqueeze(1), sd.unsqueeze(1)).sum(-1)
    torch.testing.assert_close(gaussian_log_prob(z, loc, sd), expected)
    # a diagonal Cholesky factor gives the same density
    torch.testing.assert_close(gaussian_log_prob(z, loc, torch.diag_embed(sd)), expected)


def test_rsample_has_the_requested_moments():
    loc, L = _tril(2, S=2)
    eps = torch.randn((2, 200_000, 3), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    z = gaussian_rsample(loc, L, eps)
    np.testing.assert_allclose(z.mean(1).numpy(), loc.numpy(), atol=0.02)
    for s in range(2):
        emp = np.cov(z[s].numpy().T)
        np.testing.assert_allclose(emp, (L[s] @ L[s].T).numpy(), atol=0.03)


@pytest.mark.parametrize("full", [True, False])
def test_per_draw_means_broadcast(full):
    # one mean per series and draw (the proposal's mean follows the global draw)
    loc, L = _tril(4, S=2)
    scale = L if full else torch.diagonal(L, dim1=-2, dim2=-1)
    shift = torch.randn((2, 5, 3), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    eps = torch.randn((2, 5, 3), generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    z = gaussian_rsample(loc.unsqueeze(1) + shift, scale, eps)
    torch.testing.assert_close(z, gaussian_rsample(loc, scale, eps) + shift)
    torch.testing.assert_close(gaussian_log_prob(z, loc.unsqueeze(1) + shift, scale),
                               gaussian_log_prob(z - shift, loc, scale))


def test_log_prob_is_differentiable_through_the_factor():
    loc, L = _tril(7, S=1, n=2)
    L = L.clone().requires_grad_(True)
    z = torch.zeros((1, 3, 2), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda m: gaussian_log_prob(z, loc, torch.tril(m)), (L,))


def test_gaussian_kl_matches_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    S, n = 5, 3
    locs = [torch.randn(S, n, generator=gen, dtype=torch.float64) for _ in range(2)]
    trils = []
    for _ in range(2):
        a = torch.randn(S, n, n, generator=gen, dtype=torch.float64)
        trils.append(torch.linalg.cholesky(a @ a.transpose(-1, -2) + 0.5 * torch.eye(n)))
    ours = gaussian_kl(locs[0], trils[0], locs[1], trils[1])
    p = torch.distributions.MultivariateNormal(locs[0], scale_tril=trils[0])
    q = torch.distributions.MultivariateNormal(locs[1], scale_tril=trils[1])
    torch.testing.assert_close(ours, torch.distributions.kl_divergence(p, q))
    assert torch.allclose(gaussian_kl(locs[0], trils[0], locs[0], trils[0]),
                          torch.zeros(S, dtype=torch.float64), atol=1e-12)


def _scales(kind, loc, L):
    if kind == "diag":
        return torch.diagonal(L, dim1=-2, dim2=-1).clone()
    if kind == "full":
        return L.clone()
    return L.unsqueeze(1).expand(-1, 7, -1, -1).clone()  # one factor per draw


@pytest.mark.parametrize("kind", ["diag", "full", "per_draw"])
@pytest.mark.parametrize("path_only", [False, True])
def test_log_prob_of_draw_equals_evaluation_at_the_draw(kind, path_only):
    # value and gradients: the total derivative of log q(z(loc, L); loc, L), or (path_only,
    # the DReG form) the derivative through z at detached parameters
    loc0, L0 = _tril(3)
    eps = torch.randn((3, 7, 3), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    grads = []
    for fn in ("of_draw", "at_draw"):
        loc = loc0.clone().requires_grad_()
        scale = _scales(kind, loc0, L0).requires_grad_()
        z = gaussian_rsample(loc, scale, eps)
        if fn == "of_draw":
            out = gaussian_log_prob_of_draw(eps, scale, z if path_only else None)
        elif path_only:
            out = gaussian_log_prob(z, loc.detach(), scale.detach())
        else:
            out = gaussian_log_prob(z, loc, scale)
        w = torch.linspace(0.5, 1.5, out.numel(), dtype=torch.float64).reshape(out.shape)
        (out * w).sum().backward()
        loc_grad = torch.zeros_like(loc) if loc.grad is None else loc.grad  # None: no dependence
        # a factor's upper triangle is zero by construction (the evaluation at z also
        # differentiates those zeros through the draw; the encoders never see that)
        scale_grad = scale.grad if kind == "diag" else scale.grad.tril()
        grads.append((out.detach(), loc_grad, scale_grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    if not path_only:  # the total derivative for loc is zero
        assert grads[0][1].abs().max() < 1e-10


def test_log_prob_of_draw_is_exact_in_float32_where_evaluation_is_not():
    # an ill-conditioned factor (sd 1e-3 and 1e-6 with a strong correlation), means of
    # order 10: evaluated at the float32 draw, the density is off by up to millions of
    # nats, always on the high-weight side somewhere; from eps it matches float64
    L = torch.tensor([[1e-3, 0.0], [5.0, 1e-6]], dtype=torch.float64).expand(50, 2, 2)
    loc = 10 * torch.rand((50, 2), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    eps = torch.randn((50, 200, 2), generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    truth = gaussian_log_prob(gaussian_rsample(loc, L, eps), loc, L)  # float64: exact enough
    f = torch.float32
    z32 = gaussian_rsample(loc.to(f), L.to(f), eps.to(f))
    evaluated = gaussian_log_prob(z32, loc.to(f), L.to(f)).double()
    from_eps = gaussian_log_prob_of_draw(eps.to(f), L.to(f)).double()
    torch.testing.assert_close(from_eps, truth, rtol=1e-6, atol=1e-4)
    assert (truth - evaluated).max() > 1e4  # log q far too low: the weight far too high
