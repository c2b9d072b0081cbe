"""The hierarchical VAE: encoder, global variational family and the ODE decoder.

This module assembles one evaluation of the importance weights: draw the
global latents, encode each series, draw individual parameters, map latents to
model parameters, integrate the ODE and score the observations. The estimator
owns the loop; the bound itself lives in :mod:`skhds.inference`.
"""

import math
import warnings

import torch

from .distributions import gaussian_kl, gaussian_log_prob, gaussian_log_prob_of_draw, gaussian_rsample
from .inference import (
    MultivariateStudentT,
    effective_sample_size,
    laplace_per_series,
    minibatch_objective,
    normalized_weights,
)
from .inference._bound import sanitize_log_weights_lazy
from .models._base import observe_checked
from .solvers import odeint

__all__ = ["HierarchicalVAE", "PriorFollowingProposal"]


def _clean_grad(grad):
    return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


def _isolate(t):
    """Identity whose backward zeroes non-finite gradient entries (failed samples)."""
    if t.requires_grad:
        t = t.clone()
        t.register_hook(_clean_grad)
    return t


def _cholesky(a):
    """Lower Cholesky factors of a batch of small SPD matrices ``(..., n, n)``, in plain ops.

    ``torch.linalg`` factorises small batched matrices on CUDA with MAGMA,
    which cannot run inside a CUDA graph; a column loop of elementwise ops
    and products can. Not positive definite: NaN entries (check with
    ``isfinite``).
    """
    n = a.shape[-1]
    cols = []
    for j in range(n):
        left = torch.stack(cols, -1) if cols else a.new_zeros(a.shape[:-1] + (0,))  # (..., n, j)
        col = a[..., :, j] - (left * left[..., j : j + 1, :]).sum(-1)  # (..., n)
        diag = torch.sqrt(col[..., j : j + 1])
        col = torch.where(torch.arange(n, device=a.device) >= j, col / diag, torch.zeros_like(col))
        cols.append(col)
    return torch.stack(cols, -1)


def _spd_solve(a, b):
    """``a^-1 b`` for SPD ``a`` (..., n, n) and ``b`` (..., n), through :func:`_cholesky`."""
    tril = _cholesky(a)
    u = torch.linalg.solve_triangular(tril, b.unsqueeze(-1), upper=False)
    return torch.linalg.solve_triangular(tril.transpose(-1, -2), u, upper=True).squeeze(-1)


def _inverse_tril(a):
    """A lower-triangular ``F`` with ``F F^T = a^-1`` for SPD ``a``, through :func:`_cholesky`.

    With ``P`` the order reversal, ``P a P = L L^T`` gives ``a^-1 = F F^T`` for
    ``F = P L^-T P``, which is lower triangular.
    """
    tril = _cholesky(a.flip(-1, -2))
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)
    inv = torch.linalg.solve_triangular(tril, eye, upper=False)
    return inv.transpose(-1, -2).flip(-1, -2)


def _weighted_slopes(w, dg, z, coupling, ridge=0.05):
    """Slopes of the weighted least squares of ``z`` on ``[1, dg]`` per series.

    The intercept is free; the slopes are pulled towards ``coupling`` (ridge).

    Parameters
    ----------
    w : torch.Tensor of shape (S, K)
        Normalised weights.
    dg : torch.Tensor of shape (K, D)
        Global draws minus the reference point.
    z : torch.Tensor of shape (S, K, n)
        Individual draws.
    coupling : torch.Tensor of shape (S, n, D)
        Current slopes, the ridge target; the penalty of slope ``d`` is
        ``ridge`` times the weighted variance of ``dg[:, d]``.

    Returns
    -------
    torch.Tensor of shape (S, n, D)
    """
    S, K = w.shape
    X = torch.cat([torch.ones((K, 1), dtype=dg.dtype, device=dg.device), dg], 1)  # (K, P)
    xtwx = torch.einsum("sk,ki,kj->sij", w, X, X)
    xtwy = torch.einsum("sk,ki,skn->sin", w, X, z)
    var = (w.unsqueeze(-1) * dg.unsqueeze(0) ** 2).sum(1) - ((w.unsqueeze(-1) * dg.unsqueeze(0)).sum(1)) ** 2
    pen = torch.cat([torch.zeros((S, 1), dtype=w.dtype, device=w.device), ridge * var + 1e-12], 1)
    prior = torch.cat([torch.zeros_like(z[:, :1, :]), coupling.transpose(1, 2)], 1)  # (S, P, n)
    beta = torch.linalg.solve(xtwx + torch.diag_embed(pen), xtwy + pen.unsqueeze(-1) * prior)
    return beta[:, 1:].transpose(1, 2)


class PriorFollowingProposal:
    """Individual proposals that follow the population distribution exactly.

    A series' proposal is the product of a fixed Gaussian "likelihood factor"
    ``l_i(z)`` and the actual population density of its individual latents
    at the global draw ``g``::

        q(z_i | g) ∝ l_i(z_i) N(z_i | mu(g), diag omega(g)^2),

    with the covariance inflated by ``inflation**2``. For a series whose
    likelihood is Gaussian in ``z_i`` this is the exact conditional
    posterior at every ``g``: its mean shrinks towards ``mu(g)`` and its
    covariance follows ``omega(g)``, which a proposal with a mean that is
    linear in ``g`` and a fixed covariance cannot do. Dependence on the other
    global latents (shared parameters, group levels) enters linearly, as
    before. Build it with :meth:`HierarchicalVAE.prior_following`.

    Parameters
    ----------
    eta : torch.Tensor of shape (S, n)
        Precision-weighted mean of the likelihood factors.
    lam : torch.Tensor of shape (S, n, n)
        Precisions of the likelihood factors (positive semi-definite).
    slopes : torch.Tensor of shape (S, n, D) or None
        Linear dependence of the mean on ``g - g_ref`` (zero on the
        individual and group hyperparameters).
    g_ref : torch.Tensor of shape (1, D)
    hierarchy : Hierarchy
    inflation : float
    dtype : torch.dtype
        Of the returned proposals.
    """

    def __init__(self, eta, lam, slopes, g_ref, hierarchy, inflation, dtype):
        self.eta, self.lam, self.slopes, self.g_ref = eta, lam, slopes, g_ref
        self.hierarchy, self.inflation, self.dtype = hierarchy, float(inflation), dtype

    def at(self, g):
        """Mean ``(S, G, n)`` and Cholesky factor ``(S, G, n, n)`` for global draws ``(G, D)``."""
        g = g.to(torch.float64)
        mu, omega = self.hierarchy.individual_prior(g)  # (G, n)
        prior_prec = omega.pow(-2)
        prec = self.lam.unsqueeze(1) + torch.diag_embed(prior_prec).unsqueeze(0)  # (S, G, n, n)
        # A non-finite or singular precision (an optimiser's wild step in omega)
        # gives NaN proposals, hence zero-weight draws, as elsewhere.
        chol, info = torch.linalg.cholesky_ex(prec)
        rhs = (self.eta.unsqueeze(1) + (mu * prior_prec).unsqueeze(0)).unsqueeze(-1)
        mean = torch.cholesky_solve(rhs, chol).squeeze(-1)
        if self.slopes is not None:
            mean = mean + torch.einsum("snd,gd->sgn", self.slopes, g - self.g_ref)
        scale, info2 = torch.linalg.cholesky_ex(torch.cholesky_inverse(chol))
        bad = (info != 0) | (info2 != 0)
        mean = torch.where(bad.unsqueeze(-1), torch.full_like(mean, math.nan), mean)
        scale = torch.where(bad[..., None, None], torch.ones_like(scale), scale) * self.inflation
        return mean.to(self.dtype), scale.to(self.dtype)


