"""Closed-form Normal densities and divergences shared by the whole package."""

import math

import torch

__all__ = ["normal_log_prob", "normal_kl"]

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
