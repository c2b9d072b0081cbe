"""Validated series in numpy, and the minibatches cut from them for torch.

The full dataset stays in host memory; only one minibatch at a time is moved
to the estimator's device (streaming), so device memory is bounded by the
batch size rather than the number of series.
"""

import numpy as np
import torch

from .solvers import step_plan

__all__ = ["SeriesData", "EncoderScaling"]


class EncoderScaling:
    """Fixed standardisation of encoder features, learned from training data.

    Parameters
    ----------
    y : numpy.ndarray of shape (n_series, n_observables, n_times)
    times : numpy.ndarray
    inputs : numpy.ndarray of shape (n_series, n_inputs)
    """

    def __init__(self, y, times, inputs):
        with np.errstate(all="ignore"):
            loc = np.nanmean(y, axis=(0, 2))
            sd = np.nanstd(y, axis=(0, 2))
        self.y_loc = np.nan_to_num(loc, nan=0.0)
        self.y_scale = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
        span = float(np.nanmax(times) - np.nanmin(times)) if np.size(times) else 1.0
        self.t_loc = float(np.nanmin(times))
        self.t_scale = span if span > 0 else 1.0
        u = np.arcsinh(inputs)
        self.u_loc = u.mean(0) if len(u) else np.zeros(inputs.shape[1])
        usd = u.std(0) if len(u) else np.ones(inputs.shape[1])
        self.u_scale = np.where(usd > 0, usd, 1.0)


class SeriesData:
    """Observations, masks, times, inputs and group codes of a set of series.

    Parameters
    ----------
    y : numpy.ndarray of shape (n_series, n_observables, n_times)
        Observations, NaN where missing.
    times : numpy.ndarray of shape (n_times,) or (n_series, n_times)
        Validated grid(s) (padding already replaced).
    valid_times : numpy.ndarray of bool or None
        Mask of real time points for per-series grids.
    inputs : numpy.ndarray of shape (n_series, n_inputs)
    codes : numpy.ndarray of shape (n_series, n_factors), dtype int
        Level codes, -1 for unseen.
    t0 : float
        Model start time.
    """

    def __init__(self, y, times, valid_times, inputs, codes, t0):
        self.mask = ~np.isnan(y)
        if valid_times is not None:
            self.mask &= valid_times[:, None, :]
        self.y = np.where(self.mask, y, 0.0)
        self.times = times
        self.valid_times = valid_times
        self.inputs = inputs
        self.codes = codes
        self.t0 = float(t0)

    @property
    def n_series(self):
        """Number of series."""
        return self.y.shape[0]

    def subset(self, idx):
        """A new ``SeriesData`` with series ``idx``."""
        out = object.__new__(SeriesData)
        out.mask, out.y = self.mask[idx], self.y[idx]
        out.times = self.times if self.times.ndim == 1 else self.times[idx]
        out.valid_times = None if self.valid_times is None else self.valid_times[idx]
        out.inputs, out.codes, out.t0 = self.inputs[idx], self.codes[idx], self.t0
        return out

    def batch(self, idx, scaling, dt, device, dtype, times=None):
        """Tensors for series ``idx`` on ``device``.

        Parameters
        ----------
        idx : array of int
        scaling : EncoderScaling
        dt : float or None
            Largest solver step (``None``: the data grid).
        device, dtype : torch device and dtype
        times : numpy.ndarray, optional
            Output grid replacing the data's (for prediction on new times).

        Returns
        -------
        dict
        """
        t = self.times if self.times.ndim == 1 else self.times[idx]
        out_t = t if times is None else times
        out_t2 = out_t[None] if out_t.ndim == 1 else out_t
        prepend = not np.all(out_t2[:, 0] == self.t0)
        solve_t = np.concatenate([np.full((out_t2.shape[0], 1), self.t0), out_t2], 1) if prepend else out_t2
        as_t = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
        y = self.y[idx]
        enc_y = (y - scaling.y_loc[None, :, None]) / scaling.y_scale[None, :, None]
        t2 = t[None] if t.ndim == 1 else t
        return {
            "y": as_t(y),
            "mask": torch.as_tensor(self.mask[idx], device=device),
            "solve_times": as_t(solve_t),
            "prepend": prepend,
            "plan": step_plan(solve_t, dt),
            "inputs": as_t(self.inputs[idx]),
            "enc_y": as_t(enc_y),
            "enc_times": as_t((t2 - scaling.t_loc) / scaling.t_scale),
            "enc_inputs": as_t((np.arcsinh(self.inputs[idx]) - scaling.u_loc) / scaling.u_scale),
            "codes": torch.as_tensor(self.codes[idx], dtype=torch.long, device=device),
            # decided here on the host, so the pass never asks the device
            "all_seen": bool(np.all(self.codes[idx] >= 0)),
        }
