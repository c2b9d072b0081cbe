"""skhds: amortised Bayesian inference for hierarchical nonlinear dynamical systems.

``HierarchicalODEVAE(model).fit(X, groups=g)`` trains a variational
autoencoder whose decoder is the user's ODE model (an :class:`ODEModel`), under
an importance-weighted bound, and then predicts, scores held-out series and
samples posteriors like any scikit-learn estimator.
"""

from ._estimator import HierarchicalODEVAE
from .models import ODEModel, Parameter

__version__ = "0.1.0.dev0"

__all__ = ["HierarchicalODEVAE", "ODEModel", "Parameter", "__version__"]
