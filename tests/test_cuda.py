"""CUDA: the estimator runs unchanged on a GPU and its pickles load on CPU-only machines.

Skipped where CUDA is absent (CI); run on a GPU machine with ``python -m pytest tests/test_cuda.py``.
"""

import os
import pickle
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from skhds import HierarchicalODEVAE
from skhds.datasets import make_logistic_growth

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")


@pytest.fixture(scope="module")
def data():
    return make_logistic_growth(n_series=24, n_times=12, random_state=0)


@pytest.fixture(scope="module")
def cuda_fit(data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return HierarchicalODEVAE(data.model, max_iter=40, device="cuda", random_state=0).fit(
            data.X, groups=data.groups, times=data.times)


def test_fit_on_cuda_keeps_everything_on_the_device(cuda_fit, data):
    assert all(p.device.type == "cuda" for p in cuda_fit.vae_.parameters())
    mean, std = cuda_fit.predict(data.X, groups=data.groups, times=data.times, return_std=True)
    assert np.isfinite(mean).all() and (std > 0).all()
    assert np.isfinite(cuda_fit.score_samples(data.X, groups=data.groups, times=data.times)).all()
    # the fit learned something: better than after one epoch
    assert cuda_fit.loss_curve_[-1] < cuda_fit.loss_curve_[0]


def test_cuda_and_cpu_fits_agree_statistically(cuda_fit, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cpu = HierarchicalODEVAE(data.model, max_iter=40, random_state=0).fit(
            data.X, groups=data.groups, times=data.times)
    a = cuda_fit.score(data.X, groups=data.groups, times=data.times)
    b = cpu.score(data.X, groups=data.groups, times=data.times)
    assert abs(a - b) < 0.25 * abs(b) + 5.0


def test_cuda_pickle_loads_on_cpu_only_process(cuda_fit, data, tmp_path):
    """Fitted on CUDA, loaded where CUDA is absent: same parameters, mapped to the CPU."""
    path = tmp_path / "est.pkl"
    path.write_bytes(pickle.dumps(cuda_fit))
    expected = {k: v.detach().cpu().numpy() for k, v in cuda_fit.vae_.state_dict().items()}
    np.savez(tmp_path / "expected.npz", **expected)
    code = textwrap.dedent(f"""
        import pickle, warnings, numpy as np, torch
        assert not torch.cuda.is_available()
        from skhds.datasets import make_logistic_growth
        d = make_logistic_growth(n_series=24, n_times=12, random_state=0)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            est = pickle.loads(open({str(path)!r}, "rb").read())
        assert any("loaded on the CPU" in str(x.message) for x in w), [str(x.message) for x in w]
        assert est.device == "cpu"
        exp = np.load({str(tmp_path / "expected.npz")!r})
        for k, v in est.vae_.state_dict().items():
            assert v.device.type == "cpu"
            assert np.array_equal(v.numpy(), exp[k]), k
        pred = est.predict(d.X, groups=d.groups, times=d.times)
        assert np.isfinite(pred).all()
        print("ok")
    """)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
