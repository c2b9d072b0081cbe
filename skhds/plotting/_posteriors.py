"""Posterior distributions: population and group parameters, individual parameters."""

import numpy as np
import torch

from ._utils import grid, group_labels, kde, sorted_levels

__all__ = ["plot_posteriors", "plot_individual_parameters"]


def _global_draws(estimator, n_draws):
    vae = estimator.vae_
    p = vae.q_global.loc
    gen = estimator._generator(p.device, estimator._eval_seed + 6)
    with torch.no_grad():
        g = vae.q_global.rsample(n_draws, gen)
    return g


def _value_grid(values, n=200):
    lo, hi = np.nanquantile(values, [0.005, 0.995])
    pad = 0.15 * (hi - lo) if hi > lo else max(abs(lo), 1.0) * 0.1
    return np.linspace(lo - pad, hi + pad, n)


def _prior_density(prior, x):
    lp = prior.log_prob(torch.as_tensor(x, dtype=torch.float64))
    return torch.exp(lp).numpy()


def _panels(n):
    n_cols = min(3, n)
    return -(-n // n_cols), n_cols


def plot_posteriors(estimator, parameters=None, n_draws=2000, prior=True):
    """Posterior densities of population and group parameters.

    Draws from the variational posterior of the global latents are mapped to
    named quantities; one panel per quantity shows a histogram (population
    parameters and hyperparameters) or one kernel density curve per level
    (group parameters), with the declared prior density as a dashed line. For
    a group parameter with learned random effects, the declared prior is the
    hyperprior's centre rather than the prior of each level; it is still shown
    as a reference. Hyperparameters (``mu_<name>``, ``omega_<name>``,
    ``tau_<name>``) are on the unconstrained scale and have no overlay.

    Parameters
    ----------
    estimator : HierarchicalODEVAE
        A fitted estimator.
    parameters : sequence of str, optional
        Quantities to show: parameter names and hyperparameter names as in
        :meth:`HierarchicalODEVAE.sample_posterior`. Default all population
        and group parameters (noise parameters included, unless they are
        per series: then name their ``mu_`` and ``omega_`` hyperparameters).
    n_draws : int, default=2000
        Number of posterior draws.
    prior : bool, default=True
        Overlay the prior density.

    Returns
    -------
    matplotlib.figure.Figure
        The figure, one axes per quantity.
    """
    hier = estimator.vae_.hierarchy
    specs = {s.name: s for s in hier.specs}
    draws = hier.describe_global(_global_draws(estimator, int(n_draws)))
    if parameters is None:
        parameters = [s.name for s in hier.specs if s.level in ("population", "group")]
    parameters = list(parameters)
    unknown = [p for p in parameters if p not in draws]
    if unknown:
        raise ValueError(f"Unknown quantities {unknown}; available: {sorted(draws)}.")
    if not parameters:
        raise ValueError("The model has no population or group parameters to show.")
    fig, axes = grid(*_panels(len(parameters)))
    flat = axes.ravel()
    for ax in flat[len(parameters):]:
        ax.remove()
    for ax, name in zip(flat, parameters):
        d = np.asarray(draws[name], dtype=float)
        spec = specs.get(name)
        x = _value_grid(d)
        if d.ndim == 2:  # group parameter: one curve per level
            for j, level in enumerate(estimator.categories_[spec.factor]):
                ax.plot(x, kde(d[:, j], x), color=f"C{j % 10}", label=f"{spec.factor} = {level}")
        else:
            ax.hist(d, bins=40, density=True, color="C0", alpha=0.5, label="posterior")
        if prior and spec is not None:
            ax.plot(x, _prior_density(spec.prior, x), "k--", lw=1, label="prior")
        ax.set_xlabel(name)
        ax.set_ylabel("density")
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    return fig


def plot_individual_parameters(estimator, X, *, groups=None, inputs=None, times=None, by=None):
    """Histograms of the series' posterior-mean individual parameters.

    One panel per individual parameter: a histogram of the values of
    :meth:`HierarchicalODEVAE.transform` (split into one histogram per level
    when ``by`` names a grouping factor), with the learned population
    distribution overlaid: the density of ``bijector(N(mu, omega))``
    averaged over posterior draws of ``mu`` and ``omega``. Posterior means
    shrink towards the population centre, so the histograms are narrower
    than the population density when the data are weakly informative.

    Parameters
    ----------
    estimator : HierarchicalODEVAE
        A fitted estimator.
    X : array-like of shape (n_series, n_observables, n_times)
        Observations.
    groups : array-like or DataFrame, optional
        Group labels, as in ``fit`` (required with ``by``).
    inputs : array-like of shape (n_series, n_inputs), optional
        Inputs, as in ``fit``.
    times : array-like of shape (n_times,) or (n_series, n_times), optional
        Observation times, as in ``fit``.
    by : str, optional
        Grouping factor to split the histograms by (a column of ``groups``,
        or the model's factor for array labels).

    Returns
    -------
    matplotlib.figure.Figure
        The figure, one axes per individual parameter.
    """
    values = estimator.transform(X, groups=groups, inputs=inputs, times=times)
    names = list(estimator.get_feature_names_out())
    if not names:
        raise ValueError("The model has no individual parameters.")
    hier = estimator.vae_.hierarchy
    with torch.no_grad():
        mu, omega = hier.individual_prior(_global_draws(estimator, 500))
    mu, omega = mu.double().cpu(), omega.double().cpu()
    if by is not None:
        factor, labels = group_labels(estimator, groups, values.shape[0], by)
        splits = [(f"{factor} = {lev}", labels == lev) for lev in sorted_levels(labels)]
    else:
        splits = [("series", np.ones(values.shape[0], dtype=bool))]
    fig, axes = grid(*_panels(len(names)))
    flat = axes.ravel()
    for ax in flat[len(names):]:
        ax.remove()
    for j, (ax, name) in enumerate(zip(flat, names)):
        v = values[:, j]
        bins = np.histogram_bin_edges(v[np.isfinite(v)], bins="auto")
        for c, (label, sel) in enumerate(splits):
            ax.hist(v[sel], bins=bins, density=True, alpha=0.45 if by else 0.6,
                    color=f"C{c % 10}", label=label)
        bij = hier.individual[j].prior.bijector
        x = torch.as_tensor(_value_grid(np.concatenate([v, bij.forward(
            torch.stack([mu[:, j] - 2 * omega[:, j], mu[:, j] + 2 * omega[:, j]])).numpy().ravel()])),
            dtype=torch.float64)
        inside = bij.in_support(x)
        z = bij.inverse(torch.where(inside, x, bij.forward(torch.zeros_like(x))))
        lp = (-0.5 * ((z[None] - mu[:, j, None]) / omega[:, j, None]) ** 2
              - torch.log(omega[:, j, None]) - 0.5 * np.log(2 * np.pi)
              - bij.log_abs_det_jacobian(z)[None])
        dens = torch.where(inside, torch.exp(lp).mean(0), torch.zeros_like(x))
        ax.plot(x.numpy(), dens.numpy(), "k-", lw=1.5, label="population")
        ax.set_xlabel(name)
        ax.set_ylabel("density")
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    return fig
