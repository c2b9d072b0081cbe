"""NUTS on one data set of the individual calibration study, against the importance posterior.

The individual study (``bench_calibration.py --study individual``) fits 10 data
sets of 100 logistic series; this script reruns one of them with NUTS
(NumPyro, 2 chains) under exactly the estimator's priors, with the ODE stepped
by Heun at the estimator's ``dt`` (0.1 h: 5 steps per observation interval),
and compares the population quantities and the lags' 90% coverage with the
importance posterior of the fitted estimator (kept by ``--cache``).

Usage::

    python benchmarks/bench_calibration.py --study individual --cache DIR   # fits the 10 data sets
    python benchmarks/nuts_individual_fit.py --fit 3 --cache DIR           # 0-based fit index

It prints one line per quantity (NUTS mean and sd, skhds mean and sd, the
error in NUTS sds) and takes about 10-15 minutes per fit on one core. With
``--streams 1 2 3`` the importance posterior is drawn once per random stream
(run-to-run variability; ``--n-proposals`` global draws per round, default
300 as in the calibration study, 1,000 in ``sample_posterior``), and
``--nuts-cache FILE`` keeps NUTS's draws for later runs.
"""

import argparse
import os
import time
from types import SimpleNamespace

import joblib
import numpy as np

import bench_calibration
import bench_nuts

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fit", type=int, required=True, help="0-based index of the data set")
    parser.add_argument("--cache", required=True, help="the --cache folder of bench_calibration.py")
    parser.add_argument("--n-series", type=int, default=100)
    parser.add_argument("--dt", type=float, default=0.1)
    parser.add_argument("--samples", type=int, default=500, help="warm-up and kept draws per chain")
    parser.add_argument("--streams", type=int, nargs="+", default=[1],
                        help="random_state of each importance run (run-to-run variability)")
    parser.add_argument("--n-proposals", type=int, default=300, help="global draws per round")
    parser.add_argument("--draws", type=int, default=bench_calibration.N_DRAWS,
                        help="posterior draws per importance run")
    parser.add_argument("--nuts-cache", default=None,
                        help="file of the NUTS draws: loaded if it exists, else written")
    args = parser.parse_args()
    if args.fit < 0:
        parser.error(f"--fit must be a 0-based index >= 0, got {args.fit}")
    import numpyro

    numpyro.enable_x64()
    params, sim, times, groups = list(bench_calibration.individual_data(args.fit + 1, args.n_series))[-1]
    path = os.path.join(args.cache, f"individual_0_{args.fit}_{args.n_series}_{args.dt}.joblib")
    if not os.path.exists(path):
        parser.error(f"--cache: no fitted estimator {path}; run bench_calibration.py --study "
                     f"individual --cache {args.cache} first")
    est = joblib.load(path)
    if args.nuts_cache and os.path.exists(args.nuts_cache):
        ref = joblib.load(args.nuts_cache)
        print(f"fit {args.fit}: NUTS draws from {args.nuts_cache}")
    else:
        data = SimpleNamespace(X=sim.X, times=times, groups=groups)
        substeps = int(round((times[1] - times[0]) / args.dt))  # Heun steps per interval, as the estimator
        model = bench_nuts.numpyro_model_factory(est, data, "logistic", substeps=substeps)
        ref, nuts_s, rhat, n_eff, n_div = bench_nuts.run_nuts(model, warmup=args.samples,
                                                               samples=args.samples)
        print(f"fit {args.fit}: NUTS {nuts_s:.0f} s (max r-hat {rhat:.3f}, min n_eff {n_eff:.0f}, "
              f"{n_div} divergences)")
        if args.nuts_cache:
            joblib.dump(ref, args.nuts_cache)
    for stream in args.streams:
        t = time.time()
        post = est.sample_posterior(sim.X, groups=groups, times=times, n_draws=args.draws,
                                    random_state=stream, method="importance", refine=3,
                                    n_proposals=args.n_proposals)
        print(f"stream {stream}: skhds importance {time.time() - t:.0f} s "
              f"({args.n_proposals} global draws per round)")
        errors, ratios = [], []
        for name in ("mu_r", "omega_r", "mu_tlag", "omega_tlag", "x0", "sigma_x"):
            a, b = np.asarray(post[name]), np.asarray(ref[name])
            errors.append((a.mean() - b.mean()) / b.std())
            ratios.append(a.std() / b.std())
            print(f"{name:11s} NUTS {b.mean():.4f} +- {b.std():.4f}   skhds {a.mean():.4f} +- "
                  f"{a.std():.4f}   error {errors[-1]:+.2f} sds, sd ratio {ratios[-1]:.2f}")
        print(f"stream {stream}: largest error {np.max(np.abs(errors)):.2f} sds, sd ratios "
              f"{np.min(ratios):.2f}-{np.max(ratios):.2f}")
    truth = sim.params["tlag"]
    for label, draws in (("NUTS", ref["tlag"]), ("skhds", post["tlag"])):
        lo, hi = np.percentile(draws, [5, 95], axis=0)
        print(f"90% coverage of the true lags, {label}: {np.mean((truth >= lo) & (truth <= hi)):.2f}")


if __name__ == "__main__":
    main()
