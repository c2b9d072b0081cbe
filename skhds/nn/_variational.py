"""Mean-field Gaussian variational family for the global (population and group) latents."""

import torch

from ..distributions import normal_kl, normal_log_prob

__all__ = ["MeanFieldGaussian", "gaussian_kl"]

gaussian_kl = normal_kl  # element-wise KL between diagonal Gaussians


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
        return normal_log_prob(g, self.loc, self.scale).sum(-1)

    def kl(self, prior_loc, prior_scale):
        """Analytic ``KL(q || N(prior_loc, prior_scale))`` (a scalar)."""
        return normal_kl(self.loc, self.scale, prior_loc, prior_scale).sum()
