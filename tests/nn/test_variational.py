"""The variational family of the global latents."""

import math

import numpy as np
import torch
from scipy import stats

from skhds.nn import MeanFieldGaussian


def test_rsample_with_log_prob_matches_rsample_and_the_density():
    q = MeanFieldGaussian(torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64),
                          torch.tensor([0.1, 1.5, 0.7], dtype=torch.float64))
    g1 = q.rsample(6, torch.Generator().manual_seed(3))
    g2, log_q = q.rsample_with_log_prob(6, torch.Generator().manual_seed(3))
    # the same draws for the same generator state, and their density
    assert torch.equal(g1, g2) and log_q.shape == (6,)
    want = stats.norm(q.loc.detach().numpy(), q.scale.detach().numpy()).logpdf(g2.detach().numpy()).sum(-1)
    np.testing.assert_allclose(log_q.detach().numpy(), want, rtol=1e-12)
    torch.testing.assert_close(log_q, q.log_prob(g2))
    # gradients: the total derivative of log q(g(loc, scale)) is -1 per draw for each log
    # scale, zero for loc
    d_loc, d_log_scale = torch.autograd.grad(log_q.sum(), [q.loc, q.log_scale], allow_unused=True,
                                             materialize_grads=True)
    assert torch.equal(d_loc, torch.zeros(3, dtype=torch.float64))
    np.testing.assert_allclose(d_log_scale.numpy(), -6.0)


def test_from_noise_is_the_draw_of_that_noise_and_follows_the_parameters():
    q = MeanFieldGaussian(torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64),
                          torch.tensor([0.1, 1.5, 0.7], dtype=torch.float64))
    g = q.rsample(4, torch.Generator().manual_seed(5))
    eps = torch.randn((4, 3), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert torch.equal(q.from_noise(eps), g)
    # the same noise after an update of the parameters: the draw moves with them
    with torch.no_grad():
        q.loc += 1.0
        q.log_scale += math.log(2.0)
    moved = q.from_noise(eps)
    new_loc = q.loc.detach()
    old_loc = new_loc - 1.0
    np.testing.assert_allclose((moved - new_loc).detach().numpy(),
                               (2.0 * (g - old_loc)).detach().numpy(), rtol=1e-12)
    d_loc, d_log_scale = torch.autograd.grad(moved.sum(), [q.loc, q.log_scale])
    np.testing.assert_allclose(d_loc.numpy(), 4.0)
    np.testing.assert_allclose(d_log_scale.numpy(), (q.scale * eps).sum(0).detach().numpy(), rtol=1e-12)


def test_rsample_with_log_prob_is_exact_in_float32_for_narrow_widths():
    # a width far below the location's rounding step: the float32 draws round to loc, so
    # evaluated at them (g - loc) / scale is 0 instead of eps, and log q is too high by
    # |eps|^2 / 2 (the evaluation that the reference-kind bound used; in one dimension the
    # error stays a few nats, unlike that of an ill-conditioned full factor)
    loc = torch.tensor([1000.0, -50.0], dtype=torch.float32)
    scale = torch.tensor([1e-6, 1e-7], dtype=torch.float32)
    q = MeanFieldGaussian(loc, scale)
    with torch.no_grad():
        g, log_q = q.rsample_with_log_prob(200, torch.Generator().manual_seed(0))
    eps = torch.randn((200, 2), generator=torch.Generator().manual_seed(0)).double()  # the same draws
    exact = (-0.5 * eps.square() - 0.5 * math.log(2 * math.pi)).sum(-1) - torch.log(scale.double()).sum()
    np.testing.assert_allclose(log_q.double().numpy(), exact.numpy(), rtol=1e-6)
    with torch.no_grad():
        at_draw = q.log_prob(g).double()
    assert torch.equal(g, loc.expand(200, 2))
    np.testing.assert_allclose((at_draw - exact).numpy(), 0.5 * eps.square().sum(-1).numpy(),
                               atol=1e-5)
