"""Importance sampling of a low-dimensional, smooth log density (the global latents).

Used to reweight the population and group quantities by the data (see
``HierarchicalODEVAE.sample_posterior(method="importance")``): the target is
an unnormalised log density that can be evaluated on a batch of points and
differentiated. The proposal starts as the Laplace approximation (mode by
L-BFGS, curvature by central differences of the gradient) with multivariate
Student-t tails, so that skewed or heavy-tailed directions (a between-level
spread informed by three levels) are still covered; while the effective
sample size stays below a target, it is refitted to the weighted draws
(adaptive importance sampling with Student-t kernels).
"""

import math

import torch

from ._diagnostics import pareto_k

__all__ = ["MultivariateStudentT", "laplace_approximation", "laplace_per_series",
           "adaptive_importance_sampling"]


class MultivariateStudentT:
    """Multivariate Student-t distribution in float64 with a Cholesky scale.

    Leading dimensions of ``loc`` and ``scale_tril`` index independent
    distributions (one per series, say); draws and densities carry them.

    Parameters
    ----------
    loc : torch.Tensor of shape (..., D)
        Location.
    scale_tril : torch.Tensor of shape (..., D, D)
        Lower-triangular Cholesky factor of the scale matrix (the covariance
        is ``df / (df - 2)`` times the scale matrix).
    df : int, default=5
        Degrees of freedom (an integer > 2: draws use a chi-square variable
        made of ``df`` squared normals, so that a ``torch.Generator`` seeds
        everything).
    """

    def __init__(self, loc, scale_tril, df=5):
        if int(df) != df or df <= 2:
            raise ValueError(f"df must be an integer > 2, got {df!r}.")
        self.loc = loc.double()
        self.scale_tril = scale_tril.double()
        self.df = int(df)

    @classmethod
    def from_moments(cls, mean, cov, df=5):
        """The t distribution with the given mean and covariance."""
        scale = cov * (df - 2.0) / df
        return cls(mean, torch.linalg.cholesky(scale), df)

    def sample(self, n, generator):
        """``n`` draws, shape ``(..., n, D)``, from a ``torch.Generator`` on the device of ``loc``."""
        batch, D = self.loc.shape[:-1], self.loc.shape[-1]
        opts = {"generator": generator, "dtype": torch.float64, "device": self.loc.device}
        eps = torch.randn((*batch, n, D), **opts)
        chi2 = (torch.randn((*batch, n, self.df), **opts) ** 2).sum(-1)
        x = eps @ self.scale_tril.transpose(-1, -2)
        return self.loc.unsqueeze(-2) + x * torch.sqrt(self.df / chi2).unsqueeze(-1)

    def log_prob(self, x):
        """Log density of ``x`` of shape ``(..., n, D)``: ``(..., n)``."""
        D = self.loc.shape[-1]
        diff = (x.double() - self.loc.unsqueeze(-2)).transpose(-1, -2)  # (..., D, n)
        u = torch.linalg.solve_triangular(self.scale_tril, diff, upper=False)
        maha = (u * u).sum(-2)
        nu = self.df
        log_det = torch.log(torch.diagonal(self.scale_tril, dim1=-2, dim2=-1)).sum(-1, keepdim=True)
        const = (math.lgamma((nu + D) / 2) - math.lgamma(nu / 2) - 0.5 * D * math.log(nu * math.pi))
        return const - log_det - 0.5 * (nu + D) * torch.log1p(maha / nu)


