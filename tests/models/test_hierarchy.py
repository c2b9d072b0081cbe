"""Tests of ``Hierarchy``: latent layout, latents -> parameters, priors and the global KL."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from skhds.distributions import LogitNormal, LogNormal, Normal
from skhds.models import Gaussian, Hierarchy, ODEModel, Parameter, check_model
from skhds.nn import MeanFieldGaussian

DT = torch.float64
N_LEVELS = {"strain": 3, "plate": 2}
FACTOR_INDEX = {"strain": 0, "plate": 1}


class ThreeLevelModel(ODEModel):
    """Population ``a``; group ``k`` (by strain) and ``c`` (by plate); individual ``r``, ``v``."""

    states = ("x",)
    factors = ("strain", "plate")
    noise = Gaussian(sigma_prior=LogNormal(math.log(0.1), 0.5))

    def declare_parameters(self):
        return [
            Parameter("a", LogNormal(math.log(2.0), 0.3), level="population"),
            Parameter("k", LogNormal(0.0, 0.4), level="group", factor="strain"),
            Parameter("r", LogNormal(math.log(0.8), 0.25), level="individual"),
            Parameter("c", Normal(1.0, 0.5), level="group", factor="plate"),
            Parameter("v", LogitNormal(0.5, 1.2, low=0.0, high=5.0), level="individual"),
        ]

    def initial_state(self, params, inputs):
        return params["a"].unsqueeze(-1)

    def rhs(self, t, x, params, inputs):
        return -params["r"].unsqueeze(-1) * x


def _hierarchy(random_effects="learned"):
    return Hierarchy(check_model(ThreeLevelModel()), N_LEVELS, random_effects=random_effects)


LEARNED_NAMES = [
    "a", "sigma_x",
    "mu_r", "log_omega_r", "mu_v", "log_omega_v",
    "mu_k", "log_tau_k", "k[0]", "k[1]", "k[2]",
    "mu_c", "log_tau_c", "c[0]", "c[1]",
]
FIXED_NAMES = ["a", "sigma_x", "k[0]", "k[1]", "k[2]", "c[0]", "c[1]"]


def _random_g(hier, n, seed):
    gen = torch.Generator().manual_seed(seed)
    loc = torch.as_tensor(hier.prior_loc, dtype=DT)
    scale = torch.as_tensor(hier.prior_scale, dtype=DT)
    return loc + scale * torch.randn((n, hier.n_global), generator=gen, dtype=DT)


def _index(hier, name):
    return hier.latent_names.index(name)


# ------------------------------------------------------------------- layout
def test_layout_learned():
    hier = _hierarchy("learned")
    assert hier.latent_names == LEARNED_NAMES
    assert hier.n_global == 15 and hier.n_individual == 2
    assert [s.name for s in hier.population] == ["a", "sigma_x"]
    assert [s.name for s in hier.group] == ["k", "c"]
    assert [s.name for s in hier.individual] == ["r", "v"]
    assert hier.pop_index == {"a": 0, "sigma_x": 1}
    assert hier.ind_index == {"r": (2, 3), "v": (4, 5)}
    assert hier.grp_index == {"k": (6, 7, 8), "c": (11, 12, 13)}
    expected_loc = [math.log(2.0), math.log(0.1), math.log(0.8), math.log(0.25), 0.5, math.log(1.2),
                    0.0, math.log(0.4), 0.0, 0.0, 0.0, 1.0, math.log(0.5), 1.0, 1.0]
    expected_scale = [0.3, 0.5, 0.25, 0.5, 1.2, 0.5, 0.4, 0.5, 0.4, 0.4, 0.4, 0.5, 0.5, 0.5, 0.5]
    np.testing.assert_allclose(hier.prior_loc, expected_loc, rtol=1e-15)
    np.testing.assert_allclose(hier.prior_scale, expected_scale, rtol=1e-15)
    # the level values are the only latents whose prior is conditional (on mu and tau)
    assert np.flatnonzero(hier.conditional).tolist() == [8, 9, 10, 13, 14]


def test_layout_fixed():
    hier = _hierarchy("fixed")
    assert hier.latent_names == FIXED_NAMES
    assert hier.n_global == 7 and hier.n_individual == 2
    assert hier.ind_index == {}
    assert hier.grp_index == {"k": (None, None, 2), "c": (None, None, 5)}
    assert not hier.conditional.any()
    np.testing.assert_allclose(hier.prior_loc, [math.log(2.0), math.log(0.1), 0, 0, 0, 1, 1])
    np.testing.assert_allclose(hier.prior_scale, [0.3, 0.5, 0.4, 0.4, 0.4, 0.5, 0.5])


def test_hyper_scale_sets_spread_of_log_omega_and_log_tau():
    hier = Hierarchy(check_model(ThreeLevelModel()), N_LEVELS, hyper_scale=0.2)
    for name in ("log_omega_r", "log_omega_v", "log_tau_k", "log_tau_c"):
        assert hier.prior_scale[_index(hier, name)] == 0.2


# --------------------------------------------------------------------- params
@pytest.mark.parametrize("random_effects", ["learned", "fixed"])
@pytest.mark.parametrize("Kg", [1, 6])
def test_params_shapes_scales_and_gathering(random_effects, Kg):
    hier = _hierarchy(random_effects)
    S, K = 5, 6
    g = _random_g(hier, Kg, seed=1)
    z = torch.randn((S, K, 2), generator=torch.Generator().manual_seed(2), dtype=DT)
    codes = torch.tensor([[0, 1], [2, 0], [1, 1], [2, 1], [0, 0]])
    out = hier.params(g, z, codes, FACTOR_INDEX)
    assert set(out) == {"a", "sigma_x", "k", "c", "r", "v"}
    for name, value in out.items():
        assert value.dtype == DT
        assert torch.broadcast_shapes(value.shape, (S, K)) == (S, K), name
    # population: bijector applied to the population latent of each global draw
    np.testing.assert_allclose(out["a"].expand(S, K).numpy(),
                               np.broadcast_to(np.exp(g[:, 0].numpy()), (S, K)), rtol=1e-14)
    np.testing.assert_allclose(out["sigma_x"].expand(S, K).numpy(),
                               np.broadcast_to(np.exp(g[:, 1].numpy()), (S, K)), rtol=1e-14)
    # group: value of each series' own level, gathered per global draw
    i_k, i_c = hier.grp_index["k"][2], hier.grp_index["c"][2]
    gn = g.numpy()
    for i in range(S):
        k_expected = np.exp(gn[:, i_k + int(codes[i, 0])])
        c_expected = gn[:, i_c + int(codes[i, 1])]  # Normal prior: identity bijector
        np.testing.assert_allclose(out["k"][i].expand(K).numpy(), np.broadcast_to(k_expected, (K,)),
                                   rtol=1e-14)
        np.testing.assert_allclose(out["c"][i].expand(K).numpy(), np.broadcast_to(c_expected, (K,)),
                                   rtol=1e-14)
    # individual: bijectors applied to z
    np.testing.assert_allclose(out["r"].numpy(), np.exp(z[..., 0].numpy()), rtol=1e-14)
    np.testing.assert_allclose(out["v"].numpy(), 5.0 / (1.0 + np.exp(-z[..., 1].numpy())), rtol=1e-14)
    assert (out["v"] > 0).all() and (out["v"] < 5).all()


def test_params_factor_index_picks_the_code_column():
    hier = _hierarchy("learned")
    g = _random_g(hier, 1, seed=3)
    z = torch.zeros((2, 1, 2), dtype=DT)
    codes = torch.tensor([[1, 0], [0, 2]])  # columns swapped: plate first, strain second
    out = hier.params(g, z, codes, {"strain": 1, "plate": 0})
    i_k, i_c = hier.grp_index["k"][2], hier.grp_index["c"][2]
    np.testing.assert_allclose(out["k"][:, 0].numpy(), np.exp(g[0, [i_k + 0, i_k + 2]].numpy()))
    np.testing.assert_allclose(out["c"][:, 0].numpy(), g[0, [i_c + 1, i_c + 0]].numpy())


def test_unseen_level_draws_from_the_group_distribution():
    hier = _hierarchy("learned")
    g = _random_g(hier, 1, seed=4)
    i_mu, i_tau, i_v = hier.grp_index["k"]
    g[0, i_mu], g[0, i_tau] = 0.7, math.log(0.3)
    K = 100_000
    z = torch.zeros((2, K, 2), dtype=DT)
    codes = torch.tensor([[-1, 0], [1, 1]])  # series 0: unseen strain; series 1: strain 1
    out = hier.params(g, z, codes, FACTOR_INDEX, generator=torch.Generator().manual_seed(5))
    log_k = torch.log(out["k"]).numpy()
    assert log_k.shape == (2, K)
    draws = log_k[0]
    # fresh N(mu, tau) on the unconstrained scale, independently per sample
    assert abs(draws.mean() - 0.7) < 4 * 0.3 / math.sqrt(K)
    assert abs(draws.std() - 0.3) < 4 * 0.3 / math.sqrt(2 * K)
    assert stats.kstest((draws - 0.7) / 0.3, "norm").pvalue > 1e-3
    # the seen series keeps its level's value; the other factor is unaffected
    np.testing.assert_allclose(log_k[1], g[0, i_v + 1].item(), rtol=1e-14)
    np.testing.assert_allclose(out["c"][0].expand(K).numpy(), g[0, hier.grp_index["c"][2]].item())
    # reproducible with the same generator seed, different with another
    again = hier.params(g, z, codes, FACTOR_INDEX, generator=torch.Generator().manual_seed(5))
    assert torch.equal(again["k"], out["k"])
    other = hier.params(g, z, codes, FACTOR_INDEX, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(other["k"][0], out["k"][0])


def test_all_seen_flag_gives_the_same_values_as_reading_the_codes():
    # the caller's flag (decided on the host) replaces reading the codes from the device
    hier = _hierarchy("learned")
    g = _random_g(hier, 1, seed=11)
    z = torch.zeros((2, 3, 2), dtype=DT)
    for codes in (torch.tensor([[0, 1], [2, 0]]), torch.tensor([[-1, 1], [2, 0]])):
        flag = bool((codes >= 0).all())
        a = hier.params(g, z, codes, FACTOR_INDEX, generator=torch.Generator().manual_seed(1))
        b = hier.params(g, z, codes, FACTOR_INDEX, generator=torch.Generator().manual_seed(1),
                        all_seen=flag)
        assert all(torch.equal(a[k], b[k]) for k in a)
    # a wrong "all seen" would use level 0 for the unseen series: the flag is what decides
    codes = torch.tensor([[-1, 1], [2, 0]])
    wrong = hier.params(g, z, codes, FACTOR_INDEX, generator=torch.Generator().manual_seed(1),
                        all_seen=True)
    i_v = hier.grp_index["k"][2]
    np.testing.assert_allclose(torch.log(wrong["k"][0]).numpy(), g[0, i_v].item(), rtol=1e-12)


def test_unseen_level_per_sample_global_draws():
    # one global draw per importance sample: each sample uses its own mu and tau
    hier = _hierarchy("learned")
    K = 50_000
    g = _random_g(hier, K, seed=7)
    i_mu, i_tau, _ = hier.grp_index["c"]
    z = torch.zeros((1, K, 2), dtype=DT)
    out = hier.params(g, z, torch.tensor([[0, -1]]), FACTOR_INDEX,
                      generator=torch.Generator().manual_seed(8))
    u = ((out["c"][0] - g[:, i_mu]) / torch.exp(g[:, i_tau])).numpy()  # identity bijector
    assert abs(u.mean()) < 4 / math.sqrt(K)
    assert abs(u.std() - 1.0) < 4 / math.sqrt(2 * K)


def test_unseen_level_fixed_effects_draws_from_declared_prior():
    hier = _hierarchy("fixed")
    K = 100_000
    g = _random_g(hier, 1, seed=9)
    out = hier.params(g, torch.zeros((1, K, 2), dtype=DT), torch.tensor([[-1, -1]]), FACTOR_INDEX,
                      generator=torch.Generator().manual_seed(10))
    log_k, c = torch.log(out["k"][0]).numpy(), out["c"][0].numpy()
    assert abs(log_k.mean() - 0.0) < 4 * 0.4 / math.sqrt(K)
    assert abs(log_k.std() - 0.4) < 4 * 0.4 / math.sqrt(2 * K)
    assert abs(c.mean() - 1.0) < 4 * 0.5 / math.sqrt(K)
    assert abs(c.std() - 0.5) < 4 * 0.5 / math.sqrt(2 * K)


# ------------------------------------------------------------ priors and KL
@pytest.mark.parametrize("random_effects", ["learned", "fixed"])
def test_individual_log_prior_matches_scipy(random_effects):
    hier = _hierarchy(random_effects)
    S, K = 3, 4
    z = 0.5 * torch.randn((S, K, 2), generator=torch.Generator().manual_seed(11), dtype=DT)
    for Kg in (1, K):
        g = _random_g(hier, Kg, seed=12 + Kg)
        lp = hier.individual_log_prior(g, z)
        assert lp.shape == (S, K)
        gn = g.numpy()
        if random_effects == "learned":
            mu = gn[:, [hier.ind_index["r"][0], hier.ind_index["v"][0]]]
            omega = np.exp(gn[:, [hier.ind_index["r"][1], hier.ind_index["v"][1]]])
        else:
            mu = np.array([[math.log(0.8), 0.5]])
            omega = np.array([[0.25, 1.2]])
        expected = stats.norm.logpdf(z.numpy(), mu[None], omega[None]).sum(-1)
        np.testing.assert_allclose(lp.numpy(), expected, rtol=1e-13)


def test_individual_prior_fixed_ignores_global_draw():
    hier = _hierarchy("fixed")
    mu, omega = hier.individual_prior(_random_g(hier, 3, seed=13))
    assert mu.shape == omega.shape == (3, 2)
    np.testing.assert_allclose(mu.numpy(), [[math.log(0.8), 0.5]] * 3)
    np.testing.assert_allclose(omega.numpy(), [[0.25, 1.2]] * 3)


@pytest.mark.parametrize("random_effects", ["learned", "fixed"])
def test_log_prior_matches_scipy(random_effects):
    hier = _hierarchy(random_effects)
    g = _random_g(hier, 5, seed=14)
    gn = g.numpy()
    expected = np.zeros(5)
    for j, name in enumerate(hier.latent_names):
        if "[" in name and random_effects == "learned":  # level value: N(mu, tau) of its parameter
            base = name.split("[")[0]
            i_mu, i_tau, _ = hier.grp_index[base]
            expected += stats.norm.logpdf(gn[:, j], gn[:, i_mu], np.exp(gn[:, i_tau]))
        else:
            expected += stats.norm.logpdf(gn[:, j], hier.prior_loc[j], hier.prior_scale[j])
    np.testing.assert_allclose(hier.log_prior(g).numpy(), expected, rtol=1e-13)


def _q_for(hier, seed):
    rng = np.random.default_rng(seed)
    loc = hier.prior_loc + hier.prior_scale * rng.normal(0.0, 0.7, hier.n_global)
    scale = hier.prior_scale * rng.uniform(0.4, 1.3, hier.n_global)
    return loc, scale


@pytest.mark.parametrize("random_effects", ["learned", "fixed"])
def test_kl_matches_monte_carlo(random_effects):
    hier = _hierarchy(random_effects)
    loc, scale = _q_for(hier, seed=15)
    q = MeanFieldGaussian(torch.as_tensor(loc, dtype=DT), torch.as_tensor(scale, dtype=DT))
    kl = hier.kl(q.loc, q.scale)
    assert kl.shape == () and kl.requires_grad
    kl = kl.item()
    n = 200_000
    with torch.no_grad():
        g = q.rsample(n, torch.Generator().manual_seed(16))
        diff = (q.log_prob(g) - hier.log_prior(g)).numpy()
    mc, se = diff.mean(), diff.std(ddof=1) / math.sqrt(n)
    assert se < 0.05
    assert abs(kl - mc) < 4 * se, (kl, mc, se)


def test_kl_fixed_is_zero_at_the_prior_and_positive_elsewhere():
    hier = _hierarchy("fixed")
    loc = torch.as_tensor(hier.prior_loc, dtype=DT)
    scale = torch.as_tensor(hier.prior_scale, dtype=DT)
    assert abs(float(hier.kl(loc, scale))) < 1e-12
    assert float(hier.kl(loc + 0.1, scale)) > 0
    assert float(hier.kl(loc, 0.5 * scale)) > 0


def test_kl_learned_is_positive_and_has_the_conditional_terms():
    hier = _hierarchy("learned")
    for seed in range(5):
        loc, scale = _q_for(hier, seed)
        assert float(hier.kl(torch.as_tensor(loc), torch.as_tensor(scale))) > 0
    # q with (almost) a point mass on mu and log tau at their prior means, and q(v) = N(mu, tau)
    # for every level value: the conditional terms E_q[KL(q(v) || N(mu, tau))] vanish and
    # only the independent KLs of the narrow q's remain.
    loc = torch.as_tensor(hier.prior_loc, dtype=DT).clone()
    scale = torch.as_tensor(hier.prior_scale, dtype=DT).clone()
    indep = ~hier.conditional
    tiny = 1e-9
    for name in ("k", "c"):
        i_mu, i_tau, i_v = hier.grp_index[name]
        L = N_LEVELS["strain" if name == "k" else "plate"]
        scale[i_mu] = scale[i_tau] = tiny
        loc[i_v : i_v + L] = loc[i_mu]
        scale[i_v : i_v + L] = torch.exp(loc[i_tau])
    kl = float(hier.kl(loc, scale))
    # remaining: the independent KLs of mu and log tau shrunk to (almost) a point
    lp, sp = hier.prior_loc[indep], hier.prior_scale[indep]
    qs = scale.numpy()[indep]
    expected = np.sum(0.5 * ((qs / sp) ** 2 - 1 - 2 * np.log(qs / sp)))
    assert np.allclose(loc.numpy()[indep], lp)  # independent latents at their prior means
    np.testing.assert_allclose(kl, expected, rtol=1e-10)


# ------------------------------------------------------------- describe_global
def test_describe_global_learned():
    hier = _hierarchy("learned")
    n = 7
    g = _random_g(hier, n, seed=17)
    out = hier.describe_global(g)
    assert set(out) == {"a", "sigma_x", "k", "c", "mu_k", "tau_k", "mu_c", "tau_c",
                        "mu_r", "omega_r", "mu_v", "omega_v"}
    for key, value in out.items():
        assert isinstance(value, np.ndarray), key
    assert out["k"].shape == (n, 3) and out["c"].shape == (n, 2)
    for key in ("a", "sigma_x", "mu_k", "tau_k", "mu_c", "tau_c", "mu_r", "omega_r", "mu_v", "omega_v"):
        assert out[key].shape == (n,), key
    gn = g.numpy()
    col = {name: gn[:, _index(hier, name)] for name in hier.latent_names}
    np.testing.assert_allclose(out["a"], np.exp(col["a"]))
    np.testing.assert_allclose(out["sigma_x"], np.exp(col["sigma_x"]))
    np.testing.assert_allclose(out["k"], np.exp(gn[:, 8:11]))
    np.testing.assert_allclose(out["c"], gn[:, 13:15])
    np.testing.assert_allclose(out["mu_k"], col["mu_k"])
    np.testing.assert_allclose(out["tau_k"], np.exp(col["log_tau_k"]))
    np.testing.assert_allclose(out["mu_c"], col["mu_c"])
    np.testing.assert_allclose(out["tau_c"], np.exp(col["log_tau_c"]))
    np.testing.assert_allclose(out["mu_r"], col["mu_r"])  # unconstrained scale
    np.testing.assert_allclose(out["omega_r"], np.exp(col["log_omega_r"]))
    np.testing.assert_allclose(out["mu_v"], col["mu_v"])
    np.testing.assert_allclose(out["omega_v"], np.exp(col["log_omega_v"]))


def test_describe_global_fixed():
    hier = _hierarchy("fixed")
    g = _random_g(hier, 4, seed=18).requires_grad_()
    out = hier.describe_global(g)
    assert set(out) == {"a", "sigma_x", "k", "c"}
    assert out["a"].shape == (4,) and out["k"].shape == (4, 3) and out["c"].shape == (4, 2)
    np.testing.assert_allclose(out["k"], np.exp(g.detach().numpy()[:, 2:5]))


@pytest.mark.parametrize("random_effects", ["learned", "fixed"])
def test_collapsed_latents_map_to_the_parameters_of_each_series(random_effects):
    """One series' collapsed latents (population latents, its own level's group values,
    its individual latents) give the parameters that ``params`` gives at the same global
    latents; an unseen level starts at the group's location."""
    hier = _hierarchy(random_effects)
    assert hier.n_collapsed == 2 + 2 + 2  # a, sigma_x; k, c; r, v
    g = _random_g(hier, 1, seed=10)[0]
    z = torch.randn((4, 2), generator=torch.Generator().manual_seed(3), dtype=DT)
    codes = torch.tensor([[0, 1], [2, 0], [1, 1], [-1, 0]])  # the last: an unseen strain
    theta = hier.collapsed_point(g, z, codes, FACTOR_INDEX)
    assert theta.shape == (4, hier.n_collapsed)
    out, log_prior = hier.collapsed_params(theta.unsqueeze(1).expand(4, 3, -1))
    assert log_prior.shape == (4, 3) and torch.isfinite(log_prior).all()
    own = hier.params(g.unsqueeze(0), z[:3].unsqueeze(1), codes[:3], FACTOR_INDEX)
    for name, value in own.items():
        torch.testing.assert_close(out[name][:3, 0], value.expand(3, 1)[:, 0], rtol=1e-14, atol=0)
    mu_k, _ = hier.group_location_spread(g.unsqueeze(0), hier.group[0])
    torch.testing.assert_close(out["k"][3, 0], torch.exp(mu_k[0]), rtol=1e-14, atol=0)


