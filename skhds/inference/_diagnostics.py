"""Importance-sampling diagnostics: the Pareto-k-hat of the weights' upper tail.

Pareto-smoothed importance sampling (Vehtari, Simpson, Gelman, Yao and Gabry,
2024, "Pareto smoothed importance sampling") fits a generalised Pareto
distribution to the ``M = min(K / 5, 3 sqrt(K))`` largest importance weights
(above the next largest one) and reads the reliability of the estimate off
the fitted shape ``k``: below 0.5 the weights have finite variance, up to 0.7
the estimate is still usable, above 0.7 it is unreliable. The shape is fitted
with the empirical-Bayes estimator of Zhang and Stephens (2009) with the
weakly informative prior on ``k`` used by PSIS.
"""

import math

import numpy as np
import torch

__all__ = ["pareto_k"]


def _gpd_fit(x):
    """Zhang & Stephens (2009) estimate of the shape of a generalised Pareto.

    ``x`` holds the sorted (ascending) positive exceedances over the threshold.
    Returns the PSIS-regularised shape ``k``.
    """
    n = x.shape[0]
    prior_bs, prior_k = 3.0, 10.0
    m = 30 + int(math.sqrt(n))
    b = 1.0 - np.sqrt(m / (np.arange(1, m + 1, dtype=float) - 0.5))
    b = b / (prior_bs * x[int(n / 4 + 0.5) - 1]) + 1.0 / x[-1]
    k = np.log1p(-b[:, None] * x).mean(axis=1)  # (m,): the shape given each theta = b
    log_lik = n * (np.log(-b / k) - k - 1.0)  # profile log-likelihood
    with np.errstate(over="ignore"):
        weights = 1.0 / np.exp(log_lik[None, :] - log_lik[:, None]).sum(axis=1)
    keep = weights >= 10 * np.finfo(float).eps
    weights, b = weights[keep], b[keep]
    b_post = np.sum(b * weights / weights.sum())
    k_post = np.log1p(-b_post * x).mean()
    return (n * k_post + prior_k * 0.5) / (n + prior_k)  # shrink towards 0.5


def _row_pareto_k(lw, tail_fraction):
    lw = lw[np.isfinite(lw)]
    n = lw.shape[0]
    if n == 0:
        return math.nan
    if tail_fraction is None:
        m = int(math.ceil(min(0.2 * n, 3.0 * math.sqrt(n))))
    else:
        m = int(math.ceil(tail_fraction * n))
    m = min(m, n - 1)
    x = np.sort(lw - lw.max())
    cutoff = max(x[n - m - 1], math.log(np.finfo(float).tiny)) if m > 0 else 0.0
    tail = x[x > cutoff]
    if tail.shape[0] <= 4:
        return math.inf
    tail = np.exp(tail) - math.exp(cutoff)
    return float(_gpd_fit(tail))


def pareto_k(log_w, tail_fraction=None):
    """Pareto-k-hat of the upper tail of the importance weights of each series.

    A generalised Pareto distribution is fitted to the ``M`` largest weights
    in excess of the next largest one (PSIS), with the estimator of Zhang
    and Stephens (2009) and the PSIS prior (which shrinks ``k`` slightly
    towards 0.5 when ``M`` is small). ``k < 0.5``: reliable; ``0.5 <= k <=
    0.7``: usable; ``k > 0.7``: unreliable (the importance estimates of the
    series, its bound, predictions and posterior means are then dominated by
    a few samples).

    Parameters
    ----------
    log_w : torch.Tensor or array-like of shape (S, K) or (K,)
        Log importance weights of ``K`` samples for each of ``S`` series
        (unnormalised; non-finite entries count as weight zero and are left
        out).
    tail_fraction : float, optional
        Fraction of the ``K`` weights in the tail. Default
        ``min(K / 5, 3 sqrt(K)) / K``, as in PSIS.

    Returns
    -------
    torch.Tensor or numpy.ndarray of shape (S,)
        The shape estimate per series (a tensor on the input's device and dtype
        for tensor input, else a float array). ``inf`` where at most four
        finite weights exceed the threshold, ``nan`` where no weight is finite.

    Examples
    --------
    >>> import numpy as np
    >>> from skhds.inference import pareto_k
    >>> rng = np.random.default_rng(0)
    >>> k = pareto_k(np.log(rng.pareto(2.0, size=(1, 10000))))
    >>> bool(abs(k[0] - 0.5) < 0.1)
    True
    """
    if tail_fraction is not None and not (
        isinstance(tail_fraction, (int, float)) and 0 < tail_fraction < 1
    ):
        raise ValueError(f"tail_fraction must be a float in (0, 1), got {tail_fraction!r}.")
    is_tensor = torch.is_tensor(log_w)
    arr = log_w.detach().cpu().double().numpy() if is_tensor else np.asarray(log_w, dtype=float)
    squeeze = arr.ndim == 1
    arr = np.atleast_2d(arr)
    if arr.ndim != 2:
        raise ValueError(f"log_w must be of shape (S, K) or (K,), got {arr.shape}.")
    k = np.array([_row_pareto_k(row, tail_fraction) for row in arr], dtype=float)
    if squeeze:
        k = k[0:1]
    if is_tensor:
        return torch.as_tensor(k, dtype=log_w.dtype if log_w.is_floating_point() else None,
                               device=log_w.device)
    return k
