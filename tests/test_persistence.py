"""Persistence: pickle/joblib/skops round trips hold plain numpy state only."""

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from skhds import HierarchicalODEVAE
from skhds.datasets import make_logistic_growth

sio = pytest.importorskip("skops.io")


@pytest.fixture(scope="module")
def data():
    return make_logistic_growth(n_series=12, n_times=8, random_state=0)


@pytest.fixture(scope="module")
def fitted(data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return HierarchicalODEVAE(data.model, max_iter=3, random_state=0).fit(
            data.X, groups=data.groups, times=data.times
        )


def _kw(data):
    return {"groups": data.groups, "times": data.times}


def _walk(obj):
    yield obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(k)
            yield from _walk(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _walk(v)


def test_state_holds_no_tensors_frames_or_modules(fitted):
    state = fitted.__getstate__()
    leaves = list(_walk(state))
    assert not any(torch.is_tensor(v) for v in leaves)
    assert not any(isinstance(v, (pd.DataFrame, torch.nn.Module)) for v in leaves)
    assert all(isinstance(v, np.ndarray) for v in state["_vae_state"].values())
    # live estimator untouched by __getstate__
    assert isinstance(fitted.summary_, pd.DataFrame) and hasattr(fitted, "vae_")


def test_skops_round_trip_is_exact(fitted, data):
    blob = sio.dumps(fitted)
    untrusted = sio.get_untrusted_types(data=blob)
    assert "skhds.models._logistic.LogisticGrowth" in untrusted
    loaded = sio.loads(blob, trusted=untrusted)
    np.testing.assert_array_equal(loaded.predict(data.X, **_kw(data)), fitted.predict(data.X, **_kw(data)))
    pd.testing.assert_frame_equal(loaded.summary_, fitted.summary_)
    assert list(loaded.categories_["strain"]) == list(fitted.categories_["strain"])
    assert loaded.model.get_params().keys() == fitted.model.get_params().keys()


def test_skops_refuses_untrusted_types(fitted):
    blob = sio.dumps(fitted)
    with pytest.raises(Exception, match="[Uu]ntrusted"):
        sio.loads(blob)


def test_skops_loaded_model_keeps_training(fitted, data):
    blob = sio.dumps(fitted)
    loaded = sio.loads(blob, trusted=sio.get_untrusted_types(data=blob))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded.set_params(warm_start=True, max_iter=2).fit(data.X, **_kw(data))
    assert loaded.n_iter_ == fitted.n_iter_ + 2


def test_pickle_is_small_and_independent_of_training_size(data):
    sizes = []
    for n in (12, 48):
        d = make_logistic_growth(n_series=n, n_times=8, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est = HierarchicalODEVAE(d.model, max_iter=1, random_state=0).fit(
                d.X, groups=d.groups, times=d.times)
        sizes.append(len(pickle.dumps(est)))
    assert abs(sizes[1] - sizes[0]) / sizes[0] < 0.1
