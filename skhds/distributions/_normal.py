"""Closed-form Normal densities and divergences shared by the whole package."""

import math

import torch

__all__ = ["normal_log_prob", "normal_kl", "gaussian_rsample", "gaussian_log_prob",
           "gaussian_log_prob_of_draw", "gaussian_kl"]

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def normal_log_prob(x, loc, scale):
    """Element-wise ``log N(x | loc, scale)``.

    Parameters
    ----------
    x, loc, scale : torch.Tensor or float
        Broadcastable; ``scale > 0``.

    Returns
    -------
    torch.Tensor
        Log density of ``x``, of the broadcast shape of the arguments.
    """
    u = (x - loc) / scale
    log_scale = torch.log(scale) if torch.is_tensor(scale) else math.log(scale)
    return -0.5 * u * u - log_scale - _LOG_SQRT_2PI


def normal_kl(loc_q, scale_q, loc_p, scale_p):
    """Element-wise ``KL(N(loc_q, scale_q) || N(loc_p, scale_p))``.

    Parameters
    ----------
    loc_q, scale_q, loc_p, scale_p : torch.Tensor
        Broadcastable; scales positive.

    Returns
    -------
    torch.Tensor
        Kullback-Leibler divergence, of the broadcast shape of the arguments.
    """
    var_ratio = (scale_q / scale_p) ** 2
    t = ((loc_q - loc_p) / scale_p) ** 2
    return 0.5 * (var_ratio + t - 1.0 - torch.log(var_ratio))


def gaussian_rsample(loc, scale, eps):
    """Reparameterised draws ``loc + L eps`` of Gaussians given by their scale.

    Parameters
    ----------
    loc : torch.Tensor of shape (S, n) or (S, K, n)
        Means (one per series, or one per series and draw).
    scale : torch.Tensor of shape (S, n), (S, n, n) or (S, K, n, n)
        Standard deviations (diagonal covariance) or lower-triangular Cholesky
        factors ``L`` of the covariances (one per series, or one per series
        and draw; a draw axis of length 1 broadcasts).
    eps : torch.Tensor of shape (S, K, n)
        Standard normal draws.

    Returns
    -------
    torch.Tensor of shape (S, K, n)
        The draws.
    """
    loc = loc.unsqueeze(1) if loc.dim() == 2 else loc
    if scale.dim() == 2:
        return loc + scale.unsqueeze(1) * eps
    if scale.dim() == 3:
        return loc + torch.einsum("sij,skj->ski", scale, eps)
    return loc + torch.matmul(scale, eps.unsqueeze(-1)).squeeze(-1)


def gaussian_log_prob(z, loc, scale):
    """Log density of draws ``z`` under Gaussians given by their scale.

    Parameters
    ----------
    z : torch.Tensor of shape (S, K, n)
        Points at which to evaluate.
    loc : torch.Tensor of shape (S, n) or (S, K, n)
        Means.
    scale : torch.Tensor of shape (S, n), (S, n, n) or (S, K, n, n)
        Standard deviations or lower-triangular Cholesky factors (see
        :func:`gaussian_rsample`).

    Returns
    -------
    torch.Tensor of shape (S, K)
        ``log N(z_k | loc, L L^T)`` summed over the ``n`` dimensions.
    """
    loc = loc.unsqueeze(1) if loc.dim() == 2 else loc
    if scale.dim() == 2:
        return normal_log_prob(z, loc, scale.unsqueeze(1)).sum(-1)
    if scale.dim() == 3:
        scale = scale.unsqueeze(1)
    diff = (z - loc).unsqueeze(-1)  # (S, K, n, 1)
    u = torch.linalg.solve_triangular(scale, diff, upper=False).squeeze(-1)
    log_det = torch.log(torch.diagonal(scale, dim1=-2, dim2=-1)).sum(-1)  # (S, 1) or (S, K)
    n = z.shape[-1]
    return -0.5 * (u * u).sum(-1) - log_det - n * _LOG_SQRT_2PI


