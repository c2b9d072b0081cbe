"""Tests of the importance-weighted bound and its gradient estimators (``skhds.inference``)."""

import math

import numpy as np
import pytest
import torch

from skhds.inference import (
    effective_sample_size,
    iwae_per_series,
    log_normal,
    minibatch_objective,
    normalized_weights,
    sanitize_log_weights,
)

DT = torch.float64


def _np_log_mean_exp(log_w):
    """Stable ``log(mean(exp(log_w)))`` along the last axis, in numpy."""
    log_w = np.asarray(log_w, dtype=float)
    m = np.max(log_w, axis=-1, keepdims=True)
    return (m + np.log(np.mean(np.exp(log_w - m), axis=-1, keepdims=True)))[..., 0]


def _log_weights(S=5, K=7, seed=0, offset=-800.0):
    rng = np.random.default_rng(seed)
    # Large negative offsets and a wide spread: a naive exp() would underflow.
    lw = offset + 30.0 * rng.standard_normal((S, K)) + 100.0 * np.arange(S)[:, None]
    return torch.tensor(lw, dtype=DT)


# ------------------------------------------------------------- iwae_per_series
def test_iwae_per_series_is_log_mean_exp():
    log_w = _log_weights()
    expected = _np_log_mean_exp(log_w.numpy())
    out = iwae_per_series(log_w)
    assert out.shape == (5,)
    assert np.all(np.isfinite(out.numpy()))
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-13, atol=1e-10)


def test_iwae_per_series_small_values_by_direct_formula():
    log_w = torch.tensor([[0.0, math.log(3.0)], [math.log(0.5), math.log(1.5)]], dtype=DT)
    np.testing.assert_allclose(iwae_per_series(log_w).numpy(), [math.log(2.0), math.log(1.0)],
                               atol=1e-15)


def test_iwae_with_one_sample_is_the_elbo_term():
    log_w = _log_weights(K=1)
    assert torch.equal(iwae_per_series(log_w), log_w[:, 0])


def test_iwae_ignores_zero_weights():
    log_w = torch.tensor([[0.0, -math.inf, 1.0, -math.inf]], dtype=DT)
    expected = math.log((1.0 + math.e) / 4.0)
    np.testing.assert_allclose(iwae_per_series(log_w).numpy(), [expected], rtol=1e-14)


# -------------------------------------------------------- minibatch_objective
@pytest.mark.parametrize("estimator", ["iwae", "dreg"])
def test_objective_value_and_per_series(estimator):
    S, K, n_total = 4, 6, 37
    log_w = _log_weights(S, K, seed=1, offset=-5.0)
    kl = torch.tensor(2.5, dtype=DT)
    z = torch.zeros((S, K, 2), dtype=DT)  # dreg needs a z; no gradient here
    loss, per_series = minibatch_objective(log_w, kl, n_total, z=z, estimator=estimator)
    expected_ps = _np_log_mean_exp(log_w.numpy())
    np.testing.assert_allclose(per_series.numpy(), expected_ps, rtol=1e-13)
    assert not per_series.requires_grad
    if estimator == "iwae":
        np.testing.assert_allclose(
            float(loss) * n_total, -(n_total / S * expected_ps.sum() - 2.5), rtol=1e-13
        )


