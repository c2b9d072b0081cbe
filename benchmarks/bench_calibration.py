"""Calibration: simulation-based calibration (SBC) ranks and interval coverage.

Two studies, each drawing the truth from the generative model, simulating,
fitting with default settings and recording where the truth falls among the
posterior draws:

* ``individual``: ``--individual-fits`` fits (default 10) of the
  logistic-growth problem, each with ``--n-series`` series (default 100)
  from its own population: location and log spread of ``r`` and ``tlag``
  drawn from the estimator's hyperpriors and the noise scale from its prior,
  so that the ranks of different fits are independent draws of the whole
  generative model (the estimator steps at ``--dt``, default 0.1 h, five steps
  per observation interval, so that its discretisation error is far below the
  noise); the amortised posterior of every series' growth rate ``r`` and lag
  ``tlag``. Ranks pooled over the fits (1000 by default).
* ``population``: ``--n-fits`` fits of a small hierarchical problem (30
  constant-level series, 5 noisy observations each; see
  ``tests/test_validity.py``) with the population location ``mu``, spread
  ``omega`` and noise ``sigma`` drawn from their priors for every fit; its
  exact posterior (quadrature) is reported too, as the yardstick.

* ``clustered-check``: the size and power of the rank test with and without
  the correction for clustered ranks (see ``calibration_rows``), on a
  conjugate hierarchical normal model with an exact posterior (seconds).

For each quantity: the chi-square statistic and p-value of the SBC ranks
(10 bins), the same adjusted for the number of quantities tested per
posterior (Holm; ``sbc_p_holm``) and the coverage of the central 50% and
90% intervals, for the variational posterior and the importance-reweighted one
(``sample_posterior(method="importance", refine=3)``).

Usage::

    python benchmarks/bench_calibration.py --study individual population --threads 1
"""

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings

import joblib
import numpy as np
import pandas as pd
import torch
from scipy import stats

from skhds import HierarchicalODEVAE, ODEModel, Parameter
from skhds.datasets import simulate
from skhds.distributions import LogNormal, Normal
from skhds.models import Gaussian, LogisticGrowth

N_DRAWS = 99  # ranks 0..99: 10 bins of 10


class Level(ODEModel):
    """``x' = 0``, ``x(0) = theta``: each series is a constant level plus noise."""

    states = ("x",)
    noise = Gaussian(LogNormal(math.log(0.3), 1.0))

    def declare_parameters(self):
        return [Parameter("theta", Normal(1.0, 0.5), level="individual")]

    def initial_state(self, params, inputs):
        return params["theta"].unsqueeze(-1)

    def rhs(self, t, x, params, inputs):
        return torch.zeros_like(x)


CACHE = None  # folder of fitted estimators (--cache)


