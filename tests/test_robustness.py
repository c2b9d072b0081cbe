"""Robustness of training and inference: overflowing simulations, failed steps
and rollbacks, interrupts, checkpoints, reproducibility, and missing /
irregular data end to end.

Every estimator here is tiny (a dozen series, a few epochs, small networks) so
the whole module runs in well under a minute on two cores.
"""

import math
import warnings

import joblib
import numpy as np
import pytest
import torch

import skhds._vae as vae_module
from skhds import HierarchicalODEVAE, ODEModel, Parameter
from skhds._vae import HierarchicalVAE
from skhds.datasets import simulate
from skhds.distributions import LogNormal
from skhds.distributions import gaussian_log_prob
from skhds.inference import iwae_per_series, sanitize_log_weights
from skhds.models import Gaussian

SMALL = dict(n_importance_samples=8, n_eval_samples=32, n_hidden=16, batch_size=6, random_state=0)
F32_MAX = float(np.finfo(np.float32).max)


def _small(model, **params):
    return HierarchicalODEVAE(model, **{**SMALL, **params})


def _params_finite(est):
    return all(bool(torch.isfinite(p).all()) for p in est.vae_.parameters())


def _state(est):
    return {k: v.detach().clone() for k, v in est.vae_.state_dict().items()}


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _batch(est, X, times, idx=None):
    """Tensors of a minibatch exactly as the estimator builds them."""
    data = est._prepare(X, None, None, times, reset=False)
    idx = np.arange(data.n_series) if idx is None else idx
    p = est.vae_.q_global.loc
    return data, data.batch(idx, est.scaling_, est.dt, p.device, p.dtype)


# ----------------------------------------------------------------------------- models
class Blowup(ODEModel):
    """``dx/dt = r x^2``, ``x(0) = 1``: finite-time blow-up at ``t = 1 / r``.

    With the prior on ``r`` and the time span below, a good share of the
    importance samples overflow (inf/NaN) in float32, and others give huge
    but finite values whose Gaussian log density overflows.
    """

    states = ("x",)
    noise = Gaussian(LogNormal(math.log(0.05), 0.5))

    def declare_parameters(self):
        return [Parameter("r", LogNormal(math.log(0.4), 1.0), level="individual")]

    def initial_state(self, params, inputs):
        return torch.ones_like(params["r"]).unsqueeze(-1)

    def rhs(self, t, x, params, inputs):
        return (params["r"] * x[..., 0] ** 2).unsqueeze(-1)


class TwoDecay(ODEModel):
    """Two independent exponential decays, both observed (two observables)."""

    states = ("a", "b")

    def declare_parameters(self):
        return [
            Parameter("ka", LogNormal(math.log(0.4), 0.3), level="individual"),
            Parameter("kb", LogNormal(math.log(0.15), 0.3), level="individual"),
            Parameter("a0", LogNormal(0.0, 0.2), level="population"),
        ]

    def initial_state(self, params, inputs):
        return self.stack(params["a0"], 2.0)

    def rhs(self, t, x, params, inputs):
        return self.stack(-params["ka"] * x[..., 0], -params["kb"] * x[..., 1])


class AlwaysNaN(ODEModel):
    """A model whose simulation always fails."""

    states = ("x",)

    def declare_parameters(self):
        return [Parameter("r", LogNormal(0.0, 0.3), level="individual")]

    def initial_state(self, params, inputs):
        return torch.ones_like(params["r"]).unsqueeze(-1)

    def rhs(self, t, x, params, inputs):
        return x * math.nan


class Interrupting(TwoDecay):
    """TwoDecay that counts rhs calls and raises KeyboardInterrupt past ``limit``.

    Module level (not built in a test) so that checkpoints can pickle it.
    """

    calls = 0
    limit = None

    def rhs(self, t, x, params, inputs):
        cls = Interrupting
        cls.calls += 1
        if cls.limit is not None and cls.calls > cls.limit:
            raise KeyboardInterrupt
        return super().rhs(t, x, params, inputs)


@pytest.fixture
def interrupting():
    Interrupting.calls, Interrupting.limit = 0, None
    yield Interrupting
    Interrupting.calls, Interrupting.limit = 0, None


# ------------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def blowup_data():
    times = np.linspace(0.0, 4.0, 9)
    n = 12
    sim = simulate(Blowup(), n, times=times, params={"r": np.full(n, 0.08), "sigma_x": 0.05},
                   random_state=0)
    return sim.X, times


@pytest.fixture(scope="module")
def decay_data():
    times = np.linspace(0.0, 7.0, 8)
    sim = simulate(TwoDecay(), 12, times=times, params={"sigma_a": 0.05, "sigma_b": 0.05},
                   random_state=0)
    return sim.X, times


@pytest.fixture(scope="module")
def blowup_fitted(blowup_data):
    X, times = blowup_data
    return _small(Blowup(), max_iter=3).fit(X, times=times)


