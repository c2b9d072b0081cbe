"""
Writing your own model: white box, black box and mixed
=======================================================

A model is a small :class:`skhds.ODEModel` subclass: class attributes name the
states, observables, inputs and grouping factors; ``declare_parameters`` lists
the parameters with their priors and levels; ``initial_state`` and ``rhs``
define the ODE. Neural parts are ordinary :class:`torch.nn.Module` attributes
and are trained together with the encoder.

We use a one-compartment pharmacokinetic (PK) model with first-order
absorption, simulated on irregular, ragged per-subject sampling times, and fit
three models to the same data:

1. the **white-box** model that generated the data;
2. a **black-box** model whose right-hand side is a small neural network;
3. a **mixed** model: known (white-box) linear elimination, learned (neural)
   absorption.

Each fit is kept small so the example runs in well under a minute; these are
illustrations, not converged fits.
"""

import math
import time
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from torch import nn

from skhds import HierarchicalODEVAE, ODEModel, Parameter
from skhds.datasets import simulate
from skhds.distributions import LogNormal, Normal
from skhds.models import Combined

warnings.filterwarnings("ignore", category=ConvergenceWarning)

# %%
# The white-box model
# -------------------
# Two states, the drug amount in the gut and in the central compartment:
#
# .. math::
#
#    \dot A_g = -k_a A_g, \qquad \dot A_c = k_a A_g - \frac{CL}{V} A_c, \qquad
#    A_g(0) = \mathrm{dose}, \; A_c(0) = 0,
#
# observed as the concentration :math:`C = A_c / V` with combined additive and
# proportional error. Clearance ``CL`` and volume ``V`` vary per subject
# (log-normal between-subject variability); the absorption rate ``ka`` depends
# on the formulation (tablet or solution), a grouping factor. The dose is a
# per-series input: every entry of ``params`` and ``inputs`` broadcasts to
# ``(series, importance samples)`` and :meth:`~skhds.ODEModel.stack` builds the
# state vector.


class OneCompartment(ODEModel):
    states = ("gut", "central")
    observables = ("conc",)
    inputs = ("dose",)
    factors = ("formulation",)

    def __init__(self, noise=None):
        super().__init__()
        self.noise = noise if noise is not None else Combined()

    def declare_parameters(self):
        return [
            Parameter("ka", LogNormal(math.log(1.0), 0.5), level="group", factor="formulation"),
            Parameter("CL", LogNormal(math.log(2.0), 0.3), level="individual"),
            Parameter("V", LogNormal(math.log(10.0), 0.2), level="individual"),
        ]

    def initial_state(self, params, inputs):
        return self.stack(inputs["dose"] * torch.ones_like(params["CL"]), 0.0)

    def rhs(self, t, x, params, inputs):
        gut, central = x[..., 0], x[..., 1]
        absorption = params["ka"] * gut
        return self.stack(-absorption, absorption - params["CL"] / params["V"] * central)

    def observe(self, x, params, inputs):
        # x is time-major (S, K, T, n_states); parameters carry a trailing time axis
        return self.stack(x[..., 1] / params["V"])


# %%
# Simulated study with irregular, ragged sampling
# -----------------------------------------------
# 64 subjects, two formulations, doses of 50, 100 or 200 mg. Each subject is
# sampled at its own times (a nominal schedule over 12 hours with +-15% jitter)
# and misses between 0 and 4 of the last samples; the grids are NaN-padded at
# the end to a common length (a 2-D ``times`` array).

rng = np.random.RandomState(0)
n_subjects = 64
nominal = np.array([0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 12.0])
times = np.sort(nominal * np.exp(rng.uniform(-0.15, 0.15, size=(n_subjects, len(nominal)))), axis=1)
n_kept = rng.randint(6, len(nominal) + 1, size=n_subjects)  # later samples missed
for i in range(n_subjects):
    times[i, n_kept[i]:] = np.nan
formulation = np.where(np.arange(n_subjects) % 2 == 0, "tablet", "solution")
dose = rng.choice([50.0, 100.0, 200.0], size=n_subjects)[:, None]

truth_model = OneCompartment(noise=Combined())
sim = simulate(truth_model, times=times, groups=formulation, inputs=dose,
               params={"ka": np.array([2.0, 0.6]), "a_conc": 0.1, "b_conc": 0.1},
               random_state=0)
