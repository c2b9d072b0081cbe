"""What a perfect mean could score on the double-receiver data, under several noise models.

A diagnostic for issue 3: the held-out numbers of the study are log-likelihoods
per well (nats), and part of them is set by the noise model alone. If the
model's means were exact, each observation would score the Gaussian density
of pure noise, ``-log(2 pi)/2 - log(sd_model) - sd_true^2 / (2 sd_model^2)``
in expectation, whatever the dynamics. This script estimates the data's own
noise level and reports that expectation, summed over a well's 4 x 86
observations and averaged over the 312 wells, for noise models of increasing
freedom:

``population``
    one sd per signal, shared by all wells (the white box's default);
``per_well``
    one sd per well and signal (``Gaussian(level="individual")``);
``time_profile``
    a time course of the sd per signal shared by the wells, times one scale
    per well and signal (what neural noise states can learn);
``time_profile_capped``
    the same with the sd's rise over its first hours' level limited to
    ``sqrt(1 + t)`` (t in hours): the ceiling of
    ``DoubleReceiverBlackBox(noise_states=True)``, whose noise states start
    at 1 and are produced at a rate below 1 per hour;
``local``
    the sd of every well, signal and time (the estimate itself): the
    ceiling of any noise model.

The noise is estimated from second differences along time,
``d_t = y_{t+1} - 2 y_t + y_{t-1}``, whose variance is ``6 sd^2`` for white
noise on a smooth signal; ``sd`` of a well, signal and time is the root mean
square of ``d / sqrt(6)`` over a window of ``--window`` time points centred
on it. The 84 interior time points are scored and the sum scaled by 86/84.
The numbers are estimates for white Gaussian noise: curvature of the signal
within a window inflates them a little, and correlated noise (drift) is not
seen. Checked on synthetic data of the same shape (300 wells, a sigmoid
signal, white noise whose sd grows 18-fold along time, times a random scale
per well): ``time_profile`` came out 6 nats/well below the exact expected
log-likelihood (1,132 against 1,138); ``local`` 27 above it (a windowed
estimate of the sd, used as its own truth, is optimistic). Scaling as in the study (each signal divided by its maximum over all
wells, then each well's minimum subtracted).

Usage::

    SKHDS_DATA=../shared/data/vi-hds python benchmarks/double_receiver_noise_floor.py
"""

import argparse
import json

import numpy as np
from scipy.ndimage import uniform_filter1d

from skhds.datasets import fetch_double_receiver
from skhds.preprocessing import SignalScaler

SIGNALS = ("OD", "mRFP1", "EYFP", "ECFP")
SD_FLOOR = 1e-5  # a window of identical values has no measurable noise


def expected_log_density(sd_model, sd_true):
    """Expected Gaussian log density of noise with sd ``sd_true`` under sd ``sd_model``."""
    return -0.5 * np.log(2 * np.pi) - np.log(sd_model) - sd_true**2 / (2 * sd_model**2)


def local_noise_sd(X, window):
    """``(n_wells, n_signals, n_times - 2)`` noise sds from windowed second differences."""
    d2 = X[..., 2:] - 2 * X[..., 1:-1] + X[..., :-2]
    ok = np.isfinite(d2)
    num = uniform_filter1d(np.where(ok, d2**2 / 6, 0.0), window, axis=-1, mode="nearest")
    den = uniform_filter1d(ok.astype(float), window, axis=-1, mode="nearest")
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt(num / den)
    return np.maximum(np.nan_to_num(sd, nan=SD_FLOOR), SD_FLOOR)


def best_scale(sd_true, profile):
    """Per well and signal, the scale ``c`` maximising the expected density of ``c * profile``."""
    return np.sqrt(np.mean((sd_true / profile) ** 2, axis=-1, keepdims=True))


def fit_profile(sd_true, early, ceiling=None, n_iter=50):
    """Shared time profile per signal times a scale per well, fitted by alternating maximisation.

    With ``ceiling`` (a function of the profile's early level, shaped like the
    profile), the profile is held below it at every iteration.
    """
    profile = np.sqrt(np.mean(sd_true**2, axis=0, keepdims=True))  # (1, n_signals, T)
    for _ in range(n_iter):
        scale = best_scale(sd_true, profile)
        profile = np.sqrt(np.mean((sd_true / scale) ** 2, axis=0, keepdims=True))
        if ceiling is not None:
            profile = np.minimum(profile, ceiling(profile[..., early].mean(-1, keepdims=True)))
    return best_scale(sd_true, profile) * profile, profile


def noise_floor(X, times, window=9, first_hours=3.0):
    """Expected log-likelihood per well (nats) of exact means under each noise model.

    Returns the floors and, per signal, the rise of the fitted time profile
    over its level in the first ``first_hours`` hours.
    """
    sd = local_noise_sd(X, window)
    t = np.asarray(times, dtype=float)[1:-1]
    early = t <= first_hours
    scale_to_all = X.shape[-1] / sd.shape[-1]
    shared, profile = fit_profile(sd, early)
    capped, _ = fit_profile(sd, early, ceiling=lambda start: start * np.sqrt(1.0 + t))
    models = {
        "population": np.sqrt(np.mean(sd**2, axis=(0, 2), keepdims=True)),
        "per_well": np.sqrt(np.mean(sd**2, axis=-1, keepdims=True)),
        "time_profile": shared,
        "time_profile_capped": capped,
        "local": sd,
    }
    out = {name: float(expected_log_density(m, sd).sum((1, 2)).mean() * scale_to_all)
           for name, m in models.items()}
    rise = (profile.max(-1) / profile[..., early].mean(-1))[0]
    return out, {s: float(r) for s, r in zip(SIGNALS, rise)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--window", type=int, default=9, help="time points per noise estimate")
    args = ap.parse_args(argv)
    data = fetch_double_receiver(download_if_missing=False)
    X = SignalScaler().fit(data.X).transform(data.X)
    floors, rise = noise_floor(X, data.times, window=args.window)
    print(json.dumps({"window": args.window, "nats_per_well": floors,
                      "sd_rise_over_first_3h": rise}))


if __name__ == "__main__":
    main()