@pytest.fixture(scope="module")
def blowup_initial(blowup_data):
    """An estimator essentially at its initialisation (encoder close to the prior)."""
    X, times = blowup_data
    return _small(Blowup(), max_iter=1, learning_rate=1e-9).fit(X, times=times)


# =================================================================== 1. overflowing models
def test_overflowing_model_fits_with_zero_weights_counted(blowup_fitted, blowup_data):
    X, times = blowup_data
    est = blowup_fitted
    hist = est.history_
    assert est.n_iter_ == 3
    assert _params_finite(est)
    assert np.isfinite(est.loss_curve_).all()
    # Failed samples are counted, and handled by weight zero: no step had to be
    # skipped or rolled back (a NaN gradient would have forced a skip).
    assert hist["zero_weight_samples"].sum() > 0
    assert hist["skipped_steps"].sum() == 0
    assert hist["rollbacks"].sum() == 0
    pred = est.predict(X, times=times)
    assert pred.shape == X.shape
    assert np.isfinite(pred).all()
    assert np.isfinite(est.score_samples(X, times=times)).all()
    assert np.isfinite(est.transform(X, times=times)).all()
    post = est.sample_posterior(X, times=times, n_draws=20)
    assert all(np.isfinite(v).all() for v in post.values())


def test_overflowing_model_predictive_std_is_finite(blowup_fitted, blowup_data):
    """Zero-weight samples with huge but finite means (their square overflows
    float32) must not turn the predictive variance into NaN."""
    X, times = blowup_data
    mean, std = blowup_fitted.predict(X, times=times, return_std=True)
    assert np.isfinite(mean).all()
    assert np.isfinite(std).all()
    assert (std > 0).all()


def test_overflow_gets_minus_inf_log_weight_exactly(blowup_initial, blowup_data):
    """-inf exactly for samples whose simulation is non-finite or whose
    float32 likelihood overflows; every other weight finite."""
    X, times = blowup_data
    est = blowup_initial
    vae = est.vae_
    _, batch = _batch(est, X, times)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        out = vae.log_weights(batch, 64, vae.q_global.rsample(1, gen), gen)
    means = out["means"].double().numpy()  # (S, K, 1, T)
    log_w = out["log_w"].numpy()
    nonfinite = ~np.isfinite(means).all((-2, -1))
    sigma = float(out["params"]["sigma_x"].reshape(-1)[0])
    y = batch["y"].double().numpy()[:, None]
    mask = batch["mask"].numpy()[:, None]
    with np.errstate(all="ignore"):
        u2 = ((y - means) / sigma) ** 2
    lik_overflow = (mask & np.isfinite(means) & (u2 > F32_MAX)).any((-2, -1)) & ~nonfinite
    expected = nonfinite | lik_overflow
    # The batch exercises both failure modes, and leaves most samples usable.
    assert nonfinite.sum() > 0
    assert lik_overflow.sum() > 0
    assert 0.05 < expected.mean() < 0.9
    assert np.array_equal(np.isneginf(log_w), expected)
    assert np.isfinite(log_w[~expected]).all()
    assert out["n_bad"] == expected.sum()


@pytest.mark.parametrize("estimator", ["iwae", "dreg"])
def test_overflow_does_not_poison_gradients(blowup_initial, blowup_data, estimator):
    X, times = blowup_data
    est = blowup_initial
    vae = est.vae_
    _, batch = _batch(est, X, times)
    vae.zero_grad(set_to_none=True)
    gen = torch.Generator().manual_seed(0)
    loss, per_series, out = vae.training_loss(batch, X.shape[0], 64, gen, estimator)
    assert out["n_bad"] > 0
    assert torch.isfinite(loss)
    assert torch.isfinite(per_series).all()
    loss.backward()
    for name, p in vae.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    hier = vae.hierarchy
    g_loc = vae.q_global.loc.grad
    # Population quantities shared by all samples (including the failed ones):
    # the noise scale and the location/spread of r get real, finite gradients.
    for idx in (hier.pop_index["sigma_x"], *hier.ind_index["r"]):
        assert torch.isfinite(g_loc[idx]) and g_loc[idx] != 0
    assert torch.isfinite(vae.q_global.log_scale.grad).all()
    vae.zero_grad(set_to_none=True)


def test_overflow_batch_would_poison_gradients_without_isolation(blowup_initial, blowup_data,
                                                                 monkeypatch):
    """Control: the batch above really produces NaN gradients if the per-sample
    isolation is switched off, so the previous test checks something."""
    X, times = blowup_data
    vae = blowup_initial.vae_
    _, batch = _batch(blowup_initial, X, times)
    monkeypatch.setattr(vae_module, "_isolate", lambda t: t)
    vae.zero_grad(set_to_none=True)
    gen = torch.Generator().manual_seed(0)
    loss, _, _ = vae.training_loss(batch, X.shape[0], 64, gen, "iwae")
    loss.backward()
    assert not all(bool(torch.isfinite(p.grad).all()) for p in vae.parameters() if p.grad is not None)
    vae.zero_grad(set_to_none=True)