def laplace_approximation(log_target, start, step, max_scale, max_iter=100):
    """Mode and inverse negative Hessian of ``log_target``.

    Points where ``log_target`` is not finite (``-inf`` outside its support,
    NaN where a simulation overflowed) count as worse than any point seen, so
    L-BFGS's line search backs off from them; the best finite point visited
    is returned.

    Parameters
    ----------
    log_target : callable
        Maps points ``(n, D)`` to log densities ``(n,)``, differentiably.
    start : torch.Tensor of shape (D,)
        Starting point of L-BFGS.
    step : torch.Tensor of shape (D,)
        Finite-difference steps for the Hessian (a tenth of a typical scale).
    max_scale : float
        Largest standard deviation allowed in any direction (flat directions,
        where the curvature is near zero or negative, are capped at it).
    max_iter : int, default=100
        L-BFGS iterations.

    Returns
    -------
    mode : torch.Tensor of shape (D,)
        The maximiser found by L-BFGS.
    cov : torch.Tensor of shape (D, D)
        Inverse of the negative Hessian at the mode (float64, on the CPU),
        with eigenvalues capped at ``max_scale**2``.
    """
    g = start.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([g], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-10)

    best = [math.inf, start.detach().clone()]

    def closure():
        opt.zero_grad()
        loss = -log_target(g.unsqueeze(0)).sum()
        value = float(loss.detach())
        if not math.isfinite(value):
            # Where the target is not finite (outside its support, an overflowing
            # simulation): a loss worse than any seen and no gradient, so that the
            # line search backs off instead of interpolating with inf or NaN.
            g.grad = torch.zeros_like(g)
            worst = abs(best[0]) if math.isfinite(best[0]) else 0.0
            return torch.as_tensor(worst + 1e3 * (1.0 + worst), dtype=loss.dtype, device=loss.device)
        loss.backward()
        g.grad = torch.nan_to_num(g.grad, nan=0.0, posinf=0.0, neginf=0.0)
        if value < best[0]:
            best[0], best[1] = value, g.detach().clone()
        return loss

    try:
        opt.step(closure)
    except RuntimeError:
        # The line search's step can still overflow on a pathological target;
        # the best finite point visited is kept (it only centres a proposal).
        pass
    # Keep the best finite point L-BFGS visited.
    mode = best[1]

    def grad(x):
        x = x.clone().requires_grad_(True)
        (gr,) = torch.autograd.grad(log_target(x.unsqueeze(0)).sum(), x)
        return gr.double().cpu()

    D = mode.shape[0]
    h = step.to(mode)
    hess = torch.zeros((D, D), dtype=torch.float64)
    for j in range(D):
        e = torch.zeros_like(mode)
        e[j] = h[j]
        hess[:, j] = (grad(mode + e) - grad(mode - e)) / (2 * float(h[j]))
    # Curvature that could not be measured (a finite-difference step into a
    # region where the target is not finite) counts as flat: capped below.
    precision = torch.nan_to_num(-0.5 * (hess + hess.T), nan=0.0, posinf=0.0, neginf=0.0)
    return mode, _capped_inverse(*torch.linalg.eigh(precision), max_scale)


def _capped_inverse(evals, evecs, max_scale):
    """Inverse of a (batch of) precision matrix given by its eigendecomposition, with the
    variance in every direction capped at ``max_scale**2``."""
    inv = 1.0 / evals.clamp(min=1.0 / max_scale**2)
    return evecs @ torch.diag_embed(inv) @ evecs.transpose(-1, -2)


def _gradient_and_hessian(log_target, x, step):
    """Values ``(S,)``, gradients ``(S, D)`` and negative Hessians ``(S, D, D)`` at ``x`` (S, D).

    The Hessian by central differences of the gradient, all ``2 D + 1``
    points of every series in one evaluation of ``log_target``.
    """
    S, D = x.shape
    offsets = torch.diag_embed(step.to(x).expand(S, D))  # (S, D, D)
    pts = torch.cat([x.unsqueeze(1), x.unsqueeze(1) + offsets, x.unsqueeze(1) - offsets], 1)
    pts = pts.detach().requires_grad_(True)
    f = log_target(pts)
    (grad,) = torch.autograd.grad(torch.where(torch.isfinite(f), f, torch.zeros_like(f)).sum(), pts)
    hess = (grad[:, 1:D + 1] - grad[:, D + 1:]) / (2 * step.to(x)).view(1, D, 1)
    # a finite-difference point where the target is not finite: no curvature measured
    ok = torch.isfinite(f[:, 1:]).all(1)
    precision = -0.5 * (hess + hess.transpose(1, 2))
    precision = torch.where(ok[:, None, None] & torch.isfinite(precision), precision,
                            torch.zeros_like(precision))
    return f[:, 0].detach(), grad[:, 0].detach(), precision.detach()


