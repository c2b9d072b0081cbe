"""Figures of the validation report (doc/validation.rst) from the benchmark results.

Reads what ``bench_nuts.py``, ``bench_calibration.py`` and ``bench_recovery.py``
wrote to ``benchmarks/results`` and draws:

* ``nuts_<problem>.png``: posterior densities of the population quantities,
  NUTS against the variational and the importance-reweighted skhds posterior;
* ``recovery.png``: errors against the number of series, one line per noise level.

Usage::

    python benchmarks/plot_validation.py --results benchmarks/results --out doc/_static/validation
"""

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

STYLES = {"nuts": dict(color="k", lw=2.0, label="NUTS"),
          "variational": dict(color="tab:orange", lw=1.5, label="skhds, variational"),
          "importance": dict(color="tab:blue", lw=1.5, ls="--", label="skhds, importance")}


def plot_nuts(path, out):
    draws = np.load(path)
    names = sorted({k.split("__", 1)[1] for k in draws.files})
    columns = []
    for n in names:
        d = draws[f"nuts__{n}"]
        columns += [(n, j) for j in range(d.shape[1])] if d.ndim == 2 else [(n, None)]
    ncol = 4
    nrow = int(np.ceil(len(columns) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.0 * ncol, 2.2 * nrow), squeeze=False)
    for ax, (n, j) in zip(axes.flat, columns):
        samples = {lab: draws[f"{lab}__{n}"] for lab in STYLES}
        samples = {lab: (v if j is None else v[:, j]) for lab, v in samples.items()}
        lo = min(np.percentile(v, 0.5) for v in samples.values())
        hi = max(np.percentile(v, 99.5) for v in samples.values())
        bins = np.linspace(lo, hi, 40)
        for lab, v in samples.items():
            ax.hist(v, bins=bins, density=True, histtype="step", **STYLES[lab])
        ax.set_title(n if j is None else f"{n}[{j}]", fontsize=9)
        ax.set_yticks([])
    for ax in list(axes.flat)[len(columns):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def plot_recovery(path, out):
    table = pd.read_csv(path)
    metrics = [("rmse_log_r", "RMSE of log r (per series)"),
               ("rmse_log_tlag", "RMSE of log tlag (per series)"),
               ("relerr_omega_r", "relative error of omega_r"),
               ("relerr_sigma", "relative error of sigma")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 2.8))
    if "posterior" not in table:
        table["posterior"] = "variational"
    for ax, (col, title) in zip(axes, metrics):
        for (noise, method), sub in table.groupby(["noise", "posterior"]):
            sub = sub.groupby("n_series")[col].mean()
            ls = "--" if method == "variational" else "-"
            ax.plot(sub.index, sub.values, "o" + ls, label=f"noise {noise:g}, {method}")
        ax.set_xscale("log")
        ax.set_xlabel("number of series")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main():
    here = os.path.dirname(__file__)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default=os.path.join(here, "results"))
    parser.add_argument("--out", default=os.path.join(here, "..", "doc", "_static", "validation"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for problem in ("logistic", "pk"):
        path = os.path.join(args.results, f"nuts_{problem}_draws.npz")
        if os.path.exists(path):
            plot_nuts(path, os.path.join(args.out, f"nuts_{problem}.png"))
    path = os.path.join(args.results, "recovery.csv")
    if os.path.exists(path):
        plot_recovery(path, os.path.join(args.out, "recovery.png"))


if __name__ == "__main__":
    main()