def test_likelihood_overflow_with_finite_means(blowup_initial):
    """Huge but finite float32 means: the density overflows, the weight is zero,
    the gradient is exactly zero for that sample and finite everywhere."""
    vae = blowup_initial.vae_
    S, K, T = 2, 3, 5
    gen = torch.Generator().manual_seed(0)
    y = torch.randn((S, 1, T), generator=gen)
    mask = torch.ones((S, 1, T), dtype=torch.bool)
    mask[1, 0, 3] = False
    base = y.unsqueeze(1) + 0.1 * torch.randn((S, K, 1, T), generator=gen)
    huge = torch.zeros_like(base)
    huge[0, 1, 0, 2] = 1e30  # observed entry: (y - m)^2 / sigma^2 overflows float32
    huge[1, 2, 0, 3] = 1e30  # unobserved entry: irrelevant
    means = (base + huge).requires_grad_(True)
    assert torch.isfinite(means).all()
    sigma = torch.full((1, 1), 0.2, requires_grad=True)
    ll = vae.log_likelihood(means, {"y": y, "mask": mask}, {"sigma_x": sigma})
    bad = torch.zeros((S, K), dtype=torch.bool)
    bad[0, 1] = True
    assert not torch.isfinite(ll[0, 1])
    assert torch.isfinite(ll[~bad]).all()
    # The sample with the huge unobserved entry is scored on its observed entries.
    yn, mn, m = y.double().numpy()[:, None], base.detach().double().numpy(), mask.numpy()[:, None]
    dens = -0.5 * ((yn - mn) / 0.2) ** 2 - math.log(0.2) - 0.5 * math.log(2 * math.pi)
    manual = np.where(m, dens, 0.0).sum((-2, -1))
    np.testing.assert_allclose(ll[~bad].detach().numpy(), manual[~bad.numpy()], rtol=1e-5, atol=1e-4)
    log_w, n_bad = sanitize_log_weights(ll)
    assert n_bad == 1 and torch.isneginf(log_w[0, 1])
    iwae_per_series(log_w).sum().backward()
    assert torch.isfinite(means.grad).all()
    assert torch.equal(means.grad[0, 1], torch.zeros_like(means.grad[0, 1]))
    assert means.grad[0, 0].abs().sum() > 0
    assert torch.isfinite(sigma.grad).all() and sigma.grad.abs().sum() > 0


# =============================================================== 2. skipped steps, rollback
class _NaNAfterStep(torch.optim.Adam):
    """Adam whose ``nan_at``-th step leaves a NaN in the first parameter."""

    nan_at = None
    steps = 0

    def step(self, closure=None):
        out = super().step(closure)
        cls = _NaNAfterStep
        cls.steps += 1
        if cls.nan_at is not None and (cls.steps == cls.nan_at or cls.nan_at == "always"):
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = math.nan
        return out


@pytest.fixture
def nan_adam(monkeypatch):
    _NaNAfterStep.steps, _NaNAfterStep.nan_at = 0, None
    monkeypatch.setattr(torch.optim, "Adam", _NaNAfterStep)
    yield _NaNAfterStep
    _NaNAfterStep.steps, _NaNAfterStep.nan_at = 0, None


def test_rollback_restores_epoch_start_and_halves_learning_rate(decay_data, nan_adam):
    X, times = decay_data
    # 12 series, batch_size 6: 2 steps per epoch; step 4 is the last of epoch 2.
    nan_adam.nan_at = 4
    est = _small(TwoDecay(), max_iter=4).fit(X, times=times)
    assert nan_adam.steps > 4  # the patched optimiser was the one used
    hist = est.history_
    assert hist["rollbacks"].tolist() == [0, 1, 0, 0]
    np.testing.assert_allclose(hist["learning_rate"], [0.01, 0.005, 0.005, 0.005])
    assert _params_finite(est)
    assert np.isfinite(est.loss_curve_).all()
    assert np.isfinite(est.predict(X, times=times)).all()


def test_halved_rate_stays_halved_relative_to_the_schedule(decay_data, nan_adam):
    X, times = decay_data
    nan_adam.nan_at = 4  # the last update of epoch 2 (2 per epoch)
    est = _small(TwoDecay(), max_iter=4, learning_rate_schedule=[(3, 0.002)]).fit(X, times=times)
    assert est.history_["rollbacks"].tolist() == [0, 1, 0, 0]
    np.testing.assert_allclose(est.history_["learning_rate"], [0.01, 0.005, 0.005, 0.001])