def laplace_per_series(log_target, start, step, max_scale, n_iter=50, tol=1e-3):
    """Modes and Laplace covariances of many independent log densities at once.

    A damped Newton method on every density in parallel: the curvature is
    measured by central differences of the gradient, directions of negative
    curvature are treated by the absolute value of their eigenvalue (the step
    then climbs along them instead of stopping at a saddle), and a step is
    kept only where it raises its density (Levenberg-Marquardt damping,
    adapted per density). The work per iteration is one evaluation of
    ``2 D + 1`` points per density with its gradient, and one without.

    Parameters
    ----------
    log_target : callable
        Maps points ``(S, M, D)`` to log densities ``(S, M)``, differentiably;
        entry ``(s, m)`` depends on point ``(s, m)`` alone.
    start : torch.Tensor of shape (S, D)
        Starting points.
    step : torch.Tensor of shape (D,)
        Finite-difference steps for the Hessian.
    max_scale : float
        Largest standard deviation of the returned covariances in any
        direction (flat or negatively curved directions are capped at it).
    n_iter : int, default=50
        Largest number of Newton iterations.
    tol : float, default=1e-3
        A density has converged at a maximum where a full Newton step would
        raise it by less than ``tol``.

    Returns
    -------
    mode : torch.Tensor of shape (S, D)
        The best point found for each density.
    cov : torch.Tensor of shape (S, D, D)
        Inverse of the negative Hessian at ``mode``, eigenvalues capped at
        ``max_scale**2``.
    value : torch.Tensor of shape (S,)
        The log density at ``mode`` (``-inf`` where no finite point was found).
    """
    floor = 1.0 / max_scale**2
    x = start.detach().clone()
    f, grad, prec = _gradient_and_hessian(log_target, x, step)
    f = torch.where(torch.isfinite(f), f, torch.full_like(f, -math.inf))
    lam = torch.ones_like(f)
    active = torch.ones_like(f, dtype=torch.bool)
    evals, evecs = torch.linalg.eigh(prec)
    g = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
    for _ in range(n_iter):
        curv = evals.abs().clamp(min=floor) + lam.unsqueeze(-1)
        delta = evecs @ ((evecs.transpose(1, 2) @ g.unsqueeze(-1)).squeeze(-1) / curv).unsqueeze(-1)
        trial = x + delta.squeeze(-1)
        with torch.no_grad():
            f_trial = log_target(trial.unsqueeze(1))[:, 0]
        better = active & torch.isfinite(f_trial) & (f_trial > f)
        x = torch.where(better[:, None], trial, x)
        lam = torch.where(better, lam / 3.0, lam * 4.0)
        if bool(better.any()):
            f_new, grad_new, prec_new = _gradient_and_hessian(log_target, x, step)
            f = torch.where(better, f_new, f)
            grad = torch.where(better[:, None], grad_new, grad)
            prec = torch.where(better[:, None, None], prec_new, prec)
            evals, evecs = torch.linalg.eigh(prec)
            g = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        # Converged: at a maximum (all curvature negative) whose Newton step would
        # gain less than tol; given up: no step kept at any damping.
        decrement = 0.5 * ((evecs.transpose(1, 2) @ g.unsqueeze(-1)).squeeze(-1) ** 2
                           / evals.abs().clamp(min=floor)).sum(-1)
        converged = (evals[:, 0] > 0) & (decrement < tol)
        active = active & ~converged & (lam < 1e10)
        if not bool(active.any()):
            break
    # evals, evecs: the eigendecomposition of the final prec (updated with it in the loop)
    return x, _capped_inverse(evals, evecs, max_scale), f


def adaptive_importance_sampling(log_target, proposal, n, generator, n_rounds=3, target_ess=0.25,
                                 inflation=1.2, callback=None):
    """Self-normalised importance sampling with adaptive Student-t proposals.

    Parameters
    ----------
    log_target : callable
        Maps points ``(n, D)`` (float64, CPU) to log densities ``(n,)``.
    proposal : MultivariateStudentT
        First proposal.
    n : int
        Draws per round.
    generator : torch.Generator
        CPU generator of the draws.
    n_rounds : int, default=3
        Largest number of rounds; the last round's draws are returned.
    target_ess : float, default=0.25
        Stop once the effective sample size reaches this fraction of ``n``.
    inflation : float, default=1.2
        Scale factor of the refitted proposals.
    callback : callable, optional
        Called as ``callback(round, ess)`` after each round.

    Returns
    -------
    draws : torch.Tensor of shape (n, D)
        The last round's draws (float64).
    log_w : torch.Tensor of shape (n,)
        Their log importance weights (float64; ``-inf`` for non-finite targets).
    khat : float
        Pareto-k of the weights of the last round.
    """
    for round_ in range(n_rounds):
        x = proposal.sample(n, generator)
        with torch.no_grad():
            log_w = log_target(x).double().cpu() - proposal.log_prob(x)
        log_w = torch.where(torch.isfinite(log_w), log_w, torch.full_like(log_w, -math.inf))
        w = torch.softmax(log_w, 0)
        ess = float(1.0 / (w * w).sum())
        if callback is not None:
            callback(round_, ess)
        if ess >= target_ess * n or round_ == n_rounds - 1:
            break
        mean = (w[:, None] * x).sum(0)
        diff = x - mean
        cov = (w[:, None, None] * diff[:, :, None] * diff[:, None, :]).sum(0) * inflation**2
        jitter = 1e-10 + 1e-8 * torch.diagonal(cov).mean()
        proposal = MultivariateStudentT.from_moments(mean, cov + jitter * torch.eye(len(mean),
                                                                                  dtype=cov.dtype),
                                                     proposal.df)
    khat = float(pareto_k(log_w.numpy()[None])[0])
    return x, log_w, khat
