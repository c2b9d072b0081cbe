"""``HierarchicalODEVAE``: the scikit-learn estimator (orchestration, no math).

The estimator validates input, clones the user's model, builds the
variational parts, runs the training loop (minibatches, convergence, early
stopping, best-state bookkeeping) and exposes prediction, scoring and
posterior sampling. The bound is in :mod:`skhds.inference`, the assembly of
one evaluation in :mod:`skhds._vae`.
"""

import copy
import inspect
import math
import numbers
import os
import time
import warnings

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from ._cuda_graphs import CapturedTrainingPass, graphs_supported
from ._data import EncoderScaling, SeriesData
from ._persistence import decode_state, encode_state, to_numpy, to_torch
from ._validation import (
    check_bool,
    check_float32_range,
    check_float32_times,
    check_groups,
    check_inputs,
    check_learning_rate_schedule,
    check_observations,
    check_positive_float,
    check_positive_int,
    check_times,
    warn_all_missing,
)
from ._vae import HierarchicalVAE
from .inference import (
    MultivariateStudentT,
    adaptive_importance_sampling,
    effective_sample_size,
    iwae_per_series,
    laplace_approximation,
    normalized_weights,
    pareto_k,
)
from .models import Hierarchy, LogisticGrowth, ODEModel, check_model
from .nn import MeanFieldGaussian, SeriesEncoder
from .solvers import SOLVERS

