"""Solver and step on the double-receiver study: accuracy against cost (issue 5).

The default decoder takes one Heun step per interval of the observation grid
(0.194 h on the plate reader, 86 times). With ``dt`` larger than that, one step
covers several observations and the times inside it are interpolated (cubic
Hermite, :func:`skhds.solvers.step_plan`), so a higher-order method can take
fewer, longer steps. This script measures, for each ``solver:dt`` setting,

accuracy
    The white box is trained for ``--epochs`` epochs on fold 1 (the time-to-quality
    settings of ``bench_double_receiver.py``: K = 10, DReG, semi-amortised blocks,
    noise level per well, Heun on the data grid). For ``--wells`` held-out wells,
    ``--draws`` posterior draws (``sample_posterior``) are simulated without noise
    by :func:`skhds.datasets.simulate` with each setting, and compared with RK4 at
    ``dt = 0.02`` (a tenth of the grid). Reported: the error of each observable
    at each time over that draw's noise standard deviation of the well and
    signal (the learned per-well noise level), as the median over wells and
    draws of the largest error along the series (``max_err_sd_median``), its
    largest value (``max_err_sd_max``), and the root mean square over times
    (``rms_err_sd_median``, ``rms_err_sd_max``).
cost
    One estimator per setting, trained side by side on the same data with the same
    seed: epochs are taken in turn (``--timing-epochs`` of them), and the median
    epoch time after the first is reported with its ratio to the first setting's.

Usage (data in the folder named by ``SKHDS_DATA``)::

    python benchmarks/bench_solver_steps.py --threads 1 \\
        --settings heun:none heun:0.39 rk4:0.39 rk4:0.79 rk4:0.98 rk4:1.17
"""

import argparse
import json
import time
import warnings

import numpy as np
import pandas as pd
import torch
from sklearn.exceptions import ConvergenceWarning

from _common import write_table
import bench_double_receiver as study
from skhds.datasets import simulate
from skhds.models import check_model

REFERENCE = ("rk4", 0.02)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--settings", nargs="+",
                    default=["heun:none", "heun:0.39", "rk4:0.39", "rk4:0.79", "rk4:0.98", "rk4:1.17"],
                    help="solver:dt pairs ('none': one step per observation interval)")
    ap.add_argument("--epochs", type=int, default=20, help="training epochs before the accuracy check")
    ap.add_argument("--wells", type=int, default=40, help="held-out wells in the accuracy check")
    ap.add_argument("--draws", type=int, default=10, help="posterior draws per well (at least 2)")
    ap.add_argument("--timing-epochs", type=int, default=8, help="epochs per setting in the timing")
    ap.add_argument("--K-train", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="CSV path (default results/solver_steps.csv)")
    args = ap.parse_args(argv)
    if args.draws < 2:
        ap.error(f"--draws must be at least 2 (sample_posterior's minimum), got {args.draws}")
    return args


def parse_setting(text):
    solver, dt = text.split(":")
    return solver, None if dt.lower() == "none" else float(dt)


def study_args(args, solver="heun", dt=None):
    """The time-to-quality settings of bench_double_receiver.py with this solver and step."""
    argv = ["--mode", "cv", "--folds", "1", "--model", "white", "--estimator", "dreg",
            "--K-train", str(args.K_train), "--learning-rate", "0.03", "--encoder-learning-rate", "0.003",
            "--training-refinement", "5", "--refinement-block", "8", "--lr-schedule", "100:0.002",
            "--noise-level", "individual", "--seed", str(args.seed), "--solver", solver]
    return study.parse_args(argv + ([] if dt is None else ["--dt", str(dt)]))


def well_meta(data, wells):
    """``groups`` (the two RBS factors), ``inputs`` and ``times`` of the wells ``wells``."""
    return {"groups": data.groups[["luxR_rbs", "lasR_rbs"]].iloc[wells], "inputs": data.inputs[wells],
            "times": data.times}


def fit_quietly(est, X, **meta):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.partial_fit(X, **meta)


