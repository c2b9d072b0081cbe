"""NUTS on data sets of the individual calibration study, against the importance posterior.

The individual study (``bench_calibration.py --study individual``) fits 10 data
sets of 100 logistic series; this script reruns some of them with NUTS
(NumPyro, 2 chains) under exactly the estimator's priors, with the ODE stepped
by Heun at the estimator's ``dt`` (0.1 h: 5 steps per observation interval),
and compares the population quantities and the lags' 90% coverage with the
importance posterior of the fitted estimator (kept by ``--cache``).

Usage::

    python benchmarks/bench_calibration.py --study individual --cache DIR   # fits the 10 data sets
    python benchmarks/nuts_individual_fit.py --fit 3 --cache DIR           # 0-based fit indices

It prints one line per quantity (NUTS mean and sd, skhds mean and sd, the
error in NUTS sds); NUTS takes 2-15 minutes per data set on one core. With
``--streams 1 2 3`` the importance posterior is drawn once per random stream
(run-to-run variability; ``--n-proposals`` global draws per round, default
1,000 as in ``sample_posterior``), with the Monte Carlo standard error that
``sample_posterior(return_diagnostics=True)`` reports for each quantity (in
NUTS sds; ``--replicates R`` pools ``R`` independent runs per stream and
estimates it from their spread); ``--streams`` with no value runs NUTS
only. ``--nuts-cache DIR`` keeps NUTS's draws (``nuts_<fit>.joblib``) for
later runs. Over the given fits it also prints NUTS's own calibration table
(the rows of ``bench_calibration.py``, with the same 99 draws per series,
thinned; ``--out FILE`` writes it): the ranks an exact posterior gives on
these data sets, the yardstick for the importance posterior's.
"""

import argparse
import os
import time
from types import SimpleNamespace

import joblib
import numpy as np
import pandas as pd

import bench_calibration
import bench_nuts

def nuts_draws(est, sim, times, groups, args, fit):
    """NUTS's posterior draws of one data set (from ``--nuts-cache`` where kept)."""
    cache = os.path.join(args.nuts_cache, f"nuts_{fit}.joblib") if args.nuts_cache else None
    if cache and os.path.exists(cache):
        print(f"fit {fit}: NUTS draws from {cache}")
        return joblib.load(cache)
    data = SimpleNamespace(X=sim.X, times=times, groups=groups)
    spacing = times[1] - times[0]
    if args.dt > spacing * (1 + 1e-6):
        # the estimator would take one step across several intervals; the NumPyro model cannot
        raise SystemExit(f"--dt {args.dt} is wider than the grid spacing {spacing:g}: the NumPyro "
                         "model takes whole Heun steps per interval; use a dt that divides it.")
    substeps = int(round(spacing / args.dt))  # Heun steps per interval, as the estimator
    model = bench_nuts.numpyro_model_factory(est, data, "logistic", substeps=substeps)
    ref, nuts_s, rhat, n_eff, n_div = bench_nuts.run_nuts(model, warmup=args.samples,
                                                           samples=args.samples)
    print(f"fit {fit}: NUTS {nuts_s:.0f} s (max r-hat {rhat:.3f}, min n_eff {n_eff:.0f}, "
          f"{n_div} divergences)")
    if cache:
        os.makedirs(args.nuts_cache, exist_ok=True)
        joblib.dump(ref, cache)
    return ref