def test_collapsed_prior_integrates_the_hyperparameters_out():
    """Each group value's and individual latent's prior is its full prior with ``mu`` and
    ``log omega`` (``log tau``) integrated out, here by two-dimensional quadrature; with
    fixed random effects it is the declared prior itself."""
    from scipy import integrate, stats

    theta = torch.tensor([[[0.3, -2.1, 1.7, -0.4, 0.9, 0.05]]], dtype=DT)
    for random_effects in ("learned", "fixed"):
        hier = _hierarchy(random_effects)
        _, log_prior = hier.collapsed_params(theta)
        expected = sum(stats.norm.logpdf(float(theta[0, 0, k]), hier.prior_loc[hier.pop_index[s.name]],
                                         hier.prior_scale[hier.pop_index[s.name]])
                       for k, s in enumerate(hier.population))
        for k, s in enumerate(hier.group + hier.individual, start=len(hier.population)):
            u, m, sd = float(theta[0, 0, k]), s.prior.loc, s.prior.scale
            if random_effects == "fixed":
                expected += stats.norm.logpdf(u, m, sd)
                continue

            # N(u | mu, e^w) N(mu | m, sd) N(w | log sd, hyper_scale) on a fine grid
            mu = np.linspace(m - 12 * sd, m + 12 * sd, 4001)[:, None]
            w = np.linspace(-7, 7, 1401)[None, :] * hier.hyper_scale + math.log(sd)
            joint = (stats.norm.pdf(u, mu, np.exp(w)) * stats.norm.pdf(mu, m, sd)
                     * stats.norm.pdf(w, math.log(sd), hier.hyper_scale))
            value = integrate.simpson(integrate.simpson(joint, x=mu[:, 0], axis=0), x=w[0])
            expected += math.log(value)
        np.testing.assert_allclose(float(log_prior[0, 0]), expected, rtol=0, atol=1e-7)
