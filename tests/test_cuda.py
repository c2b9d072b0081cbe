"""CUDA: the estimator runs unchanged on a GPU and its pickles load on CPU-only machines.

Skipped where CUDA is absent (CI); run on a GPU machine with ``python -m pytest tests/test_cuda.py``.
"""

import contextlib
import os
import pickle
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pandas as pd
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
        return HierarchicalODEVAE(data.model, max_iter=40, batch_size=16, device="cuda",
                                  random_state=0).fit(data.X, groups=data.groups, times=data.times)


def _training_pass_without_waiting(vae, batch, gen, refine=0):
    """One training pass (forward and backward) in which any host synchronisation raises."""
    vae.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss, _, out = vae.training_loss(batch, 24, 8, gen, "dreg", refine=refine)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return loss, out


@contextlib.contextmanager
def _capture_must_succeed():
    """The estimator's "could not be captured" warning becomes an error (others ignored)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="torch")
        warnings.filterwarnings("ignore", message=".*converge.*")
        yield


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
        cpu = HierarchicalODEVAE(data.model, max_iter=40, batch_size=16, random_state=0).fit(
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


def test_training_pass_never_waits_for_the_device(cuda_fit, data):
    """No host synchronisation in a training minibatch (forward and backward).

    Needed for capturing the pass in a CUDA graph, and it keeps the launch queue full.
    """
    prepared = cuda_fit._prepare(data.X, data.groups, None, data.times, reset=False)
    dev = torch.device("cuda")
    batch = prepared.batch(np.arange(16), cuda_fit.scaling_, None, dev, torch.float32)
    gen = torch.Generator(device=dev).manual_seed(0)
    vae = cuda_fit.vae_
    vae.train()
    vae.training_loss(batch, 24, 8, gen, "dreg")  # first call checks the model (may sync)
    loss, out = _training_pass_without_waiting(vae, batch, gen)
    assert torch.isfinite(loss) and int(out["n_bad"]) == 0
    assert all(p.grad is not None for p in vae.encoder.parameters())


def test_captured_training_pass_replays_the_eager_pass(cuda_fit, data):
    """Same seed: the replayed graph gives the eager loss and gradients."""
    from skhds._cuda_graphs import CapturedTrainingPass

    dev = torch.device("cuda")
    prepared = cuda_fit._prepare(data.X, data.groups, None, data.times, reset=False)
    batch = prepared.batch(np.arange(16), cuda_fit.scaling_, None, dev, torch.float32)
    other = prepared.batch(np.arange(8, 24), cuda_fit.scaling_, None, dev, torch.float32)
    vae = cuda_fit.vae_
    gen = torch.Generator(device=dev)
    for p in vae.parameters():
        p.grad = torch.zeros_like(p)
    captured = CapturedTrainingPass(vae, batch, 24, 8, gen, "dreg")
    assert captured.matches(other, 24, 8, "dreg")
    assert not captured.matches(other, 25, 8, "dreg") and not captured.matches(other, 24, 9, "dreg")
    for b in (batch, other):
        gen.manual_seed(3)
        vae.zero_grad(set_to_none=True)
        loss, _, _ = vae.training_loss(b, 24, 8, gen, "dreg")
        loss.backward()
        eager = [p.grad.clone() for p in vae.parameters()]
        gen.manual_seed(3)
        replayed, per_series, log_w, n_bad = captured(b)
        assert all(p.grad is g for p, g in zip(captured.params, captured.grads))
        torch.testing.assert_close(replayed, loss.detach(), rtol=1e-5, atol=1e-4)
        for p, e in zip(vae.parameters(), eager):
            torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-5)
        assert per_series.shape == (16,) and log_w.shape == (16, 8) and int(n_bad) == 0


def test_fit_with_cuda_graphs_matches_eager_fit(cuda_fit, data):
    passes = cuda_fit._captured["passes"]
    assert len(passes) == 2  # minibatches of 16 and the last one of 8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eager = HierarchicalODEVAE(data.model, max_iter=40, batch_size=16, device="cuda",
                                   random_state=0, cuda_graphs=False).fit(data.X, groups=data.groups,
                                                          times=data.times)
    assert eager._captured is None  # never used
    a = cuda_fit.score(data.X, groups=data.groups, times=data.times)
    b = eager.score(data.X, groups=data.groups, times=data.times)
    assert abs(a - b) < 0.25 * abs(b) + 5.0
    # the first epoch draws the same numbers: the losses agree closely
    assert abs(cuda_fit.loss_curve_[0] - eager.loss_curve_[0]) < 1e-3 * abs(eager.loss_curve_[0])


def test_model_that_reads_the_device_trains_eagerly_with_a_warning(data):
    from skhds.models import LogisticGrowth

    class Syncing(LogisticGrowth):
        def rhs(self, t, x, params, inputs):
            if float(x.sum()) < 0:  # reads a device value on the host
                raise AssertionError
            return super().rhs(t, x, params, inputs)

    with pytest.warns(UserWarning, match="could not be captured"):
        est = HierarchicalODEVAE(Syncing(), max_iter=3, device="cuda", random_state=0,
                                 n_iter_no_change=100).fit(data.X, groups=data.groups,
                                                           times=data.times)
    assert est._captured is False and np.isfinite(est.loss_curve_).all()


def test_refined_training_is_captured_and_never_waits(cuda_fit, data):
    """Semi-amortised training (Gauss-Newton refinement) keeps the pass capturable."""
    prepared = cuda_fit._prepare(data.X, data.groups, None, data.times, reset=False)
    dev = torch.device("cuda")
    batch = prepared.batch(np.arange(16), cuda_fit.scaling_, None, dev, torch.float32)
    gen = torch.Generator(device=dev).manual_seed(0)
    vae = cuda_fit.vae_
    vae.training_loss(batch, 24, 8, gen, "dreg", refine=2)
    loss, _ = _training_pass_without_waiting(vae, batch, gen, refine=2)
    assert torch.isfinite(loss)
    with _capture_must_succeed():
        est = HierarchicalODEVAE(data.model, max_iter=5, batch_size=16, device="cuda",
                                 random_state=0, training_refinement=2,
                                 n_iter_no_change=100).partial_fit(data.X, groups=data.groups,
                                                                  times=data.times)
    assert len(est._captured["passes"]) == 2 and np.isfinite(est.loss_curve_).all()



def test_per_series_noise_training_is_captured_and_recovers_the_levels():
    """Noise levels per series: the Gauss-Newton step in mean and variance stays capturable
    (no host synchronisation) and the GPU fit recovers each series' level."""
    import math

    from skhds.datasets import simulate
    from skhds.distributions import LogNormal
    from skhds.models import Gaussian, LogisticGrowth

    model = LogisticGrowth(lag=False, noise=Gaussian(LogNormal(math.log(0.05), 0.6),
                                                     level="individual"))
    times = np.linspace(0.0, 12.0, 20)
    groups = np.array([f"s{i % 3}" for i in range(48)], dtype=object)
    sim = simulate(model, times=times, groups=groups, random_state=5)
    with _capture_must_succeed():
        est = HierarchicalODEVAE(model, max_iter=100, batch_size=16, device="cuda", random_state=0,
                                 learning_rate=0.02, training_refinement=3,
                                 n_iter_no_change=10_000).fit(sim.X, groups=groups, times=times)
    assert len(est._captured["passes"]) == 1 and np.isfinite(est.loss_curve_).all()
    vae = est.vae_
    assert vae.n_noise_dims == 1
    prepared = est._prepare(sim.X, groups, None, times, reset=False)
    dev = torch.device("cuda")
    batch = prepared.batch(np.arange(16), est.scaling_, None, dev, torch.float32)
    gen = torch.Generator(device=dev).manual_seed(0)
    loss, _ = _training_pass_without_waiting(vae, batch, gen, refine=3)
    assert torch.isfinite(loss)
    # the CPU test of the same fit measures a correlation above 0.85 and a bias below 0.15
    post = est.sample_posterior(sim.X, groups=groups, times=times, n_draws=200, random_state=0)
    log_sigma = np.log(post["sigma_x"]).mean(0)
    truth = np.log(sim.params["sigma_x"])
    assert np.corrcoef(log_sigma, truth)[0, 1] > 0.8
    assert abs(np.mean(log_sigma - truth)) < 0.2


def test_noise_scale_of_the_model_is_captured():
    """A model with time-varying noise (observe_noise_scale) trains in CUDA graphs."""
    from skhds.models import DoubleReceiverBlackBox

    rng = np.random.default_rng(0)
    X = np.abs(rng.normal(0.3, 0.1, size=(24, 4, 20)))
    groups = pd.DataFrame({"luxR_rbs": rng.integers(0, 2, 24), "lasR_rbs": rng.integers(0, 2, 24)})
    inputs, times = rng.uniform(0, 100, size=(24, 2)), np.linspace(0.0, 10.0, 20)
    with _capture_must_succeed():
        est = HierarchicalODEVAE(DoubleReceiverBlackBox(n_hidden=8, noise_states=True), max_iter=3,
                                 batch_size=12, device="cuda", random_state=0, training_refinement=2,
                                 n_iter_no_change=100).fit(X, groups=groups, inputs=inputs, times=times)
    assert len(est._captured["passes"]) == 1 and np.isfinite(est.loss_curve_).all()
    mean, std = est.predict(X, groups=groups, inputs=inputs, times=times, return_std=True)
    assert np.isfinite(mean).all() and (std > 0).all()
