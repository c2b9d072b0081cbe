"""Pareto-k-hat of importance weights and the estimator's importance diagnostics."""

import copy
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from skhds import HierarchicalODEVAE
from skhds.datasets import make_logistic_growth
from skhds.inference import effective_sample_size, pareto_k


@pytest.mark.parametrize("alpha", [1.0, 2.0, 4.0])
def test_pareto_tail_recovers_shape(alpha):
    # Lomax (Pareto II) draws have a generalised Pareto tail with shape 1 / alpha.
    rng = np.random.default_rng(0)
    log_w = np.log(rng.pareto(alpha, size=(8, 10000)))
    k = pareto_k(log_w)
    assert k.shape == (8,)
    assert abs(np.median(k) - 1 / alpha) < 0.15
    assert np.all(np.abs(k - 1 / alpha) < 0.4)


def test_light_and_heavy_tails():
    rng = np.random.default_rng(1)
    light = pareto_k(rng.normal(0.0, 0.3, size=(5, 10000)))
    assert np.all(light < 0.5)
    heavy = pareto_k(rng.normal(0.0, 4.0, size=(5, 10000)))  # log-normal weights, huge variance
    assert np.all(heavy > 0.7)
    very_heavy = pareto_k(np.log(rng.pareto(0.5, size=(5, 10000))))
    assert np.all(very_heavy > 0.7)


def test_scale_invariance_and_shapes():
    rng = np.random.default_rng(2)
    log_w = rng.normal(0.0, 1.0, size=(3, 2000))
    k = pareto_k(log_w)
    np.testing.assert_allclose(pareto_k(log_w + 123.0), k, rtol=1e-10)  # unnormalised weights
    np.testing.assert_allclose(pareto_k(log_w[0]), k[:1])  # 1-D input
    t = pareto_k(torch.as_tensor(log_w, dtype=torch.float32))
    assert torch.is_tensor(t) and t.dtype == torch.float32 and t.shape == (3,)
    np.testing.assert_allclose(t.numpy(), k, rtol=1e-4, atol=1e-4)
    # tail_fraction selects the tail size.
    assert not np.allclose(pareto_k(log_w, tail_fraction=0.05), k)
    with pytest.raises(ValueError, match="tail_fraction"):
        pareto_k(log_w, tail_fraction=1.5)


def test_non_finite_weights():
    rng = np.random.default_rng(3)
    log_w = rng.normal(0.0, 0.5, size=(3, 1000))
    log_w[0, :500] = -np.inf  # half the samples failed: ignored
    log_w[1, :] = -np.inf  # all failed
    log_w[2, 3:] = -np.inf  # three finite weights: too few for a tail
    k = pareto_k(log_w)
    assert np.isfinite(k[0]) and k[0] < 0.7
    assert math.isnan(k[1])
    assert math.isinf(k[2])


def test_one_dominant_weight_is_flagged():
    log_w = np.zeros((1, 1000))
    log_w[0, -50:] = np.linspace(5, 40, 50)
    assert pareto_k(log_w)[0] > 0.7


