"""
Getting started: fit, predict with bands, sample the posterior
==============================================================

A hierarchical logistic-growth problem with known truth: 60 series in three
strains, each series with its own growth rate and lag, each strain with its own
carrying capacity, and a shared initial density. We fit
:class:`skhds.HierarchicalODEVAE`, compare the posterior with the truth, and
plot the posterior predictive bands of a few series on a dense time grid.
"""

import numpy as np

from skhds import HierarchicalODEVAE
from skhds.datasets import make_logistic_growth

data = make_logistic_growth(random_state=0)
print(data.DESCR)

est = HierarchicalODEVAE(data.model, random_state=0)  # defaults: about 30 s on two CPU cores
est.fit(data.X, groups=data.groups, times=data.times)
print(f"trained {est.n_iter_} epochs; held-in score {est.score(data.X, groups=data.groups, times=data.times):.2f} nats/series")

# %%
# Population and group posteriors next to the truth
# -------------------------------------------------
summary = est.summary_.copy()
truth = []
for _, row in summary.iterrows():
    value = data.params.get(row["parameter"])
    if row["level"] == "group":
        value = value[list(est.categories_["strain"]).index(row["group_level"])]
    truth.append(value)
summary["truth"] = truth
print(summary[["parameter", "group_level", "mean", "sd", "q05", "q95", "truth"]].round(3).to_string())

rates = est.transform(data.X, groups=data.groups, times=data.times)[:, 0]
print(f"correlation of posterior-mean growth rates with the truth: "
      f"{np.corrcoef(rates, data.params['r'])[0, 1]:.3f}")

# %%
# Posterior predictive on a dense grid
# ------------------------------------
dense = np.linspace(0, data.times[-1], 121)
mean, std = est.predict(data.X, groups=data.groups, times=data.times,
                        prediction_times=dense, return_std=True)
try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:  # matplotlib is an optional dependency
    plt = None

if plt is not None:
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), sharey=True)
    for ax, i in zip(axes, [0, 1, 2]):
        ax.fill_between(dense, mean[i, 0] - 1.645 * std[i, 0], mean[i, 0] + 1.645 * std[i, 0],
                        alpha=0.25, label="90% predictive")
        ax.plot(dense, mean[i, 0], label="posterior predictive mean")
        ax.plot(data.times, data.X[i, 0], "k.", label="data")
        ax.set_title(f"series {i} (strain {data.groups[i]})")
        ax.set_xlabel("time (h)")
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig("quickstart.png", dpi=100)
    print("wrote quickstart.png")
