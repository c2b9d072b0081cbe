"""``skhds._vae``: small linear algebra written in plain ops (capturable in CUDA graphs),
and which global latents the proposals follow."""

import warnings

import numpy as np
import torch

from skhds import HierarchicalODEVAE
from skhds._vae import _cholesky, _inverse_tril, _spd_solve
from skhds.datasets import make_logistic_growth


def _spd(seed, batch=6, n=5):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, n, n, generator=gen, dtype=torch.float64)
    return a @ a.transpose(-1, -2) + 0.1 * torch.eye(n, dtype=torch.float64), gen


def test_cholesky_solve_and_inverse_factor_match_torch_linalg():
    a, gen = _spd(0)
    torch.testing.assert_close(_cholesky(a), torch.linalg.cholesky(a))
    b = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(_spd_solve(a, b), torch.linalg.solve(a, b))
    f = _inverse_tril(a)
    assert torch.equal(f, f.tril())  # lower triangular, as the proposals' scales must be
    torch.testing.assert_close(f @ f.transpose(-1, -2), torch.linalg.inv(a))
    one = _cholesky(torch.full((2, 1, 1), 4.0, dtype=torch.float64))
    assert one.flatten().tolist() == [2.0, 2.0]


def test_cholesky_of_a_matrix_that_is_not_positive_definite_is_not_finite():
    a, _ = _spd(1)
    a[2] = -torch.eye(5, dtype=torch.float64)
    finite = torch.isfinite(_cholesky(a)).flatten(1).all(-1)
    assert finite.tolist() == [True, True, False, True, True, True]


def test_proposals_follow_the_globals_of_their_own_group_level_only():
    """A series' proposal mean is coupled to its own level's group value, not to other
    levels' (its likelihood and individual prior do not depend on them), nor to the group
    hyperparameters; one of an unseen level to no level value. Adaptive refinement and the
    Laplace step keep it so."""
    data = make_logistic_growth(n_series=12, n_times=10, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = HierarchicalODEVAE(data.model, max_iter=1, random_state=0).fit(
            data.X, groups=data.groups, times=data.times)
    vae, hier = est.vae_, est.vae_.hierarchy
    groups = np.array(data.groups, dtype=object)
    groups[-1] = "unseen"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        series = est._prepare(data.X, groups, None, data.times, reset=False)
    p = vae.q_global.loc
    batch = series.batch(np.arange(12), est.scaling_, est.dt, p.device, p.dtype)
    i_mu, i_tau, i_v = hier.grp_index["K"]
    codes = batch["codes"][:, 0]
    own = torch.zeros((12, 3), dtype=torch.bool)
    own[torch.arange(11), codes[:11]] = True
    with torch.no_grad():
        coupling = vae.encode(batch)[2]
        refined = vae.refine_local(batch, 64, 2, torch.Generator().manual_seed(0))[2]
    # the Laplace step's slopes by finite differences: also for the unseen series, whose
    # objective puts its level at the group's location (not a fresh draw per call)
    laplace = vae.laplace_local(batch, vae.q_global.loc.detach(), None, 64,
                                torch.Generator().manual_seed(0))[2]
    torch.manual_seed(1)
    again = vae.laplace_local(batch, vae.q_global.loc.detach(), None, 64,
                              torch.Generator().manual_seed(0))[2]
    assert torch.equal(laplace, again)  # no draw from the global generator
    assert float((laplace - coupling).abs().max()) > 1e-3  # the step replaced slopes
    for b in (coupling, refined, laplace):
        levels = b[:, :, i_v : i_v + 3].abs().amax(1)  # (S, levels)
        assert bool((levels[~own] == 0).all())
        assert bool((levels[own] > 0).all())
        assert bool((b[:, :, [i_mu, i_tau]] == 0).all())
        assert float(b[:, :, hier.pop_index["x0"]].abs().min()) > 0  # shared ones: all series
