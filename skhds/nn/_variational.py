"""Mean-field Gaussian variational family for the global (population and group) latents."""

import math

import torch

__all__ = ["MeanFieldGaussian", "gaussian_kl"]


def gaussian_kl(loc_q, scale_q, loc_p, scale_p):
    """Element-wise ``KL(N(loc_q, scale_q) || N(loc_p, scale_p))``.

    Parameters
    ----------
    loc_q, scale_q, loc_p, scale_p : torch.Tensor
        Broadcastable tensors; scales positive.

    Returns
    -------
    torch.Tensor
    """
    var_ratio = (scale_q / scale_p) ** 2
    t = ((loc_q - loc_p) / scale_p) ** 2
    return 0.5 * (var_ratio + t - 1.0 - torch.log(var_ratio))


class MeanFieldGaussian(torch.nn.Module):
    """Diagonal Gaussian ``q(g) = N(loc, diag(scale^2))`` with learnable parameters.

    Parameters
    ----------
    init_loc : torch.Tensor of shape (D,)
        Initial means.
    init_scale : torch.Tensor of shape (D,)
        Initial standard deviations (positive).
    """

    def __init__(self, init_loc, init_scale):
        super().__init__()
        self.loc = torch.nn.Parameter(torch.as_tensor(init_loc).clone())
        self.log_scale = torch.nn.Parameter(torch.log(torch.as_tensor(init_scale)).clone())

    @property
    def scale(self):
        """Standard deviations."""
        return torch.exp(self.log_scale)

    def rsample(self, n, generator=None):
        """Reparameterised draws, shape ``(n, D)``."""
        eps = torch.randn(
            (n, self.loc.shape[0]), generator=generator, dtype=self.loc.dtype, device=self.loc.device
        )
        return self.loc + self.scale * eps

    def log_prob(self, g):
        """Log density of draws ``(n, D)``, summed over dimensions: ``(n,)``."""
        u = (g - self.loc) / self.scale
        return (-0.5 * u * u - self.log_scale - 0.5 * math.log(2 * math.pi)).sum(-1)

    def kl(self, prior_loc, prior_scale):
        """Analytic ``KL(q || N(prior_loc, prior_scale))`` (a scalar)."""
        return gaussian_kl(self.loc, self.scale, prior_loc, prior_scale).sum()
