"""Amortised inference: posteriors for new series without refitting.

Fits the logistic-growth problem (``make_logistic_growth``, ``--n-train``
series, 3 strains, 25 times) once, then times, for ``--n-new`` new series from
the same population (one simulation, split):

* ``sample_posterior(X_new, n_draws=100)`` with ``n_eval_samples=100``
  (K = 100 importance samples per series: the encoder's proposals, weighted,
  then resampled), the amortised posterior;
* ``transform(X_new)`` (the encoder's posterior means, no sampling);
* ``score_samples(X_new)`` (held-out log-likelihood estimates, K = 100);
* refitting: ``fit`` on the new series from scratch (what a non-amortised
  variational method would do), default settings but at most
  ``--refit-epochs`` epochs (default 300), so the refit time is a lower bound;
* NUTS (NumPyro, 2 chains x (1000 warm-up + 1000) draws) on the 60-series
  problem of ``bench_nuts.py`` (``--nuts``, optional: JAX compile included).

Ratios are per series. Each timing is the median of ``--repeats`` after a
warm-up call.

Usage::

    python benchmarks/bench_amortised.py --n-new 1000 --threads 1 --nuts
"""

import argparse
import json
import os
import platform
import sys
import time
import warnings

import numpy as np
import torch

from _common import timed
from skhds import HierarchicalODEVAE
from skhds.datasets import make_logistic_growth


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-train", type=int, default=200)
    ap.add_argument("--n-new", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--refit-epochs", type=int, default=300)
    ap.add_argument("--nuts", action="store_true", help="also time NUTS on the 60-series problem")
    ap.add_argument("--out", default=None, help="JSON path for the result")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = make_logistic_growth(n_series=args.n_train + args.n_new, random_state=0)
    tr, new = slice(0, args.n_train), slice(args.n_train, None)
    est = HierarchicalODEVAE(data.model, n_eval_samples=100, random_state=0)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(data.X[tr], groups=data.groups[tr], times=data.times)
    t_fit_train = time.perf_counter() - t0
    X_new = data.X[new]
    kw = dict(groups=data.groups[new], times=data.times)
    res = {"machine": platform.machine(), "torch": torch.__version__, "threads": args.threads,
           "n_train": args.n_train, "n_new": args.n_new, "K": 100,
           "fit_train_s": round(t_fit_train, 2), "fit_train_epochs": int(est.n_iter_)}
    res["sample_posterior_s"] = timed(
        lambda: est.sample_posterior(X_new, n_draws=100, random_state=0, **kw), args.repeats)
    res["transform_s"] = timed(lambda: est.transform(X_new, **kw), args.repeats)
    res["score_samples_s"] = timed(lambda: est.score_samples(X_new, **kw), args.repeats)
    # Amortised posteriors must be usable: the new series' growth rates are recovered.
    post = est.sample_posterior(X_new, n_draws=100, random_state=0, **kw)
    r_true = data.params["r"][new]
    res["corr_r_posterior_mean_vs_truth"] = float(np.corrcoef(post["r"].mean(0), r_true)[0, 1])
    print(json.dumps(res), flush=True)

    refit = HierarchicalODEVAE(data.model, n_eval_samples=100, max_iter=args.refit_epochs,
                               random_state=0)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        refit.fit(X_new, **kw)
        refit.sample_posterior(X_new, n_draws=100, random_state=0, **kw)
    res["refit_s"] = time.perf_counter() - t0
    res["refit_epochs"] = int(refit.n_iter_)
    res["refit_over_amortised"] = res["refit_s"] / res["sample_posterior_s"]

    if args.nuts:
        sys.path.insert(0, os.path.dirname(__file__))
        from bench_nuts import logistic_problem, numpyro_model_factory, run_nuts

        data, est_kw, fit_kw = logistic_problem()
        small = HierarchicalODEVAE(data.model, **est_kw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            small.fit(data.X, **fit_kw)
        _, t_nuts, rhat, n_eff, _ = run_nuts(numpyro_model_factory(small, data, "logistic"))
        n_small = data.X.shape[0]
        res.update({"nuts_series": n_small, "nuts_s": t_nuts, "nuts_max_rhat": rhat,
                    "nuts_min_ess": n_eff})
        per_series_amortised = res["sample_posterior_s"] / args.n_new
        res["nuts_per_series_over_amortised_per_series"] = (t_nuts / n_small) / per_series_amortised
    print(json.dumps(res), flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
