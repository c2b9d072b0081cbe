"""A synthetic population-pharmacokinetics study with sparse, irregular sampling."""

import numbers

import numpy as np
from sklearn.utils import check_random_state

from .._validation import check_positive_float, check_positive_int
from ..models import OneCompartmentPK
from ._simulate import simulate

__all__ = ["make_pharmacokinetics"]


def make_pharmacokinetics(n_subjects=40, n_samples=(4, 8), t_max=24.0, doses=(50.0, 100.0, 200.0),
                          noise=(0.05, 0.1), random_state=0):
    """A population-PK study of a single oral dose, with known truth.

    Each subject receives one oral dose at ``t = 0`` (the doses are assigned
    in turn) and is sampled a random number of times, at random times of its
    own, as in sparse clinical designs. Concentrations follow
    :class:`~skhds.models.OneCompartmentPK`: per-subject absorption rate
    ``ka``, clearance ``CL`` and volume ``V`` drawn from the model's
    log-normal priors, plus combined additive and proportional error.

    Parameters
    ----------
    n_subjects : int, default=40
        Number of subjects (series).
    n_samples : int or tuple of (int, int), default=(4, 8)
        Bounds (inclusive) of the number of samples per subject, drawn
        uniformly for each subject; an int fixes it.
    t_max : float, default=24.0
        End of the sampling window in hours; sampling times are uniform on
        ``(0, t_max]``.
    doses : sequence of float, default=(50.0, 100.0, 200.0)
        Dose levels (mg), assigned to subjects in turn.
    noise : tuple of (float, float), default=(0.05, 0.1)
        True additive standard deviation ``a`` (mg/L) and proportional
        coefficient of variation ``b`` of the combined error model
        ``sd = sqrt(a^2 + (b C)^2)``.
    random_state : int, RandomState instance or None, default=0
        Seed of the designs, parameter and noise draws, for reproducible output.

    Returns
    -------
    sklearn.utils.Bunch
        ``X`` ``(n_subjects, 1, n_times_max)`` concentrations (mg/L), NaN
        after each subject's last sample; ``times`` ``(n_subjects,
        n_times_max)`` sorted sampling times (h) with the same NaN padding
        (the per-series ragged format ``fit`` accepts); ``inputs``
        ``(n_subjects, 1)`` doses; ``groups`` (None); ``clean`` (noise-free
        concentrations); ``model`` (:class:`~skhds.models.OneCompartmentPK`);
        ``params`` (the truth: ``(n_subjects,)`` arrays ``ka``, ``CL``, ``V``,
        the population location and spread ``mu_*``, ``omega_*`` of their
        logarithms, and the noise parameters ``a_C``, ``b_C``); ``DESCR``.
        ``n_times_max`` is the largest number of samples of any subject.

    Examples
    --------
    >>> import numpy as np
    >>> from skhds.datasets import make_pharmacokinetics
    >>> data = make_pharmacokinetics(n_subjects=6, random_state=0)
    >>> data.X.shape[:2], data.inputs.ravel().tolist()
    ((6, 1), [50.0, 100.0, 200.0, 50.0, 100.0, 200.0])
    >>> bool(np.all((~np.isnan(data.times)).sum(1) >= 4))
    True
    """
    n_subjects = check_positive_int(n_subjects, "n_subjects")
    lo, hi = _check_n_samples(n_samples)
    t_max = check_positive_float(t_max, "t_max")
    dose_levels = np.asarray(doses, dtype=float).ravel()
    if dose_levels.size == 0 or not np.all(np.isfinite(dose_levels) & (dose_levels > 0)):
        raise ValueError(f"doses must be a non-empty sequence of positive numbers, got {doses!r}.")
    a, b = _check_noise(noise)
    rng = check_random_state(random_state)

    counts = rng.randint(lo, hi + 1, size=n_subjects)
    n_times = int(counts.max())
    times = np.full((n_subjects, n_times), np.nan)
    for i, n in enumerate(counts):
        times[i, :n] = _sampling_times(rng, n, t_max)
    inputs = dose_levels[np.arange(n_subjects) % dose_levels.size][:, None]
    out = simulate(OneCompartmentPK(), n_subjects, times=times, inputs=inputs,
                   params={"a_C": a, "b_C": b}, dt=min(0.05, t_max / 100), random_state=rng)
    out.DESCR = (
        "Synthetic population pharmacokinetics: one-compartment model with first-order oral "
        "absorption, C(t) = D ka / (V (ka - CL/V)) (exp(-CL/V t) - exp(-ka t)); "
        f"{n_subjects} subjects, single doses {dose_levels.tolist()} mg given in turn, "
        f"{lo}-{hi} samples per subject at random times on (0, {t_max}] h (NaN-padded), "
        f"combined error a={a} mg/L, b={b}."
    )
    return out


def _check_n_samples(n_samples):
    if isinstance(n_samples, (numbers.Integral, np.integer)) and not isinstance(n_samples, bool):
        n = check_positive_int(n_samples, "n_samples")
        return n, n
    try:
        lo, hi = n_samples
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"n_samples must be an int or a pair (min, max) of ints, got {n_samples!r}."
        ) from exc
    lo, hi = check_positive_int(lo, "n_samples[0]"), check_positive_int(hi, "n_samples[1]")
    if lo > hi:
        raise ValueError(f"n_samples must satisfy min <= max, got {n_samples!r}.")
    return lo, hi


def _check_noise(noise):
    try:
        a, b = (float(v) for v in noise)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"noise must be a pair (a, b) of numbers, got {noise!r}.") from exc
    if not (np.isfinite(a) and np.isfinite(b) and a >= 0 and b >= 0):
        raise ValueError(f"noise (a, b) must be finite and >= 0, got {noise!r}.")
    return a, b


def _sampling_times(rng, n, t_max):
    """``n`` distinct sorted times uniform on ``(0, t_max]``."""
    while True:
        t = np.sort(t_max * (1.0 - rng.uniform(size=n)))
        if n == 1 or np.all(np.diff(t) > 0):
            return t
