"""Scaling: epoch time and peak memory against the number of series and against K.

Each configuration runs in its own subprocess (so that its peak resident
memory, ``ru_maxrss``, is its own): simulate ``n`` logistic-growth series
(3 strains, 25 times), build the estimator, run one warm-up epoch on a small
subset (solver checks, allocator warm-up) and then time **one epoch** of
``partial_fit`` over all ``n`` series (minibatches of ``--batch-size`` are
drawn from host arrays and moved to the device one at a time, so the device
never holds a dataset-sized tensor). Reported: the epoch's wall time, the
time per series, and the peak resident memory of the process minus that of
the simulated data (its host arrays), i.e. what the estimator itself adds.

Usage::

    python benchmarks/bench_scaling.py --n-series 100 1000 10000 100000 --K 10 --threads 1
    python benchmarks/bench_scaling.py --n-series 1000 --K 1 10 50 200 --threads 1
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import warnings


def one(n, K, batch_size, threads):
    import numpy as np
    import torch

    from skhds import HierarchicalODEVAE
    from skhds.datasets import make_logistic_growth

    torch.set_num_threads(threads)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    data = make_logistic_growth(n_series=n, random_state=0)
    data_mb = sum(np.asarray(a).nbytes for a in (data.X, data.clean)) / 2**20
    est = HierarchicalODEVAE(data.model, n_importance_samples=K, batch_size=batch_size,
                             random_state=0)
    kw = dict(groups=data.groups, times=data.times)
    warm = slice(0, min(n, 4 * batch_size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.partial_fit(data.X[warm], groups=data.groups.iloc[warm] if hasattr(data.groups, "iloc")
                        else data.groups[warm], times=data.times)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        est.partial_fit(data.X, **kw)
        epoch_s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"n_series": n, "K": K, "batch_size": batch_size, "epoch_s": epoch_s,
            "us_per_series": 1e6 * epoch_s / n,
            "minibatches": int(np.ceil(n / batch_size)),
            "peak_rss_mb": peak / 1024, "rss_growth_during_epoch_mb": (peak - rss_before) / 1024,
            "process_base_mb": base_rss / 1024, "data_mb": data_mb,
            "bound_per_series": float(est.history_["log_lik_bound"].iloc[-1])}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-series", type=int, nargs="+", default=[100, 1000, 10000, 100000])
    ap.add_argument("--K", type=int, nargs="+", default=[10])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help="CSV path for the table")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], args.batch_size, args.threads)))
        return
    import pandas as pd
    import torch

    from _common import cpu_model, write_table

    header = {"machine": platform.machine(), "processor": cpu_model(),
              "torch": torch.__version__, "threads": args.threads, "batch_size": args.batch_size,
              "problem": "logistic growth, 3 strains, 25 times, float32, Heun on the data grid"}
    print(json.dumps({"header": header}), flush=True)
    rows = []
    for K in args.K:
        for n in args.n_series:
            cmd = [sys.executable, __file__, "--one", str(n), str(K), "--batch-size",
                   str(args.batch_size), "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    if args.out:
        write_table(args.out, header, table)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