X = np.where(np.isnan(times)[:, None, :], np.nan, sim.X)
print("X:", X.shape, "levels:", list(sim.levels["formulation"]),
      "samples per subject:", np.bincount(n_kept)[6:])

train, test = np.arange(48), np.arange(48, 64)


def split(idx):
    return dict(groups=formulation[idx], inputs=dose[idx], times=times[idx])


# %%
# Fit the white-box model
# -----------------------
# ``dt`` bounds the solver step: observation intervals of several hours would
# otherwise be single Heun steps. One minibatch of all 48 training subjects per
# epoch, a small encoder and at most 400 epochs keep each fit to seconds
# (short fits: we silence the ``ConvergenceWarning``).
common = dict(max_iter=400, batch_size=48, n_hidden=32, n_importance_samples=8,
              n_eval_samples=128, dt=1.0, learning_rate=0.03, random_state=0)
t0 = time.perf_counter()
white = HierarchicalODEVAE(OneCompartment(), **common)
white.fit(X[train], **split(train))
print(f"white box: {white.n_iter_} epochs in {time.perf_counter() - t0:.1f} s")

summary = white.summary_
ka_rows = summary[summary["parameter"] == "ka"]
for _, row in ka_rows.iterrows():
    lev = list(sim.levels["formulation"]).index(row["group_level"])
    print(f"ka[{row['group_level']}]: posterior mean {row['mean']:.2f} "
          f"(90% {row['q05']:.2f}-{row['q95']:.2f}), truth {sim.params['ka'][lev]:.2f}")

hyper = summary.set_index("parameter")
for name, true in [("mu_CL", math.log(2.0)), ("omega_CL", 0.3), ("mu_V", math.log(10.0)),
                   ("omega_V", 0.2), ("a_conc", 0.1), ("b_conc", 0.1)]:
    print(f"{name}: posterior mean {hyper.loc[name, 'mean']:.2f}, truth {true:.2f}")

ind = white.transform(X[train], **split(train))
names = list(white.get_feature_names_out())
for j, name in enumerate(names):
    r = np.corrcoef(ind[:, j], sim.params[name][train])[0, 1]
    print(f"{name}: correlation of posterior means with the truth {r:.2f}")

# %%
# Posterior versus truth
# ----------------------
import matplotlib.pyplot as plt  # noqa: E402

fig, axes = plt.subplots(1, 3, figsize=(11, 3.3))
for ax, j, name in zip(axes[:2], range(2), names):
    ax.plot(sim.params[name][train], ind[:, j], "o", ms=4)
    lo, hi = np.min(sim.params[name][train]), np.max(sim.params[name][train])
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel(f"true {name}")
    ax.set_ylabel(f"posterior mean {name}")
dense = np.linspace(0, 14, 57)
i = 0
mean, std = white.predict(X[train][[i]], groups=formulation[[i]], inputs=dose[[i]],
                          times=times[[i]], prediction_times=dense, return_std=True)
axes[2].fill_between(dense, mean[0, 0] - 1.645 * std[0, 0], mean[0, 0] + 1.645 * std[0, 0],
                     alpha=0.3, label="90% predictive")
axes[2].plot(dense, mean[0, 0], label="predictive mean")
axes[2].plot(times[i], X[i, 0], "k.", label="data")
axes[2].set_xlabel("time (h)")
axes[2].set_title(f"subject {i} ({formulation[i]}, {dose[i, 0]:.0f} mg)")
axes[2].legend(fontsize=7)
fig.tight_layout()

# %%
# Dose response
# -------------
# Predicted (mean and 90% band) and observed concentrations against the dose,
# 1 h and 6 h after dosing (observations at each subject's nearest sample time).
from skhds.plotting import plot_dose_response  # noqa: E402

fig = plot_dose_response(white, X[train], inputs=dose[train], input_name="dose",
                         at_times=[1.0, 6.0], **{k: v for k, v in split(train).items()
                                                  if k != "inputs"})

# %%
# A black-box model
# -----------------
# The right-hand side is a small network of the state, two individual latent
# variables (standard-normal priors) and the log dose. Its layers are module
# attributes created in ``__init__``, so the estimator trains them; because
# the estimator clones the model at ``fit``, network sizes are constructor
# hyperparameters (``set_params(model__n_hidden=...)`` works).