def test_objective_iwae_gradient_equals_explicit_formula():
    S, K, n_total = 3, 5, 20
    gen = torch.Generator().manual_seed(3)
    theta = torch.randn((S, K), generator=gen, dtype=DT).requires_grad_()
    a = torch.randn((S, K), generator=gen, dtype=DT)
    kl_param = torch.tensor(0.7, dtype=DT, requires_grad=True)

    def log_w_of(t):
        return a * t - 0.5 * t**2 + torch.sin(t)

    kl = kl_param**2
    loss, _ = minibatch_objective(log_w_of(theta), kl, n_total)
    g_theta, g_kl = torch.autograd.grad(loss, (theta, kl_param))

    # explicit: -(N/S * sum_i log(1/K sum_k exp(log w_ik)) - KL) / N, written out by hand
    lw = log_w_of(theta)
    m = lw.max(-1, keepdim=True).values.detach()
    bound = (m.squeeze(-1) + torch.log(torch.exp(lw - m).mean(-1))).sum()
    explicit = -(n_total / S * bound - kl_param**2) / n_total
    e_theta, e_kl = torch.autograd.grad(explicit, (theta, kl_param))
    np.testing.assert_allclose(loss.item(), explicit.item(), rtol=1e-13)
    np.testing.assert_allclose(g_theta.numpy(), e_theta.numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(float(g_kl), float(e_kl), rtol=1e-12)
    # the IWAE gradient wrt log w_ik is the normalised weight / S
    lw_leaf = lw.detach().requires_grad_()
    loss2, _ = minibatch_objective(lw_leaf, kl.detach(), n_total)
    (g_lw,) = torch.autograd.grad(loss2, lw_leaf)
    np.testing.assert_allclose(-S * g_lw.numpy(), normalized_weights(lw.detach()).numpy(),
                               rtol=1e-12)


@pytest.mark.parametrize("estimator", ["iwae", "dreg"])
def test_objective_excludes_failed_rows(estimator):
    S, K, n_total = 4, 5, 40
    gen = torch.Generator().manual_seed(4)
    shared = torch.tensor(0.3, dtype=DT, requires_grad=True)
    base = torch.randn((S, K), generator=gen, dtype=DT)
    c = torch.randn((S, K), generator=gen, dtype=DT)
    base[1] = math.nan  # every sample of series 1 failed (NaN)
    base[3, :] = math.inf  # every sample of series 3 overflowed
    base[0, 2] = math.nan  # one failed sample in series 0
    raw = base + shared * c
    log_w, n_bad = sanitize_log_weights(raw)
    assert n_bad == 2 * K + 1
    z = torch.zeros((S, K, 1), dtype=DT)
    kl = torch.tensor(1.25, dtype=DT)
    loss, per_series = minibatch_objective(log_w, kl, n_total, z=z, estimator=estimator)

    assert per_series[1] == -math.inf and per_series[3] == -math.inf
    good = [0, 2]
    lw_np = log_w.detach().numpy()
    expected_good = [_np_log_mean_exp(lw_np[0, [0, 1, 3, 4]]) + math.log(4 / 5),
                     _np_log_mean_exp(lw_np[2])]
    np.testing.assert_allclose(per_series[good].numpy(), expected_good, rtol=1e-13)
    assert torch.isfinite(loss)
    if estimator == "iwae":
        # the failed rows count in S (scale N/S) but contribute nothing
        np.testing.assert_allclose(
            loss.item(), -(n_total / S * sum(expected_good) - 1.25) / n_total, rtol=1e-13
        )
    (g,) = torch.autograd.grad(loss, shared)
    assert torch.isfinite(g)
    # gradient of the explicit bound over the surviving samples only
    ok = torch.isfinite(base)
    lw_ok = torch.where(ok, base + shared * c, torch.full_like(base, -math.inf))[good]
    explicit = -(n_total / S * (torch.logsumexp(lw_ok, -1) - math.log(K)).sum() - kl) / n_total
    (e,) = torch.autograd.grad(explicit, shared)
    np.testing.assert_allclose(float(g), float(e), rtol=1e-12)


def test_objective_dreg_requires_z():
    with pytest.raises(ValueError, match="dreg"):
        minibatch_objective(torch.zeros((2, 3)), torch.tensor(0.0), 10, estimator="dreg")


# ---------------------------------------------------------------------- DReG
# Toy model: z in R^2, p(z) = N(0, I), x | z ~ N(z1 + 0.5 z2 + b, 1) with observed x and a
# "decoder" parameter b that does not act through z; q(z) = N(loc, exp(log_scale)) with
# z = loc + scale * eps. Each of R replicate rows has its own copy of the parameters, so one
# backward pass gives R independent single-replicate gradients.
_X_OBS = 1.5


def _toy_gradients(estimator, K, R, seed, loc0=(-0.3, 0.4), scale0=(1.3, 0.8), b0=0.2):
    loc = torch.tensor(loc0, dtype=DT).repeat(R, 1).requires_grad_()
    log_scale = torch.log(torch.tensor(scale0, dtype=DT)).repeat(R, 1).requires_grad_()
    b = torch.full((R,), b0, dtype=DT, requires_grad=True)
    gen = torch.Generator().manual_seed(seed)
    eps = torch.randn((R, K, 2), generator=gen, dtype=DT)
    scale = torch.exp(log_scale)
    z = loc.unsqueeze(1) + scale.unsqueeze(1) * eps
    if estimator == "dreg":  # as HierarchicalVAE.log_weights(detach_q=True)
        log_q = log_normal(z, loc.detach().unsqueeze(1), scale.detach().unsqueeze(1)).sum(-1)
    else:
        log_q = log_normal(z, loc.unsqueeze(1), scale.unsqueeze(1)).sum(-1)
    one = torch.ones((), dtype=DT)
    mean_x = z[..., 0] + 0.5 * z[..., 1] + b.unsqueeze(-1)
    log_joint = log_normal(torch.tensor(_X_OBS, dtype=DT), mean_x, one) + log_normal(
        z, torch.zeros((), dtype=DT), one).sum(-1)
    log_w = log_joint - log_q
    loss, per_series = minibatch_objective(log_w, torch.zeros((), dtype=DT), R, z=z,
                                           estimator=estimator)
    loss.backward()
    # loss = -(1/R) sum_r bound_r: row r's gradient of its own bound is -R * grad
    enc = torch.cat([-R * loc.grad, -R * log_scale.grad], -1)  # (R, 4)
    return {"loss": loss.detach(), "per_series": per_series, "enc": enc, "dec": -R * b.grad}


@pytest.mark.parametrize("K", [1, 10])
def test_dreg_same_per_series_bound_and_decoder_gradient(K):
    iw = _toy_gradients("iwae", K, R=50, seed=11)
    dr = _toy_gradients("dreg", K, R=50, seed=11)
    assert torch.equal(iw["per_series"], dr["per_series"])
    # b does not act through z: both estimators give the IWAE gradient sum_k w_k d log w_k / db
    np.testing.assert_allclose(dr["dec"].numpy(), iw["dec"].numpy(), rtol=1e-12, atol=1e-14)
    assert not torch.allclose(dr["enc"], iw["enc"])  # the encoder gradients are different estimators


def test_dreg_loss_equals_iwae_loss_with_one_sample():
    iw = _toy_gradients("iwae", 1, R=20, seed=12)
    dr = _toy_gradients("dreg", 1, R=20, seed=12)
    np.testing.assert_allclose(float(dr["loss"]), float(iw["loss"]), rtol=1e-13)


def test_dreg_loss_value_is_the_bound():
    iw = _toy_gradients("iwae", 10, R=20, seed=13)
    dr = _toy_gradients("dreg", 10, R=20, seed=13)
    np.testing.assert_allclose(float(dr["loss"]), float(iw["loss"]), rtol=1e-12)


def test_dreg_encoder_gradient_is_unbiased():
    # Paired replicates (same eps): the mean difference of the two estimators is zero.
    K, R = 10, 2000
    iw = _toy_gradients("iwae", K, R, seed=21)["enc"]
    dr = _toy_gradients("dreg", K, R, seed=21)["enc"]
    diff = (dr - iw).numpy()
    se = diff.std(0, ddof=1) / math.sqrt(R)
    t = diff.mean(0) / se
    assert np.all(np.abs(t) < 4.0), t
    # the gradients are not trivially zero: the test has power
    mean = dr.numpy().mean(0)
    assert np.abs(mean[0]) > 20 * dr.numpy()[:, 0].std() / math.sqrt(R)


def test_dreg_without_reweighting_would_be_detected():
    # Sanity check of the test above: dropping DReG's extra weight (the "sticking the landing"
    # IWAE surrogate sum_k w_k log w_k with detached q) is biased, and the test sees it.
    K, R = 10, 2000
    iw = _toy_gradients("iwae", K, R, seed=21)["enc"].numpy()
    # rerun dreg with a z that does not carry the hook: reweighting skipped
    loc = torch.tensor((-0.3, 0.4), dtype=DT).repeat(R, 1).requires_grad_()
    log_scale = torch.log(torch.tensor((1.3, 0.8), dtype=DT)).repeat(R, 1).requires_grad_()
    gen = torch.Generator().manual_seed(21)
    eps = torch.randn((R, K, 2), generator=gen, dtype=DT)
    scale = torch.exp(log_scale)
    z = loc.unsqueeze(1) + scale.unsqueeze(1) * eps
    log_q = log_normal(z, loc.detach().unsqueeze(1), scale.detach().unsqueeze(1)).sum(-1)
    one = torch.ones((), dtype=DT)
    mean_x = z[..., 0] + 0.5 * z[..., 1] + 0.2
    log_w = log_normal(torch.tensor(_X_OBS, dtype=DT), mean_x, one) + log_normal(
        z, torch.zeros((), dtype=DT), one).sum(-1) - log_q
    zz = z.detach()  # no hook reaches the graph
    loss, _ = minibatch_objective(log_w, torch.zeros((), dtype=DT), R, z=zz, estimator="dreg")
    loss.backward()
    stl = torch.cat([-R * loc.grad, -R * log_scale.grad], -1).numpy()
    diff = stl - iw
    t = diff.mean(0) / (diff.std(0, ddof=1) / math.sqrt(R))
    assert np.max(np.abs(t)) > 10.0


def test_dreg_has_lower_variance_for_large_k():
    R = 1000
    ratios = {}
    for K in (10, 100):
        iw = _toy_gradients("iwae", K, R, seed=31)["enc"].numpy()
        dr = _toy_gradients("dreg", K, R, seed=31)["enc"].numpy()
        ratios[K] = dr.var(0) / iw.var(0)
    assert np.all(ratios[100] < 0.05), ratios
    assert np.all(ratios[10] < 0.2), ratios
    # the advantage grows with K (the IWAE encoder gradient's SNR decays, DReG's does not)
    assert np.all(ratios[100] < ratios[10])


# ------------------------------------------------------- weights and diagnostics
def test_sanitize_counts_and_replaces_non_finite():
    log_w = torch.tensor([[0.5, math.nan, -1.0], [math.inf, -math.inf, 2.0]], dtype=DT)
    out, n_bad = sanitize_log_weights(log_w)
    assert n_bad == 3
    expected = torch.tensor([[0.5, -math.inf, -1.0], [-math.inf, -math.inf, 2.0]], dtype=DT)
    assert torch.equal(out, expected)
    assert out.dtype == DT


def test_sanitize_leaves_finite_weights_alone():
    log_w = _log_weights()
    out, n_bad = sanitize_log_weights(log_w)
    assert n_bad == 0
    assert torch.equal(out, log_w)


def test_sanitize_keeps_gradients_of_finite_entries():
    x = torch.tensor([1.0, 2.0, 3.0], dtype=DT, requires_grad=True)
    raw = torch.stack([x[0] * 2.0, x[1] + math.inf, x[2] ** 2])  # middle overflowed
    out, n_bad = sanitize_log_weights(raw.unsqueeze(0))
    assert n_bad == 1
    (g,) = torch.autograd.grad(out[torch.isfinite(out)].sum(), x)
    np.testing.assert_allclose(g.numpy(), [2.0, 0.0, 6.0])


def test_normalized_weights():
    log_w = torch.tensor(
        [[0.0, math.log(3.0), -math.inf], [-math.inf, -math.inf, -math.inf], [-900.0, -900.0, -901.0]],
        dtype=DT,
    )
    w = normalized_weights(log_w)
    np.testing.assert_allclose(w[0].numpy(), [0.25, 0.75, 0.0], rtol=1e-14)
    assert torch.equal(w[1], torch.zeros(3, dtype=DT))
    e = math.exp(-1.0)
    np.testing.assert_allclose(w[2].numpy(), np.array([1.0, 1.0, e]) / (2 + e), rtol=1e-13)


def test_effective_sample_size():
    K = 8
    equal = torch.full((1, K), -123.4, dtype=DT)
    dominant = torch.tensor([[0.0] + [-800.0] * (K - 1)], dtype=DT)
    two = torch.tensor([[0.0, 0.0] + [-math.inf] * (K - 2)], dtype=DT)
    none = torch.full((1, K), -math.inf, dtype=DT)
    ess = effective_sample_size(torch.cat([equal, dominant, two, none]))
    np.testing.assert_allclose(ess.numpy(), [K, 1.0, 2.0, 0.0], rtol=1e-12)
    # a known intermediate case: weights (1, 1, 2) / 4 -> 1 / (1/16 + 1/16 + 1/4) = 8/3
    np.testing.assert_allclose(
        effective_sample_size(torch.log(torch.tensor([[1.0, 1.0, 2.0]], dtype=DT))).numpy(),
        [8.0 / 3.0], rtol=1e-13,
    )
