"""The double-receiver study's held-out curve against the reference implementation's.

Reads the CSVs that ``bench_double_receiver.py --mode cv`` wrote for fold 1 and draws
the held-out bound per well against training seconds, one line per run, for both of
the script's numbers (``heldout_logp_per_well``, the package's log p(y_new | training
data), and ``heldout_iwae_ref_per_well``, the reference implementation's kind of
bound), with the reference implementation's own points on fold 1 as issue 3 gives
them (900 nats/well after 204 s, 1,000 after 402 s, its best 1,072 after 873 s; a
2-core CPU at about 2.0 s per epoch).

Usage::

    python benchmarks/plot_double_receiver.py \\
        benchmarks/results/double_receiver_cv_white_same_settings_fold1_seed*.csv \\
        --out doc/_static/double_receiver_fold1.png
"""

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

# (training seconds, held-out bound per well) of the reference implementation on fold 1
REFERENCE = [(204.0, 900.0), (402.0, 1000.0), (873.0, 1072.0)]


def read_runs(paths):
    """One DataFrame per CSV: the rows of evaluations (epoch > 0), in order."""
    runs = []
    for path in paths:
        table = pd.read_csv(path, comment="#")
        runs.append((path, table[table["epoch"] > 0].sort_values("epoch")))
    return runs


def plot(runs, out, title):
    """Both held-out numbers against training seconds, the reference's points on top."""
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    for i, (_, run) in enumerate(runs):
        first = i == 0
        ax.plot(run["train_seconds"], run["heldout_logp_per_well"], color="tab:blue", lw=1.2,
                alpha=0.8, label="skhds: log p(y_new | training data)" if first else None)
        ax.plot(run["train_seconds"], run["heldout_iwae_ref_per_well"], color="tab:orange",
                lw=1.0, alpha=0.8, ls="--",
                label="skhds: the reference's kind of bound" if first else None)
    t_ref, b_ref = zip(*REFERENCE)
    ax.plot(t_ref, b_ref, "ks", ms=6, label="reference implementation (issue 3)")
    ax.axhline(1072.0, color="k", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("training wall time (s, log scale)")
    ax.set_ylabel("held-out bound (nats per well)")
    ax.set_ylim(600, None)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("csv", nargs="+", help="bench_double_receiver.py results (fold 1)")
    ap.add_argument("--out", required=True, help="PNG path")
    ap.add_argument("--title", default="Double receiver, fold 1, white box")
    args = ap.parse_args(argv)
    plot(read_runs(args.csv), args.out, args.title)


if __name__ == "__main__":
    main()