def test_rollback_state_equals_epoch_start(decay_data, nan_adam):
    X, times = decay_data
    reference = _small(TwoDecay(), max_iter=1).fit(X, times=times)
    nan_adam.steps, nan_adam.nan_at = 0, 4
    est = _small(TwoDecay(), max_iter=2).fit(X, times=times)
    assert est.history_["rollbacks"].tolist() == [0, 1]
    # Epoch 2 was rolled back at its last step: its end state is epoch 1's end.
    assert _same_state(_state(est), _state(reference))


def test_single_minibatch_epoch_is_retried_at_the_halved_rate(decay_data, nan_adam):
    """One minibatch per epoch: a rolled-back update leaves nothing of the pass, so the
    epoch is repeated from its start (same minibatch, same draws) at half the rate
    instead of failing the fit."""
    X, times = decay_data
    reference = _small(TwoDecay(), max_iter=2, batch_size=12).fit(X, times=times)
    nan_adam.steps, nan_adam.nan_at = 0, 2  # epoch 2's only update
    est = _small(TwoDecay(), max_iter=3, batch_size=12).fit(X, times=times)
    hist = est.history_
    assert est.n_iter_ == 3 and nan_adam.steps == 4  # epoch 2 took two updates
    assert hist["rollbacks"].tolist() == [0, 1, 0]
    np.testing.assert_allclose(hist["learning_rate"], [0.01, 0.005, 0.005])
    assert np.isfinite(est.loss_curve_).all() and _params_finite(est)
    # the retry started from epoch 1's end with the same minibatch and draws: its loss
    # (computed before the update) is that of the fit without the failure
    np.testing.assert_allclose(hist["loss"].iloc[:2], reference.history_["loss"], rtol=1e-6)
    assert hist["loss"].iloc[2] != reference.history_["loss"].iloc[1]


def test_rollback_inside_a_refinement_block_is_reproducible(decay_data, nan_adam):
    """A rolled-back update in the middle of a block of refined minibatches: the epoch
    goes on from its start at half the rate with the block's remaining proposals, and a
    second fit with the same failure repeats the first exactly."""
    X, times = decay_data
    kw = dict(max_iter=3, batch_size=3, training_refinement=2, refinement_block=4)

    def run():
        nan_adam.steps, nan_adam.nan_at = 0, 6  # epoch 2's second of four updates
        return _small(TwoDecay(), **kw).fit(X, times=times)

    a, b = run(), run()
    assert a.history_["rollbacks"].tolist() == [0, 1, 0]
    np.testing.assert_allclose(a.history_["learning_rate"], [0.01, 0.005, 0.005])
    assert _params_finite(a) and np.isfinite(a.loss_curve_).all()
    assert a.loss_curve_ == b.loss_curve_ and _same_state(_state(a), _state(b))
    nan_adam.steps, nan_adam.nan_at = 0, None
    clean = _small(TwoDecay(), **kw).fit(X, times=times)
    assert clean.loss_curve_[0] == a.loss_curve_[0] and clean.loss_curve_[1:] != a.loss_curve_[1:]


def test_repeated_rollbacks_in_one_epoch_keep_halving_the_rate(decay_data, nan_adam):
    X, times = decay_data
    nan_adam.nan_at = 1  # the first update fails; the epoch goes on from its start at 0.005
    with pytest.MonkeyPatch.context() as mp:
        step = _NaNAfterStep.step

        def twice(self, closure=None):  # fail the first two updates
            out = step(self, closure)
            if _NaNAfterStep.steps == 2:
                with torch.no_grad():
                    self.param_groups[0]["params"][0].view(-1)[0] = math.nan
            return out

        mp.setattr(_NaNAfterStep, "step", twice)
        est = _small(TwoDecay(), max_iter=1).fit(X, times=times)  # 2 minibatches
    assert est.history_["rollbacks"].tolist() == [2]
    np.testing.assert_allclose(est.history_["learning_rate"], [0.0025])
    assert _params_finite(est)


def test_every_step_rolled_back_raises_and_keeps_finite_state(decay_data, nan_adam):
    X, times = decay_data
    nan_adam.nan_at = "always"
    est = _small(TwoDecay(), max_iter=3)
    with pytest.raises(RuntimeError, match="non-finite"):
        est.fit(X, times=times)
    assert est.n_iter_ == 0
    assert _params_finite(est)


def _patch_loss(monkeypatch, corrupt):
    """Wrap HierarchicalVAE.training_loss; ``corrupt(call, loss)`` may alter the loss."""
    original = HierarchicalVAE.training_loss
    calls = {"n": 0, "snapshots": {}}

    def patched(self, *args, **kwargs):
        calls["n"] += 1
        calls["snapshots"][calls["n"]] = {k: v.detach().clone() for k, v in self.state_dict().items()}
        loss, per_series, out = original(self, *args, **kwargs)
        return corrupt(calls["n"], loss), per_series, out

    monkeypatch.setattr(HierarchicalVAE, "training_loss", patched)
    return calls


