"""The hierarchy: global latent layout, hyperpriors, and latents -> parameters.

Every inferred quantity is Gaussian on an unconstrained scale. For a parameter
declared with prior ``bijector(Normal(m, s))``:

* population level: one latent ``u ~ N(m, s)``;
* individual level, learned random effects (default): population location
  ``mu ~ N(m, s)`` and spread ``log omega ~ N(log s, hyper_scale)``; each series
  has ``z_i ~ N(mu, omega)``, amortised by the encoder;
* individual level, fixed random effects (the reference implementation's
  behaviour): ``z_i ~ N(m, s)``;
* group level with factor ``f``: location ``mu`` and spread ``log tau`` as
  above (or fixed at ``m, s``), and per level ``z_l ~ N(mu, tau)`` (centred:
  with many series per level the data pin ``z_l`` down, and a mean-field
  family then still gets the posterior spread of ``mu`` right, which a
  non-centred one underestimates badly). A level not seen in training gets a
  fresh ``z ~ N(mu, tau)`` per draw: zero-shot prediction marginalises over the
  group distribution.

All population and group latents form one vector (the *global* latents).
Its prior is Gaussian given ``mu`` and ``tau``, and the KL from a mean-field
Gaussian posterior, including the expectation of the conditional terms of
the level values, is computed in closed form (:meth:`Hierarchy.kl`).
"""

import functools
import math

import numpy as np
import torch

from ..distributions import normal_kl
from ..distributions import normal_log_prob as _log_normal

__all__ = ["Hierarchy"]


@functools.lru_cache(maxsize=None)
def _gauss_hermite(n):
    """Nodes ``t`` and log weights of ``n``-point Gauss-Hermite quadrature, normalised so
    that ``sum_k exp(log_w_k) f(t_k)`` approximates ``E f(T)`` for ``T ~ N(0, 1/2)``."""
    nodes, weights = np.polynomial.hermite.hermgauss(n)
    return nodes, np.log(weights / math.sqrt(math.pi))


