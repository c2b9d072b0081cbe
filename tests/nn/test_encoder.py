"""The amortised encoder: output families (full/diagonal), bounds and the global coupling."""

import numpy as np
import pytest
import torch

from skhds.nn import SeriesEncoder

S, N_OBS, T, N_OUT, N_GLOBAL = 5, 2, 12, 3, 4


def _inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randn((S, N_OBS, T), generator=gen)
    mask = torch.ones_like(y)
    mask[1, :, 6:] = 0.0  # a shorter series
    times = torch.linspace(0, 1, T)[None]
    return y * mask, mask, times, torch.zeros((S, 0)), torch.zeros((S, 0), dtype=torch.long)


def _encoder(**kw):
    torch.manual_seed(0)
    return SeriesEncoder(N_OBS, 0, [], N_OUT, torch.zeros(N_OUT), torch.tensor([0.5, 1.0, 2.0]),
                         n_hidden=16, **kw)


def _perturb(enc):
    with torch.no_grad():
        for p in enc.head[-1].parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))


def test_full_covariance_is_a_valid_cholesky_factor_in_prior_units():
    enc = _encoder()
    _perturb(enc)
    loc, scale, coupling = enc(*_inputs())
    assert loc.shape == (S, N_OUT) and scale.shape == (S, N_OUT, N_OUT) and coupling is None
    assert torch.equal(scale, torch.tril(scale))  # lower triangular
    diag = torch.diagonal(scale, dim1=-2, dim2=-1)
    prior = torch.tensor([0.5, 1.0, 2.0])
    # diagonal in (1e-4, 2] prior sds; row i is in units of prior sd i
    assert (diag > 1e-4 * prior).all() and (diag <= 2.0 * prior + 1e-6).all()
    assert (scale.abs() <= 2.0 * prior[:, None] + 1e-6).all()
    assert (torch.tril(scale, -1).abs() > 0).any()  # correlations are expressed
    cov = scale @ scale.transpose(-1, -2)
    assert (torch.linalg.eigvalsh(cov) > 0).all()


def test_initial_proposal_is_near_diagonal_and_narrow():
    loc, scale, _ = _encoder()(*_inputs())
    prior = torch.tensor([0.5, 1.0, 2.0])
    sd = torch.diagonal(scale, dim1=-2, dim2=-1) / prior
    np.testing.assert_allclose(sd.detach().numpy(), 0.3, atol=0.1)
    assert torch.tril(scale, -1).abs().max() < 0.1 * prior.max()


def test_diagonal_family_returns_standard_deviations():
    enc = _encoder(covariance_type="diag")
    loc, scale, coupling = enc(*_inputs())
    assert scale.shape == (S, N_OUT) and (scale > 0).all() and coupling is None
    assert enc.head[-1].out_features == 2 * N_OUT  # no off-diagonal outputs


def test_coupling_to_globals_has_the_right_shape_and_units():
    gscale = torch.tensor([0.1, 1.0, 3.0, 0.5])
    enc = _encoder(global_scale=gscale)
    assert enc.head[-1].out_features == 2 * N_OUT + 3 + N_OUT * N_GLOBAL
    loc, scale, coupling = enc(*_inputs())
    assert coupling.shape == (S, N_OUT, N_GLOBAL)
    assert coupling.abs().max() < 0.5  # starts close to no coupling
    # A raw output of 1 moves z_i by one of its prior sds per prior sd of g_d.
    with torch.no_grad():
        enc.head[-1].weight.zero_()
        enc.head[-1].bias[2 * N_OUT + 3 :] = 1.0
    _, _, coupling = enc(*_inputs())
    expected = torch.tensor([0.5, 1.0, 2.0])[:, None] / gscale[None, :]
    torch.testing.assert_close(coupling, expected.expand(S, -1, -1))


def test_bad_covariance_type_raises():
    with pytest.raises(ValueError, match="covariance_type"):
        _encoder(covariance_type="spherical")


def test_masked_values_do_not_change_the_output():
    enc = _encoder()
    y, mask, times, inputs, codes = _inputs()
    y2 = y.clone()
    y2[1, :, 6:] = 100.0  # values at masked positions are ignored
    a = enc(y, mask, times, inputs, codes)
    b = enc(y2 * mask, mask, times, inputs, codes)
    for u, v in zip(a[:2], b[:2]):
        torch.testing.assert_close(u, v)