def test_non_finite_loss_step_is_skipped(decay_data, monkeypatch):
    X, times = decay_data
    calls = _patch_loss(monkeypatch, lambda n, loss: loss * math.nan if n == 2 else loss)
    est = _small(TwoDecay(), max_iter=1).fit(X, times=times)
    hist = est.history_
    assert hist["skipped_steps"].tolist() == [1]
    assert hist["rollbacks"].tolist() == [0]
    assert np.isfinite(est.loss_curve_).all()
    # The skipped step (the epoch's last) changed nothing.
    assert _same_state(_state(est), calls["snapshots"][2])


def test_non_finite_gradient_step_is_skipped(decay_data, monkeypatch):
    X, times = decay_data

    def corrupt(n, loss):
        if n == 2:  # finite value, NaN gradient
            loss.register_hook(lambda g: g * math.nan)
        return loss

    calls = _patch_loss(monkeypatch, corrupt)
    est = _small(TwoDecay(), max_iter=1).fit(X, times=times)
    assert est.history_["skipped_steps"].tolist() == [1]
    assert _params_finite(est)
    assert _same_state(_state(est), calls["snapshots"][2])


# ========================================================= 3. epochs in which nothing works
def test_epoch_with_every_step_failing_raises_and_keeps_last_finite_state(decay_data, monkeypatch):
    X, times = decay_data
    reference = _small(TwoDecay(), max_iter=1).fit(X, times=times)
    # From the third call (epoch 2) on, every minibatch loss is NaN.
    _patch_loss(monkeypatch, lambda n, loss: loss * math.nan if n >= 3 else loss)
    est = _small(TwoDecay(), max_iter=4)
    with pytest.raises(RuntimeError, match="non-finite") as info:
        est.fit(X, times=times)
    assert "Epoch 2" in str(info.value)
    assert est.n_iter_ == 1
    assert _params_finite(est)
    assert _same_state(_state(est), _state(reference))


def test_model_that_always_fails_raises_runtime_error():
    """Every simulation is NaN: nothing can be learned, and fit must say so
    instead of optimising the KL term alone."""
    X = np.random.RandomState(0).rand(8, 1, 6)
    est = HierarchicalODEVAE(AlwaysNaN(), max_iter=3, n_importance_samples=4, n_hidden=8,
                             random_state=0)
    with pytest.raises(RuntimeError, match="non-finite"):
        est.fit(X)
    assert _params_finite(est)


# ===================================================================== 4. KeyboardInterrupt
def _calls_for_epochs(model_cls, X, times, n_epochs, **params):
    model_cls.calls, model_cls.limit = 0, None
    est = _small(model_cls(), max_iter=n_epochs, **params).fit(X, times=times)
    calls, model_cls.calls = model_cls.calls, 0
    return calls, est


def _limit_mid_epoch_3(c2):
    """rhs calls after which to interrupt: in epoch 3, after its first step.

    ``c2`` calls make two epochs (one extra for the output check); each epoch
    has two training minibatches of equal cost, then (with early stopping)
    one validation chunk of the same cost.
    """
    per_epoch = (c2 - 1) // 2
    return c2 + per_epoch // 2 + 1


def _fit_interrupted(est, X, times):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            est.fit(X, times=times)
        except KeyboardInterrupt:  # pragma: no cover - the failure being tested
            pytest.fail("KeyboardInterrupt propagated out of fit")
    return [w for w in caught if issubclass(w.category, UserWarning)]


def test_keyboard_interrupt_in_epoch_3_returns_usable_estimator(decay_data, interrupting):
    X, times = decay_data
    c2, two_epochs = _calls_for_epochs(interrupting, X, times, 2)
    interrupting.limit = _limit_mid_epoch_3(c2)
    est = _small(interrupting(), max_iter=10)
    caught = _fit_interrupted(est, X, times)
    interrupting.limit = None
    assert any("interrupted" in str(w.message) for w in caught)
    assert est.n_iter_ == 2
    assert len(est.loss_curve_) == 2 and len(est.history_) == 2
    assert est.loss_curve_ == two_epochs.loss_curve_
    assert not est.summary_.empty
    assert _params_finite(est)
    # Without early stopping the state reached (part of epoch 3) is kept.
    assert not _same_state(_state(est), _state(two_epochs))
    pred = est.predict(X, times=times)
    assert pred.shape == X.shape and np.isfinite(pred).all()
    assert np.isfinite(est.score(X, times=times))


def test_keyboard_interrupt_with_early_stopping_restores_best(decay_data, interrupting):
    X, times = decay_data
    es = dict(early_stopping=True, validation_fraction=0.25)
    c2, two_epochs = _calls_for_epochs(interrupting, X, times, 2, **es)
    interrupting.limit = _limit_mid_epoch_3(c2)
    est = _small(interrupting(), max_iter=10, **es)
    caught = _fit_interrupted(est, X, times)
    interrupting.limit = None
    assert any("interrupted" in str(w.message) for w in caught)
    assert est.n_iter_ == 2
    assert len(est.validation_scores_) == 2
    # The best of the two complete epochs is restored, exactly as in a clean
    # two-epoch fit (which restores its best state too).
    assert _same_state(_state(est), _state(two_epochs))
    assert np.isfinite(est.predict(X, times=times)).all()


