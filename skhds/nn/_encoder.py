"""Amortised encoder: a masked time-series network giving ``q(z_i | y_i, u_i, g_i)``.

The observations enter as three channel groups per time point: values (NaN
replaced by 0), the observation mask, and the (scaled) time, so missing values,
ragged series and per-series grids need no special cases. Two 1-D convolutions
over the time axis are followed by mask-weighted mean pooling and max pooling,
concatenated with transformed inputs and one-hot group labels, and an MLP maps
them to the mean and standard deviation of a diagonal Gaussian over the
individual parameters on the unconstrained scale, in units of their declared
prior (``z = m + s * (mean + sd * eps)``), which keeps all outputs O(1).
Pooled features are layer-normalised so that early optimiser steps cannot
throw the proposals far from the prior.
"""

import torch
from torch import nn

__all__ = ["SeriesEncoder"]


class SeriesEncoder(nn.Module):
    """Convolutional encoder of masked, irregular multivariate time series.

    Parameters
    ----------
    n_observables : int
        Channels of the observations.
    n_inputs : int
        Number of per-series inputs.
    n_levels : sequence of int
        Number of training levels of each grouping factor (one-hot encoded;
        unseen levels encode as all zeros).
    n_outputs : int
        Number of individual parameters.
    prior_loc, prior_scale : torch.Tensor of shape (n_outputs,)
        Declared prior of each individual parameter (unconstrained scale).
    n_hidden : int, default=64
        Width of the convolutional and dense layers.
    kernel_size : int, default=5
        Width of the temporal convolutions.
    """

    def __init__(self, n_observables, n_inputs, n_levels, n_outputs, prior_loc, prior_scale,
                 n_hidden=64, kernel_size=5):
        super().__init__()
        self.n_levels = [int(n) for n in n_levels]
        pad = kernel_size // 2
        self.conv = nn.Sequential(
            nn.Conv1d(2 * n_observables + 1, n_hidden, kernel_size, padding=pad),
            nn.ReLU(),
            nn.Conv1d(n_hidden, n_hidden, kernel_size, padding=pad),
            nn.ReLU(),
        )
        n_dense_in = 2 * n_hidden + n_inputs + sum(self.n_levels)
        self.norm = nn.LayerNorm(2 * n_hidden)
        self.head = nn.Sequential(
            nn.Linear(n_dense_in, n_hidden),
            nn.ReLU(),
            nn.Linear(n_hidden, 2 * n_outputs),
        )
        out = self.head[-1]
        with torch.no_grad():
            out.weight.mul_(0.1)
            out.bias.zero_()
            # initial sd of 0.3 prior sds: 2 sigmoid(b) = 0.3
            out.bias[n_outputs:] = torch.logit(torch.tensor(0.15))
        self.register_buffer("prior_loc", torch.as_tensor(prior_loc).clone())
        self.register_buffer("prior_scale", torch.as_tensor(prior_scale).clone())
        self.n_outputs = n_outputs

    def forward(self, y, mask, times, inputs, codes):
        """Posterior mean and standard deviation of the unconstrained individual parameters.

        Parameters
        ----------
        y : torch.Tensor of shape (S, n_observables, T)
            Standardised observations, 0 where unobserved.
        mask : torch.Tensor of shape (S, n_observables, T)
            1.0 where observed, 0.0 elsewhere.
        times : torch.Tensor of shape (S, T) or (1, T)
            Scaled observation times.
        inputs : torch.Tensor of shape (S, n_inputs)
            Transformed, standardised inputs.
        codes : torch.Tensor of shape (S, n_factors), dtype long
            Level codes, ``-1`` for unseen.

        Returns
        -------
        loc, scale : torch.Tensor of shape (S, n_outputs)
        """
        S, _, T = y.shape
        tt = times.expand(S, T).unsqueeze(1)
        h = self.conv(torch.cat([y * mask, mask, tt], dim=1))  # (S, H, T)
        w = (mask.sum(1, keepdim=True) > 0).to(h.dtype)  # time points with any observation
        mean_pool = (h * w).sum(-1) / w.sum(-1).clamp(min=1.0)
        max_pool = torch.where(w > 0, h, torch.zeros_like(h)).amax(-1)
        feats = [self.norm(torch.cat([mean_pool, max_pool], -1)), inputs]
        for f, n in enumerate(self.n_levels):
            c = codes[:, f]
            onehot = torch.zeros((S, n), dtype=h.dtype, device=h.device)
            seen = c >= 0
            onehot[seen, c[seen]] = 1.0
            feats.append(onehot)
        out = self.head(torch.cat(feats, dim=-1))
        raw_loc, raw_scale = out[:, : self.n_outputs], out[:, self.n_outputs :]
        # Smoothly bounded to +-10 prior sds (location) and (1e-4, 2] prior sds
        # (spread): q stays a proper Gaussian, evaluated at the exact sample.
        loc = self.prior_loc + self.prior_scale * (10.0 * torch.tanh(raw_loc / 10.0))
        scale = self.prior_scale * (1e-4 + 2.0 * torch.sigmoid(raw_scale))
        return loc, scale
