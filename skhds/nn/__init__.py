"""Neural networks: the amortised encoder and the variational family of global latents."""

from ._encoder import SeriesEncoder
from ._variational import MeanFieldGaussian, gaussian_kl

__all__ = ["SeriesEncoder", "MeanFieldGaussian", "gaussian_kl"]
