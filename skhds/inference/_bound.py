"""The importance-weighted bound (IWAE) and its gradient estimators.

For one minibatch ``B`` of ``N`` series, a draw ``g ~ q(g)`` of the global
(population and group) latents, and ``K`` draws ``z_ik ~ q(z | y_i)`` per
series, the estimator of the bound on ``log p(Y)`` is

    ELBO_hat = N / |B| * sum_{i in B} [logsumexp_k log w_ik - log K] - KL(q(g) || p(g)),
    log w_ik = log p(y_i | g, z_ik) + log p(z_ik | g) - log q(z_ik | y_i).

Its expectation is a lower bound on ``log p(Y)``; the global KL enters once per
dataset. ``log q`` and ``log p`` are evaluated at exactly the simulated
sample: nothing is clipped. Importance samples whose simulation is not finite
get weight zero (``log w = -inf``), which keeps the bound valid (it can only
lower it) and is counted. The doubly reparameterised estimator (DReG, Tucker
et al. 2019) is available for the encoder's gradient.
"""

import math

import torch

from ..distributions import normal_log_prob

__all__ = [
    "sanitize_log_weights",
    "iwae_per_series",
    "normalized_weights",
    "effective_sample_size",
    "minibatch_objective",
    "log_normal",
]

log_normal = normal_log_prob  # element-wise log N(z | loc, scale)


def sanitize_log_weights(log_w):
    """Replace non-finite log weights by ``-inf`` (weight zero).

    Parameters
    ----------
    log_w : torch.Tensor of shape (S, K)
        Log importance weights of ``K`` samples for each of ``S`` series.

    Returns
    -------
    log_w : torch.Tensor of shape (S, K)
        The log weights with every non-finite entry replaced by ``-inf``.
    n_bad : int
        Number of importance samples zeroed.
    """
    log_w, n_bad = sanitize_log_weights_lazy(log_w)
    return log_w, int(n_bad)


def sanitize_log_weights_lazy(log_w):
    """:func:`sanitize_log_weights` with the count left on the device.

    Nothing here waits for the device (no host synchronisation), so a training
    pass that uses it can be captured in a CUDA graph; read the count when it
    is needed.

    Returns
    -------
    log_w : torch.Tensor of shape (S, K)
    n_bad : torch.Tensor of shape ()
    """
    finite = torch.isfinite(log_w)
    return torch.where(finite, log_w, torch.full_like(log_w, -math.inf)), (~finite).sum()


def iwae_per_series(log_w):
    """``logsumexp_k log w - log K`` for each series: ``(S,)``.

    Parameters
    ----------
    log_w : torch.Tensor of shape (S, K)
        Log importance weights of ``K`` samples for each of ``S`` series.

    Returns
    -------
    torch.Tensor of shape (S,)
        Per-series IWAE estimate (``-inf`` where every weight is zero).
    """
    return torch.logsumexp(log_w, dim=-1) - math.log(log_w.shape[-1])


def normalized_weights(log_w):
    """Self-normalised importance weights (rows with no finite weight give zeros).

    Parameters
    ----------
    log_w : torch.Tensor of shape (S, K)
        Log importance weights of ``K`` samples for each of ``S`` series.

    Returns
    -------
    torch.Tensor of shape (S, K)
        Weights summing to one over ``K`` in each row (all zeros in a row with
        no finite weight).
    """
    w = torch.softmax(log_w, dim=-1)
    return torch.nan_to_num(w, nan=0.0)


def effective_sample_size(log_w):
    """Kish effective sample size ``1 / sum_k w_k^2`` per series, in ``[0, K]``.

    Parameters
    ----------
    log_w : torch.Tensor of shape (S, K)
        Log importance weights of ``K`` samples for each of ``S`` series.

    Returns
    -------
    torch.Tensor of shape (S,)
        Effective sample size of each series (0 where no weight is finite).
    """
    w = normalized_weights(log_w)
    ess = 1.0 / (w * w).sum(-1)
    return torch.where(torch.isfinite(ess), ess, torch.zeros_like(ess))


def minibatch_objective(log_w, kl, n_total, z=None, estimator="iwae"):
    """Loss to minimise for one minibatch, and the bound estimate it stands for.

    Parameters
    ----------
    log_w : torch.Tensor of shape (S, K)
        Sanitised log importance weights. For ``estimator="dreg"`` they must
        be computed with ``log q`` evaluated at detached variational
        parameters, and ``z`` is the reparameterised sample they depend on.
    kl : torch.Tensor
        ``KL(q(g) || p(g))`` of the global latents (a scalar).
    n_total : int
        Number of series in the dataset (``N``).
    z : torch.Tensor of shape (S, K, n_individual), optional
        Required for DReG: its gradient is rescaled by the normalised weights.
    estimator : {"iwae", "dreg"}, default="iwae"

    Returns
    -------
    loss : torch.Tensor
        ``-ELBO_hat / N``, whose gradient is the chosen estimator's.
    per_series : torch.Tensor of shape (S,)
        Detached per-series IWAE terms (``-inf`` where all weights failed).
    """
    S = log_w.shape[0]
    per_series = iwae_per_series(log_w)
    ok = torch.isfinite(per_series)
    scale = n_total / S
    data_term = torch.where(ok, per_series, torch.zeros_like(per_series)).sum()
    if estimator == "dreg":
        if z is None:
            raise ValueError("estimator='dreg' needs the reparameterised sample z.")
        w = normalized_weights(log_w).detach()
        if z.requires_grad:
            z.register_hook(lambda grad: grad * w.unsqueeze(-1))
        safe = torch.where(w > 0, log_w, torch.zeros_like(log_w))
        surrogate = (w * safe).sum()
        # Value of the bound, gradient of the DReG surrogate.
        data_term = data_term.detach() + (surrogate - surrogate.detach())
    elif estimator != "iwae":
        raise ValueError(f"estimator must be 'iwae' or 'dreg', got {estimator!r}.")
    loss = -(scale * data_term - kl) / n_total
    return loss, per_series.detach()
