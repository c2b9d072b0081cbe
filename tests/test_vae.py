"""Small linear algebra of ``skhds._vae`` written in plain ops (capturable in CUDA graphs)."""

import torch

from skhds._vae import _cholesky, _inverse_tril, _spd_solve


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
