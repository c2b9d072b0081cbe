"""Mean-field Gaussian variational family for the global (population and group) latents."""

import torch

from ..distributions import gaussian_log_prob_of_draw, normal_kl, normal_log_prob

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
        return self.rsample_with_log_prob(n, generator)[0]

    def rsample_with_log_prob(self, n, generator=None):
        """Reparameterised draws ``(n, D)`` and their log density ``(n,)``.

        The density comes from the standard normal draws, ``log N(eps | 0, I)
        - sum(log scale)`` (:func:`~skhds.distributions.gaussian_log_prob_of_draw`):
        exact in any precision. :meth:`log_prob` at the
        draws forms ``(g - loc) / scale``, and in float32 the rounding of
        ``g`` is divided by ``scale``: in every dimension whose width is
        below the rounding step of ``loc`` the draw rounds to ``loc`` (or
        next to it), and the density is off by up to about ``eps^2 / 2``
        there. The draws are the same as :meth:`rsample`'s for the same
        generator state.
        """
        eps = torch.randn(
            (n, self.loc.shape[0]), generator=generator, dtype=self.loc.dtype, device=self.loc.device
        )
        g = self.from_noise(eps)
        return g, gaussian_log_prob_of_draw(eps.unsqueeze(0), self.scale.unsqueeze(0))[0]

    def from_noise(self, eps):
        """The reparameterised draws ``loc + scale * eps`` of standard normal ``eps`` ``(n, D)``.

        Holding ``eps`` fixed while the parameters change gives the draws that
        follow them (semi-amortised training refines several minibatches'
        proposals at one draw and trains each at that draw's current value).
        """
        return self.loc + self.scale * eps

    def log_prob(self, g):
        """Log density of draws ``(n, D)``, summed over dimensions: ``(n,)``."""
        return normal_log_prob(g, self.loc, self.scale).sum(-1)

    def kl(self, prior_loc, prior_scale):
        """Analytic ``KL(q || N(prior_loc, prior_scale))`` (a scalar)."""
        return normal_kl(self.loc, self.scale, prior_loc, prior_scale).sum()
