"""Built-in synthetic problems."""

import numpy as np

from ..models import LogisticGrowth
from ._simulate import simulate

__all__ = ["make_logistic_growth"]


def make_logistic_growth(n_series=60, n_groups=3, n_times=25, t_max=12.0, noise=0.05,
                         random_state=0):
    """A small hierarchical logistic-growth problem with known truth.

    Series belong to ``n_groups`` strains with their own carrying capacity
    ``K``; each series has its own growth rate ``r`` and lag ``tlag``; the
    initial density ``x0`` is shared. Observations carry Gaussian noise.

    Parameters
    ----------
    n_series : int, default=60
        Number of series.
    n_groups : int, default=3
        Number of strains (group levels); series are assigned to them in turn.
    n_times : int, default=25
        Observation times, evenly spaced on ``[0, t_max]``.
    t_max : float, default=12.0
        Last observation time.
    noise : float, default=0.05
        True noise standard deviation.
    random_state : int, RandomState instance or None, default=0
        Seed of the parameter and noise draws, for reproducible output.

    Returns
    -------
    sklearn.utils.Bunch
        ``X`` ``(n_series, 1, n_times)``, ``times`` ``(n_times,)``, ``groups``
        (array of strain labels ``"s0"``, ``"s1"``, ...), ``inputs`` (None),
        ``model`` (:class:`~skhds.models.LogisticGrowth`) and ``params`` (the
        truth: scalars for population, ``(n_groups,)`` for ``K`` in label order,
        ``(n_series,)`` for ``r`` and ``tlag``, plus the true population
        location and spread ``mu_*``, ``omega_*``/``tau_*``).

    Examples
    --------
    >>> from skhds.datasets import make_logistic_growth
    >>> data = make_logistic_growth()
    >>> data.X.shape, sorted(data.params)[:3]
    ((60, 1, 25), ['K', 'mu_K', 'mu_r'])
    """
    model = LogisticGrowth()
    groups = np.array([f"s{i % n_groups}" for i in range(n_series)], dtype=object)
    times = np.linspace(0.0, t_max, n_times)
    out = simulate(model, n_series, times=times, groups=groups,
                   params={"sigma_x": float(noise)}, random_state=random_state)
    out.groups = groups
    out.DESCR = (
        "Synthetic hierarchical logistic growth: dx/dt = r sigmoid(4 (t - tlag)) x (1 - x / K), "
        f"{n_series} series in {n_groups} strains, {n_times} times on [0, {t_max}], "
        f"Gaussian noise sd {noise}."
    )
    return out