def test_keyboard_interrupt_during_validation_keeps_records_consistent(decay_data, interrupting):
    """Interrupted while scoring the validation set of epoch 3: that epoch is
    not complete, and every per-epoch record agrees on the count."""
    X, times = decay_data
    es = dict(early_stopping=True, validation_fraction=0.25)
    c2, two_epochs = _calls_for_epochs(interrupting, X, times, 2, **es)
    interrupting.limit = c2 + (c2 - 1) // 2 - 2  # inside epoch 3's validation chunk
    est = _small(interrupting(), max_iter=10, **es)
    _fit_interrupted(est, X, times)
    interrupting.limit = None
    n = est.n_iter_
    assert n == len(est.loss_curve_) == len(est.validation_scores_) == len(est.history_)
    assert n == 2
    assert _same_state(_state(est), _state(two_epochs))


# ========================================================================= 5. checkpoints
def test_checkpoint_file_holds_a_usable_fitted_estimator(decay_data, tmp_path):
    X, times = decay_data
    path = tmp_path / "ck.joblib"
    est = _small(TwoDecay(), max_iter=3, checkpoint_path=path).fit(X, times=times)
    assert path.exists()
    assert not (tmp_path / "ck.joblib.tmp").exists()
    loaded = joblib.load(path)
    assert loaded.n_iter_ == 3
    assert loaded.loss_curve_ == est.loss_curve_
    assert len(loaded.history_) == 3
    assert _same_state(_state(loaded), _state(est))
    np.testing.assert_array_equal(loaded.predict(X, times=times), est.predict(X, times=times))
    np.testing.assert_array_equal(loaded.score_samples(X, times=times),
                                  est.score_samples(X, times=times))


def test_checkpoint_resume_continues_exactly(decay_data, tmp_path):
    X, times = decay_data
    path = tmp_path / "ck.joblib"
    _small(TwoDecay(), max_iter=3, checkpoint_path=path).fit(X, times=times)
    loaded = joblib.load(path)
    loaded.set_params(warm_start=True, max_iter=2).fit(X, times=times)
    assert loaded.n_iter_ == 5
    assert len(loaded.loss_curve_) == 5 and len(loaded.history_) == 5
    assert joblib.load(path).n_iter_ == 5  # the resumed run keeps checkpointing
    # Resuming from the checkpoint (optimiser state included) is the same as
    # never having stopped.
    straight = _small(TwoDecay(), max_iter=5).fit(X, times=times)
    np.testing.assert_array_equal(loaded.loss_curve_, straight.loss_curve_)
    assert _same_state(_state(loaded), _state(straight))
    np.testing.assert_array_equal(loaded.predict(X, times=times), straight.predict(X, times=times))


def test_checkpoint_after_interrupt_holds_last_complete_epoch(decay_data, interrupting, tmp_path):
    X, times = decay_data
    c2, two_epochs = _calls_for_epochs(interrupting, X, times, 2)
    interrupting.limit = _limit_mid_epoch_3(c2)
    path = tmp_path / "ck.joblib"
    est = _small(interrupting(), max_iter=10, checkpoint_path=path)
    _fit_interrupted(est, X, times)
    interrupting.limit = None
    loaded = joblib.load(path)
    assert loaded.n_iter_ == 2
    assert loaded.loss_curve_ == two_epochs.loss_curve_
    assert _same_state(_state(loaded), _state(two_epochs))


# ======================================================================= 6. reproducibility
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_same_seed_bitwise_reproducible(decay_data, dtype):
    X, times = decay_data
    a = _small(TwoDecay(), max_iter=3, dtype=dtype).fit(X, times=times)
    b = _small(TwoDecay(), max_iter=3, dtype=dtype).fit(X, times=times)
    assert a.vae_.q_global.loc.dtype == getattr(torch, dtype)
    assert a.loss_curve_ == b.loss_curve_
    assert np.array_equal(a.predict(X, times=times), b.predict(X, times=times))
    assert np.array_equal(a.score_samples(X, times=times), b.score_samples(X, times=times))
    pa = a.sample_posterior(X, times=times, n_draws=15)
    pb = b.sample_posterior(X, times=times, n_draws=15)
    assert pa.keys() == pb.keys()
    for key in pa:
        assert np.array_equal(pa[key], pb[key]), key
    p1 = a.sample_posterior(X, times=times, n_draws=15, random_state=1)
    p1b = a.sample_posterior(X, times=times, n_draws=15, random_state=1)
    p2 = a.sample_posterior(X, times=times, n_draws=15, random_state=2)
    assert all(np.array_equal(p1[k], p1b[k]) for k in p1)
    assert not np.array_equal(p1["ka"], p2["ka"])
    assert not np.array_equal(p1["a0"], p2["a0"])
    # Repeated calls give the same answer (no state carried between calls).
    assert np.array_equal(a.predict(X, times=times), a.predict(X, times=times))
    assert np.array_equal(a.transform(X, times=times), a.transform(X, times=times))


