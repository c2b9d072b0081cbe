"""Recovery of known truth across data sizes and noise levels (logistic growth).

For each number of series and noise level, simulate the hierarchical
logistic-growth problem (3 strains, 25 time points; seeds fixed), fit with
default settings, and measure the error of the posterior against the truth:

* individual level: RMSE of the posterior means of ``log r`` and ``log tlag``
  against the true values, and their correlation;
* noise: relative error of the posterior mean of ``sigma_x``;
* population: error of ``mu_r`` against the *realised* mean of the true
  ``log r`` (what the data can tell), and of ``omega_r`` against their
  realised spread;

for the variational and the importance-reweighted posterior.

Errors should fall as the data grow (more series: population quantities;
less noise: individual ones).

Usage::

    python benchmarks/bench_recovery.py --n-series 15 30 60 120 240 --noise 0.02 0.05 0.1
"""

import argparse
import json
import os
import platform
import time
import warnings

import numpy as np
import pandas as pd
import torch

from skhds import HierarchicalODEVAE
from skhds.datasets import make_logistic_growth


def run(n_series, noise, seed):
    data = make_logistic_growth(n_series=n_series, noise=noise, random_state=seed)
    est = HierarchicalODEVAE(data.model, random_state=0)
    kw = dict(groups=data.groups, times=data.times)
    t = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(data.X, **kw)
    t_fit = time.time() - t
    rows = []
    for method in ("variational", "importance"):
        extra = {"method": "importance", "refine": 3} if method == "importance" else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            post = est.sample_posterior(data.X, n_draws=1000, **kw, **extra)
        row = {"posterior": method, "n_series": n_series, "noise": noise, "seed": seed,
               "epochs": int(est.n_iter_), "fit_s": round(t_fit, 1)}
        for name in ("r", "tlag"):
            est_log = np.log(post[name]).mean(0)
            true_log = np.log(data.params[name])
            row[f"rmse_log_{name}"] = float(np.sqrt(np.mean((est_log - true_log) ** 2)))
            row[f"corr_{name}"] = float(np.corrcoef(est_log, true_log)[0, 1])
            row[f"err_mu_{name}"] = float(abs(post[f"mu_{name}"].mean() - true_log.mean()))
            realised = true_log.std(ddof=1)
            row[f"relerr_omega_{name}"] = float(abs(post[f"omega_{name}"].mean() - realised) / realised)
        row["relerr_sigma"] = float(abs(post["sigma_x"].mean() - noise) / noise)
        row["relerr_K"] = float(np.mean(np.abs(post["K"].mean(0) - data.params["K"]) / data.params["K"]))
        rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-series", type=int, nargs="+", default=[15, 30, 60, 120, 240])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for noise in args.noise:
        for n in args.n_series:
            for seed in args.seeds:
                for row in run(n, noise, seed):
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(os.path.join(args.out, "recovery.csv"), index=False, float_format="%.4g")
    print(json.dumps({"torch": torch.__version__, "machine": platform.machine(),
                      "threads": args.threads}))


if __name__ == "__main__":
    main()
