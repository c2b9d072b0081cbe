"""Amortised encoder: a masked time-series network giving ``q(z_i | y_i, u_i, g_i)``.

The observations enter as three channel groups per time point: values (NaN
replaced by 0), the observation mask, and the (scaled) time, so missing values,
ragged series and per-series grids need no special cases. Two 1-D convolutions
over the time axis are followed by mask-weighted mean pooling and max pooling,
concatenated with transformed inputs and one-hot group labels, and an MLP maps
them to a Gaussian over the individual parameters on the unconstrained scale:
its mean and the Cholesky factor of its covariance (``covariance_type="full"``,
default) or its standard deviations (``"diag"``), in units of their declared
prior (``z = m + s * (mean + L eps)``), which keeps all outputs O(1).

Why full covariance by default: individual parameters of ODE models are
often strongly correlated a posteriori (a growth rate and a lag, an
absorption rate and a volume; correlations of 0.9 and more). An
importance-weighted bound then pushes a diagonal proposal to cover the ridge
with a wide, mass-covering ellipse, whose importance weights are degenerate
(few effective samples, unreliable reweighted posteriors). A Cholesky factor
costs ``n (n - 1) / 2`` extra outputs.

The proposal is also conditional on the global latents ``g`` (population and
group quantities), as the hierarchy requires: a series' posterior moves with
``g`` (a larger carrying capacity asks for a different growth rate), and a
proposal blind to ``g`` must cover all those positions at once. The encoder
outputs a coupling matrix ``B`` and the mean becomes ``loc + B (g - g_ref)``,
with ``g_ref`` the current mean of ``q(g)``: the conditional of a joint
Gaussian over ``(g, z_i)``. Without it, importance weights that draw ``g``
per sample (evaluation) are degenerate.
Pooled features are layer-normalised so that early optimiser steps cannot
throw the proposals far from the prior.
"""

import warnings

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
    covariance_type : {"full", "diag"}, default="full"
        Full covariance (lower-triangular Cholesky factor) or a diagonal one.
    global_scale : torch.Tensor of shape (n_global,), optional
        Prior scales of the global latents; given, the encoder also outputs
        the coupling of the mean to the global latents (see the module notes).
    """

    def __init__(self, n_observables, n_inputs, n_levels, n_outputs, prior_loc, prior_scale,
                 n_hidden=64, kernel_size=5, covariance_type="full", global_scale=None):
        super().__init__()
        if covariance_type not in ("full", "diag"):
            raise ValueError(f"covariance_type must be 'full' or 'diag', got {covariance_type!r}.")
        self.covariance_type = covariance_type
        n_offdiag = n_outputs * (n_outputs - 1) // 2 if covariance_type == "full" else 0
        self.n_global = 0 if global_scale is None else int(len(global_scale))
        n_coupling = n_outputs * self.n_global
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
        with warnings.catch_warnings():
            # a model without individual parameters has an empty output layer
            warnings.filterwarnings("ignore", "Initializing zero-element tensors", UserWarning)
            self.head = nn.Sequential(
                nn.Linear(n_dense_in, n_hidden),
                nn.ReLU(),
                nn.Linear(n_hidden, 2 * n_outputs + n_offdiag + n_coupling),
            )
        out = self.head[-1]
        with torch.no_grad():
            out.weight.mul_(0.1)
            out.bias.zero_()
            # initial sd of 0.3 prior sds: 2 sigmoid(b) = 0.3
            out.bias[n_outputs : 2 * n_outputs] = torch.logit(torch.tensor(0.15))
        self.register_buffer("prior_loc", torch.as_tensor(prior_loc).clone())
        self.register_buffer("prior_scale", torch.as_tensor(prior_scale).clone())
        if self.n_global:
            self.register_buffer("global_scale", torch.as_tensor(global_scale).clone())
        self._n_offdiag = n_offdiag
        self.n_outputs = n_outputs
        rows, cols = torch.tril_indices(n_outputs, n_outputs, offset=-1)
        self.register_buffer("_rows", rows, persistent=False)
        self.register_buffer("_cols", cols, persistent=False)

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
        loc : torch.Tensor of shape (S, n_outputs)
        scale : torch.Tensor of shape (S, n_outputs, n_outputs) or (S, n_outputs)
            Lower-triangular Cholesky factor of the covariance (``"full"``) or
            standard deviations (``"diag"``).
        coupling : torch.Tensor of shape (S, n_outputs, n_global) or None
            Derivative of the mean with respect to the global latents.
        """
        S, _, T = y.shape
        tt = times.expand(S, T).unsqueeze(1)
        h = self.conv(torch.cat([y * mask, mask, tt], dim=1))  # (S, H, T)
        w = (mask.sum(1, keepdim=True) > 0).to(h.dtype)  # time points with any observation
        mean_pool = (h * w).sum(-1) / w.sum(-1).clamp(min=1.0)
        max_pool = torch.where(w > 0, h, torch.zeros_like(h)).amax(-1)
        feats = [self.norm(torch.cat([mean_pool, max_pool], -1)), inputs]
        for f, n in enumerate(self.n_levels):
            # unseen levels (code -1) match no column; no boolean indexing, so no
            # device-to-host synchronisation (the pass can be captured in a CUDA graph)
            levels = torch.arange(n, device=h.device)
            feats.append((codes[:, f : f + 1] == levels).to(h.dtype))
        out = self.head(torch.cat(feats, dim=-1))
        n = self.n_outputs
        raw_loc, raw_scale = out[:, :n], out[:, n : 2 * n]
        # Smoothly bounded to +-10 prior sds (location), (1e-4, 2] prior sds
        # (spread) and +-2 prior sds (off-diagonal Cholesky entries): q stays a
        # proper Gaussian, evaluated at the exact sample.
        loc = self.prior_loc + self.prior_scale * (10.0 * torch.tanh(raw_loc / 10.0))
        sd = 1e-4 + 2.0 * torch.sigmoid(raw_scale)
        coupling = None
        if self.n_global:
            raw = out[:, 2 * n + self._n_offdiag :].reshape(S, n, self.n_global)
            coupling = raw * self.prior_scale[:, None] / self.global_scale
        if self.covariance_type == "diag":
            return loc, self.prior_scale * sd, coupling
        tril = torch.diag_embed(sd)
        if n > 1:
            off = 2.0 * torch.tanh(out[:, 2 * n : 2 * n + self._n_offdiag] / 2.0)
            lower = torch.zeros_like(tril)
            lower[:, self._rows, self._cols] = off
            tril = tril + lower
        return loc, self.prior_scale.unsqueeze(-1) * tril, coupling