def test_no_global_rng_or_dtype_side_effects(decay_data):
    X, times = decay_data
    torch.manual_seed(1234)
    np.random.seed(1234)
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()
    dtype = torch.get_default_dtype()
    est = _small(TwoDecay(), max_iter=2, dtype="float64").fit(X, times=times)
    est.predict(X, times=times)
    est.score_samples(X, times=times)
    est.transform(X, times=times)
    est.sample_posterior(X, times=times, n_draws=5)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    assert torch.get_default_dtype() == dtype


def test_results_do_not_depend_on_global_seed_or_other_fits(decay_data):
    X, times = decay_data
    torch.manual_seed(0)
    a = _small(TwoDecay(), max_iter=2).fit(X, times=times)
    pred_a = a.predict(X, times=times)
    # Another fit in between, and a different global seed.
    _small(TwoDecay(), max_iter=1, random_state=5).fit(X, times=times)
    torch.manual_seed(99)
    np.random.seed(99)
    b = _small(TwoDecay(), max_iter=2).fit(X, times=times)
    assert a.loss_curve_ == b.loss_curve_
    assert np.array_equal(pred_a, a.predict(X, times=times))
    assert np.array_equal(pred_a, b.predict(X, times=times))


# =============================================================== 7. missing / irregular data
def _simulate_decay(times, n, seed=0):
    sim = simulate(TwoDecay(), n, times=times, params={"sigma_a": 0.05, "sigma_b": 0.05},
                   random_state=seed)
    X = sim.X.copy()
    if np.ndim(times) == 2:
        X[np.broadcast_to(np.isnan(times)[:, None, :], X.shape)] = np.nan
    return X


def _scenario(name):
    rng = np.random.RandomState(0)
    n, T = 12, 8
    grid = np.linspace(0.0, 7.0, T)
    if name == "random_missing":
        X = _simulate_decay(grid, n)
        X[rng.rand(*X.shape) < 0.3] = np.nan
        return X, grid
    if name == "observable_missing":
        X = _simulate_decay(grid, n)
        X[:4, 1, :] = np.nan  # observable b never measured in series 0-3
        X[4:6, 0, :] = np.nan  # observable a never measured in series 4-5
        return X, grid
    if name == "ragged":
        times = np.tile(grid, (n, 1))
        lengths = rng.randint(3, T + 1, size=n)
        for i, L in enumerate(lengths):
            times[i, L:] = np.nan
        return _simulate_decay(times, n), times
    if name == "clinical":
        # Every subject its own random visit times: no time point in common.
        times = np.sort(rng.uniform(0.1, 7.0, size=(n, T)), axis=1)
        assert len(np.unique(times)) == n * T
        return _simulate_decay(times, n), times
    if name == "two_points":
        times = np.tile(grid, (n, 1))
        times[::2, 2:] = np.nan  # half the series: two observation times only
        return _simulate_decay(times, n), times
    if name == "everything":
        times = np.sort(rng.uniform(0.1, 7.0, size=(n, T)), axis=1)
        times[::3, 2:] = np.nan
        times[1::3, 5:] = np.nan
        X = _simulate_decay(times, n)
        X[rng.rand(*X.shape) < 0.2] = np.nan
        X[2, 1] = np.nan
        return X, times
    raise ValueError(name)