def gaussian_log_prob_of_draw(eps, scale, z=None):
    """Log density of reparameterised draws ``z = loc + L eps``, computed from ``eps``.

    ``log N(z | loc, L L^T) = log N(eps | 0, I) - log det L`` holds exactly.
    Evaluating the density at ``z`` instead (:func:`gaussian_log_prob`) first
    forms ``z - loc`` and then solves with ``L``: in float32, where ``L`` is
    ill-conditioned (a very narrow direction of a strongly correlated
    proposal), the rounding of ``z`` is divided by that small width and the
    log density can come out too low by any amount (by 1e6 nats for widths
    1e-3 and 1e-6 with such a correlation, by about 1e20 in a diverged
    training run). Such an error makes log weights, and so a training
    objective that should be a lower bound, arbitrarily large, and an
    optimiser will find it. The value here is
    exact, and its gradient with respect to ``loc`` and ``L`` is the total
    derivative of ``log q(z(loc, L); loc, L)`` (zero for ``loc``, ``-d log
    det L``), as for the evaluation at ``z``.

    Parameters
    ----------
    eps : torch.Tensor of shape (S, K, n)
        The standard normal draws that made ``z``.
    scale : torch.Tensor of shape (S, n), (S, n, n) or (S, K, n, n)
        As in :func:`gaussian_rsample`.
    z : torch.Tensor of shape (S, K, n), optional
        The draws, for the path derivative alone: with ``z``, the value is the
        same and the gradient is ``d log q / dz`` at fixed (detached)
        parameters times ``dz``, ``-(L^-T eps) . dz`` (the doubly
        reparameterised estimator's ``log q``).

    Returns
    -------
    torch.Tensor of shape (S, K)
        ``log N(z_k | loc, L L^T)`` summed over the ``n`` dimensions.
    """
    n = eps.shape[-1]
    if scale.dim() == 2:
        log_det = torch.log(scale).sum(-1, keepdim=True)  # (S, 1)
    else:
        log_det = torch.log(torch.diagonal(scale, dim1=-2, dim2=-1)).sum(-1)
        log_det = log_det.unsqueeze(1) if scale.dim() == 3 else log_det
    if z is not None:
        log_det = log_det.detach()
    out = -0.5 * (eps * eps).sum(-1) - log_det - n * _LOG_SQRT_2PI
    if z is None:
        return out
    with torch.no_grad():  # d log q / dz = -L^-T eps at the draw
        if scale.dim() == 2:
            dlogq_dz = -eps / scale.unsqueeze(1)
        else:
            L = scale.unsqueeze(1) if scale.dim() == 3 else scale
            dlogq_dz = -torch.linalg.solve_triangular(L.transpose(-1, -2), eps.unsqueeze(-1),
                                                      upper=True).squeeze(-1)
    return out + (dlogq_dz * (z - z.detach())).sum(-1)


def gaussian_kl(loc_p, scale_p, loc_q, scale_q):
    """``KL(N(loc_p, L_p L_p^T) || N(loc_q, L_q L_q^T))`` per row.

    Parameters
    ----------
    loc_p : torch.Tensor of shape (S, n)
        Means of the first Gaussians.
    scale_p : torch.Tensor of shape (S, n, n)
        Lower-triangular Cholesky factors of their covariances.
    loc_q : torch.Tensor of shape (S, n)
        Means of the second Gaussians.
    scale_q : torch.Tensor of shape (S, n, n)
        Lower-triangular Cholesky factors of their covariances.

    Returns
    -------
    torch.Tensor of shape (S,)
        The divergence of each row's pair (differentiable in all arguments).
    """
    m = torch.linalg.solve_triangular(scale_q, scale_p, upper=False)
    d = torch.linalg.solve_triangular(scale_q, (loc_p - loc_q).unsqueeze(-1), upper=False)
    log_det = (torch.log(torch.diagonal(scale_q, dim1=-2, dim2=-1))
               - torch.log(torch.diagonal(scale_p, dim1=-2, dim2=-1))).sum(-1)
    n = loc_p.shape[-1]
    return 0.5 * ((m * m).sum((-2, -1)) + (d * d).sum((-2, -1)) - n) + log_det