class HierarchicalVAE(torch.nn.Module):
    """Container of the trainable parts and the computation of log weights.

    Parameters
    ----------
    model : ODEModel
    hierarchy : Hierarchy
    encoder : SeriesEncoder
    q_global : MeanFieldGaussian
    solver : str
    factor_index : dict
        Column of the group codes for each factor.
    """

    #: solve with the compiled step (skhds.solvers._odeint.compiled_step); set by the estimator
    compile_solver = False

    def __init__(self, model, hierarchy, encoder, q_global, solver, factor_index):
        super().__init__()
        self.model = model
        self.encoder = encoder
        self.q_global = q_global
        self.hierarchy = hierarchy
        self.solver = solver
        self.factor_index = dict(factor_index)
        self.noise_bases = list(model.noise.declare())
        # Individual dimensions that are noise parameters (per-series noise), the others,
        # and the order that puts [other dimensions, noise dimensions] back in place; as
        # buffers, so that indexing copies nothing from the host (CUDA graphs).
        names = {f"{b}_{o}" for b in self.noise_bases for o in model.observable_names}
        n_ind = len(hierarchy.individual)
        noise_dims = [j for j, s in enumerate(hierarchy.individual) if s.name in names]
        mean_dims = [j for j in range(n_ind) if j not in noise_dims]
        self.n_noise_dims = len(noise_dims)
        stacked = mean_dims + noise_dims
        for name, idx in (("_mean_dims", mean_dims), ("_noise_dims", noise_dims),
                          ("_dim_order", sorted(range(n_ind), key=stacked.__getitem__))):
            self.register_buffer(name, torch.tensor(idx, dtype=torch.long), persistent=False)
        self._checked = False
        # The proposal of a series may follow every global latent except the group
        # hyperparameters (location and spread of a group parameter's levels):
        # p(y_i, z_i | g) does not depend on them given the level values.
        mask = torch.ones(hierarchy.n_global, dtype=torch.bool)
        for spec in hierarchy.group:
            i_mu, i_tau, _ = hierarchy.grp_index[spec.name]
            for i in (i_mu, i_tau):
                if i is not None:
                    mask[i] = False
        self.register_buffer("coupling_mask", mask, persistent=False)

    # ------------------------------------------------------------ pieces
    def kl_global(self):
        """Analytic KL of the global variational family to its prior."""
        return self.hierarchy.kl(self.q_global.loc, self.q_global.scale)

    def log_prior_global(self, g):
        """``log p(g)`` for draws ``(n, D)``: ``(n,)``."""
        return self.hierarchy.log_prior(g)

    def _inputs(self, batch, time_axis=False):
        u = batch["inputs"]
        out = {}
        for j, name in enumerate(self.model.inputs):
            v = u[:, j].reshape(-1, 1)
            out[name] = v.unsqueeze(-1) if time_axis else v
        return out

    def _check_outputs(self, x0, dx, S, K):
        name = type(self.model).__name__
        n = len(self.model.states)
        if dx.shape != (S, K, n):
            raise ValueError(
                f"Model {name}: rhs() returned shape {tuple(dx.shape)}; expected (S, K, n_states) = "
                f"({S}, {K}, {n}). Use ODEModel.stack(...) to combine state derivatives."
            )
        if dx.dtype != x0.dtype:
            raise TypeError(
                f"Model {name}: rhs() returned dtype {dx.dtype}, expected {x0.dtype}; create new "
                "tensors with the dtype/device of the state x."
            )
        self._checked = True

    def simulate(self, params, batch, K, return_noise_scale=False):
        """Observable means ``(S, K, n_observables, n_times)`` for parameters ``params``.

        With ``return_noise_scale=True``, returns ``(means, noise_scale)``: the
        model's factors on the noise scale (:meth:`ODEModel.observe_noise_scale`)
        in the layout of the means, or None for a model without them.
        """
        model = self.model
        S = batch["inputs"].shape[0]
        n = len(model.states)
        inputs = self._inputs(batch)
        x0 = model.initial_state(params, inputs)
        try:
            x0 = torch.broadcast_to(x0, (S, K, n))
        except RuntimeError as exc:
            raise ValueError(
                f"Model {type(model).__name__}: initial_state() returned shape {tuple(x0.shape)}, "
                f"not broadcastable to (S, K, n_states) = ({S}, {K}, {n})."
            ) from exc
        x0 = x0.to(batch["y"].dtype)
        if torch.is_grad_enabled():
            # Per-sample views of every parameter, so that a sample whose simulation
            # overflows (weight zero) cannot turn the gradient of shared ones into NaN.
            params = {k: _isolate(v.expand(S, K)) for k, v in params.items()}
            x0 = _isolate(x0)

        params = model.with_derived(params, inputs)

        def func(t, x):
            return model.rhs(t, x, params, inputs)

        if not self._checked:
            self._check_outputs(x0, func(batch["solve_times"][:, :1], x0), S, K)
        traj = odeint(func, x0, batch["solve_times"], method=self.solver, plan=batch["plan"],
                      compile=self.compile_solver)
        if batch["prepend"]:
            traj = traj[..., 1:]
        xt = traj.transpose(-1, -2)  # (S, K, T, n_states)
        p_t = {k: v.unsqueeze(-1) for k, v in params.items()}
        return observe_checked(model, xt, p_t, self._inputs(batch, time_axis=True),
                               noise_scale=return_noise_scale)

    def noise_params(self, params):
        """Noise parameters stacked per observable: ``(1|S, Kg, n_obs, 1)`` tensors."""
        obs = self.model.observable_names
        return {
            b: torch.stack(torch.broadcast_tensors(*[params[f"{b}_{o}"] for o in obs]), -1).unsqueeze(-1)
            for b in self.noise_bases
        }

    def log_likelihood(self, means, batch, params, noise_scale=None):
        """Masked log-likelihood of the observations: ``(S, K)``.

        ``noise_scale`` holds the model's factors on the noise scale, from
        :meth:`simulate` (None: constant noise).

        Samples whose simulation is not finite, or whose likelihood overflows,
        get NaN (turned into weight zero by the bound). Their means are replaced
        by the data before the density is evaluated, so their gradients are
        exactly zero instead of ``0 * inf = NaN``.
        """
        y = batch["y"].unsqueeze(1)
        mask = batch["mask"].unsqueeze(1)
        nparams = self.noise_params(params)
        noise = self.model.noise
        with torch.no_grad():
            # one number per sample, not finite if any mean is not (0 * inf = NaN; also
            # means whose sum overflows) or the density of an observed entry overflows
            probe = noise.scaled_log_prob_sum(y, means, nparams, mask, noise_scale)
            probe = probe + 0.0 * means.sum((-2, -1))
            bad = ~torch.isfinite(probe)  # (S, K)
        # unconditional (no host synchronisation on a GPU): a no-op where nothing is bad
        means = torch.where(bad[..., None, None], y.expand_as(means), means)
        if noise_scale is not None:
            noise_scale = torch.where(bad[..., None, None], torch.ones_like(noise_scale), noise_scale)
        ll = noise.scaled_log_prob_sum(y, means, nparams, mask, noise_scale)
        return torch.where(bad, torch.full_like(ll, math.nan), ll)

    def encode(self, batch):
        """The encoder's proposal ``(loc, scale, coupling)`` for the series of ``batch``.

        ``coupling`` (the dependence of the mean on the global latents) is
        None for encoders that return only ``(loc, scale)``.
        """
        out = self.encoder(
            batch["enc_y"], batch["mask"].to(batch["enc_y"].dtype), batch["enc_times"],
            batch["enc_inputs"], batch["codes"],
        )
        loc, scale, coupling = (*out, None)[:3]
        if coupling is not None:
            coupling = coupling * self._series_coupling_mask(batch["codes"]).unsqueeze(1).to(coupling)
        return loc, scale, coupling

    def _series_coupling_mask(self, codes):
        """Which global latents each series' proposal may follow: ``(S, D)`` bool.

        All but the group hyperparameters (``coupling_mask``) and the values of
        group levels other than the series' own: ``p(y_i, z_i | g)`` depends on
        its level's value only. (Coupled to all levels, a proposal picks up the
        noise of every other level's draw, and a level without training series,
        whose ``q(g)`` stays as wide as its group distribution, shakes all
        proposals.) A series of a level unseen in training follows none.
        """
        mask = self.coupling_mask.expand(codes.shape[0], -1).clone()
        for spec in self.hierarchy.group:
            i_v = self.hierarchy.grp_index[spec.name][2]
            n_levels = self.hierarchy.n_levels[spec.factor]
            c = codes[:, self.factor_index[spec.factor]]
            # (no one_hot: it checks the codes' range on the host, a sync in captured passes)
            mask[:, i_v : i_v + n_levels] = c.unsqueeze(-1) == torch.arange(n_levels, device=c.device)
        return mask

    # ------------------------------------------------------ log weights
    def log_weights(self, batch, K, g, generator, detach_q=False, include_global=False, local=None,
                    eps=None, g_repeats=1, defensive=0.0, log_q_global=None):
        """Log importance weights of ``K`` draws per series.

        Parameters
        ----------
        batch : dict
            From :meth:`SeriesData.batch`.
        K : int
            Importance samples per series.
        g : torch.Tensor of shape (1, D) or (K, D)
            Global latent draw(s): one shared draw (training) or one per
            importance sample (evaluation, integrating over ``q(g)``).
        generator : torch.Generator
        detach_q : bool, default=False
            Evaluate ``log q`` at detached encoder outputs (DReG).
        include_global : bool, default=False
            Add ``log p(g) - log q(g)`` to every weight (the reference
            implementation's per-well bound).
        local : tuple or PriorFollowingProposal, optional
            ``(loc, scale, coupling)`` of the individual proposals, replacing
            the encoder's output (refined proposals, :meth:`refine_local`),
            or proposals that follow the population distribution
            (:meth:`prior_following`).
        eps : torch.Tensor of shape (S, K, n_individual), optional
            Standard normal draws to use (common random numbers).
        g_repeats : int, default=1
            ``g`` holds ``K // g_repeats`` distinct draws, each used for
            ``g_repeats`` consecutive importance samples.
        defensive : float, default=0.0
            Fraction of the samples of each global draw taken from the
            population density ``p(z | g)`` instead of the proposal
            (defensive importance sampling). Every weight then uses the
            mixture density ``(1 - a) q + a p(z | g)``, ``a`` the realised
            fraction, which bounds the weights by the likelihood over ``a``:
            the tails of a posterior that the likelihood barely constrains
            (a parameter the data do not identify) are sampled even where the
            proposal is too light-tailed. Estimates stay unbiased.
        log_q_global : torch.Tensor of shape (K,), optional
            ``log q(g)`` of the draws ``g`` for ``include_global``, exact from
            :meth:`~skhds.nn.MeanFieldGaussian.rsample_with_log_prob`
            (default: evaluated at ``g``).

        Returns
        -------
        dict
            ``log_w`` (S, K) sanitised, ``n_bad`` (0-d tensor), ``z`` (S, K, n_ind),
            ``params``, ``means``, ``g``.
        """
        g_unique = g
        if g_repeats > 1:
            g = g.repeat_interleave(g_repeats, 0)
        if isinstance(local, PriorFollowingProposal):
            loc, scale = local.at(g_unique)
            if g_repeats > 1:
                loc, scale = loc.repeat_interleave(g_repeats, 1), scale.repeat_interleave(g_repeats, 1)
            coupling = None
        else:
            loc, scale, coupling = self.encode(batch) if local is None else local
        S = loc.shape[0]
        if eps is None:
            eps = torch.randn((S, K, loc.shape[-1]), generator=generator, dtype=loc.dtype,
                              device=loc.device)
        if coupling is not None:
            # q(z_i | y_i, g): the mean follows the global draw (one per sample, or shared).
            delta = self._coupling_delta(g)
            loc = loc.unsqueeze(1) + torch.einsum("snd,kd->skn", coupling, delta)
        z = gaussian_rsample(loc, scale, eps)
        # from eps, not from z: exact in float32 however narrow the proposal (see
        # gaussian_log_prob_of_draw); with DReG the gradient flows through z alone
        log_q = gaussian_log_prob_of_draw(eps, scale, z if detach_q else None)
        L = g_repeats if g_repeats > 1 else K
        mix = defensive > 0 and L > 1
        if mix:
            # Stratified: the first m of every g_repeats-block (or of all K) come
            # from p(z | g); weighting by the mixture at the realised fraction
            # keeps the estimates unbiased.
            m = min(L - 1, max(1, int(round(defensive * L))))
            from_prior = (torch.arange(K, device=z.device) % L) < m
            mu, omega = self.hierarchy.individual_prior(g)
            z = torch.where(from_prior[None, :, None], mu.unsqueeze(0) + omega.unsqueeze(0) * eps, z)
            # the population's draws are not the proposal's: their density by evaluation
            log_q = torch.where(from_prior[None, :], gaussian_log_prob(z, loc, scale), log_q)
        log_pz = self.hierarchy.individual_log_prior(g, z)
        if mix:
            log_q = torch.logaddexp(log_q + math.log1p(-m / L), log_pz + math.log(m / L))
        params = self.hierarchy.params(g, z, batch["codes"], self.factor_index, generator,
                                       all_seen=batch.get("all_seen"))
        means, noise_scale = self.simulate(params, batch, K, return_noise_scale=True)
        log_w = self.log_likelihood(means, batch, params, noise_scale) + log_pz - log_q
        if include_global:
            if log_q_global is None:
                log_q_global = self.q_global.log_prob(g)
            log_w = log_w + (self.log_prior_global(g) - log_q_global).unsqueeze(0)
        log_w, n_bad = sanitize_log_weights_lazy(log_w)  # count read by the caller
        return {"log_w": log_w, "n_bad": n_bad, "z": z, "params": params, "means": means, "g": g,
                "loc": loc, "scale": scale, "coupling": coupling, "noise_scale": noise_scale}

    def training_loss(self, batch, n_total, K, generator, estimator="iwae", refine=0, eps=None,
                      refined=None):
        """Loss for one minibatch with a single shared draw of the global latents.

        With ``refine > 0`` (semi-amortised training), the importance samples
        come from each series' Laplace approximation at the global draw,
        found by ``refine`` Gauss-Newton iterations from the encoder's
        proposal (:meth:`refined_proposals`); the bound, which is valid for
        any proposal, trains the model and ``q(g)``, and the encoder is
        trained to match the refined proposals: ``KL(refined || encoder)``
        (per series, at the same draw) is added to the loss.

        Parameters
        ----------
        batch : dict
        n_total : int
            Number of training series (scales the global KL).
        K : int
            Importance samples per series.
        generator : torch.Generator
        estimator : {"iwae", "dreg"}, default="iwae"
        refine : int, default=0
            Gauss-Newton iterations of semi-amortised training (0: the
            encoder's proposals).
        eps : torch.Tensor of shape (1, n_global), optional
            Standard normal noise of the global draw, ``q(g)``'s
            :meth:`~skhds.nn.MeanFieldGaussian.from_noise` (default: drawn
            from ``generator``).
        refined : tuple, optional
            ``(loc, scale, ok)`` from :meth:`refined_proposals`, computed
            beforehand (at the draw of the same ``eps``, for several
            minibatches at once); only with ``refine > 0``.

        Returns
        -------
        loss : torch.Tensor
        per_series : torch.Tensor of shape (S,)
            The bound of each series (without the encoder's KL).
        out : dict
            As from :meth:`log_weights`.
        """
        g = self.q_global.rsample(1, generator) if eps is None else self.q_global.from_noise(eps)
        if not refine or not self.hierarchy.n_individual:
            out = self.log_weights(batch, K, g, generator, detach_q=(estimator == "dreg"))
            loss, per_series = minibatch_objective(
                out["log_w"], self.kl_global(), n_total, z=out["z"], estimator=estimator
            )
            return loss, per_series, out
        # the encoder's mean follows the draw, but the matching term below trains the
        # encoder only: through an undetached draw it would also move q(g), which must
        # follow the bound's gradient alone
        loc, scale = self._encoded_at(batch, g.detach())
        if refined is None:
            refined = self._refine(batch, g.detach(), loc.detach(), scale.detach(), refine)
        mode, tril, ok = refined
        # proposals independent of every trained parameter: the plain IWAE gradient is
        # the gradient of the bound (DReG changes only the encoder's, trained below)
        out = self.log_weights(batch, K, g, generator, local=(mode, tril, None))
        loss, per_series = minibatch_objective(out["log_w"], self.kl_global(), n_total, z=out["z"])
        kl = gaussian_kl(mode, tril, loc, scale)
        loss = loss + torch.where(ok, kl, torch.zeros_like(kl)).mean()
        return loss, per_series, out

    @torch.no_grad()
    def refined_proposals(self, batch, g, n_iter):
        """Semi-amortised proposals: each series' Laplace approximation at ``g``.

        :meth:`gauss_newton_local` from the encoder's proposal means at
        ``g``; where it fails, the encoder's proposal.

        Parameters
        ----------
        batch : dict
        g : torch.Tensor of shape (1, n_global)
            One global draw.
        n_iter : int
            Gauss-Newton iterations.

        Returns
        -------
        tuple
            ``(loc, scale, ok)`` as from :meth:`gauss_newton_local`, with the
            encoder's proposal (means and Cholesky factors) where ``ok`` is False.
        """
        return self._refine(batch, g, *self._encoded_at(batch, g), n_iter)

    def _encoded_at(self, batch, g):
        """The encoder's proposal means at the global draw ``g`` and its Cholesky factors."""
        loc, scale, coupling = self.encode(batch)
        if scale.dim() == 2:
            scale = torch.diag_embed(scale)
        return self._mean_at(loc, coupling, g), scale

    def _refine(self, batch, g, start, start_scale, n_iter):
        """Gauss-Newton from ``start``, falling back to the start where it fails."""
        mode, tril, ok = self.gauss_newton_local(batch, g, start, n_iter=n_iter)
        mode = torch.where(ok[:, None], mode, start)
        tril = torch.where(ok[:, None, None], tril, start_scale)
        return mode, tril, ok

    @torch.no_grad()
    def gauss_newton_local(self, batch, g, start, n_iter=5, inflation=1.2, damping=1e-2):
        """Laplace approximation of each series' posterior at ``g`` by damped Gauss-Newton.

        The individual parameters ``z_i`` of every series are moved from
        ``start`` towards the mode of ``log p(y_i | z_i, g) + log p(z_i | g)``
        by Levenberg-Marquardt steps on the residuals weighted by the noise
        model's variance at the current fit (a Gaussian approximation of the
        noise: it shapes the proposal only, never the bound; with per-series
        noise parameters the variance is part of the fit, by Fisher scoring of
        the Gaussian likelihood in both mean and variance), with the
        Jacobian of the observable means by forward differences (a step of a
        thousandth of a prior sd: its O(h) error is far below what matters
        for a proposal, and it needs half the solves of central differences;
        1.22 times faster epochs on the double-receiver study). All
        ``n + 1`` perturbed solves of all series run as one batched solve
        (per-series noise parameters need no solve: they move the variance only),
        so an iteration costs about one forward solve; there is no autograd
        and no host synchronisation (the pass stays capturable in a CUDA
        graph). Each series keeps the best point of its iterations; a step
        that makes its fit worse is retried from there with ten times the
        damping (a successful one lowers it). The covariance is the inverse Gauss-Newton precision ``J^T W J`` plus the
        population precision, inflated by ``inflation**2``.

        Parameters
        ----------
        batch : dict
        g : torch.Tensor of shape (1, n_global)
            One global draw.
        start : torch.Tensor of shape (S, n_individual)
            Starting points (the encoder's means at ``g``).
        n_iter : int, default=5
        inflation : float, default=1.2
        damping : float, default=1e-2
            Levenberg-Marquardt damping (relative to the diagonal).

        Returns
        -------
        loc : torch.Tensor of shape (S, n_individual)
        scale : torch.Tensor of shape (S, n_individual, n_individual)
            Lower-triangular Cholesky factor of the covariance.
        ok : torch.Tensor of shape (S,), bool
            False where the fit or the factorisation failed (use the start).
        """
        S, n = start.shape
        mu, omega = self.hierarchy.individual_prior(g)
        mu, prior_prec = mu[0], omega[0] ** -2  # (n,)
        h = 1e-3 * self.hierarchy._constant("ind_scale", start)  # a thousandth of a prior sd
        # Per-series noise parameters move the variance, not the means: their
        # perturbations need no solve.
        n_n = self.n_noise_dims
        n_m = n - n_n
        if n_n:
            h_m, h_n = h[self._mean_dims], h[self._noise_dims]
            eye = torch.eye(n, dtype=start.dtype, device=start.device)
            step_m, step_n = eye[self._mean_dims] * h_m[:, None], eye[self._noise_dims] * h_n[:, None]
            offsets_n = torch.cat([step_n, -step_n])  # (2 n_noise, n)
        else:
            h_m, step_m = h, torch.diag(h)
        offsets = torch.cat([torch.zeros_like(h).unsqueeze(0), step_m])  # (n_m + 1, n)
        y, mask = batch["y"], batch["mask"]
        prior_diag = torch.diag_embed(prior_prec.expand(S, n))
        z = best = start
        best_obj = torch.full((S,), math.inf, dtype=start.dtype, device=start.device)
        best_prec, best_grad = prior_diag, torch.zeros_like(start)
        lam = torch.full((S, 1, 1), damping, dtype=start.dtype, device=start.device)
        for it in range(n_iter + 1):
            zz = z.unsqueeze(1) + offsets  # (S, n_m + 1, n): the point and its perturbations
            params = self.hierarchy.params(g, zz, batch["codes"], self.factor_index, None,
                                           all_seen=batch.get("all_seen"))
            # (S, n_m + 1, n_obs, T); the noise scale factors, if the model has them, alike
            means, nscale = self.simulate(params, batch, n_m + 1, return_noise_scale=True)
            noise = {k: v[:, :1] for k, v in self.noise_params(params).items()}
            m0, s0 = means[:, :1], (None if nscale is None else nscale[:, :1])
            var = self.model.noise.scaled_variance(m0, noise, s0)[:, 0]
            m0 = m0[:, 0]
            w = torch.where(mask, 1.0 / var, torch.zeros_like(var))
            r = torch.where(mask, y - m0, torch.zeros_like(m0))
            jac = (means[:, 1:] - m0.unsqueeze(1)) / h_m[None, :, None, None]
            finite = (torch.isfinite(r) & torch.isfinite(w)).flatten(1).all(-1)
            finite = finite & torch.isfinite(jac).flatten(1).all(-1)
            r, w, jac = torch.nan_to_num(r), torch.nan_to_num(w), torch.nan_to_num(jac)
            if n_n:  # no dependence of the means on the noise dimensions
                zeros = torch.zeros_like(jac[:, :1]).expand(-1, n_n, -1, -1)
                jac = torch.cat([jac, zeros], 1)[:, self._dim_order]
            dz = z - mu
            obj = 0.5 * (w * r * r).sum((-2, -1)) + 0.5 * (prior_prec * dz * dz).sum(-1)
            prec = torch.einsum("sjot,skot,sot->sjk", jac, jac, w) + prior_diag
            grad = torch.einsum("sjot,sot,sot->sj", jac, w, r) - prior_prec * dz
            if n_n:
                # The Gaussian negative log-likelihood in the variance too: + 0.5 log var,
                # gradient 0.5 dlogvar (r^2 / var - 1), Fisher information 0.5 dlogvar^2
                # (dlogvar: the derivatives of log var in every dimension, the mean ones
                # through the means, the noise ones through the noise parameters).
                s_m = None if nscale is None else nscale[:, 1:]
                dlv_m = (torch.log(self.model.noise.scaled_variance(means[:, 1:], noise, s_m))
                         - torch.log(var).unsqueeze(1))  # (S, n_m, n_obs, T)
                params_n = self.hierarchy.params(g, z.unsqueeze(1) + offsets_n, batch["codes"],
                                                 self.factor_index, None, all_seen=batch.get("all_seen"))
                noise_n = self.noise_params(params_n)
                s_n = None if s0 is None else s0.expand(-1, 2 * n_n, -1, -1)
                log_var_n = torch.log(self.model.noise.scaled_variance(
                    m0.unsqueeze(1).expand(-1, 2 * n_n, -1, -1), noise_n, s_n))
                jlv_m = dlv_m / h_m[None, :, None, None]
                jlv_n = (log_var_n[:, :n_n] - log_var_n[:, n_n:]) / (2.0 * h_n[None, :, None, None])
                jlv = torch.cat([jlv_m, jlv_n], 1)[:, self._dim_order]  # (S, n, n_obs, T), in order
                finite = finite & torch.isfinite(jlv).flatten(1).all(-1)
                jlv = torch.where(mask.unsqueeze(1), torch.nan_to_num(jlv), torch.zeros_like(jlv))
                obj = obj + 0.5 * torch.where(mask, torch.log(var), torch.zeros_like(var)).sum((-2, -1))
                prec = prec + 0.5 * torch.einsum("sjot,skot->sjk", jlv, jlv)
                grad = grad + 0.5 * torch.einsum("sjot,sot->sj", jlv, w * r * r - mask.to(r.dtype))
            obj = torch.where(finite, obj, torch.full_like(obj, math.inf))
            improved = obj < best_obj
            best = torch.where(improved[:, None], z, best)
            best_prec = torch.where(improved[:, None, None], prec, best_prec)
            best_grad = torch.where(improved[:, None], grad, best_grad)
            best_obj = torch.where(improved, obj, best_obj)
            if it == n_iter:
                break
            # Levenberg-Marquardt: less damping after a success, more after a failure
            lam = torch.where(improved[:, None, None], lam * 0.3, lam * 10.0)
            lm = best_prec + lam * torch.diag_embed(torch.diagonal(best_prec, dim1=-2, dim2=-1))
            step = torch.nan_to_num(_spd_solve(lm.double(), best_grad.double())).to(start.dtype)
            if n_n:
                # Fisher scoring on the log scale overshoots a too small noise level by
                # exp(2 delta) (the step is (mean r^2 / var - 1) / 2 in log sd); taken on
                # the variance scale it lands on the residual variance in one step:
                # log sd moves by log(1 + 2 delta) / 2 (exact for a scale parameter).
                d = step[:, self._noise_dims]
                d = 0.5 * torch.log1p((2.0 * d).clamp(min=-1.0 + 1e-6))
                step = step.index_copy(1, self._noise_dims, d)
            z = best + step
        tril = inflation * _inverse_tril(best_prec.double())
        ok = torch.isfinite(best_obj) & torch.isfinite(tril).flatten(1).all(-1)
        return best, torch.nan_to_num(tril).to(start.dtype), ok

    @torch.no_grad()
    def evaluate(self, batch, K, generator, include_global=False, local=None):
        """Log weights with one global draw per importance sample (no gradients)."""
        g, log_q_global = self.q_global.rsample_with_log_prob(K, generator)
        return self.log_weights(batch, K, g, generator, include_global=include_global, local=local,
                                log_q_global=log_q_global)

    def log_joint_collapsed(self, batch, theta):
        """``log p(y_i, theta_i)`` of each series with its hyperparameters integrated out.

        Parameters
        ----------
        batch : dict
        theta : torch.Tensor of shape (S, M, n_collapsed)
            Each series' population latents, its own level's value of each
            group parameter and its individual latents, ``M`` points per
            series (:meth:`~skhds.models.Hierarchy.collapsed_params`).

        Returns
        -------
        torch.Tensor of shape (S, M)
            NaN where a simulation is not finite.
        """
        params, log_prior = self.hierarchy.collapsed_params(theta)
        means, noise_scale = self.simulate(params, batch, theta.shape[1], return_noise_scale=True)
        return self.log_likelihood(means, batch, params, noise_scale) + log_prior

    def adapted_evidence(self, batch, K, generator, n_iter=50, df=5, max_scale=None):
        """Log weights of the per-series evidence, its latents proposed per series.

        The target is ``p(y_i, z_i, g)`` for one series alone: the evidence
        ``log p(y_i)`` with the global latents integrated over their prior,
        which the reference implementation's per-series bound also bounds
        (``include_global=True``). The hyperparameters, and the values of
        group levels other than the series' own, are integrated out exactly
        (:meth:`log_joint_collapsed`): they shape the prior of what the
        series reads into funnels, which no Gaussian proposal follows. The
        proposal for the rest is the Laplace approximation of that series'
        posterior, found by :func:`~skhds.inference.laplace_per_series` from
        the mean of ``q(g)`` and the encoder's proposal, with Student-t tails.

        Parameters
        ----------
        batch : dict
            In float64 (the curvature is measured by finite differences).
        K : int
            Importance samples per series.
        generator : torch.Generator
        n_iter : int, default=50
            Largest number of Newton iterations.
        df : int, default=5
            Degrees of freedom of the Student-t proposals.
        max_scale : float, optional
            Largest proposal standard deviation in any direction (default:
            the largest prior scale of the latents): directions that the
            series does not curve, or curves the wrong way (not yet at a
            maximum), are at most as wide as the prior. On the
            double-receiver study's wells a cap of 0.75-3 gave bounds 40-70
            nats/well higher than a cap of 6 (benchmarks/README.md).

        Returns
        -------
        dict
            ``log_w`` (S, K) sanitised, ``n_bad`` (0-d tensor), and ``log_joint_at_mode`` (S,).
        """
        H = self.hierarchy
        dtype = batch["y"].dtype
        if max_scale is None:
            max_scale = float(max(H.prior_scale.max(), H.ind_scale.max(initial=0.0)))
        with torch.no_grad():
            g0 = self.q_global.loc.detach().to(dtype)
            loc, _, coupling = self.encode(batch)
            z0 = self._mean_at(loc, coupling, g0.unsqueeze(0)).to(dtype)
            start = H.collapsed_point(g0, z0, batch["codes"], self.factor_index)
        step = torch.full((start.shape[-1],), 1e-4, dtype=dtype, device=start.device)

        def target(theta):
            return self.log_joint_collapsed(batch, theta)

        mode, cov, value = laplace_per_series(target, start, step, max_scale, n_iter=n_iter)
        proposal = MultivariateStudentT.from_moments(mode, cov, df=df)
        draws = proposal.sample(K, generator).to(dtype)
        with torch.no_grad():
            log_w = target(draws) - proposal.log_prob(draws).to(dtype)
        log_w, n_bad = sanitize_log_weights_lazy(log_w)
        return {"log_w": log_w, "n_bad": n_bad, "log_joint_at_mode": value}

    def log_likelihood_given_globals(self, batch, g, L, generator, local=None, eps=None, defensive=0.0):
        """Importance estimates of ``log p(y_i | g_m)`` for global draws ``g``.

        Each of the ``G`` global draws gets ``L`` individual samples per
        series; the estimate of ``p(y_i | g_m)`` is unbiased (its log is a
        stochastic lower bound). With ``eps`` of shape ``(S, L, n)`` every
        global draw uses the same standard normal draws (common random
        numbers), which makes the estimate a smooth function of ``g``.

        Parameters
        ----------
        batch : dict
        g : torch.Tensor of shape (G, n_global)
        L : int
        generator : torch.Generator
        local : tuple or PriorFollowingProposal, optional
            Individual proposals, as in :meth:`log_weights`.
        eps : torch.Tensor of shape (S, L, n_individual), optional
            Common random numbers.
        defensive : float, default=0.0
            Fraction of the ``L`` draws taken from ``p(z | g)``, as in
            :meth:`log_weights`.

        Returns
        -------
        torch.Tensor of shape (S, G)
        """
        G = g.shape[0]
        if eps is not None:
            eps = eps.repeat(1, G, 1)
        out = self.log_weights(batch, G * L, g, generator, local=local, eps=eps, g_repeats=L,
                               defensive=defensive)
        log_w = out["log_w"].reshape(-1, G, L)
        return torch.logsumexp(log_w, -1) - math.log(L)

    @torch.no_grad()
    def prior_following(self, local, g_ref, inflation=1.2):
        """Turn proposals adapted near ``g_ref`` into :class:`PriorFollowingProposal`.

        The likelihood factor is the proposal at ``g_ref`` (its covariance
        deflated by ``inflation**2``, the inflation :meth:`refine_local`
        applied) divided by the population density at ``g_ref``; directions
        in which the proposal is wider than the population density get a
        flat factor (precision clamped at zero). At ``g_ref`` the new
        proposal has the old one's mean.

        Parameters
        ----------
        local : tuple
            ``(loc, scale, coupling)`` as from :meth:`refine_local`.
        g_ref : torch.Tensor of shape (n_global,) or (1, n_global)
            The global draw near which ``local`` was adapted.
        inflation : float, default=1.2

        Returns
        -------
        PriorFollowingProposal
        """
        loc, scale, coupling = local
        f64 = torch.float64
        g_ref = g_ref.reshape(1, -1).to(device=loc.device, dtype=f64)
        mean = loc.to(f64)
        slopes = None
        if coupling is not None:
            coupling = coupling.to(f64)
            mean = self._mean_at(mean, coupling, g_ref)
            keep = self.coupling_mask.clone()
            for i_mu, i_om in self.hierarchy.ind_index.values():
                keep[i_mu] = keep[i_om] = False
            slopes = torch.where(keep, coupling, torch.zeros_like(coupling))
        s = scale.to(f64)
        cov = torch.diag_embed(s * s) if s.dim() == 2 else s @ s.transpose(-1, -2)
        prec = torch.cholesky_inverse(torch.linalg.cholesky(cov / inflation**2))
        mu, omega = self.hierarchy.individual_prior(g_ref)  # (1, n)
        prior_prec = torch.diag_embed(omega.pow(-2))  # (1, n, n)
        lam = prec - prior_prec
        evals, evecs = torch.linalg.eigh(0.5 * (lam + lam.transpose(-1, -2)))
        lam = evecs @ torch.diag_embed(evals.clamp_min(0.0)) @ evecs.transpose(-1, -2)
        eta = ((lam + prior_prec) @ mean.unsqueeze(-1)).squeeze(-1) - mu * omega.pow(-2)
        return PriorFollowingProposal(eta, lam, slopes, g_ref, self.hierarchy, inflation, loc.dtype)

    @torch.no_grad()
    def refine_local(self, batch, K, n_rounds, generator, inflation=1.2, sample_globals=None,
                     local=None):
        """Adapt each series' proposal to its posterior by adaptive importance sampling.

        Starting from the encoder's output (or ``local``), each round draws ``K`` samples
        per series (one global draw from ``q(g)`` per sample, as in
        evaluation), weights them, and replaces the proposal's mean and
        covariance by the weighted moments of the draws (after removing the
        part explained by the global draw through the coupling), with the
        covariance inflated by ``inflation**2`` to keep the tails heavy
        enough (population Monte Carlo with Gaussian kernels). This closes
        the amortisation gap where the encoder is poor (few training series,
        a series unlike the training data). The coupling of the mean to the
        global draw is refitted too, by weighted least squares of the draws
        on the global draws (with a weak ridge pull towards the encoder's
        coupling), where there are enough effective draws for it. Only the proposals change; the
        result is still an importance sampler whose estimates use fresh
        draws, so any proposal gives valid (if less efficient) estimates.
        A series whose round has fewer than ``n + 2`` effective draws
        (``n`` individual parameters) moves only its mean, to the weighted
        mean of the draws (towards the posterior mass), and keeps its
        covariance.

        Parameters
        ----------
        batch : dict
        K : int
            Importance samples per round.
        n_rounds : int
            Adaptation rounds.
        generator : torch.Generator
        inflation : float, default=1.2
            Scale factor of the fitted covariance.
        sample_globals : callable, optional
            ``sample_globals(K)`` returns ``(K, n_global)`` global draws to
            adapt to (default: draws from ``q(g)``).
        local : tuple, optional
            ``(loc, scale, coupling)`` to start from, as returned by an
            earlier call (default: the encoder's output).

        Returns
        -------
        tuple
            ``(loc, scale, coupling)``, shaped as the encoder's output.
        """
        loc, scale, coupling = self.encode(batch) if local is None else local
        full = scale.dim() == 3
        n = loc.shape[-1]
        floor = (1e-4 * self.encoder.prior_scale) ** 2 if hasattr(self.encoder, "prior_scale") else 1e-12
        for _ in range(int(n_rounds)):
            g = self.q_global.rsample(K, generator) if sample_globals is None else sample_globals(K)
            out = self.log_weights(batch, K, g, generator, local=(loc, scale, coupling))
            w = normalized_weights(out["log_w"]).to(torch.float64)  # (S, K)
            z = out["z"].to(torch.float64)
            ess = 1.0 / (w * w).sum(-1)
            moved = torch.isfinite(ess)  # some weight is finite: move the mean
            ok = moved & (ess >= n + 2.0)  # enough effective draws for a covariance
            dtype = loc.dtype
            if coupling is not None:
                dg = self._coupling_delta(g)
                dg = dg.to(torch.float64)  # (K, D)
                slope = _weighted_slopes(w, dg, z, coupling.to(torch.float64))
                slope = slope * self._series_coupling_mask(batch["codes"]).unsqueeze(1)
                # With few effective draws the slope is kept and only the mean moves.
                fit = ok & (ess >= dg.shape[1] + n + 2.0)
                coupling = torch.where(fit[:, None, None], slope.to(dtype), coupling)
                z = z - torch.einsum("snd,kd->skn", coupling.to(torch.float64), dg)
            # The weighted mean of the draws net of the coupling: with an unpenalised
            # intercept this is also the least-squares intercept.
            mean = (w.unsqueeze(-1) * z).sum(1)
            resid = z - mean.unsqueeze(1)
            cov = torch.einsum("sk,ski,skj->sij", w, resid, resid) * inflation**2
            cov = cov + torch.diag_embed(torch.as_tensor(floor, dtype=cov.dtype, device=cov.device)
                                         .expand(cov.shape[0], n))
            if full:
                new_scale, info = torch.linalg.cholesky_ex(cov)
                ok = ok & (info == 0)
                scale = torch.where(ok[:, None, None], new_scale.to(dtype), scale)
            else:
                new_scale = torch.diagonal(cov, dim1=-2, dim2=-1).sqrt().to(dtype)
                scale = torch.where(ok[:, None], new_scale, scale)
            loc = torch.where(moved[:, None], mean.to(dtype), loc)
        return loc, scale, coupling

    def _mean_at(self, loc, coupling, g):
        """Proposal means ``(S, n)`` at one global draw ``g`` (1, D): ``loc + B (g - g_ref)``."""
        if coupling is None:
            return loc
        return loc + torch.einsum("snd,kd->sn", coupling, self._coupling_delta(g).to(loc.dtype))

    def _coupling_delta(self, g):
        """``g - q(g)``'s location in the coordinates the individual means are coupled to, else 0."""
        return torch.where(self.coupling_mask, g - self.q_global.loc.detach().to(g), torch.zeros_like(g))

    def _log_joint_local(self, batch, g, z):
        """``log p(y_i | z_i, g) + log p(z_i | g)`` for one global draw ``g`` (1, D) and ``z`` (S, n)."""
        zz = z.unsqueeze(1)
        # a level unseen in training at its group's location: a deterministic objective
        params = self.hierarchy.params(g, zz, batch["codes"], self.factor_index, None,
                                       unseen="location")
        means, noise_scale = self.simulate(params, batch, 1, return_noise_scale=True)
        out = self.log_likelihood(means, batch, params, noise_scale)
        out = out + self.hierarchy.individual_log_prior(g, zz)
        return out[:, 0]

    def laplace_local(self, batch, g_ref, local, K, generator, inflation=1.2, max_iter=50):
        """Replace proposals by the Laplace approximation of each series' posterior at ``g_ref``.

        Adaptive importance sampling (:meth:`refine_local`) converges slowly
        from a poor start: while a series' weights are degenerate only its
        mean moves, and a covariance with the wrong orientation (a ridge of
        correlated parameters) can survive many rounds. Here the conditional
        posterior ``p(z_i | y_i, g_ref)`` of every series is maximised by
        L-BFGS (the series are independent given ``g``, so one run over the
        sum serves them all) from the proposal's mean, and its covariance is
        the inverse of the negative Hessian (central differences of the
        gradient; eigenvalues at least the population precision), inflated
        by ``inflation**2``. The coupling of the mean to the global latents
        becomes the mode's own sensitivity, ``d z_i* / d g = -H_zz^-1 H_zg``
        (implicit function theorem; the mixed derivatives by central
        differences of the gradient), in place of a regression on noisy
        draws. Each series keeps whichever of the old and the new proposal
        has the larger effective sample size of ``K`` draws at ``g_ref``, so
        a posterior far from Gaussian keeps its adapted proposal. Cost: one
        L-BFGS run and ``2 (n_individual + n_global)`` gradient evaluations
        per batch.

        Parameters
        ----------
        batch : dict
        g_ref : torch.Tensor of shape (n_global,) or (1, n_global)
        local : tuple or None
            ``(loc, scale, coupling)`` as from :meth:`refine_local` (``None``:
            the encoder's output).
        K : int
            Draws per series for the comparison.
        generator : torch.Generator
        inflation : float, default=1.2
        max_iter : int, default=50
            L-BFGS iterations.

        Returns
        -------
        tuple
            ``(loc, scale, coupling)``, shaped as ``local``; ``loc`` is, as
            everywhere, the mean at ``q(g)``'s location.
        """
        with torch.no_grad():
            loc, scale, coupling = self.encode(batch) if local is None else local
        if loc.shape[-1] == 0:  # no individual parameters: nothing to adapt
            return loc, scale, coupling
        g = g_ref.reshape(1, -1).to(device=loc.device, dtype=loc.dtype)
        shift = torch.zeros_like(loc)
        if coupling is not None:
            delta = self._coupling_delta(g)
            shift = torch.einsum("snd,kd->sn", coupling, delta)
        start = (loc + shift).detach()
        S, n = start.shape
        z = start.clone().requires_grad_(True)
        opt = torch.optim.LBFGS([z], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-7, tolerance_change=1e-12)

        def closure():
            # Gradients with respect to z only (the model's own parameters keep theirs).
            value = self._log_joint_local(batch, g, z)
            loss = -torch.where(torch.isfinite(value), value, torch.full_like(value, -1e10)).sum()
            (z.grad,) = torch.autograd.grad(loss, z)
            return loss.detach()

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                opt.step(closure)
            except RuntimeError:
                # A line search that overflows on a pathological series: its
                # non-finite mode is caught below and the series keeps its proposal.
                pass
        mode = z.detach()

        def grad_at(x, gg):
            x = x.clone().requires_grad_(True)
            (gr,) = torch.autograd.grad(self._log_joint_local(batch, gg, x).sum(), x)
            return gr.to(torch.float64)

        with torch.no_grad():
            full = scale.dim() == 3
            sd = (torch.diagonal(scale, dim1=-2, dim2=-1) if full else scale).to(torch.float64)
        h = (0.05 * sd / inflation).clamp_min(1e-4)  # (S, n): a twentieth of a posterior sd
        hess = torch.zeros((S, n, n), dtype=torch.float64, device=loc.device)
        for j in range(n):
            e = torch.zeros_like(mode)
            e[:, j] = h[:, j].to(mode.dtype)
            hess[:, :, j] = (grad_at(mode + e, g) - grad_at(mode - e, g)) / (2 * h[:, j : j + 1])
        with torch.no_grad():
            _, omega = self.hierarchy.individual_prior(g)  # (1, n)
            prec = -0.5 * (hess + hess.transpose(-1, -2))
            evals, evecs = torch.linalg.eigh(torch.nan_to_num(prec, nan=0.0))
            floor = omega.to(torch.float64).pow(-2).min()
            evals = evals.clamp_min(float(floor))
            post_cov = evecs @ torch.diag_embed(1.0 / evals) @ evecs.transpose(-1, -2)
            cov = post_cov * inflation**2
        new_coupling = coupling
        if coupling is not None:
            # How the conditional mode moves with the global latents (implicit function
            # theorem): d z* / d g = -H_zz^-1 H_zg, with H_zg by central differences.
            gs = self.q_global.scale.detach().to(torch.float64)
            follows = self._series_coupling_mask(batch["codes"])  # (S, D)
            hzg = torch.zeros((S, n, g.shape[1]), dtype=torch.float64, device=loc.device)
            for d in torch.nonzero(follows.any(0)).flatten().tolist():
                step = max(0.05 * float(gs[d]), 1e-4)
                e = torch.zeros_like(g)
                e[0, d] = step
                dgrad = grad_at(mode, g + e) - grad_at(mode, g - e)
                hzg[:, :, d] = dgrad / (2 * step)
            with torch.no_grad():
                new_coupling = (post_cov @ hzg * follows.unsqueeze(1)).to(coupling.dtype)
                new_coupling = torch.where(torch.isfinite(new_coupling), new_coupling, coupling)
                shift_new = torch.einsum("snd,kd->sn", new_coupling, delta)
        with torch.no_grad():
            if full:
                new_scale, info = torch.linalg.cholesky_ex(cov)
                ok = info == 0
            else:
                new_scale = torch.diagonal(cov, dim1=-2, dim2=-1).sqrt()
                ok = torch.ones(S, dtype=torch.bool, device=loc.device)
            ok = ok & torch.isfinite(mode).all(-1) & torch.isfinite(new_scale).flatten(1).all(-1)
            new_loc = (mode - (shift if coupling is None else shift_new)).to(loc.dtype)
            new_scale = torch.where(ok.view(-1, *([1] * (scale.dim() - 1))), new_scale.to(scale.dtype), scale)
            new_loc = torch.where(ok[:, None], new_loc, loc)
            ess = [effective_sample_size(self.log_weights(batch, K, g, generator, local=cand)["log_w"].double())
                   for cand in ((loc, scale, coupling), (new_loc, new_scale, new_coupling))]
            better = ok & (ess[1] > ess[0])
            loc = torch.where(better[:, None], new_loc, loc)
            scale = torch.where(better.view(-1, *([1] * (scale.dim() - 1))), new_scale, scale)
            if coupling is not None:
                coupling = torch.where(better[:, None, None], new_coupling, coupling)
        return loc, scale, coupling

    @torch.no_grad()
    def predictive(self, batch, K, generator, pred_batch=None, local=None):
        """Importance-weighted posterior predictive mean and variance.

        Parameters
        ----------
        batch : dict
            Observed data (defines the weights).
        K : int
        generator : torch.Generator
        pred_batch : dict, optional
            Same series on another output grid.
        local : tuple or PriorFollowingProposal, optional
            Individual proposals, as in :meth:`log_weights`.

        Returns
        -------
        mean, var : torch.Tensor of shape (S, n_observables, n_times_out)
        out : dict
            As from :meth:`evaluate`.
        """
        out = self.evaluate(batch, K, generator, local=local)
        w = normalized_weights(out["log_w"])
        if pred_batch is None:
            means, noise_scale = out["means"], out["noise_scale"]
        else:
            means, noise_scale = self.simulate(out["params"], pred_batch, K, return_noise_scale=True)
        noise_var = self.model.noise.scaled_variance(means, self.noise_params(out["params"]),
                                                     noise_scale)
        # Zero-weight samples may hold huge (overflowing) values: leave them out entirely.
        finite = torch.isfinite(means) & torch.isfinite(noise_var) & (w > 0)[:, :, None, None]
        means = torch.where(finite, means, torch.zeros_like(means))
        noise_var = torch.where(finite, noise_var, torch.zeros_like(noise_var))
        wk = w[:, :, None, None]
        if not self.training and bool((w.sum(-1) == 0).any()):
            warnings.warn(
                "Every importance sample failed to simulate for some series; their predictions "
                "are set to NaN.", RuntimeWarning, stacklevel=3,
            )
        mean = (wk * means).sum(1)
        second = (wk * (means * means + noise_var)).sum(1)
        var = (second - mean * mean).clamp(min=0.0)
        empty = (w.sum(-1) == 0)[:, None, None]
        mean = torch.where(empty, torch.full_like(mean, math.nan), mean)
        var = torch.where(empty, torch.full_like(var, math.nan), var)
        return mean, var, out
