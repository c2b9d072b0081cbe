"""The IWAE bound on a hierarchical model with a tractable marginal likelihood.

Model: one state with zero derivative whose initial value is the individual
parameter ``theta_i ~ N(m, s)``, observed with Gaussian noise ``sigma`` at ``T``
times. Then ``y_i ~ N(m 1, sigma^2 I + s^2 1 1^T)``, so ``log p(y_i | sigma)`` is
known exactly, and so is the posterior of ``theta_i``. The estimator's pieces
are assembled as ``HierarchicalODEVAE._build`` does, with fixed random effects
(the individual prior is exactly ``N(m, s)``) and the noise latent pinned at
``log(sigma)``.
"""

import copy
import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from skhds._data import EncoderScaling, SeriesData
from skhds._vae import HierarchicalVAE
from skhds.distributions import LogNormal, Normal
from skhds.inference import iwae_per_series
from skhds.models import Gaussian, Hierarchy, ODEModel, Parameter, check_model
from skhds.nn import MeanFieldGaussian, SeriesEncoder

M, SD, SIGMA, T = 0.5, 0.8, 0.5, 5
DT = torch.float64


class ConstantState(ODEModel):
    """``x' = 0``, ``x(0) = theta``: observations are ``theta`` plus noise."""

    states = ("x",)
    noise = Gaussian(sigma_prior=LogNormal(math.log(SIGMA), 0.1))

    def declare_parameters(self):
        return [Parameter("theta", Normal(M, SD), level="individual")]

    def initial_state(self, params, inputs):
        return params["theta"].unsqueeze(-1)

    def rhs(self, t, x, params, inputs):
        return torch.zeros_like(x)


class ExactPosteriorEncoder(torch.nn.Module):
    """Returns the analytic posterior mean and sd of ``theta_i`` given ``y_i`` (and ``sigma``)."""

    def __init__(self, scaling):
        super().__init__()
        self.y_loc = float(scaling.y_loc[0])
        self.y_scale = float(scaling.y_scale[0])

    def forward(self, y, mask, times, inputs, codes):
        raw = y * self.y_scale + self.y_loc  # undo the encoder standardisation
        n = mask.sum((1, 2))
        total = (raw * mask).sum((1, 2))
        precision = 1.0 / SD**2 + n / SIGMA**2
        mean = (M / SD**2 + total / SIGMA**2) / precision
        return mean.unsqueeze(-1), precision.rsqrt().unsqueeze(-1)