SCENARIOS = ["random_missing", "observable_missing", "ragged", "clinical", "two_points", "everything"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_missing_and_irregular_data_end_to_end(scenario):
    X, times = _scenario(scenario)
    assert (~np.isnan(X)).any((1, 2)).all()  # every series has some data
    est = _small(TwoDecay(), max_iter=3).fit(X, times=times)
    assert np.isfinite(est.loss_curve_).all()
    assert _params_finite(est)
    pred, std = est.predict(X, times=times, return_std=True)
    assert pred.shape == X.shape
    # NaN exactly at the padding of ragged grids (no time there), finite elsewhere
    padded = np.zeros(X.shape, bool) if times.ndim == 1 else np.broadcast_to(
        np.isnan(times)[:, None, :], X.shape)
    assert np.isnan(pred[padded]).all() and np.isnan(std[padded]).all()
    pred, std = pred[~padded], std[~padded]
    assert np.isfinite(pred).all() and np.isfinite(std).all()
    # Decays from positive initial values stay in a physical range, also for
    # observables that were never measured in a series.
    assert (pred > -0.5).all() and (pred < 5).all()
    scores = est.score_samples(X, times=times)
    assert scores.shape == (X.shape[0],) and np.isfinite(scores).all()
    assert np.isfinite(est.transform(X, times=times)).all()
    dense = np.linspace(0.0, 8.0, 17)
    assert np.isfinite(est.predict(X, times=times, prediction_times=dense)).all()
    if times.ndim == 2:  # a padded per-series output grid: NaN at its padding only
        out = est.predict(X, times=times, prediction_times=times + 0.5)
        np.testing.assert_array_equal(np.isnan(out), padded)


def test_masked_log_likelihood_counts_exactly_the_observed_entries():
    X, times = _scenario("everything")
    X = X.copy()
    # Junk under the NaN time padding must be ignored just as NaN is.
    pad = np.broadcast_to(np.isnan(times)[:, None, :], X.shape)
    X[pad] = 1e3
    est = _small(TwoDecay(), max_iter=1, dtype="float64").fit(X, times=times)
    observed = ~np.isnan(X) & ~pad
    idx = np.array([0, 1, 2, 3, 5, 8])
    _, batch = _batch(est, X, times, idx)
    assert np.array_equal(batch["mask"].numpy(), observed[idx])
    S, K, T = len(idx), 5, X.shape[-1]
    gen = torch.Generator().manual_seed(0)
    means = torch.rand((S, K, 2, T), generator=gen, dtype=torch.float64) * 2.0
    sig = {"sigma_a": torch.full((1, 1), 0.3, dtype=torch.float64),
           "sigma_b": torch.full((1, 1), 0.7, dtype=torch.float64)}
    ll = est.vae_.log_likelihood(means, batch, sig).numpy()
    sd = np.array([0.3, 0.7])[None, None, :, None]
    yobs = np.where(observed[idx], X[idx], 0.0)[:, None]
    dens = -0.5 * ((yobs - means.numpy()) / sd) ** 2 - np.log(sd) - 0.5 * math.log(2 * math.pi)
    manual = np.where(observed[idx][:, None], dens, 0.0).sum((-2, -1))
    assert ll.shape == (S, K)
    np.testing.assert_allclose(ll, manual, rtol=1e-12, atol=1e-10)
    # Dropping one more observed entry changes exactly that series' value by its term.
    X2 = X.copy()
    X2[idx[0], 0, 0] = np.nan
    _, batch2 = _batch(est, X2, times, idx)
    ll2 = est.vae_.log_likelihood(means, batch2, sig).numpy()
    np.testing.assert_allclose(ll[0] - ll2[0], dens[0, :, 0, 0], rtol=1e-12, atol=1e-10)
    np.testing.assert_array_equal(ll[1:], ll2[1:])


# ====================================================================== 8. all-NaN series
def test_all_nan_series_scores_about_zero_at_predict_time(decay_data):
    X, times = decay_data
    est = _small(TwoDecay(), max_iter=3, n_eval_samples=256).fit(X, times=times)
    Xq = X[:4].copy()
    Xq[1] = np.nan
    Xq[3] = np.nan
    scores = est.score_samples(Xq, times=times)
    assert np.isfinite(scores).all()
    # No data: log mean_k p(z_k | g_k) / q(z_k), an estimate of log 1 = 0
    # (biased low for finite K, as every IWAE estimate).
    assert (np.abs(scores[[1, 3]]) < 1.5).all()
    # A series with data has a likelihood term far from 0.
    assert abs(scores[0]) > 5
    # Exactly: the log weights of an empty series carry no likelihood term.
    _, batch = _batch(est, Xq, times)
    with torch.no_grad():
        out = est.vae_.evaluate(batch, 64, torch.Generator().manual_seed(0))
        log_pz = est.vae_.hierarchy.individual_log_prior(out["g"], out["z"])
        log_q = gaussian_log_prob(out["z"], out["loc"], out["scale"])
    expected = (log_pz - log_q).numpy()
    np.testing.assert_allclose(out["log_w"].numpy()[[1, 3]], expected[[1, 3]], rtol=1e-5, atol=1e-5)
    assert np.abs(out["log_w"].numpy()[[0, 2]] - expected[[0, 2]]).mean() > 1
    assert np.isfinite(est.predict(Xq, times=times)).all()
    assert np.isfinite(est.transform(Xq, times=times)).all()


def test_all_nan_series_at_fit_warn_and_are_excluded(decay_data):
    X, times = decay_data
    clean = _small(TwoDecay(), max_iter=2).fit(X, times=times)
    Xe = np.concatenate([X, np.full((2,) + X.shape[1:], np.nan)])
    est = _small(TwoDecay(), max_iter=2)
    with pytest.warns(UserWarning, match="no observed values"):
        est.fit(Xe, times=times)
    # Excluded: training is bit-for-bit the fit without those series.
    assert est.loss_curve_ == clean.loss_curve_
    assert _same_state(_state(est), _state(clean))
    scores = est.score_samples(Xe, times=times)
    assert np.isfinite(scores).all()
    np.testing.assert_array_equal(scores[:-2], clean.score_samples(X, times=times))