class Hierarchy:
    """Layout of the global latent vector and the map to model parameters.

    Parameters
    ----------
    specs : list of Parameter
        Parameter declarations (including noise parameters).
    n_levels : dict
        Number of training levels of each factor used by group parameters.
    random_effects : {"learned", "fixed"}, default="learned"
        Learn the population location and spread of individual and group
        parameters, or fix them at the declared prior (reference behaviour).
    hyper_scale : float, default=0.5
        Prior standard deviation of ``log omega`` and ``log tau`` around the
        log of the declared prior scale.
    """

    def __init__(self, specs, n_levels, random_effects="learned", hyper_scale=0.5):
        self.specs = list(specs)
        self.random_effects = random_effects
        self.hyper_scale = float(hyper_scale)
        self.learned = random_effects == "learned"
        self.population = [s for s in specs if s.level == "population"]
        self.group = [s for s in specs if s.level == "group"]
        self.individual = [s for s in specs if s.level == "individual"]
        self.n_levels = {s.factor: int(n_levels[s.factor]) for s in self.group}

        names, loc, scale = [], [], []

        def add(name, m, sd, count=1):
            start = len(loc)
            for k in range(count):
                names.append(name if count == 1 else f"{name}[{k}]")
                loc.append(m)
                scale.append(sd)
            return start

        self.pop_index = {s.name: add(s.name, s.prior.loc, s.prior.scale) for s in self.population}
        self.ind_index = {}
        if self.learned:
            for s in self.individual:
                i_mu = add(f"mu_{s.name}", s.prior.loc, s.prior.scale)
                i_om = add(f"log_omega_{s.name}", math.log(s.prior.scale), hyper_scale)
                self.ind_index[s.name] = (i_mu, i_om)
        self.grp_index = {}
        for s in self.group:
            if self.learned:
                i_mu = add(f"mu_{s.name}", s.prior.loc, s.prior.scale)
                i_tau = add(f"log_tau_{s.name}", math.log(s.prior.scale), hyper_scale)
            else:
                i_mu = i_tau = None
            # Placeholder prior (used only if random effects are fixed): the level
            # values are N(mu, tau) given the hyperparameters.
            i_v = add(f"{s.name}", s.prior.loc, s.prior.scale, count=self.n_levels[s.factor])
            self.grp_index[s.name] = (i_mu, i_tau, i_v)
        self.latent_names = names
        conditional = np.zeros(len(loc), dtype=bool)
        if self.learned:
            for s in self.group:
                i_v = self.grp_index[s.name][2]
                conditional[i_v : i_v + self.n_levels[s.factor]] = True
        self.conditional = conditional
        self.prior_loc = np.asarray(loc, dtype=float)
        self.prior_scale = np.asarray(scale, dtype=float)
        self.ind_loc = np.array([s.prior.loc for s in self.individual], dtype=float)
        self.ind_scale = np.array([s.prior.scale for s in self.individual], dtype=float)
        self.independent = ~conditional
        self._ind_mu = np.array([i for i, _ in self.ind_index.values()], dtype=np.int64)
        self._ind_om = np.array([j for _, j in self.ind_index.values()], dtype=np.int64)
        self._device_constants = {}

    def _constant(self, name, like, dtype=None):
        """The layout's array ``name`` as a tensor on ``like``'s device.

        Copied once per device and dtype and kept: a pass then never copies
        from the host (a copy from pageable memory waits for the device and
        cannot be captured in a CUDA graph).
        """
        arr = getattr(self, name)
        if dtype is None:
            dtype = like.dtype if arr.dtype.kind == "f" else None
        key = (name, like.device, dtype)
        t = self._device_constants.get(key)
        if t is None:
            t = self._device_constants[key] = torch.as_tensor(arr, dtype=dtype, device=like.device)
        return t

    @property
    def n_global(self):
        """Length of the global latent vector."""
        return len(self.prior_loc)

    @property
    def n_individual(self):
        """Number of individual parameters (encoder outputs per series)."""
        return len(self.individual)

    # ----------------------------------------------------------- individual
    def individual_prior(self, g):
        """Location and spread of ``z_i`` on the unconstrained scale.

        Parameters
        ----------
        g : torch.Tensor of shape (Kg, n_global)

        Returns
        -------
        mu, omega : torch.Tensor of shape (Kg, n_individual)
        """
        if not self.individual:
            empty = g.new_zeros((g.shape[0], 0))
            return empty, empty
        if self.learned:
            i_mu, i_om = self._constant("_ind_mu", g), self._constant("_ind_om", g)
            return g.index_select(1, i_mu), torch.exp(g.index_select(1, i_om))
        mu, om = self._constant("ind_loc", g), self._constant("ind_scale", g)
        return mu.expand(g.shape[0], -1), om.expand(g.shape[0], -1)

    def individual_log_prior(self, g, z):
        """``log N(z | mu, omega)`` summed over individual parameters, ``(S, K)``."""
        mu, omega = self.individual_prior(g)
        return _log_normal(z, mu.unsqueeze(0), omega.unsqueeze(0)).sum(-1)

    # -------------------------------------------------------------- mapping
    def group_location_spread(self, g, spec):
        """Location and spread (``(Kg,)`` each) of a group parameter's levels."""
        i_mu, i_tau, _ = self.grp_index[spec.name]
        if self.learned:
            return g[:, i_mu], torch.exp(g[:, i_tau])
        return (
            g.new_full((g.shape[0],), spec.prior.loc),
            g.new_full((g.shape[0],), spec.prior.scale),
        )

    def group_values(self, g, spec):
        """Unconstrained values of a group parameter at its training levels, ``(Kg, L)``."""
        _, _, i_v = self.grp_index[spec.name]
        return g[:, i_v : i_v + self.n_levels[spec.factor]]

    # ------------------------------------------------------ prior and KL
    def log_prior(self, g):
        """``log p(g)`` of global draws ``(n, D)``: ``(n,)``."""
        loc, scale = self._constant("prior_loc", g), self._constant("prior_scale", g)
        lp = _log_normal(g, loc, scale)
        indep = self._constant("independent", g)
        total = torch.where(indep, lp, torch.zeros_like(lp)).sum(-1)
        for s in self.group if self.learned else ():
            mu, tau = self.group_location_spread(g, s)
            v = self.group_values(g, s)
            total = total + _log_normal(v, mu.unsqueeze(-1), tau.unsqueeze(-1)).sum(-1)
        return total

    def kl(self, q_loc, q_scale):
        """Closed-form ``KL(q || p)`` for a mean-field Gaussian ``q`` of the global latents.

        Parameters
        ----------
        q_loc, q_scale : torch.Tensor of shape (n_global,)

        Returns
        -------
        torch.Tensor
            A scalar.
        """
        loc, scale = self._constant("prior_loc", q_loc), self._constant("prior_scale", q_loc)
        kl = normal_kl(q_loc, q_scale, loc, scale)
        indep = self._constant("independent", q_loc)
        total = torch.where(indep, kl, torch.zeros_like(kl)).sum()
        for s in self.group if self.learned else ():
            i_mu, i_tau, i_v = self.grp_index[s.name]
            sl = slice(i_v, i_v + self.n_levels[s.factor])
            m_v, s_v = q_loc[sl], q_scale[sl]
            m_mu, s_mu = q_loc[i_mu], q_scale[i_mu]
            m_t, s_t = q_loc[i_tau], q_scale[i_tau]
            # E_q[-log N(v | mu, tau)] with log tau ~ N(m_t, s_t):
            # E[1 / tau^2] = exp(-2 m_t + 2 s_t^2), E[log tau] = m_t
            sq = (m_v - m_mu) ** 2 + s_v ** 2 + s_mu ** 2
            cross = 0.5 * sq * torch.exp(-2.0 * m_t + 2.0 * s_t ** 2) + m_t + 0.5 * math.log(2 * math.pi)
            entropy = torch.log(s_v) + 0.5 * math.log(2 * math.pi) + 0.5
            total = total + (cross - entropy).sum()
        return total

    def params(self, g, z, codes, factor_index, generator=None, all_seen=None, unseen="draw"):
        """Model parameters on their own scale, each broadcastable to ``(S, K)``.

        Parameters
        ----------
        g : torch.Tensor of shape (Kg, n_global)
            Global latents; ``Kg`` is 1 (shared) or ``K``.
        z : torch.Tensor of shape (S, K, n_individual)
            Unconstrained individual values.
        codes : torch.Tensor of shape (S, n_factors), dtype long
            Level codes per factor; ``-1`` marks a level unseen in training.
        factor_index : dict
            Column of ``codes`` for each factor name.
        generator : torch.Generator, optional
            Used to draw the group effect of unseen levels.
        all_seen : bool, optional
            True when the caller knows that every code is a seen level: saves
            reading ``codes`` back from the device. Otherwise each factor's
            codes are checked.
        unseen : {"draw", "location"}, default="draw"
            The value of a level unseen in training: a draw from the group
            distribution at ``g`` (marginalising it in importance weights), or
            the group's location (a deterministic plug-in, for optimisation).

        Returns
        -------
        dict
            Name -> tensor.
        """
        out = {}
        for s in self.population:
            out[s.name] = s.prior.bijector.forward(g[:, self.pop_index[s.name]]).unsqueeze(0)
        S, K = z.shape[0], z.shape[1]
        for s in self.group:
            vals = self.group_values(g, s)  # (Kg, L)
            c = codes[:, factor_index[s.factor]]
            seen = c >= 0
            val = vals.t()[c.clamp(min=0)]  # (S, Kg)
            if all_seen is not True and not bool(seen.all()):
                mu, tau = self.group_location_spread(g, s)
                if unseen == "location":
                    fresh = mu.unsqueeze(0).expand(S, -1)
                else:
                    eps = torch.randn((S, K), generator=generator, dtype=g.dtype, device=g.device)
                    fresh = mu.unsqueeze(0) + tau.unsqueeze(0) * eps
                val = torch.where(seen.unsqueeze(-1), val, fresh)
            out[s.name] = s.prior.bijector.forward(val)
        for j, s in enumerate(self.individual):
            out[s.name] = s.prior.bijector.forward(z[..., j])
        return out

    # ------------------------------------------- the evidence of one series
    @property
    def n_collapsed(self):
        """Dimension of one series' latents with the hyperparameters integrated out.

        Population latents, one value per group parameter (the series'
        level) and the individual latents; see :meth:`collapsed_params`.
        """
        return len(self.population) + len(self.group) + len(self.individual)

    def collapsed_point(self, g, z, codes, factor_index):
        """One series' collapsed latents at global latents ``g`` and individual ``z``.

        Parameters
        ----------
        g : torch.Tensor of shape (n_global,)
        z : torch.Tensor of shape (S, n_individual)
        codes : torch.Tensor of shape (S, n_factors), dtype long
            ``-1`` (a level unseen in training) takes the group's location.
        factor_index : dict

        Returns
        -------
        torch.Tensor of shape (S, n_collapsed)
        """
        S = z.shape[0]
        cols = [g[self.pop_index[s.name]].expand(S, 1) for s in self.population]
        for s in self.group:
            vals = self.group_values(g.unsqueeze(0), s)[0]  # (L,)
            mu, _ = self.group_location_spread(g.unsqueeze(0), s)
            c = codes[:, factor_index[s.factor]]
            cols.append(torch.where(c >= 0, vals[c.clamp(min=0)], mu).unsqueeze(-1))
        return torch.cat(cols + [z], -1)

    def collapsed_params(self, theta, n_nodes=40):
        """Model parameters and log prior of one series' collapsed latents.

        For the evidence of a series under the prior of everything,
        ``log p(y_i)`` (``HierarchicalODEVAE.score_samples(include_global=
        "adapted")``), only what the series' likelihood reads needs
        proposing: the population latents, its own level's value of each
        group parameter, and its individual latents. The hyperparameters
        (``mu`` and ``log omega`` of an individual parameter, ``mu`` and
        ``log tau`` of a group parameter) and the other levels' values are
        integrated out exactly: given ``omega`` a value's prior is
        ``N(m, s^2 + omega^2)`` (``mu`` integrated analytically), and the
        one-dimensional integral over ``log omega ~ N(log s, hyper_scale)``
        is done by Gauss-Hermite quadrature; the other levels' values
        integrate to one. With fixed random effects the value's prior is
        ``N(m, s)`` itself. A level unseen in training is a draw from the
        group distribution like any other, so its prior is the same.

        Parameters
        ----------
        theta : torch.Tensor of shape (S, M, n_collapsed)
            Population latents, group values, individual latents, ``M``
            points per series (the layout of :meth:`collapsed_point`).
        n_nodes : int, default=40
            Gauss-Hermite nodes of the integral over the spread.

        Returns
        -------
        params : dict
            Name -> tensor of shape ``(S, M)``.
        log_prior : torch.Tensor of shape (S, M)
        """
        out, k = {}, 0
        log_prior = torch.zeros(theta.shape[:-1], dtype=theta.dtype, device=theta.device)
        for s in self.population:
            i = self.pop_index[s.name]
            u = theta[..., k]
            out[s.name] = s.prior.bijector.forward(u)
            log_prior = log_prior + _log_normal(u, self.prior_loc[i], self.prior_scale[i])
            k += 1
        for s in self.group + self.individual:
            u = theta[..., k]
            out[s.name] = s.prior.bijector.forward(u)
            log_prior = log_prior + self._marginal_log_prior(u, s.prior.loc, s.prior.scale, n_nodes)
            k += 1
        return out, log_prior

    def _marginal_log_prior(self, u, m, s, n_nodes):
        """``log p(u)`` of one level's or series' value, its hyperparameters integrated out."""
        if not self.learned:
            return _log_normal(u, m, s)
        nodes, log_w = _gauss_hermite(n_nodes)
        # log omega = log s + sqrt(2) hyper_scale t, for Gauss-Hermite nodes t
        omega = s * np.exp(math.sqrt(2.0) * self.hyper_scale * nodes)
        sd = torch.as_tensor(np.sqrt(s**2 + omega**2), dtype=u.dtype, device=u.device)
        log_w = torch.as_tensor(log_w, dtype=u.dtype, device=u.device)
        return torch.logsumexp(_log_normal(u.unsqueeze(-1), m, sd) + log_w, -1)

    def describe_global(self, g):
        """Named, interpretable global quantities from latent draws (numpy).

        Parameters
        ----------
        g : torch.Tensor of shape (n_draws, n_global)

        Returns
        -------
        dict
            Population parameters ``(n_draws,)`` on their own scale; group
            parameters ``(n_draws, n_levels)``; and hyperparameters
            ``mu_<name>``, ``omega_<name>`` (individual) and ``mu_<name>``,
            ``tau_<name>`` (group), on the unconstrained scale.
        """
        out = {}
        with torch.no_grad():
            for s in self.population:
                out[s.name] = s.prior.bijector.forward(g[:, self.pop_index[s.name]])
            for s in self.group:
                out[s.name] = s.prior.bijector.forward(self.group_values(g, s))
                if self.learned:
                    mu, tau = self.group_location_spread(g, s)
                    out[f"mu_{s.name}"], out[f"tau_{s.name}"] = mu, tau
            if self.learned:
                mu, omega = self.individual_prior(g)
                for j, s in enumerate(self.individual):
                    out[f"mu_{s.name}"], out[f"omega_{s.name}"] = mu[:, j], omega[:, j]
        return {k: v.detach().cpu().numpy() for k, v in out.items()}