def _exact_log_marginal(y_row):
    obs = ~np.isnan(y_row)
    n = int(obs.sum())
    cov = SIGMA**2 * np.eye(n) + SD**2 * np.ones((n, n))
    return stats.multivariate_normal(M * np.ones(n), cov).logpdf(y_row[obs])


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    S = 4
    theta = M + SD * rng.standard_normal(S)
    y = theta[:, None, None] + SIGMA * rng.standard_normal((S, 1, T))
    y[2, 0, 3] = np.nan  # a missing value: the bound must use the observed entries only
    times = np.arange(T, dtype=float)
    inputs = np.zeros((S, 0))
    data = SeriesData(y, times, None, inputs, np.zeros((S, 0), dtype=np.int64), 0.0)
    scaling = EncoderScaling(y, times, inputs)

    model = ConstantState()
    specs = check_model(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        hier = Hierarchy(specs, {}, random_effects="fixed")
        encoder = SeriesEncoder(
            1, 0, [], hier.n_individual, torch.as_tensor(hier.ind_loc, dtype=DT),
            torch.as_tensor(hier.ind_scale, dtype=DT), n_hidden=16,
        )
        q = MeanFieldGaussian(torch.as_tensor(hier.prior_loc, dtype=DT),
                              torch.as_tensor(np.minimum(0.1 * hier.prior_scale, 0.1), dtype=DT))
        vae = HierarchicalVAE(model, hier, encoder, q, "heun", {}).to(dtype=DT)
    g = torch.zeros((1, hier.n_global), dtype=DT)
    g[0, hier.pop_index["sigma_x"]] = math.log(SIGMA)
    exact = np.array([_exact_log_marginal(y[i, 0]) for i in range(S)])
    return {"data": data, "scaling": scaling, "vae": vae, "g": g, "exact": exact, "y": y, "S": S}


def _exact_vae(setup, q_global=None):
    """The setup's VAE with its encoder replaced by the exact posterior (shares model/hierarchy)."""
    vae = setup["vae"]
    return HierarchicalVAE(vae.model, vae.hierarchy, ExactPosteriorEncoder(setup["scaling"]),
                           q_global if q_global is not None else vae.q_global, vae.solver,
                           vae.factor_index)


def _batch(setup, idx):
    return setup["data"].batch(np.asarray(idx), setup["scaling"], None, "cpu", DT)


def test_layout_and_exact_individual_prior(setup):
    hier = setup["vae"].hierarchy
    assert hier.latent_names == ["sigma_x"]
    assert hier.n_global == 1 and hier.n_individual == 1
    mu, omega = hier.individual_prior(setup["g"])
    assert mu.tolist() == [[M]] and omega.tolist() == [[SD]]


@pytest.fixture(scope="module")
def mean_bounds(setup):
    """Bounds of each series for several K, averaged over R seeded repeats (series replicated)."""
    S = setup["S"]
    out = {}
    with torch.no_grad():
        # fewer repeats where the bound varies less (and costs more)
        for K, R in ((1, 800), (10, 400), (100, 200), (1000, 50)):
            batch = _batch(setup, np.tile(np.arange(S), R))  # R copies of every series
            gen = torch.Generator().manual_seed(100 + K)
            log_w = setup["vae"].log_weights(batch, K, setup["g"], gen)["log_w"]
            b = iwae_per_series(log_w).numpy().reshape(R, S)
            out[K] = (b.mean(0), b.std(0, ddof=1) / math.sqrt(R))
    return out


@pytest.mark.parametrize("K", [1, 10, 100, 1000])
def test_bound_is_below_exact_log_marginal(setup, mean_bounds, K):
    mean, se = mean_bounds[K]
    assert np.all(np.isfinite(mean))
    assert np.all(mean <= setup["exact"] + 4.0 * se + 1e-9), (mean - setup["exact"], se)


def test_bound_tightens_with_k(setup, mean_bounds):
    gaps = {K: float(np.mean(setup["exact"] - mean_bounds[K][0])) for K in mean_bounds}
    assert gaps[1] > gaps[10] > gaps[100] > gaps[1000], gaps
    assert gaps[1] > 0.3  # the untrained encoder is a loose (but sensible) proposal
    assert abs(gaps[1000]) < gaps[1] / 10, gaps
    # per series, too
    for i in range(setup["S"]):
        assert setup["exact"][i] - mean_bounds[1000][0][i] < (setup["exact"][i] - mean_bounds[1][0][i]) / 5


def test_exact_posterior_gives_exact_weights(setup):
    vae = _exact_vae(setup)
    batch = _batch(setup, np.arange(setup["S"]))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for K in (1, 5, 1000):
            log_w = vae.log_weights(batch, K, setup["g"], gen)["log_w"]
            assert log_w.shape == (setup["S"], K)
            # log p(y|theta) + log p(theta) - log q(theta|y) = log p(y) at every sample
            np.testing.assert_allclose(
                log_w.numpy(), np.broadcast_to(setup["exact"][:, None], log_w.shape), atol=1e-6, rtol=0
            )
            np.testing.assert_allclose(iwae_per_series(log_w).numpy(), setup["exact"], atol=1e-6, rtol=0)


def test_exact_posterior_through_global_draws(setup):
    # q(g) collapsed on log(sigma): evaluate() (one global draw per sample) and the training
    # loss (one shared draw, both estimators) see the exact marginal likelihood too.
    S = setup["S"]
    q = MeanFieldGaussian(setup["g"][0].clone(), torch.full((1,), 1e-17, dtype=DT))
    vae = _exact_vae(setup, q)
    batch = _batch(setup, np.arange(S))
    out = vae.evaluate(batch, 64, torch.Generator().manual_seed(8))
    assert out["g"].shape == (64, 1)
    np.testing.assert_allclose(out["log_w"].numpy(), np.broadcast_to(setup["exact"][:, None], (S, 64)),
                               atol=1e-6, rtol=0)
    for estimator in ("iwae", "dreg"):
        loss, per_series, _ = vae.training_loss(batch, 40, 16, torch.Generator().manual_seed(9),
                                                estimator=estimator)
        np.testing.assert_allclose(per_series.numpy(), setup["exact"], atol=1e-6, rtol=0)
        assert torch.isfinite(loss)
        loss.backward()
        # the global mean gets a finite gradient through the likelihood and the KL
        assert torch.isfinite(q.loc.grad).all()
        q.zero_grad()


class NarrowProposalEncoder(ExactPosteriorEncoder):
    """The exact posterior mean with an sd of 1e-12: far narrower than float32 resolves at it."""

    def forward(self, y, mask, times, inputs, codes):
        mean, sd = super().forward(y, mask, times, inputs, codes)
        return mean, torch.full_like(sd, 1e-12)


@pytest.mark.parametrize("detach_q", [False, True])
def test_narrow_proposal_in_float32_keeps_a_valid_bound(setup, detach_q):
    # In float32 a draw loc + 1e-12 eps is loc itself. Evaluated at the draw, through
    # (z - loc) / sd, log q loses the -0.5 eps^2 term (up to 6 nats per weight here); with
    # an ill-conditioned full covariance the same rounding is amplified by the solve and
    # the weights can come out millions of nats too high (tests/distributions). From eps
    # the density is exact.
    vae = copy.deepcopy(_exact_vae(setup))  # .to converts in place: leave the fixture's modules
    vae.encoder = NarrowProposalEncoder(setup["scaling"])
    vae = vae.to(torch.float32)
    batch = setup["data"].batch(np.arange(setup["S"]), setup["scaling"], None, "cpu", torch.float32)
    with torch.no_grad():
        out = vae.log_weights(batch, 200, setup["g"].float(), torch.Generator().manual_seed(4),
                              detach_q=detach_q)
    log_w = out["log_w"].double().numpy()
    assert np.isfinite(log_w).all()
    # every weight, computed in float64: log p(y | m) + log p(m) - log q, with m the
    # posterior mean (the draw, to float32 resolution) and log q from the same eps
    S, y = setup["S"], setup["y"][:, 0]
    eps = torch.randn((S, 200, 1), generator=torch.Generator().manual_seed(4)).double().numpy()[..., 0]
    obs = ~np.isnan(y)
    prec = 1 / SD**2 + obs.sum(1) / SIGMA**2
    m = (M / SD**2 + np.nansum(y, 1) / SIGMA**2) / prec
    log_joint = (np.where(obs, stats.norm.logpdf(y, m[:, None], SIGMA), 0.0).sum(1)
                 + stats.norm.logpdf(m, M, SD))
    log_q = -0.5 * eps**2 - math.log(1e-12) - 0.5 * math.log(2 * math.pi)
    np.testing.assert_allclose(log_w, log_joint[:, None] - log_q, atol=2e-3, rtol=0)
    assert (log_w < setup["exact"][:, None] - 20.0).all()  # a valid, very loose bound


def test_vectorised_equals_looped(setup):
    vae, S, K, y = setup["vae"], setup["S"], 50, setup["y"]
    batch = _batch(setup, np.arange(S))
    with torch.no_grad():
        out = vae.log_weights(batch, K, setup["g"], torch.Generator().manual_seed(3))
        assert out["log_w"].shape == (S, K) and out["z"].shape == (S, K, 1)
        bounds = iwae_per_series(out["log_w"]).numpy()
        for i in range(S):
            b_i = _batch(setup, [i])
            loc_i, scale_i, _ = vae.encoder(b_i["enc_y"], b_i["mask"].to(DT), b_i["enc_times"],
                                         b_i["enc_inputs"], b_i["codes"])
            np.testing.assert_allclose(loc_i.numpy(), out["loc"][i : i + 1].numpy(), rtol=1e-12)
            np.testing.assert_allclose(scale_i.numpy(), out["scale"][i : i + 1].numpy(), rtol=1e-12)
            # the same samples, scored one series at a time with scipy
            z = out["z"][i, :, 0].numpy()
            obs = ~np.isnan(y[i, 0])
            log_lik = stats.norm.logpdf(y[i, 0][obs][None, :], z[:, None], SIGMA).sum(-1)
            log_w = (log_lik + stats.norm.logpdf(z, M, SD)
                     - stats.norm.logpdf(z, float(loc_i[0, 0]), float(scale_i[0, 0])))
            np.testing.assert_allclose(out["log_w"][i].numpy(), log_w, rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(bounds[i], logsumexp(log_w) - math.log(K), rtol=1e-10)
            # and through the library's own single-series path with the same z
            hier = vae.hierarchy
            z_i = out["z"][i : i + 1]
            params = hier.params(setup["g"], z_i, b_i["codes"], vae.factor_index)
            ll = vae.log_likelihood(vae.simulate(params, b_i, K), b_i, params)
            np.testing.assert_allclose(ll[0].numpy(), log_lik, rtol=1e-10, atol=1e-10)


def test_gauss_newton_finds_the_exact_posterior(setup):
    # linear in theta with Gaussian noise: Gauss-Newton lands on the exact posterior
    vae, S, y = setup["vae"], setup["S"], setup["y"]
    batch = _batch(setup, np.arange(S))
    start = torch.tensor([[-3.0], [0.0], [2.5], [10.0]], dtype=DT)
    mode, tril, ok = vae.gauss_newton_local(batch, setup["g"], start, n_iter=4, inflation=1.0)
    assert ok.all() and mode.shape == (S, 1) and tril.shape == (S, 1, 1)
    n = (~np.isnan(y[:, 0])).sum(-1)
    precision = 1.0 / SD**2 + n / SIGMA**2
    mean = (M / SD**2 + np.nansum(y[:, 0], -1) / SIGMA**2) / precision
    np.testing.assert_allclose(mode[:, 0].numpy(), mean, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(tril[:, 0, 0].numpy(), precision**-0.5, rtol=1e-5)
    # inflation scales the spread only
    _, wide, _ = vae.gauss_newton_local(batch, setup["g"], start, n_iter=4, inflation=1.5)
    np.testing.assert_allclose(wide.numpy(), 1.5 * tril.numpy(), rtol=1e-6)
    # no iterations: the start, with the precision there
    same, _, _ = vae.gauss_newton_local(batch, setup["g"], start, n_iter=0)
    assert torch.equal(same, start)


def test_refined_training_bound_is_valid_and_near_exact(setup):
    # q(g) collapsed on log(sigma) and an untrained encoder: the refined proposals give a
    # bound below the exact log marginal, within a few hundredths of it, while the
    # encoder's own proposals are far off; the encoder gets a gradient from the KL term.
    S = setup["S"]
    vae0 = setup["vae"]
    q = MeanFieldGaussian(setup["g"][0].clone(), torch.full((1,), 1e-17, dtype=DT))
    vae = HierarchicalVAE(vae0.model, vae0.hierarchy, vae0.encoder, q, vae0.solver, vae0.factor_index)
    R = 200
    batch = _batch(setup, np.tile(np.arange(S), R))
    exact = np.tile(setup["exact"], R)
    vae.zero_grad()
    loss, refined, _ = vae.training_loss(batch, 40, 50, torch.Generator().manual_seed(10),
                                         estimator="dreg", refine=3)
    _, plain, _ = vae.training_loss(batch, 40, 50, torch.Generator().manual_seed(10),
                                    estimator="dreg")
    gaps = (exact - refined.detach().numpy()).reshape(R, S)
    gap, se = gaps.mean(0), gaps.std(0) / np.sqrt(R)
    # a lower bound in expectation (single estimates may exceed it), and a tight one
    assert (gap > -4 * se).all() and (gap < 0.02).all()
    assert (exact - plain.numpy()).mean() > 10 * gap.mean()
    loss.backward()
    grads = [p.grad for p in vae.encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_refinement_computed_beforehand_gives_the_same_training_pass(setup):
    # What refinement_block feeds training_loss: the global noise drawn first and the
    # proposals refined at its draw beforehand reproduce, to the bit, the pass that draws
    # and refines inside (loss, per-series bounds, every gradient, q(g)'s included).
    vae = setup["vae"]
    batch = _batch(setup, np.arange(setup["S"]))

    def gradients():
        return [p.grad.clone() for p in vae.parameters()]

    vae.zero_grad()
    loss, bounds, _ = vae.training_loss(batch, 40, 20, torch.Generator().manual_seed(7), "dreg",
                                        refine=3)
    loss.backward()
    inside = gradients()

    vae.zero_grad()
    gen = torch.Generator().manual_seed(7)
    eps = torch.randn((1, vae.hierarchy.n_global), generator=gen, dtype=vae.q_global.loc.dtype)
    refined = vae.refined_proposals(batch, vae.q_global.from_noise(eps), 3)
    loss2, bounds2, _ = vae.training_loss(batch, 40, 20, gen, "dreg", refine=3, eps=eps,
                                          refined=refined)
    loss2.backward()
    assert torch.equal(loss, loss2) and torch.equal(bounds, bounds2)
    for a, b in zip(inside, gradients()):
        assert torch.equal(a, b)
    assert float(vae.q_global.loc.grad.abs().sum()) > 0
    # proposals refined at another draw (stale ones) give another, still finite, pass
    other = vae.refined_proposals(batch, vae.q_global.from_noise(eps + 3.0), 3)
    assert not torch.allclose(other[0], refined[0])
    _, bounds3, _ = vae.training_loss(batch, 40, 20, torch.Generator().manual_seed(8), "dreg",
                                      refine=3, eps=eps, refined=other)
    assert torch.isfinite(bounds3).all()


def test_encoder_matching_term_trains_only_the_encoder(setup):
    # Semi-amortised training adds KL(refined || encoder) to train the encoder; q(g) must
    # get the bound's gradient alone. With the refined proposals given, the bound does not
    # depend on the encoder, so changing the encoder's weights must leave q(g)'s gradient
    # exactly as it was (the encoder's mean follows the global draw through its coupling,
    # the path by which the matching term once leaked into q(g)).
    vae0, hier = setup["vae"], setup["vae"].hierarchy
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        encoder = SeriesEncoder(1, 0, [], hier.n_individual, torch.as_tensor(hier.ind_loc, dtype=DT),
                                torch.as_tensor(hier.ind_scale, dtype=DT), n_hidden=16,
                                global_scale=torch.as_tensor(hier.prior_scale, dtype=DT)).to(DT)
    vae = HierarchicalVAE(vae0.model, hier, encoder, copy.deepcopy(vae0.q_global), vae0.solver,
                          vae0.factor_index)
    gen = torch.Generator().manual_seed(3)

    def perturb_encoder():
        with torch.no_grad():
            for p in vae.encoder.parameters():
                p.add_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))

    perturb_encoder()
    batch = _batch(setup, np.arange(setup["S"]))
    eps = torch.full((1, hier.n_global), 0.7, dtype=DT)
    refined = vae.refined_proposals(batch, vae.q_global.from_noise(eps), 3)
    assert float(vae.encode(batch)[2].detach().abs().min()) > 1e-3  # a coupling to follow

    def gradients():
        vae.zero_grad()
        loss, _, _ = vae.training_loss(batch, 40, 20, torch.Generator().manual_seed(7), "dreg",
                                       refine=3, eps=eps, refined=refined)
        loss.backward()
        return ([p.grad.clone() for p in vae.q_global.parameters()],
                [p.grad.clone() for p in vae.encoder.parameters()])

    q_before, enc_before = gradients()
    perturb_encoder()
    q_after, enc_after = gradients()
    assert all(float(g.abs().sum()) > 0 for g in q_before)
    for a, b in zip(q_before, q_after):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    # the encoder's own gradient does change with its weights
    assert any(not torch.allclose(a, b) for a, b in zip(enc_before, enc_after))


class ConstantStateOwnNoise(ConstantState):
    """:class:`ConstantState` with a noise sd per series, ``log sigma_i ~ N(log SIGMA, 0.5)``."""

    noise = Gaussian(sigma_prior=LogNormal(math.log(SIGMA), 0.5), level="individual")


@pytest.mark.parametrize("start_sigma", [SIGMA, 0.01])
def test_gauss_newton_fits_per_series_noise(start_sigma):
    # with a noise sd per series, the Laplace point is the joint mode of the series'
    # posterior in (theta, log sigma): Fisher scoring in the variance as well as the mean
    # (a fit weighted by a fixed variance cannot move log sigma off its start); from a
    # noise level 10-200 times too small (an untrained encoder), steps on the variance
    # scale get there in the same few iterations
    rng = np.random.default_rng(1)
    S, T_long = 5, 20
    sig = np.array([0.1, 0.3, 0.5, 1.0, 2.0])
    theta = M + SD * rng.standard_normal(S)
    y = theta[:, None, None] + sig[:, None, None] * rng.standard_normal((S, 1, T_long))
    times, inputs = np.arange(T_long, dtype=float), np.zeros((S, 0))
    data = SeriesData(y, times, None, inputs, np.zeros((S, 0), dtype=np.int64), 0.0)
    scaling = EncoderScaling(y, times, inputs)
    model = ConstantStateOwnNoise()
    specs = check_model(model)
    assert [s.level for s in specs] == ["individual", "individual"]
    hier = Hierarchy(specs, {}, random_effects="fixed")
    assert hier.n_global == 0 and hier.n_individual == 2
    encoder = SeriesEncoder(1, 0, [], 2, torch.as_tensor(hier.ind_loc, dtype=DT),
                            torch.as_tensor(hier.ind_scale, dtype=DT), n_hidden=8)
    q = MeanFieldGaussian(torch.zeros(0, dtype=DT), torch.ones(0, dtype=DT))
    vae = HierarchicalVAE(model, hier, encoder, q, "heun", {}).to(dtype=DT)
    batch = data.batch(np.arange(S), scaling, None, "cpu", DT)
    g = torch.zeros((1, 0), dtype=DT)
    start = torch.tensor([[M, math.log(start_sigma)]] * S, dtype=DT)
    mode, tril, ok = vae.gauss_newton_local(batch, g, start, n_iter=8, inflation=1.0)
    assert ok.all()

    def neg_log_post(v, row):
        theta, log_s = v
        return -(stats.norm.logpdf(row, theta, math.exp(log_s)).sum() + stats.norm.logpdf(theta, M, SD)
                 + stats.norm.logpdf(log_s, math.log(SIGMA), 0.5))

    from scipy.optimize import minimize
    for i in range(S):
        best = minimize(neg_log_post, [M, math.log(SIGMA)], args=(y[i, 0],), method="Nelder-Mead",
                        options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 4000}).x
        np.testing.assert_allclose(mode[i].numpy(), best, atol=2e-3)
    # the spread of log sigma is the inverse Fisher information: about 1 / sqrt(2 T) plus the prior
    sd_log_sigma = (tril[:, 1] ** 2).sum(-1).sqrt().numpy()
    np.testing.assert_allclose(sd_log_sigma, (2 * T_long + 1 / 0.5**2) ** -0.5, rtol=0.05)
