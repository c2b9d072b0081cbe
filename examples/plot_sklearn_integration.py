"""
scikit-learn integration: grid search, pipelines, persistence, long format
==========================================================================

:class:`skhds.HierarchicalODEVAE` is an ordinary scikit-learn estimator on 3-D
input ``X`` of shape ``(n_series, n_observables, n_times)``. Per-series
metadata (``groups``, ``inputs``, ``times``) travel as keyword arguments. This
example shows

- a grid search over a *model* hyperparameter with group-aware
  cross-validation (``GroupKFold``) and metadata routing;
- a :class:`~sklearn.pipeline.Pipeline` that uses the estimator as a
  transformer (posterior means of the individual parameters) feeding a
  :class:`~sklearn.linear_model.LogisticRegression`;
- saving and loading with :mod:`joblib`;
- converting to and from long-format tables.

All fits are deliberately short (150-200 epochs), so the numbers illustrate
the mechanics rather than converged results.
"""

import os
import tempfile
import time
import warnings

import joblib
import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, GroupKFold, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skhds import HierarchicalODEVAE
from skhds.datasets import from_long_format, make_logistic_growth, to_long_format
from skhds.models import LogisticGrowth

data = make_logistic_growth(n_series=36, n_groups=3, n_times=20, random_state=0)
X, groups, times = data.X, data.groups, data.times
print("X:", X.shape, "strains:", sorted(set(groups)))

# %%
# Grid search with GroupKFold and metadata routing
# ------------------------------------------------
# With metadata routing enabled, ``groups`` and ``times`` passed to
# ``GridSearchCV.fit`` reach ``fit`` and ``score`` of the estimator in every
# fold (it requests them by default), and ``groups`` also reaches the
# splitter. ``GroupKFold`` over series ids would hold out series; here we hold
# out whole *strains*, so each test fold contains a strain never seen in
# training and is scored zero-shot from the learned group distribution (a
# ``UserWarning`` says so).
#
# CV slices every fit parameter whose length equals the number of series, so we
# pass the shared time grid as a per-series 2-D array. With three strains
# (three folds of 12 series) and short fits the fold-to-fold spread is large:
# read the comparison as a demonstration of the mechanics.
T = np.broadcast_to(times, (len(X), len(times)))
base = HierarchicalODEVAE(LogisticGrowth(), max_iter=150, n_importance_samples=8,
                          n_eval_samples=64, random_state=0)
grid = {"model__lag": [True, False]}
t0 = time.perf_counter()
with sklearn.config_context(enable_metadata_routing=True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning (short fits), zero-shot warnings
        search = GridSearchCV(base, grid, cv=GroupKFold(n_splits=3))
        search.fit(X, groups=groups, times=T)
print(f"grid search: {time.perf_counter() - t0:.1f} s")
for params, mean, sd in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"],
                            search.cv_results_["std_test_score"]):
    print(f"  {params}: held-out-strain score {mean:.2f} +/- {sd:.2f} nats/series")
print("best:", search.best_params_)

# %%
# The estimator as a transformer in a Pipeline
# --------------------------------------------
# With the carrying capacity as an *individual* parameter the model has no
# grouping factor; ``transform`` returns the posterior means of ``r``,
# ``tlag`` and ``K`` for each series, and a classifier predicts the strain from
# them. The strain labels are the classifier's target ``y``; the estimator
# ignores ``y`` because its model has no group parameters.
pipe = Pipeline([
    ("vae", HierarchicalODEVAE(LogisticGrowth(capacity="individual"), max_iter=200,
                               n_importance_samples=8, n_eval_samples=64, random_state=0)),
    ("scale", StandardScaler()),
    ("clf", LogisticRegression()),
])
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    pipe.fit(X, groups, vae__times=times)
print(f"pipeline fit: {time.perf_counter() - t0:.1f} s")
print("features:", list(pipe.named_steps["vae"].get_feature_names_out()))
print(f"training accuracy of the strain classifier: {pipe.score(X, groups):.2f}")
features = pipe.named_steps["vae"].transform(X)  # the shared grid seen in fit is the default
for s in sorted(set(groups)):
    print(f"  strain {s}: mean posterior K {features[groups == s, 2].mean():.2f}")

# %%
# Cross-validated accuracy of the whole pipeline: scikit-learn clones the
# pipeline, and with it the model, in every fold.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    acc = cross_val_score(pipe, X, groups, cv=3, params={"vae__times": times})
print(f"3-fold accuracy: {acc.mean():.2f} (chance 0.33)")

# %%
# Saving and loading
# ------------------
# Pickles hold numpy arrays (no device tensors, no training data); a loaded
# estimator predicts exactly as the original on the CPU.
est = pipe.named_steps["vae"]
path = os.path.join(tempfile.mkdtemp(), "vae.joblib")
joblib.dump(est, path)
loaded = joblib.load(path)
same = np.allclose(loaded.predict(X, times=times), est.predict(X, times=times))
print(f"saved {os.path.getsize(path) / 1024:.0f} KiB; identical predictions after loading: {same}")

# %%
# Long-format tables
# ------------------
# NLME data usually come as one row per observation. ``to_long_format`` turns
# arrays (or predictions with their standard deviations) into such a table;
# ``from_long_format`` turns a table back into ``X``, ``times``, ``inputs`` and
# ``groups`` (per-series NaN-padded time grids when the series are sampled at
# different times).
table = to_long_format(X, times, series_ids=[f"id{i}" for i in range(len(X))],
                       observable_names=["OD"])
table["strain"] = np.repeat(groups, len(times))
table = table.sample(frac=0.8, random_state=0)  # drop some rows: ragged series
print(table.head())
back = from_long_format(table, series="series", time="time", value="value",
                        observable="observable", groups=["strain"])
print("from long format:", back.X.shape, "times", back.times.shape,
      "groups", list(back.groups.columns))

mean, std = est.predict(back.X, times=back.times, return_std=True)
pred = to_long_format(mean, back.times, series_ids=back.series_ids, observable_names=["OD"],
                      std=std)
print(pred.head())

# %%
# Observed versus predicted for a few series from the round trip.
import matplotlib.pyplot as plt  # noqa: E402

fig, ax = plt.subplots(figsize=(6, 3.5))
for i in range(3):
    ok = ~np.isnan(back.times[i])
    line, = ax.plot(back.times[i, ok], mean[i, 0, ok], "-")
    ax.plot(back.times[i, ok], back.X[i, 0, ok], ".", color=line.get_color(),
            label=f"{back.series_ids[i]} ({back.groups['strain'][i]})")
ax.set_xlabel("time (h)")
ax.set_ylabel("density")
ax.legend(fontsize=8)
fig.tight_layout()