__all__ = ["HierarchicalODEVAE"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_METADATA = {"groups": True, "inputs": True, "times": True}
# Fraction of the individual draws behind the importance path's SIR that come from the
# population density p(z | g) (defensive importance sampling): covers posterior tails
# that the data barely constrain and the Gaussian proposals make too light.
_DEFENSIVE = 0.1


class HierarchicalODEVAE(TransformerMixin, BaseEstimator):
    """Amortised hierarchical variational inference for ODE models.

    An encoder network maps each observed series to a Gaussian approximate
    posterior over its individual parameters; population and group parameters
    (and the population distribution of individual parameters) have a
    mean-field Gaussian variational posterior; the decoder is the ODE model,
    integrated by a batched differentiable fixed-step solver. Training
    maximises the importance-weighted bound (IWAE) with Adam.

    Parameters
    ----------
    model : ODEModel, default=None
        The model; cloned at ``fit`` into ``model_``. ``None`` uses
        :class:`~skhds.models.LogisticGrowth`.
    solver : {"euler", "heun", "midpoint", "rk4"}, default="heun"
        Fixed-step integrator.
    dt : float, default=None
        Largest solver step; ``None`` takes one step per interval of the
        observation grid. Intervals wider than ``dt`` are split into equal
        steps; consecutive intervals that together fit into ``dt`` are
        covered by one step, and the observation times inside it are
        interpolated (cubic Hermite; see the solvers guide).
    n_importance_samples : int, default=32
        Importance samples per series during training (``K``).
    n_eval_samples : int, default=256
        Importance samples per series in ``score``, ``predict`` and friends.
    batch_size : int, default=32
        Series per minibatch.
    learning_rate : float, default=0.01
        Adam step size (the rate until the first change of
        ``learning_rate_schedule``).
    learning_rate_schedule : sequence of (int, float), callable or None, default=None
        How the step size changes over training. ``None`` keeps
        ``learning_rate``. A sequence of ``(epochs, rate)`` pairs, with
        increasing ``epochs``, switches to ``rate`` once that many epochs are
        complete: the VI-HDS study's ``[(250, 0.002), (1000, 0.0002)]`` trains
        250 epochs at ``learning_rate``, then at 0.002 up to epoch 1,000, then
        at 0.0002. A callable ``f(n_completed_epochs) -> rate`` gives the rate
        of every epoch (define it at module level to pickle the estimator).
        The count runs over ``fit``, ``partial_fit`` and warm starts alike
        (``n_iter_``). A rate halved after a rolled-back update (see
        ``history_``) stays halved relative to the schedule.
    encoder_learning_rate : float or None, default=None
        Adam step size of the encoder's weights (``None``: ``learning_rate``,
        one step size for all). The schedule and the halvings after
        rolled-back updates scale it in proportion: it stays
        ``encoder_learning_rate / learning_rate`` times the rate of the other
        parameters. With ``training_refinement`` the encoder only learns to
        reproduce the refined proposals, and a slower encoder lets the rest
        train at a larger rate: on the double-receiver study
        ``learning_rate=0.03, encoder_learning_rate=0.003`` reached a given
        held-out bound in about half the epochs of 0.01 for all (user guide).
    max_iter : int, default=1000
        Maximum number of epochs.
    tol : float, default=1e-3
        Minimum improvement of the smoothed per-series training loss (or of
        the validation score with ``early_stopping``) to count as progress.
    n_iter_no_change : int, default=100
        Epochs without progress before stopping.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the series (split by group, so
        whole groups are held out when a model has group factors and there
        are enough of them; otherwise by series), stop when the validation
        score stalls, and restore the best state.
    validation_fraction : float, default=0.1
        Fraction held out for early stopping.
    gradient_estimator : {"dreg", "iwae"}, default="dreg"
        Encoder gradient: doubly reparameterised (lower variance, as the
        paper's original code) or the standard IWAE gradient.
    random_effects : {"learned", "fixed"}, default="learned"
        Learn the population location and between-series spread of individual
        and group parameters (mixed-effects style), or fix them at the declared
        priors (the reference implementation's behaviour).
    categories : dict or None, default=None
        Levels of grouping factors, declared up front: ``{factor: levels}``
        (in the order of ``categories_``). A declared level that the
        training data lack gets group parameters from the learned group
        distribution, and a later ``partial_fit`` or warm start with its
        series learns them (levels first seen in a warm start cannot be added
        to a fitted model). Factors not named are learned from the data. A
        fresh ``fit`` refuses levels of a named factor that are not declared
        (a warm start warns and trains their series as of an unseen level).
    n_hidden : int, default=64
        Width of the encoder.
    covariance_type : {"full", "diag"}, default="full"
        Covariance of the amortised Gaussian posterior of each series'
        individual parameters: full (a Cholesky factor; captures the strong
        posterior correlations typical of ODE parameters, which keeps the
        importance weights healthy) or diagonal (mean-field, as the paper).
    random_state : int, RandomState instance or None, default=None
        Seeds network initialisation, minibatch order and Monte Carlo draws.
        With an int, CPU results are reproducible bit for bit.
    device : str, default="cpu"
        Torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``...).
    dtype : {"float32", "float64"}, default="float32"
        Floating-point precision of all computations.
    verbose : int, default=0
        0 is silent; 1 shows a progress bar (tqdm, if installed); 2 also
        prints one line per epoch.
    warm_start : bool, default=False
        Continue from the previous fit instead of starting afresh (the
        optimiser state is kept, also across pickling).
    checkpoint_path : str or path-like, default=None
        If set, the estimator is saved there (``joblib``, atomically) after
        every epoch. Resume with ``joblib.load(path).set_params(warm_start=True).fit(...)``.
    tensorboard_dir : str or path-like, default=None
        If set, the per-epoch scalars of ``history_`` are written there for
        TensorBoard (``torch.utils.tensorboard.SummaryWriter``, which needs
        the ``tensorboard`` package) as training runs, under ``skhds/<column>``.
    training_refinement : int, default=0
        Semi-amortised training: the number of Gauss-Newton iterations that
        refine each training series' proposal, from the encoder's, to the
        Laplace approximation of its posterior at the minibatch's global draw
        (``HierarchicalVAE.gauss_newton_local``; about one batched forward
        solve each). The refined proposals train the model and the global
        latents (the bound is valid for any proposal), and the encoder learns
        to reproduce them (their KL divergence from the encoder's is added to
        the loss). On data that pin the parameters far more tightly than the
        encoder can early in training (the double-receiver study) this raises
        the bound reached per epoch and per second; 0 trains the encoder's
        proposals directly. Evaluation always uses the encoder. On the CPU,
        see ``refinement_block`` for a cheaper schedule of the refinement.
    refinement_block : int or "epoch", default=1
        With ``training_refinement``, the number of consecutive minibatches
        whose proposals are refined together, in one batched Gauss-Newton
        solve, before the first of them is trained; ``"epoch"`` refines all
        the minibatches of an epoch at once, whatever their number. Those
        minibatches share one global draw: its standard normal noise is
        drawn once, the refinement uses the draw at the current ``q(g)``,
        and each minibatch trains at the draw's value at its own step
        (:meth:`~skhds.nn.MeanFieldGaussian.from_noise`), so its proposals
        are up to the block's number of minibatches less one optimiser steps
        old. Every step's bound is still valid (any proposal is). On the CPU
        a solve costs far less than proportionally more for more series
        (much of its time is per-operation overhead: on one thread, 0.11 s
        for the 234 wells of the study against 0.06 s for a minibatch of
        36), so
        refining a whole epoch at once made the epochs of the
        double-receiver study 1.6 times cheaper on one CPU thread, with as
        much learned per epoch (benchmarks/README.md). Smaller minibatches
        then cost less than proportionally more per epoch (the refinement
        no longer grows with their number; halving them cost 1.34 times as
        much per epoch), and more optimiser steps per epoch can pay: on that
        study ``batch_size=18`` with the epoch refined at once reached a
        held-out bound of 900 nats per well in about half the epochs of 36.
        Memory grows with ``refinement_block * batch_size`` series (with
        ``"epoch"``, with the number of training series: for large data
        sets give a number). With ``training_refinement``, must be 1 with
        CUDA graphs (where the refinement is captured with each minibatch's
        pass).
    cuda_graphs : bool, default=True
        On a CUDA device, capture each minibatch shape's training pass in a
        CUDA graph and replay it (much faster: the pass is launch-bound); see
        ``skhds/_cuda_graphs.py``. Ignored on the CPU. A model that cannot be
        captured (its right-hand side reads device values on the host) is
        trained eagerly, with a warning.
    compile_solver : bool, default=False
        On the CPU, compile the solver's step, the model's right-hand side
        included, with ``torch.compile`` (dynamic shapes). The first solve of
        a process compiles it (10-30 s, again for evaluation without
        gradients); after that, training minibatches of the double-receiver
        study ran about 1.7 times as fast, epochs with ``training_refinement``
        about 1.4 times (benchmarks/README.md). It can also be slower: epochs
        of the default :class:`~skhds.models.DoubleReceiverBlackBox` (neural
        right-hand side) took 2.2 times as long compiled (the generated code
        vectorises along its few states, not along the trajectories), so time
        a few epochs both ways. Needs a C++ compiler; where compilation fails,
        the solver runs eagerly, with a warning. Ignored on CUDA devices (see
        ``cuda_graphs``).

    Attributes
    ----------
    model_ : ODEModel
        The fitted clone of ``model`` (neural parts trained).
    n_features_in_ : int
        Number of observables seen in ``fit``.
    categories_ : dict
        Training levels of each grouping factor.
    fit_times_ : numpy.ndarray or None
        The shared time grid of the last fit (a warm start or ``partial_fit``
        given ``times`` replaces it; None for per-series grids); the default
        ``times`` of the other methods for data of its length.
    loss_curve_ : list of float
        Training loss per epoch: the negative bound per series.
    validation_scores_ : list of float or None
        Validation score per epoch with ``early_stopping``.
    best_loss_ : float
        Best smoothed training loss (exponential moving average over about
        ten epochs, the quantity convergence is judged on; ``None`` with
        ``early_stopping``).
    history_ : pandas.DataFrame
        Per-epoch record: ``loss``, ``log_lik_bound`` (mean per-series IWAE
        term), ``kl_global``, ``grad_norm``, ``ess`` (mean effective sample
        size of the importance weights), ``zero_weight_samples`` (importance
        samples whose simulation failed), ``failed_series`` (series whose
        samples all failed: left out of that step's objective),
        ``skipped_steps``, ``rollbacks``, ``learning_rate``, ``time`` and, with
        early stopping, ``validation_score``.
    n_iter_ : int
        Epochs run.
    summary_ : pandas.DataFrame
        Posterior summary of population and group quantities.

    Examples
    --------
    >>> from skhds import HierarchicalODEVAE
    >>> from skhds.datasets import make_logistic_growth
    >>> data = make_logistic_growth(random_state=0)
    >>> est = HierarchicalODEVAE(data.model, max_iter=5, random_state=0)
    >>> est = est.fit(data.X, groups=data.groups, times=data.times)
    >>> est.predict(data.X, groups=data.groups, times=data.times).shape
    (60, 1, 25)
    """

    # Metadata routing: request groups/inputs/times by default, so that with
    # ``sklearn.set_config(enable_metadata_routing=True)`` meta-estimators
    # (GridSearchCV, cross_validate, Pipeline) pass them without set_*_request.
    __metadata_request__fit = _METADATA
    __metadata_request__partial_fit = _METADATA
    __metadata_request__score = {**_METADATA, "sample_weight": True}
    __metadata_request__score_samples = _METADATA
    __metadata_request__transform = _METADATA
    __metadata_request__predict = {**_METADATA, "prediction_times": True, "return_std": True}

    def __init__(self, model=None, *, solver="heun", dt=None, n_importance_samples=32,
                 n_eval_samples=256, batch_size=32, learning_rate=0.01, learning_rate_schedule=None,
                 encoder_learning_rate=None,
                 max_iter=1000, tol=1e-3,
                 n_iter_no_change=100, early_stopping=False, validation_fraction=0.1,
                 gradient_estimator="dreg", random_effects="learned", categories=None, n_hidden=64,
                 covariance_type="full", random_state=None, device="cpu", dtype="float32", verbose=0,
                 warm_start=False,
                 checkpoint_path=None, tensorboard_dir=None, training_refinement=0,
                 refinement_block=1, cuda_graphs=True, compile_solver=False):
        self.model = model
        self.solver = solver
        self.dt = dt
        self.n_importance_samples = n_importance_samples
        self.n_eval_samples = n_eval_samples
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_schedule = learning_rate_schedule
        self.encoder_learning_rate = encoder_learning_rate
        self.max_iter = max_iter
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.gradient_estimator = gradient_estimator
        self.random_effects = random_effects
        self.categories = categories
        self.n_hidden = n_hidden
        self.covariance_type = covariance_type
        self.random_state = random_state
        self.device = device
        self.dtype = dtype
        self.verbose = verbose
        self.warm_start = warm_start
        self.checkpoint_path = checkpoint_path
        self.tensorboard_dir = tensorboard_dir
        self.training_refinement = training_refinement
        self.refinement_block = refinement_block
        self.cuda_graphs = cuda_graphs
        self.compile_solver = compile_solver

    # ----------------------------------------------------------- checks
    def _check_hyperparameters(self):
        if self.model is not None and not isinstance(self.model, ODEModel):
            raise TypeError(f"model must be an skhds.ODEModel instance, got {type(self.model).__name__}.")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {self.solver!r}.")
        check_positive_float(self.dt, "dt", allow_none=True)
        check_positive_int(self.n_importance_samples, "n_importance_samples")
        check_positive_int(self.n_eval_samples, "n_eval_samples")
        check_positive_int(self.batch_size, "batch_size")
        check_positive_float(self.learning_rate, "learning_rate")
        check_learning_rate_schedule(self.learning_rate_schedule)
        check_positive_float(self.encoder_learning_rate, "encoder_learning_rate", allow_none=True)
        check_positive_int(self.max_iter, "max_iter")
        check_positive_int(self.n_iter_no_change, "n_iter_no_change")
        check_positive_int(self.n_hidden, "n_hidden")
        if (isinstance(self.tol, (bool, np.bool_)) or not isinstance(self.tol, numbers.Real)
                or not self.tol >= 0):
            raise ValueError(f"tol must be a number >= 0, got {self.tol!r}.")
        if not (isinstance(self.validation_fraction, (float, np.floating))
                and 0 < self.validation_fraction < 1):
            raise ValueError(f"validation_fraction must be a float in (0, 1), got {self.validation_fraction!r}.")
        check_bool(self.warm_start, "warm_start")
        check_bool(self.early_stopping, "early_stopping")
        if not isinstance(self.verbose, (bool, np.bool_)):
            check_positive_int(self.verbose, "verbose", minimum=0)
        for name in ("checkpoint_path", "tensorboard_dir"):
            path = getattr(self, name)
            if path is not None and not isinstance(path, (str, os.PathLike)):
                raise TypeError(f"{name} must be None, a str or a path-like, got {path!r}.")
        if self.gradient_estimator not in ("dreg", "iwae"):
            raise ValueError(f"gradient_estimator must be 'dreg' or 'iwae', got {self.gradient_estimator!r}.")
        if self.random_effects not in ("learned", "fixed"):
            raise ValueError(f"random_effects must be 'learned' or 'fixed', got {self.random_effects!r}.")
        if self.covariance_type not in ("full", "diag"):
            raise ValueError(f"covariance_type must be 'full' or 'diag', got {self.covariance_type!r}.")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}.")
        check_bool(self.cuda_graphs, "cuda_graphs")
        check_bool(self.compile_solver, "compile_solver")
        check_positive_int(self.training_refinement, "training_refinement", minimum=0)
        block_error = ("refinement_block must be a positive integer or 'epoch', got "
                       f"{self.refinement_block!r}.")
        if isinstance(self.refinement_block, str):
            if self.refinement_block != "epoch":
                raise ValueError(block_error)
        else:
            try:
                check_positive_int(self.refinement_block, "refinement_block")
            except (TypeError, ValueError) as exc:
                raise type(exc)(block_error) from None
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device {self.device!r} is not a valid torch device: {exc}") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={self.device!r} was requested but CUDA is not available.")
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or a CUDA device, got {self.device!r}.")
        if (self.refinement_block != 1 and self.training_refinement and self.cuda_graphs
                and graphs_supported(device)):
            raise ValueError(
                f"refinement_block={self.refinement_block} cannot be combined with CUDA graphs: "
                "captured training refines each minibatch inside its graph, which is faster on a "
                "GPU. Use refinement_block=1, or cuda_graphs=False."
            )
        return device, _DTYPES[self.dtype]

    def _prepare(self, X, groups, inputs, times, reset, fitting=False):
        """Validate arrays and return a SeriesData (encodes group labels).

        ``reset``: a fresh fit (learn the observables, levels and time grid);
        ``fitting``: any fit, a warm start included (a time grid it is given
        becomes the default grid).
        """
        if reset:
            model = self.model_
            X = check_observations(X, n_observables=len(model.observable_names))
        else:
            check_is_fitted(self)
            model = self.model_
            X = check_observations(X)
            if X.shape[1] != self.n_features_in_:
                raise ValueError(
                    f"X has {X.shape[1]} observables, but {type(self).__name__} was fitted with "
                    f"{self.n_features_in_}."
                )
        validate_data(self, X, allow_nd=True, ensure_all_finite="allow-nan", reset=reset,
                      skip_check_array=True)
        n, _, T = X.shape
        given = times is not None
        if times is None and not reset and getattr(self, "fit_times_", None) is not None:
            if len(self.fit_times_) == T:
                times = self.fit_times_  # default to the shared grid seen in fit
        t, valid = check_times(times, n, T, t0=model.t0)
        u = check_inputs(inputs, n, model.inputs)
        float32 = (_DTYPES[self.dtype] if fitting else self.vae_.q_global.loc.dtype) == torch.float32
        if float32:
            check_float32_range(X if valid is None else np.where(valid[:, None, :], X, np.nan), "X")
            check_float32_times(t, valid)
            check_float32_range(u, "inputs")
        if reset or (fitting and given):
            self.fit_times_ = t if t.ndim == 1 else None
        factors = self._factor_names(model)
        # A model without group parameters ignores labels (they may be a
        # classifier's target passed on as ``y`` in a Pipeline).
        gdf = check_groups(groups if factors else None, n, factors)
        if reset:
            self.categories_ = _categories(self.categories, gdf, factors)
        codes = np.full((n, len(factors)), -1, dtype=np.int64)
        unseen = {}
        for j, f in enumerate(factors):
            lookup = {v: i for i, v in enumerate(self.categories_[f])}
            col = gdf[f].to_numpy()
            codes[:, j] = [lookup.get(v, -1) for v in col]
            if (codes[:, j] < 0).any():
                unseen[f] = sorted({v for v in col if v not in lookup}, key=_sort_key)
        if unseen and fitting:
            warnings.warn(
                f"Group levels not in categories_ in a warm start or partial_fit: {unseen}. A "
                "fitted model keeps its levels: these series train with their group parameters "
                "marginalised over the learned group distribution, and the levels get no "
                "parameters of their own. Declare every level before the first fit with the "
                "categories parameter, or fit afresh (warm_start=False).",
                UserWarning,
                stacklevel=4,  # _prepare <- _fit <- fit / partial_fit <- the caller
            )
        elif unseen:
            warnings.warn(
                f"Group levels not seen in training: {unseen}. Their group parameters are "
                "marginalised over the learned group distribution (zero-shot prediction). The "
                "encoder has not seen such series either: refine=3 (score_samples, predict, "
                "transform, sample_posterior) adapts the proposals to each series.",
                UserWarning,
                stacklevel=3,
            )
        return SeriesData(X, t, valid, u, codes, model.t0)

    @staticmethod
    def _factor_names(model):
        used = {s.factor for s in model.parameter_specs() if s.level == "group"}
        return [f for f in model.factors if f in used]

    # ------------------------------------------------------------ build
    def _build(self, data, device, dtype, codes=None):
        """The networks and ``q(g)``; ``codes``: the training series' level codes (a fresh fit)."""
        specs = check_model(self.model_)
        factors = self._factor_names(self.model_)
        n_levels = {f: len(self.categories_[f]) for f in factors}
        hier = Hierarchy(specs, n_levels, random_effects=self.random_effects)
        encoder = SeriesEncoder(
            data.y.shape[1], data.inputs.shape[1], [n_levels[f] for f in factors],
            hier.n_individual, torch.as_tensor(hier.ind_loc, dtype=dtype),
            torch.as_tensor(hier.ind_scale, dtype=dtype), n_hidden=self.n_hidden,
            covariance_type=self.covariance_type,
            global_scale=torch.as_tensor(hier.prior_scale, dtype=dtype),
        )
        init_scale = np.minimum(0.1 * hier.prior_scale, 0.1)
        # declared levels without training series start at their prior (what they stay
        # at, up to the learned group distribution) rather than narrow
        for spec in hier.group if codes is not None else ():
            j, i_v = factors.index(spec.factor), hier.grp_index[spec.name][2]
            empty = i_v + np.flatnonzero(np.bincount(codes[:, j], minlength=n_levels[spec.factor]) == 0)
            init_scale[empty] = hier.prior_scale[empty]
        q = MeanFieldGaussian(torch.as_tensor(hier.prior_loc, dtype=dtype),
                              torch.as_tensor(init_scale, dtype=dtype))
        vae = HierarchicalVAE(self.model_, hier, encoder, q, self.solver,
                              {f: j for j, f in enumerate(factors)})
        return vae.to(device=device, dtype=dtype)

    def _generator(self, device, seed):
        gen = torch.Generator(device=device)
        gen.manual_seed(int(seed))
        return gen

    # -------------------------------------------------------------- fit
    def fit(self, X, y=None, *, groups=None, inputs=None, times=None):
        """Fit the model to a set of series.

        Parameters
        ----------
        X : array-like of shape (n_series, n_observables, n_times)
            Observations; NaN marks missing values.
        y : array-like or DataFrame, optional
            Group labels, used only when ``groups`` is None. Without metadata
            routing, scikit-learn meta-estimators (``GridSearchCV``,
            ``cross_validate``) pass ``y`` to ``fit`` and ``score`` of every fold
            but send ``groups`` only to the splitter; ``fit(X, y=g)`` with
            ``GridSearchCV(...).fit(X, g, groups=g)`` gets the labels to both.
        groups : array-like of shape (n_series,) or (n_series, n_factors), or DataFrame
            Group labels per factor (required when the model has group parameters).
        inputs : array-like of shape (n_series, n_inputs), optional
            Per-series inputs (treatments, doses).
        times : array-like of shape (n_times,) or (n_series, n_times), optional
            Observation times; per-series grids may be NaN-padded at the end
            (finite values of ``X`` under the padding are ignored, like NaN).
            Default ``0, 1, ..., n_times - 1``. After fitting on a shared grid,
            that grid is the default of the other methods for ``X`` with as
            many time points.

        Returns
        -------
        self : HierarchicalODEVAE
            The fitted estimator.
        """
        return self._fit(X, _groups_or_y(groups, y), inputs, times, max_epochs=None)

    def partial_fit(self, X, y=None, *, groups=None, inputs=None, times=None):
        """Run one epoch, continuing from the current state if fitted.

        Parameters
        ----------
        X : array-like of shape (n_series, n_observables, n_times)
            As in :meth:`fit`.
        y : array-like or DataFrame, optional
            As in :meth:`fit` (group labels, used only when ``groups`` is None).
        groups : array-like or DataFrame, optional
            As in :meth:`fit`.
        inputs : array-like of shape (n_series, n_inputs), optional
            As in :meth:`fit`.
        times : array-like of shape (n_times,) or (n_series, n_times), optional
            As in :meth:`fit`.

        Returns
        -------
        self : HierarchicalODEVAE
            The estimator, after one more epoch of training.
        """
        return self._fit(X, _groups_or_y(groups, y), inputs, times, max_epochs=1, incremental=True)

    def _fit(self, X, groups, inputs, times, max_epochs, incremental=False):
        device, dtype = self._check_hyperparameters()
        writer_class = _tensorboard_writer_class(self.tensorboard_dir)
        continuing = (self.warm_start or incremental) and hasattr(self, "vae_")
        if continuing:
            self._warn_structure_changed()
        else:
            rng = check_random_state(self.random_state)
            self._seed = int(rng.randint(0, 2**31 - 1))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self._seed)
                self.model_ = clone(self.model) if self.model is not None else LogisticGrowth()
            check_model(self.model_)
        data = self._prepare(X, groups, inputs, times, reset=not continuing, fitting=True)
        empty = warn_all_missing(data.mask)
        if empty.size:
            data = data.subset(np.setdiff1d(np.arange(data.n_series), empty))
            if data.n_series == 0:
                raise ValueError("X has no observed values at all.")
        train, val = self._split(data)
        if not continuing:
            self.scaling_ = EncoderScaling(
                np.where(train.mask, train.y, np.nan), train.times, train.inputs
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self._seed + 1)
                self.vae_ = self._build(train, device, dtype, codes=train.codes)
            self._fitted_structure = self._structure()
            self.loss_curve_, self.validation_scores_, self._history = [], [], []
            self.n_iter_, self.best_loss_, self._epoch_seed = 0, math.inf, self._seed
            self._eval_seed = self._seed + 7
            self._smoothed = None
            self._best_val = -math.inf
            self._lr_factor = 1.0  # halvings after rolled-back updates
        else:
            ref = self.vae_.q_global.loc
            if (ref.device, ref.dtype) != (device, dtype):
                self.vae_.to(device=device, dtype=dtype)
                self._captured = None  # captured passes belong to one device and dtype
                if hasattr(self, "_optimizer"):
                    # Adam's moments follow their parameters (load_state_dict casts them)
                    self._optimizer.load_state_dict(self._optimizer.state_dict())
        saved = self.__dict__.pop("_optimizer_state", None)
        if not (continuing and hasattr(self, "_optimizer")):
            self._optimizer = torch.optim.Adam(_parameter_groups(self.vae_), lr=self.learning_rate)
            self._captured = None  # captured training passes belong to one network and device
        if continuing and saved is not None:
            self._optimizer.load_state_dict(_regrouped(to_torch(saved, device), self._optimizer))
        if not hasattr(self, "_lr_factor"):  # saved before schedules: halvings in the saved rate
            saved_rate = _base_rate(self._optimizer)
            self._lr_factor = min(1.0, saved_rate / self.learning_rate)
        n_epochs = max_epochs if max_epochs is not None else self.max_iter
        self._tb_writer = (None if writer_class is None
                           else writer_class(log_dir=os.fspath(self.tensorboard_dir)))
        try:
            self._configure_solver(device)
            self._train(train, val, device, dtype, n_epochs, check_convergence=max_epochs is None)
        finally:
            writer = self.__dict__.pop("_tb_writer", None)
            if writer is not None:
                writer.close()
        self.history_ = pd.DataFrame(self._history)
        self.summary_ = self._summary()
        return self

    def _structure(self):
        """The hyperparameters that shape the fitted model and networks."""
        model = self.model if self.model is not None else LogisticGrowth()
        categories = self.categories
        if isinstance(categories, dict):  # compared by value, whatever the containers
            categories = {f: list(v) if hasattr(v, "__len__") and not isinstance(v, str) else v
                          for f, v in categories.items()}
        return {"model": repr(model), "n_hidden": self.n_hidden, "categories": categories,
                "covariance_type": self.covariance_type, "random_effects": self.random_effects}

    def _warn_structure_changed(self):
        fitted = getattr(self, "_fitted_structure", None)  # None: saved by an earlier version
        if fitted is None:
            return
        # a key missing from ``fitted`` was saved before it was recorded: not a change
        changed = [k for k, v in self._structure().items() if k in fitted and fitted[k] != v]
        if changed:
            warnings.warn(
                f"{', '.join(changed)} changed since the estimator was fitted; a warm start or "
                "partial_fit continues training the fitted model and networks, so the change "
                "takes effect only when fitting afresh (warm_start=False).",
                UserWarning, stacklevel=4,
            )

    def _split(self, data):
        if not self.early_stopping:
            return data, None
        rng = np.random.RandomState(self._seed)
        n = data.n_series
        labels = (pd.DataFrame(data.codes).astype(str).agg("|".join, axis=1).to_numpy()
                  if data.codes.shape[1] else np.arange(n).astype(str))
        uniq = np.unique(labels)
        if len(uniq) < 5:  # too few groups to hold whole ones out: split series within groups
            labels, uniq = np.arange(n).astype(str), np.arange(n).astype(str)
        n_val = max(1, int(round(self.validation_fraction * len(uniq))))
        if n_val >= len(uniq):
            raise ValueError("validation_fraction leaves no training data; lower it or add series.")
        held = set(rng.permutation(uniq)[:n_val])
        is_val = np.array([lab in held for lab in labels])
        return data.subset(np.flatnonzero(~is_val)), data.subset(np.flatnonzero(is_val))

    def _batches(self, n, rng):
        order = rng.permutation(n)
        return [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]

    def _train(self, train, val, device, dtype, n_epochs, check_convergence):
        """The epoch loop: minibatches, recovery from failed steps, convergence, interrupts."""
        vae = self.vae_
        K, N = self.n_importance_samples, train.n_series
        no_change, best_state = 0, None
        converged = interrupted = False
        bar = _progress(n_epochs, self.verbose)
        try:
            for _ in range(n_epochs):
                record = self._epoch(train, device, dtype, K, N)
                epoch = self.n_iter_
                epoch_loss = record["loss"]
                if val is not None:
                    score = float(np.mean(self._score_data(val, self.n_importance_samples, epoch)))
                    record["validation_score"] = score
                    improved = score > self._best_val + self.tol
                    if score > self._best_val:
                        self._best_val = score
                        best_state = copy.deepcopy(vae.state_dict())
                    self.best_loss_ = None
                else:
                    # The loss is a Monte Carlo estimate: judge progress on its
                    # exponential moving average (about a 10-epoch window).
                    smooth = getattr(self, "_smoothed", None)
                    self._smoothed = epoch_loss if smooth is None else 0.9 * smooth + 0.1 * epoch_loss
                    improved = self._smoothed < self.best_loss_ - self.tol
                    self.best_loss_ = min(self.best_loss_, self._smoothed)
                # Book the epoch only once it is complete (an interrupt above leaves
                # n_iter_, loss_curve_, validation_scores_ and history_ consistent).
                self.n_iter_ += 1
                self.loss_curve_.append(epoch_loss)
                if val is not None:
                    self.validation_scores_.append(record["validation_score"])
                self._history.append(record)
                _log_scalars(getattr(self, "_tb_writer", None), record, self.n_iter_)
                no_change = 0 if improved else no_change + 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{epoch_loss:.4g}")
                if self.verbose >= 2:
                    extra = (f", validation score = {record['validation_score']:.4f}"
                             if val is not None else "")
                    line = (f"Iteration {self.n_iter_}, loss = {epoch_loss:.4f}{extra}, "
                            f"ess = {record['ess']:.1f}, time = {record['time']:.2f}s")
                    if bar is not None:  # print through the bar: no interleaving
                        bar.write(line)
                    else:
                        print(line)
                if self.checkpoint_path is not None:
                    self._save_checkpoint()
                if check_convergence and no_change >= self.n_iter_no_change:
                    converged = True
                    break
        except KeyboardInterrupt:
            interrupted = True
            _restore_finite(vae, getattr(self, "_epoch_state", None))
            warnings.warn(
                f"Training interrupted after {self.n_iter_} complete epoch(s); the estimator keeps "
                "the state reached so far (the best one with early_stopping) and is usable.",
                UserWarning,
            )
        finally:
            if bar is not None:
                bar.close()
        if best_state is not None:
            vae.load_state_dict(best_state)
        if check_convergence and not converged and not interrupted:
            warnings.warn(
                f"Stochastic optimizer: maximum iterations ({n_epochs}) reached and the "
                "optimization hasn't converged yet.",
                ConvergenceWarning,
            )

    def _epoch(self, train, device, dtype, K, N):
        """One pass over the training series; returns the epoch's record.

        A minibatch whose bound or gradient is not finite is skipped; if an
        update leaves non-finite parameters, the parameters and optimiser state
        roll back to the start of the epoch and the learning rate is halved.
        If every update of the pass was rolled back (with one minibatch per
        epoch, a single bad update), the pass is repeated from the epoch's
        start at the halved rate, up to ``_EPOCH_RETRIES`` times.
        """
        vae, opt = self.vae_, self._optimizer
        epoch = self.n_iter_
        rate = _scheduled_rate(self.learning_rate, self.learning_rate_schedule, epoch)
        encoder_ratio = (1.0 if self.encoder_learning_rate is None
                         else self.encoder_learning_rate / self.learning_rate)
        for group in opt.param_groups:
            group["lr"] = rate * self._lr_factor * (encoder_ratio if group["encoder"] else 1.0)
        self._epoch_state = (copy.deepcopy(vae.state_dict()), copy.deepcopy(opt.state_dict()))
        t_start = time.perf_counter()
        n_rollbacks = 0
        vae.train()
        for _ in range(_EPOCH_RETRIES + 1):
            st = self._epoch_pass(train, device, dtype, K, N, epoch)
            n_rollbacks += st["rollbacks"]
            if st["used"] or not st["rollbacks"]:
                break
        if not st["used"]:
            _restore_finite(vae, self._epoch_state)
            raise RuntimeError(
                f"Epoch {epoch + 1}: every minibatch produced a non-finite bound or update, so the "
                "model's simulations fail for the current parameters; the estimator keeps its last "
                "finite state. Check the model, its priors and the solver step (dt)."
            )
        return {
            "epoch": epoch + 1, "loss": sum(st["losses"]) / st["used"],
            "log_lik_bound": sum(st["bounds"]) / st["used"],
            "kl_global": float(vae.kl_global().detach()),
            "grad_norm": float(np.mean(st["gnorms"])), "ess": float(np.mean(st["ess"])),
            "zero_weight_samples": st["n_bad"], "failed_series": st["failed_series"],
            "skipped_steps": st["skipped"], "rollbacks": n_rollbacks,
            "learning_rate": _base_rate(opt), "time": time.perf_counter() - t_start,
        }

    def _epoch_pass(self, train, device, dtype, K, N, epoch):
        """One pass over the minibatches (an attempt at epoch ``epoch``); its statistics."""
        vae, opt = self.vae_, self._optimizer
        # the same minibatches and draws in every attempt: a retry differs only in its rate
        rng = np.random.RandomState((self._epoch_seed + epoch) % (2**31 - 1))
        seed = self._epoch_seed + 1000 + epoch
        graphs = self._graph_cache(device)
        if graphs is None:
            gen = self._generator(device, seed)
        else:
            gen = graphs["generator"]
            gen.manual_seed(int(seed))
        st = {"losses": [], "bounds": [], "ess": [], "gnorms": [], "n_bad": 0, "skipped": 0,
              "used": 0, "failed_series": 0, "rollbacks": 0}
        for idx, eps, refined in self._refined_batches(train, self._batches(N, rng), gen,
                                                        device, dtype):
            batch = train.batch(idx, self.scaling_, self.dt, device, dtype)
            captured = self._captured_pass(graphs, batch, N, K)  # None with refinement blocks
            if captured is None and graphs is not None:
                # the capture just failed, leaving its generator unusable: go on eagerly
                graphs, gen = None, self._generator(device, seed)
            if captured is None:
                opt.zero_grad(set_to_none=True)
                loss, per_series, out = vae.training_loss(batch, N, K, gen, self.gradient_estimator,
                                                          refine=int(self.training_refinement),
                                                          eps=eps, refined=refined)
                log_w, n_bad = out["log_w"], out["n_bad"]
            else:  # replayed: loss, backward and gradients already done
                loss, per_series, log_w, n_bad = captured(batch)
            st["n_bad"] += int(n_bad)
            n_failed = int((~torch.isfinite(per_series)).sum())
            st["failed_series"] += n_failed
            if not torch.isfinite(loss) or n_failed == len(idx):
                st["skipped"] += 1
                continue
            if captured is None:
                loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(vae.parameters(), max_norm=math.inf)
            if not torch.isfinite(gnorm):
                st["skipped"] += 1
                continue
            opt.step()
            if not all(bool(torch.isfinite(p).all()) for p in vae.parameters()):
                self._roll_back_halving()
                st["rollbacks"] += 1
                continue
            st["gnorms"].append(float(gnorm))
            st["losses"].append(float(loss.detach()) * len(idx))
            st["used"] += len(idx)
            st["bounds"].append(float(per_series[torch.isfinite(per_series)].sum()))
            st["ess"].append(float(effective_sample_size(log_w.detach()).mean()))
        return st

    def _refined_batches(self, train, batches, gen, device, dtype):
        """``(idx, eps, refined)`` per minibatch: with blocks of several minibatches, the
        global noise and refined proposals computed block by block; else ``None``."""
        block = len(batches) if self.refinement_block == "epoch" else int(self.refinement_block)
        if block == 1 or not self.training_refinement or not self.vae_.hierarchy.n_individual:
            for idx in batches:
                yield idx, None, None
            return
        vae = self.vae_
        for start in range(0, len(batches), block):
            group = batches[start : start + block]
            eps = torch.randn((1, vae.hierarchy.n_global), generator=gen, dtype=dtype, device=device)
            every = train.batch(np.concatenate(group), self.scaling_, self.dt, device, dtype)
            with torch.no_grad():
                refined = vae.refined_proposals(every, vae.q_global.from_noise(eps),
                                                int(self.training_refinement))
            del every
            offset = 0
            for idx in group:
                rows = slice(offset, offset + len(idx))
                offset += len(idx)
                yield idx, eps, tuple(r[rows] for r in refined)

    def _roll_back_halving(self):
        """Back to the epoch's starting state, with the learning rate halved (and kept halved)."""
        opt = self._optimizer
        self.vae_.load_state_dict(self._epoch_state[0])
        opt.load_state_dict(self._epoch_state[1])
        for group in opt.param_groups:
            group["lr"] *= 0.5
        self._lr_factor *= 0.5
        # the restored optimiser state carries the old rate: keep the halved one
        self._epoch_state[1]["param_groups"] = copy.deepcopy(opt.state_dict()["param_groups"])

    def _graph_cache(self, device):
        """Captured training passes of this network on ``device``, or None (eager training)."""
        if not (self.cuda_graphs and graphs_supported(device)):
            return None
        cache = getattr(self, "_captured", None)
        if cache is False:  # capture failed before: eager
            return None
        # graphs read and write the parameters' memory: moved or re-allocated, recapture
        where = tuple(p.data_ptr() for p in self.vae_.parameters())
        if cache is not None and cache["where"] != where:
            cache = None
        if cache is None:
            for p in self.vae_.parameters():  # one set of gradient buffers for every graph
                if p.requires_grad and p.grad is None:
                    p.grad = torch.zeros_like(p)
            cache = self._captured = {"generator": torch.Generator(device=device), "passes": [],
                                      "where": where}
        return cache

    def _captured_pass(self, graphs, batch, n_total, K):
        """The captured pass for ``batch``'s shape (capturing it if new), or None."""
        if graphs is None or self._captured is False:
            return None
        for captured in graphs["passes"]:
            if captured.matches(batch, n_total, K, self.gradient_estimator,
                                int(self.training_refinement)):
                return captured
        try:
            captured = CapturedTrainingPass(self.vae_, batch, n_total, K, graphs["generator"],
                                            self.gradient_estimator,
                                            refine=int(self.training_refinement))
        except RuntimeError as exc:
            self._captured = False
            warnings.warn(
                "The training pass could not be captured in a CUDA graph, so training continues "
                "without (slower). Usually the model reads device values on the host (a Python "
                "`if` on a tensor, .item(), a tensor built from host data at every call); see "
                f"skhds/_cuda_graphs.py. Set cuda_graphs=False to silence this. ({exc})",
                UserWarning,
                stacklevel=4,
            )
            return None
        if len(graphs["passes"]) >= _MAX_CAPTURED:  # shapes of an earlier batch_size: free them
            graphs["passes"].pop(0)
        graphs["passes"].append(captured)
        return captured

    def _save_checkpoint(self):
        import joblib

        path = str(self.checkpoint_path)
        tmp = path + ".tmp"
        self.history_ = pd.DataFrame(self._history)
        self.summary_ = self._summary()
        joblib.dump(self, tmp)
        os.replace(tmp, path)

    # ------------------------------------------------------- evaluation
    def _device_dtype(self):
        p = self.vae_.q_global.loc
        self._configure_solver(p.device)
        return p.device, p.dtype

    def _configure_solver(self, device):
        """The current ``solver``; compiled steps on the CPU only (on CUDA, graphs already
        remove the launch overhead)."""
        if self.vae_.solver != self.solver:
            if self.solver not in SOLVERS:
                raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {self.solver!r}.")
            self.vae_.solver = self.solver
            self._captured = None  # captured passes hold the solver they were captured with
        self.vae_.compile_solver = bool(getattr(self, "compile_solver", False)) and device.type == "cpu"

    def _chunks(self, n):
        step = max(1, self.batch_size)
        return [np.arange(i, min(n, i + step)) for i in range(0, n, step)]

    def _proposals(self, data, gen, refine):
        """Batches of ``data`` with their individual proposals (refined or encoder's)."""
        device, dtype = self._device_dtype()
        self.vae_.eval()
        for idx in self._chunks(data.n_series):
            batch = data.batch(idx, self.scaling_, self.dt, device, dtype)
            local = None
            if refine:
                local = self.vae_.refine_local(batch, self.n_eval_samples, refine, gen)
            yield idx, batch, local

    def _evaluations(self, data, K, gen, refine=0, include_global=False):
        """Evaluate the importance weights of ``data`` chunk by chunk (no gradients)."""
        for _, batch, local in self._proposals(data, gen, refine):
            yield self.vae_.evaluate(batch, K, gen, local=local, include_global=include_global)

    def _log_weights(self, data, K, gen, refine=0, include_global=False):
        """Log importance weights ``(S, K)`` of ``data``, chunk by chunk (no gradients).

        ``include_global`` as in :meth:`score_samples`: False, True (the
        reference implementation's per-series bound) or ``"adapted"``
        (proposals adapted to each series).
        """
        if include_global == "adapted":
            yield from self._adapted_log_weights(data, K, gen)
            return
        for res in self._evaluations(data, K, gen, refine, include_global):
            yield res["log_w"]

    def _adapted_log_weights(self, data, K, gen):
        """Log weights of the per-series evidence with proposals adapted to each series.

        Computed on a float64 copy of the VAE (the proposals' curvature is
        measured by finite differences), chunk by chunk.
        """
        device, _ = self._device_dtype()
        vae = copy.deepcopy(self.vae_).to(torch.float64)
        vae.compile_solver = False
        vae.eval()
        for idx in self._chunks(data.n_series):
            batch = data.batch(idx, self.scaling_, self.dt, device, torch.float64)
            yield vae.adapted_evidence(batch, K, gen)["log_w"]

    def _score_data(self, data, K, salt=0, refine=0, include_global=False):
        device, _ = self._device_dtype()
        gen = self._generator(device, getattr(self, "_eval_seed", self._seed) + 31 * salt)
        out = [iwae_per_series(log_w).cpu().numpy()
               for log_w in self._log_weights(data, K, gen, refine, include_global)]
        return np.concatenate(out).astype(np.float64)

    def score_samples(self, X, *, groups=None, inputs=None, times=None, refine=0,
                      include_global=False):
        """Per-series importance-weighted estimate of ``log p(y_i | training data)``.

        Each of the ``n_eval_samples`` importance samples draws its own global
        latents from their variational posterior and individual parameters from
        the encoder; the estimate is a stochastic lower bound (in expectation)
        on the log posterior predictive density of the series.

        With ``include_global=True`` it is instead the per-series bound that
        the reference implementation of VI-HDS reports: ``log p(g) - log q(g)``
        of each sample's global draw is added to the series' importance
        weight, as if the population quantities were inferred from this
        series alone. It bounds a different quantity, the evidence
        ``log p(y_i)`` of the series with the global latents integrated over
        their *prior*, a property of the model alone (the training data enter
        only through the proposals). With ``q(g)`` as the proposal it is lower
        (by about the KL divergence of ``q(g)`` from its prior, per series).

        With ``include_global="adapted"`` the same evidence is bounded with
        proposals fitted to each series. The hyperparameters (population
        locations and spreads of individual and group parameters) and the
        group values of levels other than the series' own are integrated out
        exactly (analytically and by one-dimensional quadrature); the rest
        (population latents, the series' own group values, its individual
        latents) is proposed from the Laplace approximation of its posterior
        given that series alone (damped Newton iterations from the encoder's
        proposal and the mean of ``q(g)``, curvature by finite differences,
        in float64), with Student-t tails. Usually far tighter, and far
        costlier: about ``2 * D + 1`` simulations per series and iteration,
        up to 50 iterations, for ``D`` population, group and individual
        parameters.

        Parameters
        ----------
        X : array-like of shape (n_series, n_observables, n_times)
            As in :meth:`fit`.
        groups : array-like or DataFrame, optional
            As in :meth:`fit`.
        inputs : array-like of shape (n_series, n_inputs), optional
            As in :meth:`fit`.
        times : array-like of shape (n_times,) or (n_series, n_times), optional
            As in :meth:`fit`.
        refine : int, default=0
            Rounds of per-series adaptation of the amortised proposals before
            importance sampling (see :meth:`importance_diagnostics`); 0 uses
            the encoder's output.
        include_global : bool or "adapted", default=False
            Add the global latents' ``log p(g) - log q(g)`` to every series'
            weights (the reference implementation's per-series bound; see
            above); ``"adapted"``: bound the same evidence with proposals
            for all latents adapted to each series (``refine`` must then be 0).

        Returns
        -------
        numpy.ndarray of shape (n_series,)
            Importance-weighted estimate of ``log p(y_i | training data)`` per
            series (or the reference implementation's bound); ``-inf``, with a
            warning, for a series none of whose samples has a finite weight.
        """
        refine, include_global = _check_evidence_kind(refine, include_global)
        data = self._prepare(X, groups, inputs, times, reset=False)
        scores = self._score_data(data, self.n_eval_samples, refine=refine,
                                  include_global=include_global)
        _warn_failed(scores == -np.inf, "their scores are -inf")
        return scores

    def score(self, X, y=None, *, groups=None, inputs=None, times=None, sample_weight=None):
        """Mean per-series importance-weighted bound (higher is better).

        Parameters
        ----------
        X : array-like of shape (n_series, n_observables, n_times)
            As in :meth:`fit`.
        y : array-like or DataFrame, optional
            As in :meth:`fit` (``y`` stands for ``groups`` when that is None).
        groups : array-like or DataFrame, optional
            As in :meth:`fit`.
        inputs : array-like of shape (n_series, n_inputs), optional
            As in :meth:`fit`.
        times : array-like of shape (n_times,) or (n_series, n_times), optional
            As in :meth:`fit`.
        sample_weight : array-like of shape (n_series,), optional
            Weights of the series in the mean.

        Returns
        -------
        float
            Mean (or ``sample_weight``-weighted mean) of :meth:`score_samples`.
        """
        values = self.score_samples(X, groups=_groups_or_y(groups, y), inputs=inputs, times=times)
        if sample_weight is not None:
            w = np.asarray(sample_weight, dtype=float)
            if w.shape != values.shape or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
                raise ValueError(
                    f"sample_weight must be {values.shape[0]} finite non-negative weights with a "
                    "positive sum."
                )
            return float(np.average(values, weights=w))
        return float(np.mean(values))

    def predict(self, X, *, groups=None, inputs=None, times=None, prediction_times=None,
                return_std=False, refine=0):
        """Importance-weighted posterior predictive mean of the observables.

        Parameters
        ----------
        X : array-like of shape (n_series, n_observables, n_times)
            As in :meth:`fit`; the observations condition the prediction.
        groups : array-like or DataFrame, optional
            As in :meth:`fit`.
        inputs : array-like of shape (n_series, n_inputs), optional
            As in :meth:`fit`.
        times : array-like of shape (n_times,) or (n_series, n_times), optional
            As in :meth:`fit`.
        prediction_times : array-like of shape (n_out,) or (n_series, n_out), optional
            Output grid (denser curves, forecasts); default ``times``.
        return_std : bool, default=False
            Also return the predictive standard deviation (parameter
            uncertainty plus observation noise).
        refine : int, default=0
            Rounds of per-series adaptation of the amortised proposals before
            importance sampling (see :meth:`importance_diagnostics`); 0 uses
            the encoder's output.

        Returns
        -------
        mean : numpy.ndarray of shape (n_series, n_observables, n_out)
            Posterior predictive mean (NaN for series whose importance samples
            all failed to simulate, and at the NaN padding of per-series grids).
        std : numpy.ndarray of the same shape
            Only with ``return_std=True``.
        """
        refine = check_positive_int(refine, "refine", minimum=0)
        return_std = check_bool(return_std, "return_std")
        data = self._prepare(X, groups, inputs, times, reset=False)
        pt, valid = None, data.valid_times
        if prediction_times is not None:
            shape = np.shape(prediction_times)
            n_out = shape[-1] if len(shape) else 0
            pt, valid = check_times(prediction_times, data.n_series, n_out, t0=self.model_.t0,
                                    name="prediction_times")
            if self.vae_.q_global.loc.dtype == torch.float32:
                check_float32_times(pt, valid, "prediction_times")
        device, dtype = self._device_dtype()
        gen = self._generator(device, self._eval_seed + 1)
        means, stds = [], []
        for idx, batch, local in self._proposals(data, gen, refine):
            pred = None
            if pt is not None:
                pred = data.batch(idx, self.scaling_, self.dt, device, dtype,
                                  times=pt if pt.ndim == 1 else pt[idx])
            m, v, _ = self.vae_.predictive(batch, self.n_eval_samples, gen, pred, local=local)
            means.append(m.cpu().numpy())
            stds.append(np.sqrt(v.cpu().numpy()))
        mean = np.concatenate(means).astype(np.float64)
        std = np.concatenate(stds).astype(np.float64)
        if valid is not None:  # no prediction at the padding of ragged grids
            mean[~np.broadcast_to(valid[:, None, :], mean.shape)] = np.nan
            std[~np.broadcast_to(valid[:, None, :], std.shape)] = np.nan
        return (mean, std) if return_std else mean

    def _weighted_individual(self, data, K, gen, refine=0):
        for out in self._evaluations(data, K, gen, refine):
            yield out, normalized_weights(out["log_w"])

    def transform(self, X, *, groups=None, inputs=None, times=None, refine=0):
        """Posterior means of the individual parameters (on their own scale).

        Parameters
        ----------
        X : array-like of shape (n_series, n_observables, n_times)
            As in :meth:`fit`.
        groups : array-like or DataFrame, optional
            As in :meth:`fit`.
        inputs : array-like of shape (n_series, n_inputs), optional
            As in :meth:`fit`.
        times : array-like of shape (n_times,) or (n_series, n_times), optional
            As in :meth:`fit`.
        refine : int, default=0
            Rounds of per-series adaptation of the amortised proposals before
            importance sampling (see :meth:`importance_diagnostics`); 0 uses
            the encoder's output.

        Returns
        -------
        numpy.ndarray of shape (n_series, n_individual_parameters)
            Columns in the order of :meth:`get_feature_names_out`; NaN, with a
            warning, for a series none of whose samples has a finite weight.
        """
        refine = check_positive_int(refine, "refine", minimum=0)
        data = self._prepare(X, groups, inputs, times, reset=False)
        names = self.get_feature_names_out()
        if not len(names):  # no individual parameters
            return np.zeros((data.n_series, 0))
        gen = self._generator(self._device_dtype()[0], self._eval_seed + 2)
        rows, failed = [], []
        for out, w in self._weighted_individual(data, self.n_eval_samples, gen, refine):
            vals = torch.stack([out["params"][n].expand_as(w) for n in names], -1)
            rows.append((w.unsqueeze(-1) * vals).sum(1).cpu().numpy())
            failed.append((w.sum(-1) == 0).cpu().numpy())
        means = np.concatenate(rows).astype(np.float64)
        means[_warn_failed(np.concatenate(failed), "their posterior means are NaN")] = np.nan
        return means

    def fit_transform(self, X, y=None, **fit_params):
        """Fit, then return the posterior means of the individual parameters.

        Parameters
        ----------
        X : array-like of shape (n_series, n_observables, n_times)
            As in :meth:`fit`.
        y : array-like or DataFrame, optional
            As in :meth:`fit` (``y`` stands for ``groups`` when that is None).
        **fit_params : dict
            ``groups``, ``inputs``, ``times``.

        Returns
        -------
        numpy.ndarray of shape (n_series, n_individual_parameters)
            Posterior means of the individual parameters of the training
            series, columns in the order of :meth:`get_feature_names_out`.
        """
        fit_params = dict(fit_params)
        if fit_params.get("groups") is None and y is not None:
            fit_params["groups"] = y
        return self.fit(X, **fit_params).transform(X, **fit_params)

    def get_feature_names_out(self, input_features=None):
        """Names of the individual parameters returned by :meth:`transform`.

        Parameters
        ----------
        input_features : array-like of str or None, default=None
            Ignored; present for scikit-learn API consistency.

        Returns
        -------
        numpy.ndarray of str
            Names of the individual parameters, one per column of the output
            of :meth:`transform`.
        """
        check_is_fitted(self)
        return np.array([s.name for s in self.vae_.hierarchy.individual], dtype=object)

    def sample_posterior(self, X, *, groups=None, inputs=None, times=None, n_draws=100,
                         method="variational", refine=0, n_proposals=1000, n_replicates=1,
                         return_diagnostics=False, random_state=None):
        """Draw from the approximate posterior.

        With ``method="variational"``, population and group quantities are
        drawn from their variational posterior ``q(g)`` and the individual
        parameters of the series in ``X`` by sampling-importance-resampling
        (SIR) from ``n_eval_samples`` proposals, each with its own global draw.

        With ``method="importance"``, the global quantities are reweighted by
        the data ``X`` (pass the training data: the draws are from
        ``p(g, z | X)``): ``n_proposals`` global draws get the importance weight
        ``p(g) prod_i p_hat(y_i | g) / r(g)``, where ``p_hat`` is an unbiased
        importance estimate of each series' marginal likelihood (individual
        parameters integrated out with ``n_importance_samples`` proposals, a
        tenth of them from the population density ``p(z | g)``) and
        ``r`` is the proposal, ``q(g)`` at first and then up to two adaptive
        refits of a full-covariance Gaussian to the weighted draws. Each
        series' proposal inside ``p_hat`` is adapted by importance sampling
        and replaced by the Laplace approximation of its posterior where that
        fits better. This corrects the mean-field family's bias and its missing correlations;
        a warning reports an unreliable reweighting (Pareto-k above 0.7).
        Individual parameters are then drawn by SIR given each global draw,
        from the adapted proposals mixed with the population density
        ``p(z | g)`` (a tenth of the draws; defensive importance sampling),
        so that tails the data barely constrain are not cut off.

        The importance path is a Monte Carlo method, so two runs with
        different seeds give slightly different posteriors. Its Monte Carlo
        error is reported with ``return_diagnostics=True``. With
        ``n_replicates=R`` (at least 2; 4 or more for a usable error
        estimate), the whole importance path runs ``R`` times on independent
        random streams, each giving ``n_draws / R`` of the draws. The spread
        of the ``R`` means then measures the total error of the pooled
        posterior mean, including the error of the surrogate target, which the
        weights alone cannot show. The cost is ``R`` times that of one run.

        Parameters
        ----------
        X : array-like of shape (n_series, n_observables, n_times)
            As in :meth:`fit`.
        groups : array-like or DataFrame, optional
            As in :meth:`fit`.
        inputs : array-like of shape (n_series, n_inputs), optional
            As in :meth:`fit`.
        times : array-like of shape (n_times,) or (n_series, n_times), optional
            As in :meth:`fit`.
        n_draws : int, default=100
            Number of posterior draws (at least 2, and at least twice
            ``n_replicates``).
        method : {"variational", "importance"}, default="variational"
            How the global (population and group) quantities are drawn.
        refine : int, default=0
            Steps of per-series optimisation of the amortised posterior before
            importance sampling (see :meth:`importance_diagnostics`).
        n_proposals : int, default=1000
            Global proposals per adaptive round (``method="importance"``).
        n_replicates : int, default=1
            Independent runs of the importance path whose draws are pooled
            (``method="importance"`` only); with 2 or more, the Monte Carlo
            error is estimated from their spread.
        return_diagnostics : bool, default=False
            Also return a dict of diagnostics (see Returns).
        random_state : int, RandomState instance or None
            Seed of the draws (default: derived from the estimator's).

        Returns
        -------
        draws : dict
            Population parameters ``(n_draws,)``; group parameters
            ``(n_draws, n_levels)`` (levels in ``categories_`` order);
            individual parameters ``(n_draws, n_series)``; hyperparameters
            ``mu_<name>``, ``omega_<name>``/``tau_<name>`` on the
            unconstrained scale.
        diagnostics : dict
            Only with ``return_diagnostics=True``:

            - ``"mcse"``: for each key of ``draws`` that the error is estimated for,
              the Monte Carlo standard error of the mean of its draws (shape
              of one draw).
              With ``n_replicates >= 2``: it is the spread of the replicate means
              divided by ``sqrt(R)``, for every key.
              With one importance run: it comes from the global weights
              (``sqrt(sum_k w_k^2 (f_k - mean)^2 + var / n_draws)``), for the
              global keys only. This counts the error from the finite number of
              global draws and from resampling. It does not count the error of the
              surrogate target. In the validation study the spread between
              runs was about 1.6 times this (see the validation report).
              With ``method="variational"``: ``sd / sqrt(n_draws)`` for the
              global keys. This is the error relative to ``q(g)``, not that of
              ``q(g)`` relative to the posterior.
            - ``"mcse_sd"``: ``mcse`` divided by the posterior sd of the draws
              (the error in posterior sds, as the validation targets are
              stated).
            - ``"mcse_method"``: ``"replicates"``, ``"weights"`` or
              ``"variational"``.
            - ``"local_ess"``: ``(n_series,)``. The effective sample size of each
              series' individual importance weights: given each global draw,
              averaged over the draws (importance), or over its
              ``n_eval_samples`` proposals (variational).
            - ``"pareto_k"``, ``"ess"``: ``(n_replicates,)``. The Pareto-k and
              the effective sample size of the global importance weights of
              each run (importance only).
        """
        n_draws = check_positive_int(n_draws, "n_draws")
        refine = check_positive_int(refine, "refine", minimum=0)
        n_proposals = check_positive_int(n_proposals, "n_proposals", minimum=10)
        n_replicates = check_positive_int(n_replicates, "n_replicates")
        return_diagnostics = check_bool(return_diagnostics, "return_diagnostics")
        if method not in ("variational", "importance"):
            raise ValueError(f"method must be 'variational' or 'importance', got {method!r}.")
        if method == "variational" and n_replicates != 1:
            raise ValueError("n_replicates applies to method='importance' only (the variational "
                             f"draws are independent); got n_replicates={n_replicates}.")
        if method == "variational" and n_draws < 2:
            raise ValueError("n_draws must be at least 2 (the Monte Carlo standard error of the "
                             f"means needs two draws), got n_draws={n_draws}.")
        if n_draws < 2 * n_replicates:
            raise ValueError(f"n_draws must be at least twice n_replicates (each replicate gives "
                             f"n_draws / n_replicates draws), got n_draws={n_draws} and "
                             f"n_replicates={n_replicates}.")
        data = self._prepare(X, groups, inputs, times, reset=False)
        device, _ = self._device_dtype()
        seed = (self._eval_seed + 3 if random_state is None
                else check_random_state(random_state).randint(0, 2**31 - 1))
        gen = self._generator(device, seed)
        names = list(self.get_feature_names_out())
        if method == "variational":
            with torch.no_grad():
                g = self.vae_.q_global.rsample(n_draws, gen)
            ind = {n: [] for n in names}
            local_ess, failed = [], []
            for res, w in self._weighted_individual(data, self.n_eval_samples, gen, refine):
                pick = _resample(w, n_draws, gen)
                local_ess.append(effective_sample_size(res["log_w"]).double().cpu())
                failed.append((w.sum(-1) == 0).cpu().numpy())
                for n in names:
                    v = res["params"][n].expand_as(w)
                    ind[n].append(torch.gather(v, 1, pick).t().cpu().numpy())
            failed = _warn_failed(np.concatenate(failed), "their individual draws are NaN")
            out = self.vae_.hierarchy.describe_global(g)
            mcse = {k: v.std(0) / math.sqrt(n_draws) for k, v in out.items()}
            diagnostics = {"mcse_method": "variational", "local_ess": torch.cat(local_ess).numpy()}
            for n in names:
                out[n] = np.concatenate(ind[n], axis=1).astype(np.float64)
                out[n][:, failed] = np.nan
        else:
            out, mcse, diagnostics = self._importance_posterior(data, n_draws, n_proposals,
                                                                n_replicates, gen, refine, names)
        out = {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}
        if not return_diagnostics:
            return out
        mcse = {k: np.asarray(v, dtype=np.float64) for k, v in mcse.items()}
        sd = {k: out[k].std(0) for k in mcse}
        diagnostics["mcse"] = mcse
        diagnostics["mcse_sd"] = {k: np.divide(v, sd[k], out=np.full_like(v, np.nan), where=sd[k] > 0)
                                  for k, v in mcse.items()}
        return out, diagnostics

    def _importance_posterior(self, data, n_draws, n_proposals, n_replicates, gen, refine, names):
        """Draws of ``method="importance"``: ``n_replicates`` independent runs, pooled.

        Returns the draws ``{key: (n_draws, ...)}``, the Monte Carlo standard
        error of each key's mean (from the spread of the replicate means, or,
        with one run, from the global weights) and the other diagnostics.
        """
        shares = [n_draws // n_replicates + (r < n_draws % n_replicates)
                  for r in range(n_replicates)]
        describe = self.vae_.hierarchy.describe_global
        runs, infos, ess = [], [], 0.0
        for share in shares:
            g_unique, inv, chunks, info = self._reweighted_globals(data, share, n_proposals, gen,
                                                                   refine)
            run_ind, run_ess = self._individual_given_globals(chunks, g_unique, inv, gen, names)
            runs.append({**describe(g_unique[inv]), **run_ind})
            infos.append(info)
            ess = ess + run_ess * share / n_draws
        # Per series: the mean (over global draws) effective sample size of its
        # individual draws given the global draw. Low values mean that the
        # marginal likelihoods behind the global weights were underestimated.
        L = self.n_importance_samples
        poor = float((ess < 0.25 * L).float().mean())
        if poor > 0.1:
            warnings.warn(
                f"The importance reweighting of the global quantities is unreliable: for "
                f"{100 * poor:.0f}% of the series the individual proposals fit the posterior "
                f"poorly at the reweighted global draws (effective sample size below 25% of "
                f"{L}), so their marginal likelihoods are underestimated. Are these the data "
                "the model was fitted to? Increase refine, or train longer.",
                RuntimeWarning, stacklevel=3,
            )
        out = {k: np.concatenate([run[k] for run in runs]) for k in runs[0]}
        if n_replicates > 1:
            means = {k: np.stack([np.asarray(run[k], np.float64).mean(0) for run in runs])
                     for k in out}
            mcse = {k: m.std(0, ddof=1) / math.sqrt(n_replicates) for k, m in means.items()}
        else:
            w = infos[0]["weights"].cpu().double().numpy()
            mcse = {k: _weighted_mcse(f, w, n_draws) for k, f in describe(infos[0]["draws"]).items()}
        diagnostics = {"mcse_method": "replicates" if n_replicates > 1 else "weights",
                       "local_ess": ess.numpy(),
                       "pareto_k": np.array([info["pareto_k"] for info in infos]),
                       "ess": np.array([info["ess"] for info in infos])}
        return out, mcse, diagnostics

    def _individual_given_globals(self, chunks, g_unique, inv, gen, names):
        """Individual draws by SIR given each global draw ``g_unique[inv]``.

        Returns the draws ``{name: (n_draws, n_series)}`` and each series'
        effective sample size of its individual weights, averaged over the
        global draws.
        """
        n_draws = inv.shape[0]
        L = self.n_importance_samples
        counts = torch.bincount(inv, minlength=g_unique.shape[0]).to(torch.float64)
        ind = {n: [] for n in names}
        local_ess = []
        step = max(1, 65536 // (L * self.batch_size))
        for _, batch, local in chunks:
            S = batch["y"].shape[0]
            vals = {n: torch.empty((S, n_draws), dtype=torch.float64) for n in names}
            ess_sum = torch.zeros(S, dtype=torch.float64)
            for j in range(0, g_unique.shape[0], step):
                gb = g_unique[j : j + step]
                Gb = gb.shape[0]
                with torch.no_grad():
                    res = self.vae_.log_weights(batch, Gb * L, gb, gen, local=local, g_repeats=L,
                                                defensive=_DEFENSIVE)
                lw = res["log_w"].reshape(S, Gb, L)
                ess_b = effective_sample_size(lw.reshape(S * Gb, L)).reshape(S, Gb).cpu().double()
                ess_sum += (ess_b * counts[j : j + Gb]).sum(1)
                d = torch.nonzero((inv >= j) & (inv < j + Gb)).squeeze(-1)
                if d.numel() == 0:
                    continue
                u = (inv[d] - j).to(lw.device)
                w = normalized_weights(lw)[:, u, :].reshape(S * len(d), L)
                pick = _resample(w, 1, gen).reshape(S, len(d), 1)
                for n in names:
                    v = res["params"][n].expand(S, Gb * L).reshape(S, Gb, L)[:, u, :]
                    vals[n][:, d.cpu()] = torch.gather(v, 2, pick).squeeze(-1).cpu().double()
            for n in names:
                ind[n].append(vals[n].t().numpy())
            local_ess.append(ess_sum / n_draws)
        return {n: np.concatenate(v, axis=1) for n, v in ind.items()}, torch.cat(local_ess)

    def _reweighted_globals(self, data, n_draws, n_proposals, gen, refine, n_passes=3):
        """Importance sampling of the global latents given ``data``.

        The target is ``p(g) prod_i p_hat(y_i | g)`` with each series' marginal
        likelihood estimated by ``L = max(n_importance_samples, 256)``
        individual draws that are the same for every ``g`` (common random
        numbers: a smooth, differentiable target whose weights are not swamped
        by Monte Carlo noise summed over many series; fresh draws for every
        ``g`` would be unbiased but, summed over the series, too noisy); a
        tenth of them come from the population density ``p(z | g)``
        (defensive importance sampling), so that where a series' adapted
        proposal misses part of its posterior at some ``g``, ``p_hat`` there
        is not underestimated unseen (with shared draws such an error is
        smooth in ``g`` and does not show as noise). It gives the
        Laplace approximation and the importance weights
        (:func:`~skhds.inference.adaptive_importance_sampling`, Student-t
        proposals).

        ``p_hat`` is a lower bound in expectation, tight only where the
        individual proposals fit the series' posterior given ``g``; so the
        Laplace approximation is computed ``n_passes`` times: first with
        proposals adapted to ``q(g)`` (``refine`` rounds), then each time with
        proposals re-adapted (at least 6 more rounds, continuing from the
        previous pass) to draws from the previous Laplace proposal.
        Importance sampling uses the last one. At the centre of every pass,
        each series' proposal is replaced by the Laplace approximation of its
        conditional posterior, with a coupling to the global latents from the
        implicit function theorem, where that fits better
        (:meth:`~skhds._vae.HierarchicalVAE.laplace_local`): adaptive
        importance sampling alone converges slowly for series whose encoder
        output is poor, and their underestimated ``p_hat`` away from where
        they were adapted pulled the global posterior towards the starting
        point and made it too narrow. The adapted proposals enter as
        :class:`~skhds._vae.PriorFollowingProposal`: their shrinkage and covariance follow the population spread ``omega(g)``
        of each global draw exactly (a fixed covariance would make ``p_hat``
        too small wherever ``omega`` differs from where the proposals were
        adapted, and the posterior of ``omega`` too narrow). If the resulting
        importance weights are unreliable, the whole procedure is repeated with
        the adapted proposals as they are (fixed covariance, mean linear in
        ``g``), which can give a smoother surrogate where some series' proposals
        adapted poorly, and the more reliable result is kept.

        Returns
        -------
        g : torch.Tensor of shape (n_unique, n_global)
            The distinct global draws kept by resampling.
        index : torch.Tensor of shape (n_draws,)
            For every posterior draw, its row of ``g``.
        chunks : list
            ``(idx, batch, local)`` with the final individual proposals.
        info : dict
            ``draws`` (all global proposals), their normalised ``weights``,
            and the weights' ``pareto_k`` and effective sample size ``ess``.
        """
        vae = self.vae_
        L = max(self.n_importance_samples, 256)
        q_scale = vae.q_global.scale.detach()
        device, dtype = q_scale.device, q_scale.dtype
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen, device=gen.device))
        sampler = torch.Generator().manual_seed(seed)
        n_ind = vae.hierarchy.n_individual
        step = max(1, 65536 // (L * self.batch_size))
        initial = list(self._proposals(data, gen, refine))
        max_scale = float(np.max(vae.hierarchy.prior_scale))  # flat directions: prior-wide

        def make_target(chunks):
            """``log p(g) + sum_i log p_hat(y_i | g)``: common random numbers, defensive draws."""
            eps = [torch.randn((len(idx), L, n_ind), generator=gen, dtype=dtype, device=device)
                   for idx, _, _ in chunks]

            def log_target(g):
                g = g.to(device=device, dtype=dtype)
                total = vae.log_prior_global(g).double()
                for (_, batch, local), e in zip(chunks, eps):
                    parts = [vae.log_likelihood_given_globals(batch, g[j : j + step], L, gen,
                                                              local=local, eps=e,
                                                              defensive=_DEFENSIVE).double().sum(0)
                             for j in range(0, g.shape[0], step)]
                    total = total + torch.cat(parts)
                return total

            return log_target

        def report(round_, ess):
            if self.verbose:
                print(f"Global importance sampling, round {round_}: effective sample size "
                      f"{ess:.1f} of {n_proposals}")

        def reliable(khat, ess):
            return khat <= 0.7 and ess >= 0.05 * n_proposals

        def passes(follow):
            """Laplace passes with re-adapted local proposals, then adaptive IS."""
            start = vae.q_global.loc.detach()
            chunks = initial
            proposal = None
            for outer in range(n_passes):
                if proposal is not None:
                    # Re-adapt the individual proposals to global draws from the current
                    # Laplace proposal (a smooth spread of g, for the coupling's regression).
                    def sample_globals(K, proposal=proposal):
                        return proposal.sample(K, sampler).to(device=device, dtype=dtype)

                    start = proposal.loc.to(device=device, dtype=dtype)
                    # The adaptation goes on from the previous pass's proposals.
                    chunks = [(idx, batch, vae.refine_local(batch, self.n_eval_samples, max(refine, 6),
                                                            gen, sample_globals=sample_globals,
                                                            local=local))
                              for idx, batch, local in chunks]
                # Each series' proposal at the current centre: its Laplace approximation
                # where that fits the posterior better than adaptive importance sampling did.
                chunks = [(idx, batch, vae.laplace_local(batch, start, local, self.n_eval_samples, gen))
                          for idx, batch, local in chunks]
                used = chunks
                if follow:
                    # Proposals whose covariance and shrinkage follow omega(g) exactly.
                    with torch.no_grad():
                        used = [(idx, batch, vae.prior_following(
                                    vae.encode(batch) if local is None else local, start))
                                for idx, batch, local in chunks]
                log_target = make_target(used)
                mode, cov = laplace_approximation(log_target, start, 0.1 * q_scale, max_scale)
                proposal = MultivariateStudentT.from_moments(mode.double().cpu(), 1.44 * cov)
                if self.verbose:
                    sd = torch.sqrt(torch.diagonal(cov))
                    print(f"Global importance sampling, pass {outer}: Laplace sds from "
                          f"{float(sd.min()):.3g} to {float(sd.max()):.3g}")
            x, log_w, khat = adaptive_importance_sampling(log_target, proposal, n_proposals, sampler,
                                                          callback=report)
            w = torch.softmax(log_w, 0)
            return x, w, khat, float(1.0 / (w * w).sum()), used

        x, w, khat, ess, chunks = passes(follow=True)
        if not reliable(khat, ess):
            # Fallback: proposals with a fixed covariance and a mean linear in g. Where
            # the adapted proposals are far from the series' posteriors, their product
            # with the population density can make a rougher surrogate than these.
            # Both are approximations of the same target: keep the more reliable one.
            if self.verbose:
                print("Global importance sampling: retrying with linearly coupled proposals")
            fallback = passes(follow=False)
            if fallback[3] > ess:
                x, w, khat, ess, chunks = fallback
        g = x.to(device=device, dtype=dtype)
        if not reliable(khat, ess):
            warnings.warn(
                f"The importance reweighting of the global quantities is unreliable (Pareto-k "
                f"{khat:.2f}, effective sample size {ess:.1f} of {n_proposals}); refine the "
                "individual proposals (refine=...), increase n_proposals, or train longer.",
                RuntimeWarning, stacklevel=4,
            )
        pick = torch.multinomial(w, n_draws, replacement=True, generator=sampler)
        used, inv = torch.unique(pick, return_inverse=True)
        info = {"draws": g, "weights": w, "pareto_k": khat, "ess": ess}
        return g[used.to(device)], inv, chunks, info

    def importance_diagnostics(self, X, *, groups=None, inputs=None, times=None, refine=0,
                               include_global=False):
        """Reliability of the importance weights of each series.

        Draws ``n_eval_samples`` importance samples per series (as
        :meth:`score_samples` and :meth:`predict` do) and reports the Kish
        effective sample size of their weights and the Pareto-k-hat of the
        weights' upper tail (see :func:`~skhds.inference.pareto_k`). With
        ``include_global`` it diagnoses the weights of the per-series
        evidence bound that :meth:`score_samples` computes with the same
        argument (``True``: the global latents' prior and ``q(g)`` in every
        series' weights; ``"adapted"``: proposals adapted to each series).

        Flagged series (the encoder's proposal is far from the series'
        posterior: too few training series, a series unlike the training
        data, strongly correlated parameters) can be repaired: pass
        ``refine=n`` to this method and to :meth:`predict`,
        :meth:`score_samples`, :meth:`transform` or :meth:`sample_posterior`,
        which adapt each series' proposal to its posterior in ``n`` rounds of
        adaptive importance sampling from the encoder's output (3 rounds
        usually suffice: each round refits the proposal's mean and covariance
        to the weighted draws of the previous one); more importance samples
        (``n_eval_samples``) also help.

        Parameters
        ----------
        X : array-like of shape (n_series, n_observables, n_times)
            As in :meth:`fit`.
        groups : array-like or DataFrame, optional
            As in :meth:`fit`.
        inputs : array-like of shape (n_series, n_inputs), optional
            As in :meth:`fit`.
        times : array-like of shape (n_times,) or (n_series, n_times), optional
            As in :meth:`fit`.
        refine : int, default=0
            Rounds of adaptation of the proposals first (see above).
        include_global : bool or "adapted", default=False
            Which weights to diagnose, as in :meth:`score_samples`
            (``refine`` must be 0 with ``"adapted"``).

        Returns
        -------
        pandas.DataFrame
            One row per series with columns ``ess`` (Kish effective sample
            size, in ``[0, n_eval_samples]``), ``ess_fraction`` (``ess /
            n_eval_samples``), ``pareto_k`` and ``flagged`` (``pareto_k >
            0.7``, or not a number, as where no sample has a finite weight:
            the series' importance estimates are unreliable).
        """
        refine, include_global = _check_evidence_kind(refine, include_global)
        data = self._prepare(X, groups, inputs, times, reset=False)
        gen = self._generator(self._device_dtype()[0], self._eval_seed + 4)
        ess, khat = [], []
        for log_w in self._log_weights(data, self.n_eval_samples, gen, refine, include_global):
            ess.append(effective_sample_size(log_w).cpu().numpy())
            khat.append(pareto_k(log_w.cpu().double().numpy()))
        ess = np.concatenate(ess).astype(np.float64) if ess else np.zeros(0)
        khat = np.concatenate(khat) if khat else np.zeros(0)
        return pd.DataFrame({"ess": ess, "ess_fraction": ess / self.n_eval_samples,
                             "pareto_k": khat, "flagged": ~(khat <= 0.7)})

    def _summary(self, n_draws=2000):
        gen = self._generator(self._device_dtype()[0], self._seed + 5)
        with torch.no_grad():
            draws = self.vae_.hierarchy.describe_global(self.vae_.q_global.rsample(n_draws, gen))
        hier = self.vae_.hierarchy
        rows = []
        for s in hier.specs:
            if s.level == "individual":
                if f"mu_{s.name}" in draws:
                    for h in ("mu", "omega"):
                        rows.append(_row(f"{h}_{s.name}", "population", None, None, draws[f"{h}_{s.name}"]))
                continue
            d = draws[s.name]
            if s.level == "population":
                rows.append(_row(s.name, "population", None, None, d))
            else:
                for j, lev in enumerate(self.categories_[s.factor]):
                    rows.append(_row(s.name, "group", s.factor, lev, d[:, j]))
                if f"mu_{s.name}" in draws:
                    for h in ("mu", "tau"):
                        rows.append(_row(f"{h}_{s.name}", "population", s.factor, None, draws[f"{h}_{s.name}"]))
        return pd.DataFrame(rows)

    # ------------------------------------------------------ persistence
    def __getstate__(self):
        state = super().__getstate__().copy()
        opt = state.pop("_optimizer", None)
        state.pop("_epoch_state", None)
        state.pop("_captured", None)
        state.pop("_tb_writer", None)
        if opt is not None:
            state["_optimizer_state"] = to_numpy(opt.state_dict())
        vae = state.pop("vae_", None)
        if vae is not None:
            state["_vae_state"] = to_numpy(vae.state_dict())
            state["_vae_device"] = str(vae.q_global.loc.device)
        return encode_state(state, plain_objects=("scaling_",))

    def __setstate__(self, state):
        state = decode_state(state)
        # saved by an earlier version: hyperparameters added since take their defaults
        for name, param in inspect.signature(type(self).__init__).parameters.items():
            if param.default is not inspect.Parameter.empty:
                state.setdefault(name, param.default)
        vae_state = state.pop("_vae_state", None)
        saved_device = state.pop("_vae_device", "cpu")
        super().__setstate__(state)
        if vae_state is None:
            return
        device = torch.device(saved_device)
        if device.type == "cuda" and not torch.cuda.is_available():
            warnings.warn(
                f"This estimator was fitted on {saved_device}, which is not available here; it is "
                "loaded on the CPU (set device='cpu' to silence this).",
                UserWarning,
            )
            device = torch.device("cpu")
            self.device = "cpu"
        dtype = _DTYPES[self.dtype]
        template = _Template(self.n_features_in_, self._n_inputs())
        with torch.random.fork_rng(devices=[]):
            self.vae_ = self._build(template, torch.device("cpu"), dtype)
        self.vae_.load_state_dict({k: torch.as_tensor(v) for k, v in vae_state.items()})
        self.vae_.to(device)
        self.model_ = self.vae_.model

    def _n_inputs(self):
        return len(self.model_.inputs)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.two_d_array = False
        tags.input_tags.allow_nan = True
        tags.non_deterministic = self.random_state is None
        return tags


class _Template:
    """Shapes needed to rebuild the networks when unpickling."""

    def __init__(self, n_obs, n_inputs):
        self.y = np.zeros((0, n_obs, 1))
        self.inputs = np.zeros((0, n_inputs))


_EPOCH_RETRIES = 3  # repeats of an epoch whose every update was rolled back
# captured training passes kept (one per minibatch shape; an epoch has at most two)
_MAX_CAPTURED = 4


def _weighted_mcse(f, w, n_draws):
    """Monte Carlo standard error of the mean of ``n_draws`` resampled from weighted draws.

    ``f`` has shape ``(n, ...)``, ``w`` (normalised) shape ``(n,)``: the
    self-normalised importance estimate's variance ``sum_k w_k^2 (f_k -
    mean)^2`` (delta method) plus the resampling variance ``var / n_draws``.
    """
    w = w.reshape((-1,) + (1,) * (f.ndim - 1))
    mean = (w * f).sum(0)
    dev2 = (f - mean) ** 2
    return np.sqrt((w * w * dev2).sum(0) + (w * dev2).sum(0) / n_draws)


def _warn_failed(failed, consequence):
    """Warn about series none of whose importance samples has a finite weight; ``failed``."""
    if failed.any():
        warnings.warn(
            f"{int(failed.sum())} of {failed.size} series have no importance sample with a "
            f"finite weight (the model's simulation failed or the likelihood is zero for every "
            f"draw); {consequence}. Check their data and inputs, or try refine=...",
            RuntimeWarning, stacklevel=3,
        )
    return failed


def _resample(w, n, gen):
    """``n`` indices per row drawn with probabilities ``w`` (uniform for rows of zeros)."""
    safe = torch.where(w.sum(-1, keepdim=True) > 0, w, torch.ones_like(w))
    return torch.multinomial(safe, n, replacement=True, generator=gen)


def _parameter_groups(vae):
    """Adam's parameter groups: runs of consecutive parameters, encoder or not.

    The groups hold ``vae.parameters()`` in their order (the optimiser's state
    is indexed by that order, whatever the grouping), each marked with
    ``"encoder"`` so that the encoder can take its own step size.
    """
    encoder = {id(p) for p in vae.encoder.parameters()}
    groups = []
    for p in vae.parameters():
        is_encoder = id(p) in encoder
        if not groups or groups[-1]["encoder"] != is_encoder:
            groups.append({"params": [], "encoder": is_encoder})
        groups[-1]["params"].append(p)
    return groups


def _regrouped(state, optimizer):
    """An optimiser state saved with other parameter groups, in ``optimizer``'s groups.

    States saved before the encoder had its own group hold one group of all
    parameters, in the same order: the per-parameter state carries over, and
    each group takes the saved group's settings (its step size among them).
    """
    saved = state["param_groups"]
    if [len(g["params"]) for g in saved] == [len(g["params"]) for g in optimizer.param_groups]:
        return state
    settings = {k: v for k, v in saved[0].items() if k not in ("params", "encoder")}
    groups, start = [], 0
    for group in optimizer.param_groups:
        n = len(group["params"])
        groups.append({**settings, "params": list(range(start, start + n)), "encoder": group["encoder"]})
        start += n
    return {**state, "param_groups": groups}


def _base_rate(optimizer):
    """The step size of the parameters other than the encoder's."""
    return float(next(g["lr"] for g in optimizer.param_groups if not g["encoder"]))


def _scheduled_rate(base, schedule, n_done):
    """The learning rate of the epoch after ``n_done`` complete ones (see the class docstring)."""
    if schedule is None:
        return base
    if callable(schedule):
        rate = schedule(n_done)
        try:
            return check_positive_float(rate, "learning_rate_schedule")
        except (TypeError, ValueError):
            raise ValueError(
                f"learning_rate_schedule({n_done}) must return a finite number > 0, got {rate!r}."
            ) from None
    rate = base
    for epochs, r in check_learning_rate_schedule(schedule):
        if n_done >= epochs:
            rate = r
    return rate


def _check_evidence_kind(refine, include_global):
    """Validated ``refine`` and ``include_global`` of :meth:`HierarchicalODEVAE.score_samples`."""
    refine = check_positive_int(refine, "refine", minimum=0)
    if isinstance(include_global, str):
        if include_global != "adapted":
            raise ValueError('include_global must be True, False or "adapted", '
                             f"got {include_global!r}.")
        if refine:
            raise ValueError('refine must be 0 with include_global="adapted" (its proposals '
                             f"are fitted to each series anyway), got refine={refine}.")
    else:
        include_global = check_bool(include_global, "include_global")
    return refine, include_global


def _groups_or_y(groups, y):
    """Group labels: ``groups`` if given, else ``y`` (labels travelling as the target)."""
    return y if groups is None else groups


def _restore_finite(vae, saved):
    """Reload the epoch-start state if an interruption left non-finite parameters."""
    if saved is not None and not all(bool(torch.isfinite(p).all()) for p in vae.parameters()):
        vae.load_state_dict(saved[0])


def _row(name, level, factor, group_level, draws):
    q = np.quantile(draws, [0.05, 0.5, 0.95])
    return {"parameter": name, "level": level, "factor": factor, "group_level": group_level,
            "mean": float(np.mean(draws)), "sd": float(np.std(draws)), "q05": q[0],
            "median": q[1], "q95": q[2]}


def _categories(declared, gdf, factors):
    """The levels of each factor: declared ones (``categories``) or those in ``gdf``."""
    declared = {} if declared is None else declared
    if not isinstance(declared, dict):
        raise TypeError(f"categories must be None or a dict {{factor: levels}}, got {declared!r}.")
    unknown = [f for f in declared if f not in factors]
    if unknown:
        raise ValueError(f"categories names factors {unknown} that the model does not use; its "
                         f"factors are {list(factors)}.")
    out = {}
    for f in factors:
        seen = sorted(pd.unique(gdf[f]), key=_sort_key)
        if f not in declared:
            out[f] = np.array(seen, dtype=object)
            continue
        levels = declared[f]
        if isinstance(levels, (str, bytes, set, frozenset, dict)) or not hasattr(levels, "__len__"):
            raise TypeError(f"categories[{f!r}] must be a sequence of levels (their order is "
                            f"that of categories_), got {levels!r}.")
        levels = pd.Series(list(levels), dtype=object)
        if levels.empty or levels.isna().any() or levels.duplicated().any():
            raise ValueError(f"categories[{f!r}] must hold at least one level, each once and "
                             f"none missing; got {list(levels)}.")
        known = set(levels)
        extra = [v for v in seen if v not in known]
        if extra:
            raise ValueError(f"groups has levels {extra} of factor {f!r} that categories[{f!r}] "
                             "does not declare.")
        out[f] = np.array(list(levels), dtype=object)
    return out


def _sort_key(v):
    return (0, v) if isinstance(v, (int, float, np.integer, np.floating)) else (1, str(v))


def _tensorboard_writer_class(log_dir):
    """TensorBoard's ``SummaryWriter`` class (None when ``log_dir`` is None)."""
    if log_dir is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # optional dependency
        raise ImportError(
            "tensorboard_dir is set, but torch.utils.tensorboard cannot be imported: "
            "pip install tensorboard, or set tensorboard_dir=None."
        ) from exc
    return SummaryWriter


def _log_scalars(writer, record, step):
    """Write the numeric entries of one epoch's history record."""
    if writer is None:
        return
    for key, value in record.items():
        if key != "epoch" and isinstance(value, (int, float, np.integer, np.floating)):
            writer.add_scalar(f"skhds/{key}", float(value), step)
    writer.flush()


def _progress(total, verbose):
    if verbose < 1:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # optional dependency
        return None
    return tqdm(total=total, desc="HierarchicalODEVAE", unit="epoch")
