"""Device-free, library-free pickled state of a fitted estimator.

``HierarchicalODEVAE.__getstate__`` turns everything torch-, pandas- or
device-bound into plain Python and numpy objects: network and variational
parameters and the optimiser state become numpy arrays, models become their
class plus constructor hyperparameters, data frames become dicts of lists.
Pickles are then small (state, not data), load on a machine without the
device they were fitted on, and can be written with ``skops.io`` (whose loader
only builds types the user trusts: the model classes among them).
"""

import numpy as np
import pandas as pd
import torch

__all__ = ["encode_state", "decode_state", "to_numpy", "to_torch"]

_MODEL = "__odemodel__"
_FRAME = "__dataframe__"
_OBJECT = "__object__"


def to_numpy(obj):
    """Tensors (nested in dicts, lists, tuples) to numpy arrays."""
    if torch.is_tensor(obj):
        return obj.detach().cpu().numpy()
    if isinstance(obj, dict):
        return {k: to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_numpy(v) for v in obj)
    return obj


def to_torch(obj, device):
    """Inverse of :func:`to_numpy` (0-d arrays stay on the CPU, as optimiser steps do)."""
    if isinstance(obj, np.ndarray):
        return torch.as_tensor(obj, device=device) if obj.ndim else torch.as_tensor(obj)
    if isinstance(obj, dict):
        return {k: to_torch(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_torch(v, device) for v in obj)
    return obj


def _encode(value):
    from .models import ODEModel

    if isinstance(value, ODEModel):
        return {_MODEL: type(value), "params": value.get_params(deep=False)}
    if isinstance(value, pd.DataFrame):
        return {_FRAME: {str(c): value[c].tolist() for c in value.columns}}
    return value


def _decode(value):
    if isinstance(value, dict) and _MODEL in value:
        return value[_MODEL](**value["params"])
    if isinstance(value, dict) and _FRAME in value:
        return pd.DataFrame(value[_FRAME])
    if isinstance(value, dict) and _OBJECT in value:
        obj = object.__new__(value[_OBJECT])
        obj.__dict__.update(value["state"])
        return obj
    return value


def encode_state(state, plain_objects=()):
    """Encode an estimator's ``__dict__`` copy (see module docstring).

    Parameters
    ----------
    state : dict
    plain_objects : tuple of str
        Attributes holding simple objects stored as class plus ``__dict__``.

    Returns
    -------
    dict
    """
    out = {k: _encode(v) for k, v in state.items()}
    for key in plain_objects:
        obj = state.get(key)
        if obj is not None:
            out[key] = {_OBJECT: type(obj), "state": dict(vars(obj))}
    if isinstance(state.get("categories_"), dict):
        out["categories_"] = {f: list(v) for f, v in state["categories_"].items()}
    return out


def decode_state(state):
    """Inverse of :func:`encode_state`."""
    out = {k: _decode(v) for k, v in state.items()}
    if isinstance(out.get("categories_"), dict):
        out["categories_"] = {f: np.array(v, dtype=object) for f, v in out["categories_"].items()}
    return out