class NeuralPK(ODEModel):
    states = ("a", "c")
    observables = ("conc",)
    inputs = ("dose",)

    def __init__(self, n_latent=2, n_hidden=16, noise=None):
        super().__init__()
        self.n_latent = n_latent
        self.n_hidden = n_hidden
        self.noise = noise if noise is not None else Combined()
        self.net = nn.Sequential(nn.Linear(2 + n_latent + 1, n_hidden), nn.Tanh(),
                                 nn.Linear(n_hidden, 2))

    def declare_parameters(self):
        return [Parameter(f"z{k}", Normal(0.0, 1.0), level="individual")
                for k in range(self.n_latent)]

    def initial_state(self, params, inputs):
        return self.stack(inputs["dose"] / 100.0 * torch.ones_like(params["z0"]), 0.0)

    def rhs(self, t, x, params, inputs):
        cond = self.stack(*[params[f"z{k}"] for k in range(self.n_latent)],
                          torch.log(inputs["dose"] / 100.0))
        cond = cond.expand(x.shape[:-1] + cond.shape[-1:])
        return self.net(torch.cat([x, cond], dim=-1))

    def observe(self, x, params, inputs):
        return 10.0 * x[..., 1:2]


t0 = time.perf_counter()
black = HierarchicalODEVAE(NeuralPK(), **common).fit(X[train], **split(train))
print(f"black box: {black.n_iter_} epochs in {time.perf_counter() - t0:.1f} s")

# %%
# A mixed model: white-box elimination, neural absorption
# -------------------------------------------------------
# Elimination keeps its mechanistic form with individual ``CL`` and ``V``;
# the absorption flux is ``A_g * softplus(net(A_g / dose, z))``, a learned
# (possibly non-first-order) absorption with one individual latent.


class NeuralAbsorption(ODEModel):
    states = ("gut", "central")
    observables = ("conc",)
    inputs = ("dose",)

    def __init__(self, n_hidden=16, noise=None):
        super().__init__()
        self.n_hidden = n_hidden
        self.noise = noise if noise is not None else Combined()
        self.absorption = nn.Sequential(nn.Linear(2, n_hidden), nn.Tanh(), nn.Linear(n_hidden, 1))

    def declare_parameters(self):
        return [
            Parameter("CL", LogNormal(math.log(2.0), 0.3), level="individual"),
            Parameter("V", LogNormal(math.log(10.0), 0.2), level="individual"),
            Parameter("z", Normal(0.0, 1.0), level="individual"),
        ]

    def initial_state(self, params, inputs):
        return self.stack(inputs["dose"] * torch.ones_like(params["CL"]), 0.0)

    def rhs(self, t, x, params, inputs):
        gut, central = x[..., 0], x[..., 1]
        feats = self.stack(gut / inputs["dose"], params["z"].expand_as(gut))
        rate = nn.functional.softplus(self.absorption(feats))[..., 0]
        flux = rate * gut
        return self.stack(-flux, flux - params["CL"] / params["V"] * central)

    def observe(self, x, params, inputs):
        return self.stack(x[..., 1] / params["V"])


t0 = time.perf_counter()
mixed = HierarchicalODEVAE(NeuralAbsorption(), **common).fit(X[train], **split(train))
print(f"mixed: {mixed.n_iter_} epochs in {time.perf_counter() - t0:.1f} s")

# %%
# Held-out comparison
# -------------------
# :meth:`~skhds.HierarchicalODEVAE.score` is the mean per-series
# importance-weighted estimate of :math:`\log p(y_i \mid \text{training data})`
# (higher is better) on the 16 held-out subjects. The black-box model knows
# nothing about formulations (it has no group factor), so it can only absorb
# the formulation effect through its individual latents.
scores = {name: est.score(X[test], **split(test))
          for name, est in [("white box", white), ("black box", black), ("mixed", mixed)]}
for name, s in scores.items():
    print(f"{name:10s} held-out score {s:8.2f} nats/subject")

fig, ax = plt.subplots(figsize=(5, 3))
ax.bar(list(scores), list(scores.values()))
ax.set_ylabel("held-out score (nats/subject)")
fig.tight_layout()
