"""Visual predictive check (VPC) in the nonlinear mixed-effects sense."""

import numpy as np
import torch
from sklearn.utils import check_random_state

from ._utils import figure_and_axes, observable_index, observations, series_times

__all__ = ["plot_vpc", "simulate_replicates"]


def simulate_replicates(estimator, data, n_replicates, generator):
    """Replicate datasets of the design in ``data`` from the fitted population model.

    Replicate ``r`` draws one set of global latents from ``q_global`` (shared
    by all series), draws every series' individual parameters from
    ``N(mu, omega)`` on the unconstrained scale, simulates the model and adds
    observation noise.

    Parameters
    ----------
    estimator : HierarchicalODEVAE
        A fitted estimator.
    data : SeriesData
        The design (times, inputs, group codes), from ``estimator._prepare``.
    n_replicates : int
        Number of replicate datasets.
    generator : torch.Generator
        Source of randomness (on the estimator's device).

    Returns
    -------
    numpy.ndarray of shape (n_replicates, n_series, n_observables, n_times)
        Simulated observations, NaN where ``data`` has no observation.
    """
    vae = estimator.vae_
    hier = vae.hierarchy
    device, dtype = estimator._device_dtype()
    R = int(n_replicates)
    out = []
    vae.eval()
    with torch.no_grad():
        g = vae.q_global.rsample(R, generator)  # (R, D): one global draw per replicate
        mu, omega = hier.individual_prior(g)  # (R, n_individual)
        for idx in estimator._chunks(data.n_series):
            batch = data.batch(idx, estimator.scaling_, estimator.dt, device, dtype)
            eps = torch.randn((len(idx), R, hier.n_individual), generator=generator, dtype=dtype,
                              device=device)
            z = mu.unsqueeze(0) + omega.unsqueeze(0) * eps
            params = hier.params(g, z, batch["codes"], vae.factor_index, generator)
            means, noise_scale = vae.simulate(params, batch, R, return_noise_scale=True)
            y = vae.model.noise.scaled_sample(means, vae.noise_params(params), noise_scale, generator)
            y = torch.where(batch["mask"].unsqueeze(1), y, torch.full_like(y, float("nan")))
            out.append(y.transpose(0, 1).cpu().numpy())
    return np.concatenate(out, axis=1).astype(np.float64)


def _per_time_quantiles(t, y, grid_t, quantiles):
    """Quantiles over series of ``y`` at each time of ``grid_t``: ``(..., n_grid, n_q)``."""
    res = np.full(y.shape[:-2] + (len(grid_t), len(quantiles)), np.nan)
    for k, tk in enumerate(grid_t):
        sel = t == tk  # (S, T)
        vals = y[..., sel]  # (..., n_obs_at_tk)
        if vals.shape[-1]:
            with np.errstate(all="ignore"):
                q = np.nanquantile(vals, quantiles, axis=-1)  # (n_q, ...)
            res[..., k, :] = np.moveaxis(q, 0, -1)
    return res


def plot_vpc(estimator, X, *, groups=None, inputs=None, times=None, n_replicates=50,
             quantiles=(0.05, 0.5, 0.95), observable=0, random_state=0, ax=None):
    """Visual predictive check of the fitted population model.

    ``n_replicates`` datasets with the design of ``X`` (same groups, inputs,
    times and missing values) are simulated from the fitted population model
    (see :func:`simulate_replicates`): globals from their variational
    posterior, individual parameters from the learned population distribution
    (not from the series' posteriors, so the check tests the population
    model), observation noise from the noise model. At every observation time
    the ``quantiles`` of the observed values across series (lines: solid for
    the median, dashed otherwise) are compared with the distribution of the
    same quantiles over the replicates (median as a thin line, 90% interval
    as a band). Observed quantile lines outside their bands point at model
    misspecification.

    Parameters
    ----------
    estimator : HierarchicalODEVAE
        A fitted estimator.
    X : array-like of shape (n_series, n_observables, n_times)
        Observations.
    groups : array-like or DataFrame, optional
        Group labels, as in ``fit``.
    inputs : array-like of shape (n_series, n_inputs), optional
        Inputs, as in ``fit``.
    times : array-like of shape (n_times,) or (n_series, n_times), optional
        Observation times, as in ``fit``. Quantiles are taken over the series
        observed at each distinct time value.
    n_replicates : int, default=50
        Number of simulated datasets.
    quantiles : sequence of float, default=(0.05, 0.5, 0.95)
        Quantiles across series to compare.
    observable : int or str, default=0
        Observable to show.
    random_state : int, RandomState instance or None, default=0
        Seed of the simulations.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into; default a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        The figure holding the axes. Observed quantile lines are labelled
        ``"observed q<quantile>"`` (for example ``"observed q0.5"``).
    """
    quantiles = np.asarray(quantiles, dtype=float)
    if quantiles.ndim != 1 or not ((quantiles > 0) & (quantiles < 1)).all():
        raise ValueError(f"quantiles must be a sequence of floats in (0, 1), got {quantiles!r}.")
    if int(n_replicates) < 2:
        raise ValueError(f"n_replicates must be >= 2, got {n_replicates!r}.")
    j, name = observable_index(estimator, observable)
    data = estimator._prepare(X, groups, inputs, times, reset=False)
    seed = check_random_state(random_state).randint(0, 2**31 - 1)
    gen = estimator._generator(estimator._device_dtype()[0], seed)
    sims = simulate_replicates(estimator, data, n_replicates, gen)[:, :, j]  # (R, S, T)
    t = series_times(data)
    y = observations(data)[:, j]
    t = np.where(np.isfinite(y), t, np.nan)
    grid_t = np.unique(t[np.isfinite(t)])
    obs_q = _per_time_quantiles(t, y, grid_t, quantiles)  # (n_t, n_q)
    sim_q = _per_time_quantiles(t, sims, grid_t, quantiles)  # (R, n_t, n_q)
    with np.errstate(all="ignore"):
        band = np.nanquantile(sim_q, [0.05, 0.5, 0.95], axis=0)  # (3, n_t, n_q)
    fig, ax = figure_and_axes(ax)
    ax.plot(t.ravel(), y.ravel(), "o", color="0.6", ms=2, alpha=0.5, label="data")
    for c, q in enumerate(quantiles):
        color = "C3" if np.isclose(q, 0.5) else "C0"
        ax.fill_between(grid_t, band[0, :, c], band[2, :, c], color=color, alpha=0.2, lw=0)
        ax.plot(grid_t, band[1, :, c], color=color, lw=0.8, alpha=0.8, label=f"simulated q{q:g}")
        ax.plot(grid_t, obs_q[:, c], color=color, lw=2, ls="-" if np.isclose(q, 0.5) else "--",
                label=f"observed q{q:g}")
    ax.set_xlabel("time")
    ax.set_ylabel(name)
    ax.set_title(f"VPC ({int(n_replicates)} replicates; bands: 90% of simulated quantiles)",
                 fontsize="small")
    ax.legend(fontsize="x-small")
    return fig