@pytest.fixture(scope="module")
def fitted():
    data = make_logistic_growth(n_series=12, n_times=8, random_state=0)
    est = HierarchicalODEVAE(data.model, max_iter=3, n_eval_samples=128, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(data.X, groups=data.groups, times=data.times)
    return est, data


def test_importance_diagnostics_frame(fitted):
    est, data = fitted
    diag = est.importance_diagnostics(data.X, groups=data.groups, times=data.times)
    assert isinstance(diag, pd.DataFrame)
    assert list(diag.columns) == ["ess", "ess_fraction", "pareto_k", "flagged"]
    assert len(diag) == 12
    assert ((diag["ess"] >= 1 - 1e-6) & (diag["ess"] <= 128 + 1e-6)).all()
    np.testing.assert_allclose(diag["ess_fraction"], diag["ess"] / 128)
    np.testing.assert_array_equal(diag["flagged"], diag["pareto_k"] > 0.7)
    assert diag["flagged"].dtype == bool
    # Deterministic for a fitted estimator.
    again = est.importance_diagnostics(data.X, groups=data.groups, times=data.times)
    pd.testing.assert_frame_equal(diag, again)


@pytest.mark.parametrize("include_global", [False, True, "adapted"])
def test_importance_diagnostics_match_weights(fitted, include_global):
    est, data = fitted
    diag = est.importance_diagnostics(data.X, groups=data.groups, times=data.times,
                                      include_global=include_global)
    # Recompute from the same seeded evaluation.
    prepared = est._prepare(data.X, data.groups, None, data.times, reset=False)
    device, dtype = est._device_dtype()
    gen = est._generator(device, est._eval_seed + 4)
    vae = est.vae_
    if include_global == "adapted":  # evaluated on a float64 copy
        dtype = torch.float64
        vae = copy.deepcopy(est.vae_).to(dtype)
    ess, khat = [], []
    for idx in est._chunks(prepared.n_series):
        batch = prepared.batch(idx, est.scaling_, est.dt, device, dtype)
        if include_global == "adapted":
            log_w = vae.adapted_evidence(batch, est.n_eval_samples, gen)["log_w"]
        else:
            log_w = vae.evaluate(batch, est.n_eval_samples, gen,
                                 include_global=include_global)["log_w"]
        ess.append(effective_sample_size(log_w).numpy())
        khat.append(pareto_k(log_w.double().numpy()))
    np.testing.assert_allclose(diag["ess"], np.concatenate(ess), rtol=1e-6)
    np.testing.assert_allclose(diag["pareto_k"], np.concatenate(khat))


def test_importance_diagnostics_check_include_global(fitted):
    # what the diagnostics say of each kind of weights: tests/test_validity.py
    est, data = fitted
    kw = dict(groups=data.groups, times=data.times)
    with pytest.raises(ValueError, match="include_global"):
        est.importance_diagnostics(data.X, **kw, include_global="per-series")
    with pytest.raises(TypeError, match="include_global"):
        est.importance_diagnostics(data.X, **kw, include_global=1)
    with pytest.raises(ValueError, match="refine"):
        est.importance_diagnostics(data.X, **kw, include_global="adapted", refine=1)


def test_importance_diagnostics_needs_fit():
    from sklearn.exceptions import NotFittedError

    data = make_logistic_growth(n_series=4, n_times=5)
    with pytest.raises(NotFittedError):
        HierarchicalODEVAE(data.model).importance_diagnostics(data.X, groups=data.groups,
                                                              times=data.times)


# ------------------------------------------------------ tensorboard_dir (history scalars)
def test_tensorboard_dir_writes_history(monkeypatch, tmp_path):
    import sys
    import types

    calls = []

    class FakeWriter:
        def __init__(self, log_dir):
            calls.append(("init", log_dir))

        def add_scalar(self, tag, value, step):
            calls.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            calls.append(("close",))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    data = make_logistic_growth(n_series=6, n_times=5, random_state=0)
    est = HierarchicalODEVAE(data.model, max_iter=2, random_state=0, tensorboard_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(data.X, groups=data.groups, times=data.times)
    assert calls[0] == ("init", str(tmp_path)) and calls[-1] == ("close",)
    loss = [(v, step) for tag, *rest in calls[1:-1] if tag == "skhds/loss" for v, step in [rest]]
    assert loss == [(pytest.approx(v), i + 1) for i, v in enumerate(est.loss_curve_)]
    assert not hasattr(est, "_tb_writer")


def test_tensorboard_dir_without_tensorboard(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    data = make_logistic_growth(n_series=6, n_times=5, random_state=0)
    est = HierarchicalODEVAE(data.model, max_iter=2, tensorboard_dir=tmp_path)
    with pytest.raises(ImportError, match="tensorboard_dir"):
        est.fit(data.X, groups=data.groups, times=data.times)
    assert not hasattr(est, "vae_")