def compare_streams(est, sim, times, groups, ref, args):
    """The importance posterior, once per random stream, against NUTS."""
    for stream in args.streams:
        t = time.time()
        post, diag = est.sample_posterior(sim.X, groups=groups, times=times, n_draws=args.draws,
                                          random_state=stream, method="importance", refine=3,
                                          n_proposals=args.n_proposals,
                                          n_replicates=args.replicates, return_diagnostics=True)
        print(f"stream {stream}: skhds importance {time.time() - t:.0f} s "
              f"({args.n_proposals} global draws per round, {args.replicates} replicate(s); "
              f"Monte Carlo error from the {diag['mcse_method']})")
        errors, ratios = [], []
        for name in ("mu_r", "omega_r", "mu_tlag", "omega_tlag", "x0", "sigma_x"):
            a, b = np.asarray(post[name]), np.asarray(ref[name])
            errors.append((a.mean() - b.mean()) / b.std())
            ratios.append(a.std() / b.std())
            print(f"{name:11s} NUTS {b.mean():.4f} +- {b.std():.4f}   skhds {a.mean():.4f} +- "
                  f"{a.std():.4f}   error {errors[-1]:+.2f} sds, sd ratio {ratios[-1]:.2f}, "
                  f"reported Monte Carlo error {diag['mcse'][name] / b.std():.2f} sds")
        print(f"stream {stream}: largest error {np.max(np.abs(errors)):.2f} sds, sd ratios "
              f"{np.min(ratios):.2f}-{np.max(ratios):.2f}")
        for name in ("r", "tlag"):
            # per series: difference of the posterior means in NUTS sds (a shared sign: a bias)
            a, b = np.log(np.asarray(post[name])), np.log(np.asarray(ref[name]))
            d = (a.mean(0) - b.mean(0)) / b.std(0)
            print(f"stream {stream}: per-series log {name} means, error in NUTS sds: average "
                  f"{d.mean():+.3f}, largest {np.abs(d).max():.2f}; sd ratio "
                  f"{np.mean(a.std(0) / b.std(0)):.2f} on average")
        truth = sim.params["tlag"]
        lo, hi = np.percentile(post["tlag"], [5, 95], axis=0)
        print(f"stream {stream}: 90% coverage of the true lags, skhds "
              f"{np.mean((truth >= lo) & (truth <= hi)):.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fit", type=int, nargs="+", required=True,
                        help="0-based indices of the data sets")
    parser.add_argument("--cache", required=True, help="the --cache folder of bench_calibration.py")
    parser.add_argument("--n-series", type=int, default=100)
    parser.add_argument("--dt", type=float, default=0.1)
    parser.add_argument("--samples", type=int, default=500, help="warm-up and kept draws per chain")
    parser.add_argument("--streams", type=int, nargs="*", default=[1],
                        help="random_state of each importance run (run-to-run variability); "
                             "none: NUTS only")
    parser.add_argument("--n-proposals", type=int, default=1000, help="global draws per round")
    parser.add_argument("--replicates", type=int, default=1,
                        help="n_replicates of sample_posterior (pooled independent runs)")
    parser.add_argument("--n-importance-samples", type=int, default=None,
                        help="set the fitted estimator's n_importance_samples before the "
                             "importance runs (the global target uses max(N, 256) individual "
                             "draws per series; default: as fitted, 32)")
    parser.add_argument("--draws", type=int, default=bench_calibration.N_DRAWS,
                        help="posterior draws per importance run")
    parser.add_argument("--nuts-cache", default=None,
                        help="folder of NUTS's draws (nuts_<fit>.joblib): loaded if there, else written")
    parser.add_argument("--out", default=None,
                        help="write NUTS's calibration table over the given fits to this CSV file")
    args = parser.parse_args()
    if min(args.fit) < 0:
        parser.error(f"--fit must be 0-based indices >= 0, got {args.fit}")
    if args.dt <= 0:
        parser.error(f"--dt must be > 0, got {args.dt}")
    import numpyro

    numpyro.enable_x64()
    data_sets = list(bench_calibration.individual_data(max(args.fit) + 1, args.n_series))
    truths, draws = {"r": [], "tlag": []}, {"r": [], "tlag": []}
    for fit in args.fit:
        params, sim, times, groups = data_sets[fit]
        path = os.path.join(args.cache, f"individual_0_{fit}_{args.n_series}_{args.dt}.joblib")
        if not os.path.exists(path):
            parser.error(f"--cache: no fitted estimator {path}; run bench_calibration.py --study "
                         f"individual --cache {args.cache} first")
        est = joblib.load(path)
        if args.n_importance_samples is not None:
            est.n_importance_samples = args.n_importance_samples
        ref = nuts_draws(est, sim, times, groups, args, fit)
        compare_streams(est, sim, times, groups, ref, args)
        # NUTS's own ranks of the truth, thinned to the calibration study's draws
        keep = np.linspace(0, len(ref["tlag"]) - 1, bench_calibration.N_DRAWS).round().astype(int)
        for name in truths:
            truths[name].append(sim.params[name])
            draws[name].append(np.asarray(ref[name])[keep])
        truth = sim.params["tlag"]
        lo, hi = np.percentile(ref["tlag"], [5, 95], axis=0)
        print(f"fit {fit}: NUTS's 90% coverage of the true lags {np.mean((truth >= lo) & (truth <= hi)):.2f}, "
              f"mean rank {np.mean(np.asarray(ref['tlag']) < truth):.3f}")
    rows = []
    for name in truths:
        clusters = np.repeat(np.arange(len(args.fit)), [len(t) for t in truths[name]])
        rows.append({**bench_calibration.calibration_rows(
            "individual", name, np.concatenate(draws[name], 1), np.concatenate(truths[name]),
            clusters=clusters if len(args.fit) > 1 else None), "posterior": "NUTS"})
    table = bench_calibration.family_wise(pd.DataFrame(rows))
    print(table.to_string(index=False))
    if args.out:
        table.to_csv(args.out, index=False, float_format="%.4g")


if __name__ == "__main__":
    main()
