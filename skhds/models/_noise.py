"""Observation noise models: ``y ~ Noise(mean, noise parameters)``.

A noise model declares its parameters (one per observable) and evaluates
element-wise log densities; masked (unobserved) entries are excluded by the
caller. Parameters arrive as tensors shaped ``(S|1, K|1, n_observables, 1)``
so they broadcast against means shaped ``(S, K, n_observables, n_times)``.

Each noise model takes a ``level``: ``"population"`` (default), one value of
each noise parameter shared by all series; or ``"individual"``, one value
per series, with a learned population distribution like any individual
parameter (the encoder proposes it from the series, the hierarchy learns its
location and spread). Per-series noise suits data whose series differ in
quality: plate-reader wells at very different signal levels, patients
sampled by different assays. The declared prior is then the distribution of
the per-series values.
"""

import math
import numbers

import numpy as np
import torch

from ..distributions import LogNormal
from ..distributions import normal_log_prob as _normal_log_prob

__all__ = ["NoiseModel", "Gaussian", "Proportional", "Combined", "Laplace", "StudentT"]

_FLOOR = 1e-8  # keeps scales strictly positive where the mean is exactly zero
NOISE_LEVELS = ("population", "individual")


def _check_level(model, level):
    if level not in NOISE_LEVELS:
        raise ValueError(f"{model}: level must be one of {NOISE_LEVELS}, got {level!r}.")
    return level


