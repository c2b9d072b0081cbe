"""Simulate data from a hierarchical ODE model, keeping the ground truth."""

import copy

import numpy as np
import pandas as pd
import torch
from sklearn.utils import Bunch, check_random_state

from .._validation import check_groups, check_inputs, check_times
from ..models import check_model
from ..models._base import observe_checked
from ..solvers import odeint, step_plan

__all__ = ["simulate"]


def simulate(model, n_series=None, *, times, groups=None, inputs=None, params=None,
             solver="rk4", dt=None, random_state=None):
    """Draw parameters from the generative model and simulate noisy series.

    Population values are drawn from their priors, one value per group level
    from the group parameter's prior, one value per series from each
    individual parameter's prior (so the true population location and spread
    of an individual parameter are its declared prior's ``loc`` and
    ``scale``). Any of them can be fixed with ``params``.

    Parameters
    ----------
    model : ODEModel
        The model to simulate from (it is not modified).
    n_series : int, optional
        Number of series (default: taken from ``groups`` or ``inputs``).
    times : array-like of shape (n_times,) or (n_series, n_times)
        Observation times: one shared grid or one grid per series. A
        per-series grid may end in NaN padding (ragged series, as ``fit``
        accepts them); the padded entries of ``X`` and ``clean`` are NaN.
    groups : array-like or DataFrame, optional
        Group labels (required if the model has group parameters).
    inputs : array-like of shape (n_series, n_inputs), optional
        Per-series inputs, in the order of the model's ``inputs`` (a DataFrame
        is matched by column name); required if the model declares inputs.
    params : dict, optional
        Fixed true values: scalars for population, ``(n_levels,)`` (in sorted
        level order) for group, ``(n_series,)`` for individual parameters.
    solver : str, default="rk4"
        Fixed-step ODE solver: ``"euler"``, ``"heun"``, ``"midpoint"`` or
        ``"rk4"``.
    dt : float, optional
        Largest step (as the estimator's ``dt``: intervals that fit together into
        one step share it, their inner times interpolated); default a tenth
        of the smallest observation interval.
    random_state : int, RandomState instance or None
        Seed of the parameter and noise draws, for reproducible output.

    Returns
    -------
    sklearn.utils.Bunch
        ``X`` ``(n_series, n_observables, n_times)`` (NaN where ``times`` is
        padding), ``times`` (as validated, padding kept), ``groups``
        (DataFrame or None), ``inputs``, ``params`` (truth, the keys and shapes
        of one draw of ``sample_posterior``), ``levels`` (sorted group levels per
        factor), ``clean`` (noise-free observables) and ``model``.
    """
    specs = check_model(model)
    rng = check_random_state(random_state)
    if n_series is None:
        for cand in (groups, inputs):
            if cand is not None:
                n_series = len(cand)
                break
        else:
            t = np.asarray(times)
            n_series = t.shape[0] if t.ndim == 2 else None
    if n_series is None:
        raise ValueError("n_series is required when groups, inputs and 2-D times are all absent.")
    t = np.asarray(times, dtype=float)
    t, valid = check_times(t, n_series, t.shape[-1], t0=model.t0)
    used = [f for f in model.factors if any(s.factor == f for s in specs)]
    gdf = check_groups(groups, n_series, used)
    u = check_inputs(inputs, n_series, model.inputs)
    params = dict(params or {})
    truth, levels = {}, {}
    for f in used:
        levels[f] = np.array(sorted(pd.unique(gdf[f]), key=str), dtype=object)
    dtype = torch.float64
    values = {}
    for s in specs:
        if s.level == "population":
            v = params.get(s.name, float(s.prior.sample((), _torch_gen(rng), dtype=dtype)))
            truth[s.name] = float(v)
            values[s.name] = torch.full((n_series, 1), float(v), dtype=dtype)
        elif s.level == "group":
            lv = levels[s.factor]
            v = np.asarray(params.get(s.name, s.prior.sample((len(lv),), _torch_gen(rng), dtype=dtype).numpy()), float)
            if v.shape != (len(lv),):
                raise ValueError(f"params[{s.name!r}] must have shape ({len(lv)},), got {v.shape}.")
            truth[s.name] = v
            truth[f"mu_{s.name}"], truth[f"tau_{s.name}"] = s.prior.loc, s.prior.scale
            code = pd.Categorical(gdf[s.factor], categories=lv).codes
            values[s.name] = torch.as_tensor(v[code], dtype=dtype).reshape(-1, 1)
        else:
            v = np.asarray(params.get(s.name, s.prior.sample((n_series,), _torch_gen(rng), dtype=dtype).numpy()), float)
            if v.shape != (n_series,):
                raise ValueError(f"params[{s.name!r}] must have shape ({n_series},), got {v.shape}.")
            truth[s.name] = v
            truth[f"mu_{s.name}"], truth[f"omega_{s.name}"] = s.prior.loc, s.prior.scale
            values[s.name] = torch.as_tensor(v, dtype=dtype).reshape(-1, 1)
    ins = {n: torch.as_tensor(u[:, j], dtype=dtype).reshape(-1, 1) for j, n in enumerate(model.inputs)}
    t2 = t[None] if t.ndim == 1 else t
    prepend = not np.all(t2[:, 0] == model.t0)
    solve_t = np.concatenate([np.full((t2.shape[0], 1), model.t0), t2], 1) if prepend else t2
    if dt is None:
        d = np.diff(solve_t, axis=-1)
        dt = float(np.min(d[d > 0])) / 10 if np.any(d > 0) else None
    n_states = len(model.states)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(rng.randint(0, 2**31 - 1))
        m = copy.deepcopy(model).to(dtype)  # never change the caller's model
        x0 = torch.broadcast_to(m.initial_state(values, ins), (n_series, 1, n_states)).to(dtype)
        full = m.with_derived(values, ins)
        traj = odeint(lambda tt, x: m.rhs(tt, x, full, ins), x0, torch.as_tensor(solve_t),
                      method=solver, plan=step_plan(solve_t, dt))
        if prepend:
            traj = traj[..., 1:]
        obs, noise_scale = observe_checked(m, traj.transpose(-1, -2),
                                           {k: v.unsqueeze(-1) for k, v in full.items()},
                                           {k: v.unsqueeze(-1) for k, v in ins.items()}, noise_scale=True)
        nparams = {}
        for base, prior in model.noise.declare().items():
            if model.noise.level == "individual":  # drawn per series above, with the other parameters
                nparams[base] = torch.stack([values[f"{base}_{o}"][:, 0] for o in model.observable_names],
                                            -1).reshape(n_series, 1, -1, 1)
                continue
            vals = []
            for o in model.observable_names:
                name = f"{base}_{o}"
                v = float(params.get(name, float(prior.sample((), _torch_gen(rng), dtype=dtype))))
                truth[name] = v
                vals.append(v)
            nparams[base] = torch.tensor(vals, dtype=dtype).reshape(1, 1, -1, 1)
        y = model.noise.scaled_sample(obs, nparams, noise_scale, generator=_torch_gen(rng))
    X, clean = y[:, 0].numpy(), obs[:, 0].numpy()
    if not np.isfinite(X).all():
        raise RuntimeError("Simulation produced non-finite values; check the model and priors.")
    if valid is not None:  # ragged series: restore the NaN padding of times, X and clean
        pad = np.broadcast_to(~valid[:, None, :], X.shape)
        X, clean = np.where(pad, np.nan, X), np.where(pad, np.nan, clean)
        t = np.where(valid, t, np.nan)
    return Bunch(X=X, times=t, groups=gdf if used else None, inputs=u if model.inputs else None,
                 params=truth, levels=levels, clean=clean, model=model)


def _torch_gen(rng):
    gen = torch.Generator()
    gen.manual_seed(int(rng.randint(0, 2**31 - 1)))
    return gen
