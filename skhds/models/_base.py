"""``ODEModel``: the base class of user models.

A model is a callable class in the pattern of scikit-learn's GP kernels:
hyperparameters go to the constructor and are returned by ``get_params``;
the estimator clones the user's object at ``fit`` (``model_``), so the
original is never mutated and ``set_params(model__<hyper>=...)`` works in
grid searches. Models are ``torch.nn.Module`` objects, so neural parts are
ordinary sub-module attributes that are trained with the rest.
"""

import inspect
import numbers

import torch

from ._noise import Gaussian, NoiseModel
from ._parameters import Parameter

__all__ = ["ODEModel"]


class ODEModel(torch.nn.Module):
    """Base class for hierarchical ODE models.

    Subclasses declare their structure with class attributes and implement
    three small methods. Everything is batched: ``x`` has shape
    ``(S, K, n_states)`` (series, importance samples, states), every entry of
    ``params`` and ``inputs`` broadcasts to ``(S, K)``, and ``t`` is a tensor
    of shape ``(S, 1)`` or ``(1, 1)``.

    Parameters
    ----------
    *args, **kwargs
        Passed to :class:`torch.nn.Module`; the base class takes no
        hyperparameters (subclasses define their own as named constructor
        arguments).

    Attributes
    ----------
    states : tuple of str
        Names of the state variables, in the order of the last axis of ``x``.
    observables : tuple of str, optional
        Names of the observed signals (defaults to ``states``).
    inputs : tuple of str
        Names of per-series inputs (treatments, doses, covariates).
    factors : tuple of str
        Names of the grouping factors used by group-level parameters.
    t0 : float
        Time at which :meth:`initial_state` holds (default 0).
    noise : NoiseModel
        Observation noise (default :class:`~skhds.models.Gaussian`); a
        subclass may also take it as a constructor argument.

    Notes
    -----
    Subclasses set the class attributes above and implement these methods:

    - ``declare_parameters()`` returns a list of :class:`~skhds.models.Parameter`.
    - ``initial_state(params, inputs)`` returns a tensor broadcastable to
      ``(S, K, n_states)``.
    - ``rhs(t, x, params, inputs)`` returns ``dx/dt``, shaped like ``x``.
    - optionally ``derived(params, inputs)``: terms that do not change along
      a trajectory, computed once per solve (see :meth:`derived`).
    - ``observe(x, params, inputs)`` (optional) maps states to observables.
      Here ``x`` is time-major, ``(S, K, n_times, n_states)``, and
      parameters/inputs carry a trailing singleton time axis; it returns
      ``(S, K, n_times, n_observables)``. The default selects the states named
      in ``observables``.
    - optionally ``observe_noise_scale(x, params, inputs)``: positive factors
      ``(S, K, n_times, n_observables)`` by which the noise model's scale is
      multiplied at each time (time-varying noise; default: none).

    Subclasses with constructor arguments must call ``super().__init__()``
    first and store every argument under its own name, as scikit-learn
    estimators do.
    """

    states = ()
    observables = None
    inputs = ()
    factors = ()
    t0 = 0.0
    noise = Gaussian()

    # ------------------------------------------------------------------ API
    def declare_parameters(self):
        """Return the list of :class:`Parameter` declarations of the model."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement declare_parameters() returning a list of "
            "skhds.models.Parameter."
        )

    def initial_state(self, params, inputs):
        """Return the state at ``t0``, broadcastable to ``(S, K, n_states)``.

        Parameters
        ----------
        params : dict of str to torch.Tensor
            Parameter values by name, each broadcastable to ``(S, K)``.
        inputs : dict of str to torch.Tensor
            Per-series inputs by name, each of shape ``(S, 1)``.

        Returns
        -------
        torch.Tensor
            Initial state, broadcastable to ``(S, K, n_states)``.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement initial_state().")

    def rhs(self, t, x, params, inputs):
        """Return ``dx/dt`` at time ``t`` and state ``x`` (shape of ``x``).

        Parameters
        ----------
        t : torch.Tensor
            Current time, of shape ``(S, 1)`` or ``(1, 1)``.
        x : torch.Tensor
            Current state, of shape ``(S, K, n_states)``.
        params : dict of str to torch.Tensor
            Parameter values by name, each broadcastable to ``(S, K)``.
        inputs : dict of str to torch.Tensor
            Per-series inputs by name, each of shape ``(S, 1)``.

        Returns
        -------
        torch.Tensor
            Time derivative ``dx/dt``, of the same shape as ``x``.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement rhs().")

    def derived(self, params, inputs):
        """Quantities that depend on parameters and inputs but not on ``t`` or ``x``.

        Called once per solve, before integrating; the returned tensors are
        added to ``params`` under their names, so :meth:`rhs` and
        :meth:`observe` read them like parameters. Moving such terms (an
        activation function of the inputs, a power of a parameter) out of
        :meth:`rhs` computes them once instead of at every solver stage,
        which matters most for their backward pass. The default derives
        nothing.

        Parameters
        ----------
        params : dict of str to torch.Tensor
            Parameter values by name, each broadcastable to ``(S, K)``.
        inputs : dict of str to torch.Tensor
            Per-series inputs by name, each of shape ``(S, 1)``.

        Returns
        -------
        dict of str to torch.Tensor
            New names (not parameter names), each broadcastable to ``(S, K)``
            or, for a right-hand side written on the state vector, to
            ``(S, K, m)`` (constants arranged over the states, a layer's
            pre-activation; :class:`~skhds.models.DoubleReceiver` and
            :class:`~skhds.models.DoubleReceiverBlackBox` do both).
        """
        return {}

    def with_derived(self, params, inputs):
        """``params`` with the quantities returned by :meth:`derived` added.

        Parameters
        ----------
        params : dict of str to torch.Tensor
            Parameter values by name, each broadcastable to ``(S, K)``.
        inputs : dict of str to torch.Tensor
            Per-series inputs by name, each of shape ``(S, 1)``.

        Returns
        -------
        dict of str to torch.Tensor
            ``params`` itself when nothing is derived, else a new dict with
            the derived quantities added.

        Raises
        ------
        ValueError
            If :meth:`derived` returns a name that is already a parameter,
            or something other than a dict.
        """
        extra = self.derived(params, inputs)
        if not extra:
            return params
        if not isinstance(extra, dict):
            raise ValueError(
                f"{type(self).__name__}.derived() must return a dict of tensors, "
                f"got {type(extra).__name__}."
            )
        clash = sorted(set(extra) & set(params))
        if clash:
            raise ValueError(
                f"{type(self).__name__}.derived() returned names that are parameters: {clash}; "
                "give derived quantities their own names."
            )
        return {**params, **extra}

    def observe(self, x, params, inputs):
        """Map time-major states ``(S, K, T, n_states)`` to observables ``(S, K, T, n_obs)``.

        The default selects the states named in ``observables`` and raises
        ``NotImplementedError`` if an observable is not a state.

        Parameters
        ----------
        x : torch.Tensor
            Time-major states, of shape ``(S, K, n_times, n_states)``.
        params : dict of str to torch.Tensor
            Parameter values by name, each broadcastable to ``(S, K, 1)``
            (with a trailing singleton time axis).
        inputs : dict of str to torch.Tensor
            Per-series inputs by name, each of shape ``(S, 1, 1)`` (with a
            trailing singleton time axis).

        Returns
        -------
        torch.Tensor
            Observables, of shape ``(S, K, n_times, n_observables)``.
        """
        names = self.observable_names
        missing = [n for n in names if n not in self.states]
        if missing:
            raise NotImplementedError(
                f"{type(self).__name__}: observables {missing} are not states; implement observe()."
            )
        if tuple(names) == tuple(self.states):
            return x
        idx = [list(self.states).index(n) for n in names]
        # basic indexing only: a list index would be copied from the host at every call
        return torch.stack([x[..., i] for i in idx], dim=-1)

    def observe_noise_scale(self, x, params, inputs):
        """Factors that scale the observation noise along the trajectory; None: constant.

        Override to make the noise time-varying: return positive factors of
        shape ``(S, K, n_times, n_observables)``; the noise model's scale (its
        standard deviation, or its scale parameter) at each time and
        observable is multiplied by them. Typical uses are states that model
        the noise itself (see :class:`~skhds.models.DoubleReceiverBlackBox`,
        ``noise_states=True``) or a known dependence of the measurement error
        on the state. The default returns None (the noise model's scale
        throughout).

        Parameters
        ----------
        x : torch.Tensor
            Time-major states, of shape ``(S, K, n_times, n_states)``.
        params : dict of str to torch.Tensor
            As in :meth:`observe`.
        inputs : dict of str to torch.Tensor
            As in :meth:`observe`.

        Returns
        -------
        torch.Tensor or None
            Positive factors of shape ``(S, K, n_times, n_observables)``, or None.
        """
        return None

    # -------------------------------------------------------------- helpers
    @property
    def observable_names(self):
        """Tuple of observable names (``observables``, or ``states`` if unset)."""
        return tuple(self.observables) if self.observables is not None else tuple(self.states)

    @staticmethod
    def stack(*components):
        """Broadcast tensors (or numbers) together and stack them on a new last axis.

        Parameters
        ----------
        *components : torch.Tensor or float
            One entry per state (or observable).

        Returns
        -------
        torch.Tensor
            Shape ``broadcast_shape + (len(components),)``.
        """
        tensors = [c for c in components if torch.is_tensor(c)]
        if not tensors:
            raise TypeError("stack needs at least one tensor component.")
        ref = tensors[0]
        # constants filled on the device (no copy from the host)
        comps = [c if torch.is_tensor(c)
                 else ref.new_full((), float(c)) if isinstance(c, numbers.Real)
                 else torch.as_tensor(c, dtype=ref.dtype, device=ref.device)
                 for c in components]
        return torch.stack(torch.broadcast_tensors(*comps), dim=-1)

    def parameter_specs(self):
        """Declared parameters plus the noise model's, as a list of :class:`Parameter`.

        Noise parameters are one per observable, named
        ``"{base}_{observable}"`` (for example ``"sigma_OD"``), at the
        noise model's ``level`` (population by default, or individual).

        Returns
        -------
        list of Parameter
            The model's declared parameters followed by the noise parameters.
        """
        specs = list(self.declare_parameters())
        for base, prior in self.noise.declare().items():
            for obs in self.observable_names:
                specs.append(Parameter(f"{base}_{obs}", prior, level=self.noise.level))
        return specs

    # ----------------------------------------------- scikit-learn protocol
    @classmethod
    def _get_param_names(cls):
        init = cls.__init__
        if init is ODEModel.__init__ or init is torch.nn.Module.__init__:
            return []
        sig = inspect.signature(init)
        for p in sig.parameters.values():
            if p.kind == p.VAR_POSITIONAL:
                raise TypeError(
                    f"{cls.__name__}.__init__ must not take *args: hyperparameters must be named."
                )
        return sorted(
            p.name for p in sig.parameters.values() if p.name != "self" and p.kind != p.VAR_KEYWORD
        )

    def get_params(self, deep=True):
        """Constructor hyperparameters of the model.

        Parameters
        ----------
        deep : bool, default=True
            Also return parameters of nested objects that have ``get_params``.

        Returns
        -------
        dict
            Hyperparameter names mapped to their values; with ``deep=True``
            nested parameters appear as ``"<name>__<sub>"``.
        """
        out = {}
        for key in self._get_param_names():
            value = getattr(self, key)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update((f"{key}__{k}", v) for k, v in value.get_params().items())
            out[key] = value
        return out

    def set_params(self, **params):
        """Set constructor hyperparameters (``name=value`` or ``nested__name=value``).

        Parameters
        ----------
        **params : dict
            Hyperparameter values by name; ``"<name>__<sub>"`` keys are passed
            to the ``set_params`` of the nested object ``<name>``.

        Returns
        -------
        self
            The model, modified in place.
        """
        valid = self._get_param_names()
        nested = {}
        for key, value in params.items():
            head, _, sub = key.partition("__")
            if head not in valid:
                raise ValueError(
                    f"Invalid parameter {head!r} for model {type(self).__name__}. "
                    f"Valid parameters are: {valid}."
                )
            if sub:
                nested.setdefault(head, {})[sub] = value
            else:
                setattr(self, head, value)
        for head, sub in nested.items():
            getattr(self, head).set_params(**sub)
        return self

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params(deep=False).items())
        return f"{type(self).__name__}({args})"

    def __sklearn_clone__(self):
        return type(self)(**self.get_params(deep=False))


def observe_checked(model, x, params, inputs, noise_scale=False):
    """The model's observables of time-major states, checked, in the layout of the data.

    Shared by the estimator and :func:`~skhds.datasets.simulate`: calls
    :meth:`ODEModel.observe` (and, with ``noise_scale=True``,
    :meth:`ODEModel.observe_noise_scale`), checks their shapes with errors
    that name the method, and moves time last.

    Parameters
    ----------
    model : ODEModel
    x : torch.Tensor of shape (S, K, n_times, n_states)
    params, inputs : dict of str to torch.Tensor
        With a trailing singleton time axis, as :meth:`ODEModel.observe` takes them.
    noise_scale : bool, default=False
        Also return the model's factors on the noise scale.

    Returns
    -------
    obs : torch.Tensor of shape (S, K, n_observables, n_times)
    scale : torch.Tensor of shape (S, K, n_observables, n_times) or None
        Only with ``noise_scale=True``; None for a model without factors.
    """
    name = type(model).__name__
    obs = model.observe(x, params, inputs)
    n_obs = len(model.observable_names)
    if obs.dim() != 4 or obs.shape[-1] != n_obs:
        raise ValueError(
            f"Model {name}: observe() returned shape {tuple(obs.shape)}; expected "
            f"(S, K, n_times, n_observables={n_obs})."
        )
    if not noise_scale:
        return obs.transpose(-1, -2)
    scale = model.observe_noise_scale(x, params, inputs)
    if scale is not None:
        if scale.shape != obs.shape:
            raise ValueError(
                f"Model {name}: observe_noise_scale() returned shape {tuple(scale.shape)}; "
                f"expected that of observe(), {tuple(obs.shape)}."
            )
        scale = scale.transpose(-1, -2)
    return obs.transpose(-1, -2), scale


def check_model(model):
    """Validate a model's declarations; raise a clear error naming the model.

    Parameters
    ----------
    model : ODEModel
        The model instance to check.

    Returns
    -------
    list of Parameter
        The parameter specifications (declared plus noise).
    """
    name = type(model).__name__
    if not isinstance(model, ODEModel):
        raise TypeError(f"model must be an instance of skhds.ODEModel, got {name}.")
    for method in ("declare_parameters", "initial_state", "rhs"):
        if getattr(type(model), method) is getattr(ODEModel, method):
            raise TypeError(f"Model {name} must implement {method}().")
    for attr in ("states", "inputs", "factors"):
        value = getattr(model, attr)
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"Model {name}: {attr} must be a tuple of strings, got {value!r}.")
        if len(set(value)) != len(value):
            raise ValueError(f"Model {name}: {attr} has duplicate names: {value!r}.")
    if len(model.states) == 0:
        raise ValueError(f"Model {name} declares no states.")
    if len(model.observable_names) == 0:
        raise ValueError(f"Model {name} declares no observables.")
    if not isinstance(model.noise, NoiseModel):
        raise TypeError(f"Model {name}: noise must be a skhds.models.NoiseModel, got {model.noise!r}.")
    specs = model.parameter_specs()
    if not isinstance(specs, list) or not all(isinstance(s, Parameter) for s in specs):
        raise TypeError(f"Model {name}: declare_parameters() must return a list of Parameter.")
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"Model {name}: duplicate parameter names {dup}.")
    for s in specs:
        if s.level == "group" and s.factor not in model.factors:
            raise ValueError(
                f"Model {name}: parameter {s.name!r} uses factor {s.factor!r}, which is not in "
                f"the model's factors {tuple(model.factors)}."
            )
    return specs