def accuracy(est, data, X, wells, settings, n_draws, seed):
    """Errors of each setting against the reference, in units of the learned noise sd."""
    meta = well_meta(data, wells)
    groups, inputs = meta["groups"], meta["inputs"]
    draws = est.sample_posterior(X[wells], **meta, n_draws=n_draws, random_state=seed)
    model = est.model_
    noise = [f"{base}_{o}" for base in model.noise.declare() for o in model.observable_names]
    # group values come in the order of categories_; simulate wants the wells' own levels, sorted
    columns = {}
    for spec in check_model(model):
        if spec.level == "group":
            present = sorted(pd.unique(groups[spec.factor]), key=str)
            order = list(est.categories_[spec.factor])
            columns[spec.name] = [order.index(v) for v in present]
    errors = {s: [] for s in settings}
    for d in range(n_draws):
        params = {k: v[d][columns[k]] if k in columns else v[d] for k, v in draws.items()
                  if not k.startswith(("mu_", "omega_", "tau_"))}
        sd = np.stack([params[k] for k in noise], -1)[:, :, None]  # (wells, observables, 1)

        def clean(solver, dt):
            if dt is None:  # the estimator's dt=None: one step per interval (simulate's is finer)
                dt = float(np.max(np.diff(data.times)))
            return simulate(model, times=data.times, groups=groups, inputs=inputs, params=params,
                            solver=solver, dt=dt, random_state=0).clean

        ref = clean(*REFERENCE)
        for s in settings:
            errors[s].append(np.abs(clean(*s) - ref) / sd)  # (wells, observables, times)
    rows = []
    for (solver, dt), errs in errors.items():
        e = np.stack(errs)  # (draws, wells, observables, times)
        largest, rms = e.max(-1), np.sqrt((e ** 2).mean(-1))
        rows.append({"solver": solver, "dt": dt, "max_err_sd_median": float(np.median(largest)),
                     "max_err_sd_max": float(largest.max()), "rms_err_sd_median": float(np.median(rms)),
                     "rms_err_sd_max": float(rms.max())})
    return rows


def timing(args, data, X, train, settings):
    """Median epoch time per setting, the settings' estimators trained in turn."""
    meta = well_meta(data, train)
    ests = [study.make_estimator("white", study_args(args, *s)) for s in settings]
    seconds = [[] for _ in settings]
    for _ in range(args.timing_epochs):
        for est, out in zip(ests, seconds):
            t0 = time.perf_counter()
            fit_quietly(est, X[train], **meta)
            out.append(time.perf_counter() - t0)
    medians = [float(np.median(s[1:])) for s in seconds]
    return [{"solver": solver, "dt": dt, "epoch_seconds": m, "speedup_vs_first": medians[0] / m}
            for (solver, dt), m in zip(settings, medians)]


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = [parse_setting(s) for s in args.settings]
    data = study.load_data()
    _, train, test = next(study.cv_splits([1]))
    X, _ = study.scale(data.X, train, "all")
    head = study.header(study_args(args))
    head.update({"epochs": args.epochs, "wells": args.wells, "draws": args.draws,
                 "timing_epochs": args.timing_epochs, "reference": f"{REFERENCE[0]} dt={REFERENCE[1]}"})
    print(json.dumps({"header": head}), flush=True)

    est = study.make_estimator("white", study_args(args))
    meta = well_meta(data, train)
    for _ in range(args.epochs):
        fit_quietly(est, X[train], **meta)
    acc = accuracy(est, data, X, test[: args.wells], settings, args.draws, args.seed)
    cost = timing(args, data, X, train, settings)
    table = pd.DataFrame([{**a, **c} for a, c in zip(acc, cost)])
    for row in table.to_dict("records"):
        print(json.dumps(row), flush=True)
    out = args.out or study.RESULTS / "solver_steps.csv"
    write_table(out, {k: json.dumps(v) if isinstance(v, dict) else v for k, v in head.items()}, table)


if __name__ == "__main__":
    main()