class NoiseModel:
    """Base class: subclasses set ``param_priors`` and implement the densities."""

    #: mapping from base parameter name to its default prior
    param_priors = {}
    #: "population" (one value per observable) or "individual" (one per series
    #: and observable); a class default, so that noise models pickled before
    #: the option existed load as population-level
    level = "population"

    def declare(self):
        """Mapping base name -> prior of the noise parameters (one per observable).

        Returns
        -------
        dict of str to Prior
            Base parameter names mapped to their priors (a copy of ``param_priors``).
        """
        return dict(self.param_priors)

    def log_prob(self, y, mean, params):
        """Element-wise log density of ``y`` given the mean; shape of ``mean``.

        Parameters
        ----------
        y : torch.Tensor
            Observations, broadcastable against ``mean``.
        mean : torch.Tensor
            Noise-free model predictions, of shape ``(S, K, n_observables, n_times)``.
        params : dict of str to torch.Tensor
            Noise parameters by base name, each of shape
            ``(S|1, K|1, n_observables, 1)``.

        Returns
        -------
        torch.Tensor
            Element-wise log density of ``y``, of the shape of ``mean``.
        """
        raise NotImplementedError

    def log_prob_sum(self, y, mean, params, mask):
        """Log density summed over the observed entries of each sample: ``(S, K)``.

        The default sums :meth:`log_prob` where ``mask`` is true; a noise model
        may override it with a cheaper equivalent (the likelihood of every
        importance sample is one call, on the largest tensors of a pass).

        Parameters
        ----------
        y : torch.Tensor
            Observations, broadcastable against ``mean`` (finite everywhere;
            unobserved entries hold any finite value).
        mean : torch.Tensor
            Noise-free model predictions, of shape ``(S, K, n_observables, n_times)``.
        params : dict of str to torch.Tensor
            Noise parameters by base name, each of shape
            ``(S|1, K|1, n_observables, 1)``.
        mask : torch.Tensor of bool
            True where observed, broadcastable against ``mean``.

        Returns
        -------
        torch.Tensor
            ``sum over observed (observable, time) of log p(y | mean)``, of
            shape ``mean.shape[:-2]``.
        """
        lp = self.log_prob(y, mean, params)
        return torch.where(mask, lp, torch.zeros_like(lp)).sum((-2, -1))

    def variance(self, mean, params):
        """Variance of an observation around ``mean`` (for predictive bands).

        Parameters
        ----------
        mean : torch.Tensor
            Noise-free model predictions, of shape ``(S, K, n_observables, n_times)``.
        params : dict of str to torch.Tensor
            Noise parameters by base name, each of shape
            ``(S|1, K|1, n_observables, 1)``.

        Returns
        -------
        torch.Tensor
            Element-wise observation variance, of the shape of ``mean``.
        """
        raise NotImplementedError

    def sample(self, mean, params, generator=None):
        """Draw observations around ``mean``.

        Parameters
        ----------
        mean : torch.Tensor
            Noise-free model predictions, of shape ``(S, K, n_observables, n_times)``.
        params : dict of str to torch.Tensor
            Noise parameters by base name, each of shape
            ``(S|1, K|1, n_observables, 1)``.
        generator : torch.Generator, optional
            Random number generator used for the draws.

        Returns
        -------
        torch.Tensor
            Simulated observations, of the shape of ``mean``.
        """
        raise NotImplementedError

    # A model may scale the noise along its trajectory (ODEModel.observe_noise_scale):
    # the noise scale at each time and observable is multiplied by a positive factor
    # ``s``. Every noise model here is a location-scale family around the mean, so
    # ``p(y | mean, s) = p(mean + (y - mean) / s | mean) / s``: the methods below
    # build on the unscaled ones and hold for user noise models of that kind.
    def scaled_log_prob_sum(self, y, mean, params, mask, scale=None):
        """:meth:`log_prob_sum` with the noise scale multiplied by ``scale``.

        Parameters
        ----------
        y : torch.Tensor
            Observations, broadcastable against ``mean`` (finite everywhere).
        mean : torch.Tensor
            Noise-free model predictions, of shape ``(S, K, n_observables, n_times)``.
        params : dict of str to torch.Tensor
            Noise parameters by base name, each of shape
            ``(S|1, K|1, n_observables, 1)``.
        mask : torch.Tensor of bool
            True where observed, broadcastable against ``mean``.
        scale : torch.Tensor or None, default=None
            Positive factors of the shape of ``mean`` (None: 1).

        Returns
        -------
        torch.Tensor
            Summed log density over the observed entries, of shape ``mean.shape[:-2]``.
        """
        if scale is None:
            return self.log_prob_sum(y, mean, params, mask)
        standardised = mean + (y - mean) / scale
        log_scale = torch.where(mask, torch.log(scale), torch.zeros_like(scale)).sum((-2, -1))
        return self.log_prob_sum(standardised, mean, params, mask) - log_scale

    def scaled_variance(self, mean, params, scale=None):
        """:meth:`variance` times ``scale ** 2`` (``scale`` None: unscaled).

        Parameters
        ----------
        mean : torch.Tensor
            Noise-free model predictions, of shape ``(S, K, n_observables, n_times)``.
        params : dict of str to torch.Tensor
            Noise parameters by base name, each of shape
            ``(S|1, K|1, n_observables, 1)``.
        scale : torch.Tensor or None, default=None
            Positive factors of the shape of ``mean``.

        Returns
        -------
        torch.Tensor
            Element-wise observation variance, of the shape of ``mean``.
        """
        var = self.variance(mean, params)
        return var if scale is None else var * scale * scale

    def scaled_sample(self, mean, params, scale=None, generator=None):
        """:meth:`sample` with the deviations from ``mean`` multiplied by ``scale``.

        Parameters
        ----------
        mean : torch.Tensor
            Noise-free model predictions, of shape ``(S, K, n_observables, n_times)``.
        params : dict of str to torch.Tensor
            Noise parameters by base name, each of shape
            ``(S|1, K|1, n_observables, 1)``.
        scale : torch.Tensor or None, default=None
            Positive factors of the shape of ``mean``.
        generator : torch.Generator, optional
            Random number generator used for the draws.

        Returns
        -------
        torch.Tensor
            Simulated observations, of the shape of ``mean``.
        """
        y = self.sample(mean, params, generator=generator)
        return y if scale is None else mean + (y - mean) * scale

    def __repr__(self):
        shown = {k: v for k, v in vars(self).items() if not (k == "level" and v == "population")}
        args = ", ".join(f"{k}={v!r}" for k, v in shown.items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        # level may be the class default (an object pickled before the option existed)
        return type(self) is type(other) and {**vars(self), "level": self.level} == {
            **vars(other), "level": other.level}


class Gaussian(NoiseModel):
    """Additive Gaussian error: ``y = f + sigma * e``, ``e ~ N(0, 1)``.

    Parameters
    ----------
    sigma_prior : Prior, default=LogNormal(log(0.1), 1.5)
        Prior of the noise standard deviation of each observable.
    level : {"population", "individual"}, default="population"
        One standard deviation per observable shared by all series, or one
        per series and observable with a learned population distribution
        (``sigma_prior`` is then its declared distribution across series).
    """

    def __init__(self, sigma_prior=None, level="population"):
        self.sigma_prior = sigma_prior if sigma_prior is not None else LogNormal(math.log(0.1), 1.5)
        self.level = _check_level(type(self).__name__, level)

    def declare(self):
        """Mapping ``{"sigma": prior}``.

        Returns
        -------
        dict of str to Prior
            ``{"sigma": sigma_prior}``.
        """
        return {"sigma": self.sigma_prior}

    def log_prob(self, y, mean, params):
        """Gaussian log density.

        Parameters
        ----------
        y : torch.Tensor
            Observations, broadcastable against ``mean``.
        mean : torch.Tensor
            Noise-free model predictions, of shape ``(S, K, n_observables, n_times)``.
        params : dict of str to torch.Tensor
            Noise parameters by base name, each of shape
            ``(S|1, K|1, n_observables, 1)``.

        Returns
        -------
        torch.Tensor
            Element-wise Gaussian log density of ``y``, of the shape of ``mean``.
        """
        return _normal_log_prob(y, mean, params["sigma"])

    def log_prob_sum(self, y, mean, params, mask):
        """Summed Gaussian log density over the observed entries (see :class:`NoiseModel`).

        Computed from the masked sum of squared standardised residuals per
        observable: five element-wise operations instead of the density's six
        plus the masking and the sum. The residuals are divided by ``sigma``
        element by element (not their sum of squares by ``sigma**2``), so the
        gradient with respect to ``sigma`` overflows only where its value does.

        Parameters
        ----------
        y : torch.Tensor
            Observations, broadcastable against ``mean`` (finite everywhere).
        mean : torch.Tensor
            Noise-free model predictions, of shape ``(S, K, n_observables, n_times)``.
        params : dict of str to torch.Tensor
            ``sigma`` of shape ``(S|1, K|1, n_observables, 1)``.
        mask : torch.Tensor of bool
            True where observed, broadcastable against ``mean``.

        Returns
        -------
        torch.Tensor
            Summed log density over the observed entries, of shape
            ``mean.shape[:-2]``.
        """
        if type(self).log_prob is not Gaussian.log_prob:  # a subclass with its own density
            return super().log_prob_sum(y, mean, params, mask)
        sigma = params["sigma"]  # (S|1, K|1, n_obs, 1)
        u = (y - mean) * (1.0 / sigma) * mask
        sq = (u * u).sum(-1)  # (S, K, n_obs)
        n_obs = mask.sum(-1).to(sq.dtype)  # observed times per observable
        log_norm = torch.log(sigma.squeeze(-1)) + 0.5 * math.log(2.0 * math.pi)
        return (-0.5 * sq - n_obs * log_norm).sum(-1)

    def variance(self, mean, params):
        """``sigma ** 2``.

        Parameters
        ----------
        mean : torch.Tensor
            Noise-free model predictions, of shape ``(S, K, n_observables, n_times)``.
        params : dict of str to torch.Tensor
            Noise parameters by base name, each of shape
            ``(S|1, K|1, n_observables, 1)``.

        Returns
        -------
        torch.Tensor
            ``sigma ** 2`` broadcast to the shape of ``mean``.
        """
        return (params["sigma"] ** 2).expand_as(mean)

    def sample(self, mean, params, generator=None):
        """Draw ``mean + sigma * e``.

        Parameters
        ----------
        mean : torch.Tensor
            Noise-free model predictions, of shape ``(S, K, n_observables, n_times)``.
        params : dict of str to torch.Tensor
            Noise parameters by base name, each of shape
            ``(S|1, K|1, n_observables, 1)``.
        generator : torch.Generator, optional
            Random number generator used for the draws.

        Returns
        -------
        torch.Tensor
            Simulated observations, of the shape of ``mean``.
        """
        e = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + params["sigma"] * e


class Proportional(Gaussian):
    """Proportional Gaussian error: ``y = f + b |f| e``.

    Parameters
    ----------
    b_prior : Prior, default=LogNormal(log(0.1), 1.0)
        Prior of the relative error ``b`` (coefficient of variation).
    level : {"population", "individual"}, default="population"
        Shared by all series, or one value per series (see the module notes).
    """

    def __init__(self, b_prior=None, level="population"):
        self.b_prior = b_prior if b_prior is not None else LogNormal(math.log(0.1), 1.0)
        self.level = _check_level(type(self).__name__, level)

    def declare(self):
        """Mapping ``{"b": prior}``.

        Returns
        -------
        dict of str to Prior
            ``{"b": b_prior}``.
        """
        return {"b": self.b_prior}

    def _sd(self, mean, params):
        return params["b"] * mean.abs() + _FLOOR

    def log_prob(self, y, mean, params):
        """Gaussian log density with standard deviation ``b |f|``.

        Parameters
        ----------
        y : torch.Tensor
            Observations, broadcastable against ``mean``.
        mean : torch.Tensor
            Noise-free model predictions, of shape ``(S, K, n_observables, n_times)``.
        params : dict of str to torch.Tensor
            Noise parameters by base name, each of shape
            ``(S|1, K|1, n_observables, 1)``.

        Returns
        -------
        torch.Tensor
            Element-wise Gaussian log density of ``y``, of the shape of ``mean``.
        """
        return _normal_log_prob(y, mean, self._sd(mean, params))

    def variance(self, mean, params):
        """``(b f) ** 2``.

        Parameters
        ----------
        mean : torch.Tensor
            Noise-free model predictions, of shape ``(S, K, n_observables, n_times)``.
        params : dict of str to torch.Tensor
            Noise parameters by base name, each of shape
            ``(S|1, K|1, n_observables, 1)``.

        Returns
        -------
        torch.Tensor
            Squared standard deviation, of the shape of ``mean``.
        """
        return self._sd(mean, params) ** 2

    def sample(self, mean, params, generator=None):
        """Draw ``mean + b |mean| e``.

        Parameters
        ----------
        mean : torch.Tensor
            Noise-free model predictions, of shape ``(S, K, n_observables, n_times)``.
        params : dict of str to torch.Tensor
            Noise parameters by base name, each of shape
            ``(S|1, K|1, n_observables, 1)``.
        generator : torch.Generator, optional
            Random number generator used for the draws.

        Returns
        -------
        torch.Tensor
            Simulated observations, of the shape of ``mean``.
        """
        e = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + self._sd(mean, params) * e


class Combined(Proportional):
    """Combined additive and proportional error: ``sd = sqrt(a^2 + (b f)^2)``.

    Parameters
    ----------
    a_prior : Prior, default=LogNormal(log(0.05), 1.5)
        Prior of the additive part ``a``.
    b_prior : Prior, default=LogNormal(log(0.1), 1.0)
        Prior of the proportional part ``b``.
    level : {"population", "individual"}, default="population"
        Shared by all series, or one value of each per series (see the module notes).
    """

    def __init__(self, a_prior=None, b_prior=None, level="population"):
        super().__init__(b_prior, level=level)
        self.a_prior = a_prior if a_prior is not None else LogNormal(math.log(0.05), 1.5)

    def declare(self):
        """Mapping ``{"a": prior, "b": prior}``.

        Returns
        -------
        dict of str to Prior
            ``{"a": a_prior, "b": b_prior}``.
        """
        return {"a": self.a_prior, "b": self.b_prior}

    def _sd(self, mean, params):
        return torch.sqrt(params["a"] ** 2 + (params["b"] * mean) ** 2)


class Laplace(Gaussian):
    """Laplace (double-exponential) error with scale ``b``: robust to outliers.

    Parameters
    ----------
    scale_prior : Prior, default=LogNormal(log(0.1), 1.5)
        Prior of the Laplace scale of each observable.
    level : {"population", "individual"}, default="population"
        Shared by all series, or one value per series (see the module notes).
    """

    def __init__(self, scale_prior=None, level="population"):
        self.scale_prior = scale_prior if scale_prior is not None else LogNormal(math.log(0.1), 1.5)
        self.level = _check_level(type(self).__name__, level)

    def declare(self):
        """Mapping ``{"scale": prior}``.

        Returns
        -------
        dict of str to Prior
            ``{"scale": scale_prior}``.
        """
        return {"scale": self.scale_prior}

    def log_prob(self, y, mean, params):
        """Laplace log density.

        Parameters
        ----------
        y : torch.Tensor
            Observations, broadcastable against ``mean``.
        mean : torch.Tensor
            Noise-free model predictions, of shape ``(S, K, n_observables, n_times)``.
        params : dict of str to torch.Tensor
            Noise parameters by base name, each of shape
            ``(S|1, K|1, n_observables, 1)``.

        Returns
        -------
        torch.Tensor
            Element-wise Laplace log density of ``y``, of the shape of ``mean``.
        """
        b = params["scale"]
        return -(y - mean).abs() / b - torch.log(2 * b)

    def variance(self, mean, params):
        """``2 b^2``.

        Parameters
        ----------
        mean : torch.Tensor
            Noise-free model predictions, of shape ``(S, K, n_observables, n_times)``.
        params : dict of str to torch.Tensor
            Noise parameters by base name, each of shape
            ``(S|1, K|1, n_observables, 1)``.

        Returns
        -------
        torch.Tensor
            ``2 * scale ** 2`` broadcast to the shape of ``mean``.
        """
        return (2 * params["scale"] ** 2).expand_as(mean)

    def sample(self, mean, params, generator=None):
        """Draw Laplace noise by inverse CDF.

        Parameters
        ----------
        mean : torch.Tensor
            Noise-free model predictions, of shape ``(S, K, n_observables, n_times)``.
        params : dict of str to torch.Tensor
            Noise parameters by base name, each of shape
            ``(S|1, K|1, n_observables, 1)``.
        generator : torch.Generator, optional
            Random number generator used for the draws.

        Returns
        -------
        torch.Tensor
            Simulated observations, of the shape of ``mean``.
        """
        u = torch.rand(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device) - 0.5
        u = u.clamp(-0.5 + 1e-7, 0.5 - 1e-7)
        return mean - params["scale"] * torch.sign(u) * torch.log1p(-2 * u.abs())


class StudentT(Gaussian):
    """Student-t error with ``df`` degrees of freedom and scale ``sigma``.

    Parameters
    ----------
    df : float, default=4.0
        Degrees of freedom (a fixed hyperparameter, ``> 0``).
    sigma_prior : Prior, default=LogNormal(log(0.1), 1.5)
        Prior of the scale of each observable.
    level : {"population", "individual"}, default="population"
        Shared by all series, or one value per series (see the module notes).
    """

    def __init__(self, df=4.0, sigma_prior=None, level="population"):
        super().__init__(sigma_prior, level=level)
        if isinstance(df, bool) or not isinstance(df, (numbers.Real, np.floating, np.integer)):
            raise TypeError(f"StudentT: df must be a positive number, got {df!r}.")
        if not (df > 0 and math.isfinite(df)):
            raise ValueError(f"StudentT: df must be a positive finite number, got {df!r}.")
        self.df = float(df)

    def log_prob(self, y, mean, params):
        """Student-t log density.

        Parameters
        ----------
        y : torch.Tensor
            Observations, broadcastable against ``mean``.
        mean : torch.Tensor
            Noise-free model predictions, of shape ``(S, K, n_observables, n_times)``.
        params : dict of str to torch.Tensor
            Noise parameters by base name, each of shape
            ``(S|1, K|1, n_observables, 1)``.

        Returns
        -------
        torch.Tensor
            Element-wise Student-t log density of ``y``, of the shape of ``mean``.
        """
        nu, s = self.df, params["sigma"]
        u = (y - mean) / s
        const = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi)
        return const - torch.log(s) - (nu + 1) / 2 * torch.log1p(u * u / nu)

    def variance(self, mean, params):
        """``sigma^2 df / (df - 2)`` (infinite for ``df <= 2``).

        Parameters
        ----------
        mean : torch.Tensor
            Noise-free model predictions, of shape ``(S, K, n_observables, n_times)``.
        params : dict of str to torch.Tensor
            Noise parameters by base name, each of shape
            ``(S|1, K|1, n_observables, 1)``.

        Returns
        -------
        torch.Tensor
            ``sigma ** 2 * df / (df - 2)`` broadcast to the shape of ``mean``.
        """
        factor = self.df / (self.df - 2) if self.df > 2 else float("inf")
        return (factor * params["sigma"] ** 2).expand_as(mean)

    def sample(self, mean, params, generator=None):
        """Draw ``mean + sigma * t`` with ``t = e / sqrt(chi2 / df)``.

        Parameters
        ----------
        mean : torch.Tensor
            Noise-free model predictions, of shape ``(S, K, n_observables, n_times)``.
        params : dict of str to torch.Tensor
            Noise parameters by base name, each of shape
            ``(S|1, K|1, n_observables, 1)``.
        generator : torch.Generator, optional
            Random number generator used for the draws.

        Returns
        -------
        torch.Tensor
            Simulated observations, of the shape of ``mean``.
        """
        e = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        shape = torch.full(mean.shape, self.df / 2, dtype=mean.dtype, device=mean.device)
        g = torch._standard_gamma(shape, generator=generator)
        return mean + params["sigma"] * e / torch.sqrt(2 * g / self.df)