def _fit(model, X, key=None, **kw):
    path = os.path.join(CACHE, f"{key}.joblib") if CACHE and key else None
    if path and os.path.exists(path):
        return joblib.load(path)
    est = HierarchicalODEVAE(model, random_state=0, **kw.pop("est", {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, **kw)
    if path:
        joblib.dump(est, path)
    return est


def calibration_rows(study, name, draws, truth, clusters=None):
    """SBC chi-square and interval coverage of ``truth`` (k,) among ``draws`` (n, k).

    With ``clusters`` (k,), the ranks of a cluster (the series of one fit) are
    not independent: they share the error of that fit's population posterior,
    which even an exact posterior has, and that inflates the spread of the
    bin counts beyond the multinomial one. The plain chi-square then rejects
    an exact posterior; ``sbc_p_clustered`` uses the first-order Rao-Scott
    correction instead (the chi-square divided by the mean design effect of
    the bins, estimated from the between-cluster spread of the bin counts;
    Rao and Scott, J. Am. Stat. Assoc. 76, 1981).
    """
    ranks = (draws < truth[None, :]).sum(0)
    bins = np.minimum(ranks // 10, 9)
    counts = np.bincount(bins, minlength=10)
    chi2 = stats.chisquare(counts)
    lo50, hi50 = np.percentile(draws, [25, 75], axis=0)
    lo90, hi90 = np.percentile(draws, [5, 95], axis=0)
    row = {"study": study, "quantity": name, "n": len(truth),
           "sbc_chi2": chi2.statistic, "sbc_p": chi2.pvalue,
           "rank_bins": " ".join(map(str, counts)),
           "cover50": float(np.mean((truth >= lo50) & (truth <= hi50))),
           "cover90": float(np.mean((truth >= lo90) & (truth <= hi90)))}
    if clusters is not None:
        labels = np.unique(clusters)
        m, n, k = len(labels), len(truth), 10
        p = counts / n
        per = np.array([np.bincount(bins[clusters == c], minlength=k) for c in labels])  # (m, k)
        size = np.array([np.sum(clusters == c) for c in labels])[:, None]
        var = m / (m - 1) * ((per - p * size) ** 2).sum(0) / n**2  # ratio-estimator variance
        deff = var / (p * (1 - p) / n)
        d_mean = float(np.mean(deff))  # sum_k (1 - p0_k) d_k / (k - 1) with p0_k = 1 / k
        row["design_effect"] = d_mean
        row["sbc_p_clustered"] = float(stats.chi2.sf(chi2.statistic / d_mean, k - 1))
    return row


def family_wise(table):
    """Add ``sbc_p_holm``: each posterior's rank tests adjusted for their number (Holm).

    One study tests several quantities of the same posterior; at a 5% level
    each, some test of an exact posterior rejects more often than 5% of the
    time (with three tests, up to 14%). The Holm step-down adjustment
    (Holm, Scand. J. Statist. 6, 1979) keeps the probability of any false
    rejection within the posterior's family at the nominal level. It adjusts
    ``sbc_p_clustered`` where the study has it, else ``sbc_p``.
    """
    table = table.copy()
    col = "sbc_p_clustered" if "sbc_p_clustered" in table else "sbc_p"
    table["sbc_p_holm"] = np.nan
    for _, rows in table.groupby("posterior", sort=False):
        p = rows[col].to_numpy(dtype=float)
        order = np.argsort(p)
        m = len(p)
        adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
        out = np.empty(m)
        out[order] = adjusted
        table.loc[rows.index, "sbc_p_holm"] = out
    return table


def individual_data(n_fits, n_series, seed=0):
    """The individual study's data sets: yields ``(params, sim, times, groups)`` per fit.

    The population of every fit is drawn from the estimator's hyperpriors
    (location ~ N(m, s), log spread ~ N(log s, 0.5)) and the noise scale from
    its prior, so that the ranks of different fits are independent draws of
    the full generative model.
    """
    model = LogisticGrowth()
    times = np.linspace(0.0, 12.0, 25)
    groups = np.array([f"s{i % 3}" for i in range(n_series)], dtype=object)
    rng = np.random.default_rng(seed)
    for _ in range(n_fits):
        params = {"sigma_x": math.exp(rng.normal(math.log(0.05), 1.0))}
        for name, m, s in (("r", math.log(0.8), 0.25), ("tlag", math.log(2.0), 0.3)):
            mu = rng.normal(m, s)
            omega = math.exp(rng.normal(math.log(s), 0.5))
            params[name] = np.exp(rng.normal(mu, omega, n_series))
        sim = simulate(model, n_series, times=times, groups=groups, params=params,
                       random_state=int(rng.integers(2**31)))
        yield params, sim, times, groups


def individual_study(n_fits, n_series, seed=0, dt=0.1, n_proposals=1000):
    model = LogisticGrowth()
    truths, posts = {"r": [], "tlag": []}, {"variational": [], "importance": []}
    fit_s, epochs, per_fit, flagged, is_s = [], [], [], [], []
    for f, (params, sim, times, groups) in enumerate(individual_data(n_fits, n_series, seed)):
        t = time.time()
        # ``simulate`` integrates finely (RK4, a tenth of the interval); the
        # estimator steps at ``dt`` too, so that the check is of the inference
        # and not of the discretisation error of one Heun step per interval.
        est = _fit(model, sim.X, key=f"individual_{seed}_{f}_{n_series}_{dt}", groups=groups,
                   times=times, est={"dt": dt})
        fit_s.append(time.time() - t)
        epochs.append(int(est.n_iter_))
        kw = dict(groups=groups, times=times, n_draws=N_DRAWS, random_state=1)
        for method in posts:
            extra = {"method": "importance", "refine": 3, "n_proposals": n_proposals} if method == "importance" else {}
            t = time.time()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                post = est.sample_posterior(sim.X, **kw, **extra)
            if method == "importance":
                is_s.append(time.time() - t)
            posts[method].append({name: post[name] for name in truths})
            if method == "importance":
                flagged.append(sum("unreliable" in str(w.message) for w in caught))
        for name in truths:
            truths[name].append(sim.params[name])
        # Per fit: the importance posterior's 90% coverage of the true lags and their mean
        # rank (0.5 when calibrated), to tell a fit-level failure from a series-level one.
        lo, hi = np.percentile(posts["importance"][-1]["tlag"], [5, 95], axis=0)
        truth = sim.params["tlag"]
        per_fit.append({"sigma": round(params["sigma_x"], 4),
                        "tlag_cover90": float(np.mean((truth >= lo) & (truth <= hi))),
                        "tlag_mean_rank": round(float(np.mean(posts["importance"][-1]["tlag"] < truth)), 3),
                        "unreliable_warnings": flagged[-1], "importance_s": round(is_s[-1], 1)})
        print(f"individual fit {f + 1}/{n_fits}: sigma {params['sigma_x']:.3g}, "
              f"{fit_s[-1]:.0f} s, {per_fit[-1]}", file=sys.stderr, flush=True)
    rows = []
    for method, lst in posts.items():
        for name in truths:
            draws = np.concatenate([p[name] for p in lst], 1)
            fits = np.repeat(np.arange(len(lst)), [p[name].shape[1] for p in lst])
            row = calibration_rows("individual", name, draws, np.concatenate(truths[name]), clusters=fits)
            rows.append({**row, "posterior": method})
    return rows, {"fits": n_fits, "series_per_fit": n_series, "fit_s": round(sum(fit_s), 1),
                  "epochs": epochs, "dt": dt, "n_proposals": n_proposals,
                  "importance_s": round(sum(is_s), 1), "per_fit": per_fit}


def exact_draws(est, y, n_draws, rng, n_grid=81):
    """Draws from the exact posterior of the constant-level model (quadrature grid).

    Integrating ``theta_i`` out, ``y_i ~ N(mu 1, sigma^2 I + omega^2 1 1^T)``.
    The posterior of ``(mu, log omega, log sigma)`` is evaluated on a wide
    grid, then on a fine grid over the box that holds all but a negligible
    part of it, and sampled cell by cell with uniform jitter. It is what a
    perfect posterior would report on the same data: its coverage is the
    yardstick for the estimator's (with few fits, chance alone moves
    coverage by several percent).
    """
    hier = est.vae_.hierarchy
    i_mu, i_om = hier.ind_index["theta"]
    i_s = hier.pop_index["sigma_x"]
    loc, scale = hier.prior_loc, hier.prior_scale
    T = y.shape[1]
    ybar = y.mean(1)
    ssw = ((y - ybar[:, None]) ** 2).sum(1)

    def log_post(axes):
        mu, lom, ls = np.meshgrid(*axes, indexing="ij")
        om2, s2 = np.exp(2 * lom)[..., None], np.exp(2 * ls)[..., None]
        v = s2 + T * om2
        return ((-(T - 1) * 0.5 * np.log(s2) - 0.5 * np.log(v) - ssw / (2 * s2)
                 - T * (ybar - mu[..., None]) ** 2 / (2 * v)).sum(-1)
                - 0.5 * ((mu - loc[i_mu]) / scale[i_mu]) ** 2
                - 0.5 * ((lom - loc[i_om]) / scale[i_om]) ** 2
                - 0.5 * ((ls - loc[i_s]) / scale[i_s]) ** 2)

    axes = [np.linspace(-4.0, 6.0, n_grid), np.linspace(np.log(1e-3), np.log(20.0), n_grid),
            np.linspace(np.log(1e-3), np.log(50.0), n_grid)]
    for _ in range(2):  # wide grid, then a fine one where the mass is
        lp = log_post(axes)
        keep = lp > lp.max() - 25.0  # all but about e^-25 of the mass
        new = []
        for a, ax in enumerate(axes):
            idx = np.flatnonzero(keep.any(tuple(b for b in range(3) if b != a)))
            step = ax[1] - ax[0]
            new.append(np.linspace(ax[idx[0]] - step, ax[idx[-1]] + step, n_grid))
        axes = new
    lp = log_post(axes)
    w = np.exp(lp - lp.max()).ravel()
    cells = np.unravel_index(rng.choice(w.size, n_draws, p=w / w.sum()), lp.shape)
    out = {}
    for name, ax, c in zip(("mu_theta", "omega_theta", "sigma_x"), axes, cells):
        x = ax[c] + (ax[1] - ax[0]) * (rng.random(n_draws) - 0.5)
        out[name] = x if name == "mu_theta" else np.exp(x)
    return out


def population_study(n_fits, n_series=30, n_times=5, seed=0):
    rng = np.random.default_rng(seed)
    exact_rng = np.random.default_rng(seed + 1)
    times = np.arange(n_times, dtype=float)
    truths, posts = [], {"variational": [], "importance": [], "exact": []}
    t = time.time()
    for f in range(n_fits):
        mu = rng.normal(1.0, 0.5)
        omega = math.exp(rng.normal(math.log(0.5), 0.5))
        sigma = math.exp(rng.normal(math.log(0.3), 1.0))
        theta = rng.normal(mu, omega, n_series)
        sim = simulate(Level(), n_series, times=times, params={"theta": theta, "sigma_x": sigma},
                       random_state=int(rng.integers(2**31)))
        est = _fit(Level(), sim.X, times=times, est={"max_iter": 400})
        truths.append({"mu_theta": mu, "omega_theta": omega, "sigma_x": sigma})
        posts["exact"].append(exact_draws(est, sim.X[:, 0], N_DRAWS, exact_rng))
        for method in ("variational", "importance"):
            extra = {"method": "importance", "refine": 3} if method == "importance" else {}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p = est.sample_posterior(sim.X, times=times, n_draws=N_DRAWS, random_state=1, **extra)
            posts[method].append({k: p[k] for k in truths[-1]})
        print(f"fit {f + 1}/{n_fits}", file=sys.stderr, flush=True)
    rows = []
    for method, lst in posts.items():
        for name in truths[0]:
            draws = np.stack([p[name] for p in lst], 1)
            truth = np.array([tr[name] for tr in truths])
            rows.append({**calibration_rows("population", name, draws, truth), "posterior": method})
    return rows, {"seconds": round(time.time() - t, 1)}


def clustered_check(n_reps=200, n_clusters=10, n_per=100, seed=0):
    """Size and power of the plain and the Rao-Scott-corrected rank tests, exact posterior.

    A hierarchical normal model with a conjugate posterior: per cluster
    ``mu ~ N(0, 1)``, ``theta_i ~ N(mu, 1)``, ``y_i ~ N(theta_i, s^2)``, and 99
    exact posterior draws of each ``theta_i`` (which share the draws of
    ``mu``: clustered ranks). With ``bias`` the draws are shifted by that many
    posterior sds (a miscalibrated posterior). Rejection rates at the 5% level.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for s in (1.0, 0.2):
        for bias in (0.0, 0.15):
            stats_ = []
            for _ in range(n_reps):
                draws, truth, clusters = [], [], []
                for c in range(n_clusters):
                    mu = rng.normal()
                    theta = rng.normal(mu, 1.0, n_per)
                    y = rng.normal(theta, s)
                    v = 1.0 + s * s  # y_i | mu ~ N(mu, v)
                    prec = 1.0 + n_per / v
                    mus = rng.normal(y.sum() / v / prec, prec ** -0.5, N_DRAWS)
                    w = 1.0 / (1.0 + 1.0 / (s * s))  # weight of mu in theta_i | mu, y_i
                    d = rng.normal(w * mus[:, None] + (1 - w) * y[None] + bias * np.sqrt(w), np.sqrt(w))
                    draws.append(d), truth.append(theta), clusters.append(np.full(n_per, c))
                stats_.append(calibration_rows("clustered-check", "theta", np.concatenate(draws, 1),
                                               np.concatenate(truth), np.concatenate(clusters)))
            rows.append({"noise_sd": s, "bias_sds": bias, "reps": n_reps,
                         "reject_plain": float(np.mean([r["sbc_p"] < 0.05 for r in stats_])),
                         "reject_clustered": float(np.mean([r["sbc_p_clustered"] < 0.05 for r in stats_])),
                         "mean_design_effect": float(np.mean([r["design_effect"] for r in stats_]))})
    return rows, {"clusters": n_clusters, "per_cluster": n_per}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", nargs="+", default=["individual", "population"],
                        choices=["individual", "population", "clustered-check"])
    parser.add_argument("--n-series", type=int, default=100,
                        help="series per fit in the individual study")
    parser.add_argument("--individual-fits", type=int, default=10,
                        help="fits (population draws) in the individual study")
    parser.add_argument("--n-fits", type=int, default=200, help="fits in the population study")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dt", type=float, default=0.1,
                        help="solver step of the estimator in the individual study (hours)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--n-proposals", type=int, default=1000,
                        help="global draws per round of the importance path, individual study "
                             "(the package default)")
    parser.add_argument("--cache", default=None,
                        help="folder to keep the individual study's fitted estimators in (reused)")
    args = parser.parse_args()
    global CACHE
    if args.cache:
        os.makedirs(args.cache, exist_ok=True)
        CACHE = args.cache
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    for study in args.study:
        if study == "individual":
            rows, info = individual_study(args.individual_fits, args.n_series, dt=args.dt,
                                          n_proposals=args.n_proposals)
        elif study == "clustered-check":
            rows, info = clustered_check()
        else:
            rows, info = population_study(args.n_fits)
        table = pd.DataFrame(rows)
        if "posterior" in table:
            table = family_wise(table)
        table.to_csv(os.path.join(args.out, f"calibration_{study}.csv"), index=False,
                     float_format="%.4g")
        print(table.to_string(index=False))
        print(json.dumps({"study": study, **info, "torch": torch.__version__,
                          "machine": platform.machine(), "threads": args.threads}))


if __name__ == "__main__":
    main()
