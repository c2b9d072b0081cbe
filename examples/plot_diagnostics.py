"""
Diagnostics: training curves, importance weights, posteriors and VPC
=====================================================================

After a fit, check four things before trusting the results:

1. **Training curves** (``history_``): has the bound stopped improving, were
   steps skipped or rolled back, did simulations fail?
2. **Importance-sampling diagnostics**: the effective sample size (ESS) and
   the Pareto-:math:`\\hat k` of each series' importance weights tell whether
   the amortised encoder proposes well; flagged series have unreliable
   ``score``/``predict`` estimates.
3. **Posterior densities against their priors**: which parameters the data
   inform, and which stay at their prior; and, for the importance-reweighted
   posterior, its Monte Carlo error.
4. **Visual predictive check (VPC)**: do data simulated from the fitted model
   look like the observed data?

All figures come from :mod:`skhds.plotting` (matplotlib, an optional
dependency). The fit is short, to keep the example fast.
"""

import time
import warnings

from skhds import HierarchicalODEVAE
from skhds.datasets import make_logistic_growth
from skhds.plotting import (
    plot_importance_diagnostics,
    plot_individual_parameters,
    plot_posteriors,
    plot_training_curves,
    plot_vpc,
)

data = make_logistic_growth(n_series=45, random_state=0)
fit_args = dict(groups=data.groups, times=data.times)

est = HierarchicalODEVAE(data.model, max_iter=100, n_importance_samples=16,
                         n_eval_samples=256, random_state=0)
t0 = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # ConvergenceWarning: 100 epochs is a short fit
    est.fit(data.X, **fit_args)
print(f"{est.n_iter_} epochs in {time.perf_counter() - t0:.1f} s")

# %%
# Training curves
# ---------------
# ``history_`` has one row per epoch: ``loss`` (negative bound per series),
# ``log_lik_bound``, ``kl_global``, ``grad_norm``, ``ess`` (mean effective
# sample size of the training importance weights), ``zero_weight_samples``,
# ``failed_series``, ``skipped_steps``, ``rollbacks``, ``learning_rate`` and
# ``time``.
print(est.history_[["loss", "ess", "grad_norm", "zero_weight_samples"]].tail(3).round(3))
fig = plot_training_curves(est)

# %%
# Importance-sampling diagnostics
# -------------------------------
# ``importance_diagnostics`` evaluates ``n_eval_samples`` importance weights
# per series and reports their ESS (and ESS as a fraction of the number of
# samples), the Pareto-:math:`\hat k` shape of the largest weights, and a
# ``flagged`` column. As a rule of thumb, :math:`\hat k > 0.7` means the
# importance-weighted estimates for that series are unreliable: train longer,
# raise ``n_importance_samples`` or ``n_eval_samples``, or check the model.
diag = est.importance_diagnostics(data.X, **fit_args)
print(diag.describe().loc[["mean", "min", "max"]].round(3))
print(f"flagged series: {int(diag['flagged'].sum())} of {len(diag)}")

# %%
# After 100 short epochs most series are flagged: the encoder has not yet
# learned good proposals. The first remedy is to continue training
# (``warm_start=True`` keeps the networks and the optimiser state), here with
# more importance samples, and to check again. If many series stay flagged, as
# they may in a fit this short, treat their per-series scores and predictive
# bands as rough: each importance sample also carries its own draw of the
# population and group quantities, so the weights vary a lot. Raising
# ``n_eval_samples`` reduces the variance of the estimates; a model that cannot
# reproduce a series' shape keeps it flagged whatever the training.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    est.set_params(warm_start=True, max_iter=400, n_importance_samples=32).fit(data.X, **fit_args)
diag = est.importance_diagnostics(data.X, **fit_args)
print(f"loss over the last 10 epochs: {est.history_['loss'].tail(10).mean():.2f}")
print(f"after {est.n_iter_} epochs: median ESS {diag['ess'].median():.1f} of "
      f"{est.n_eval_samples}, median Pareto-k {diag['pareto_k'].median():.2f}, "
      f"flagged {int(diag['flagged'].sum())} of {len(diag)}")
fig = plot_importance_diagnostics(est, data.X, **fit_args)

# %%
# Posterior densities with their priors
# -------------------------------------
# Population and group quantities drawn from the variational posterior, over
# the prior they started from. A posterior that is as wide as its prior is not
# informed by the data.
fig = plot_posteriors(est, n_draws=2000, prior=True)

# %%
# The importance-reweighted posterior and its Monte Carlo error
# -------------------------------------------------------------
# ``sample_posterior(method="importance")`` reweights the population and group
# quantities by the data (it removes the variational posterior's biases; see
# the validation report). It is a Monte Carlo answer. With
# ``return_diagnostics=True`` it also reports:
#
# - the Pareto-:math:`\hat k` and effective sample size of the global weights;
# - each quantity's Monte Carlo standard error, here in posterior sds.
#
# The single-run error comes from the weights and is a floor. Pass
# ``n_replicates=4`` to estimate the whole error from independent runs.
draws, info = est.sample_posterior(data.X, **fit_args, method="importance", refine=3,
                                   n_draws=1000, return_diagnostics=True, random_state=0)
print(f"global weights: Pareto-k {info['pareto_k'][0]:.2f}, "
      f"effective sample size {info['ess'][0]:.0f} of 1000")
for name in ("mu_r", "omega_r", "sigma_x"):
    print(f"{name}: {draws[name].mean():.3f} +- {draws[name].std():.3f} "
          f"(Monte Carlo error {info['mcse_sd'][name]:.2f} sds)")

# %%
# Between-series distributions
# ----------------------------
# Posterior means of each series' growth rate and lag, by strain, with the
# learned population distribution of each (location ``mu``, spread ``omega``).
fig = plot_individual_parameters(est, data.X, **fit_args, by="strain")

# %%
# Visual predictive check
# -----------------------
# ``plot_vpc`` simulates ``n_replicates`` data sets from the fitted model and
# overlays the observed 5%, 50% and 95% quantiles over time on the
# replicates' prediction intervals of the same quantiles. Observed quantiles
# outside the bands point to a misspecified dynamic, hierarchy or noise model.
fig = plot_vpc(est, data.X, **fit_args, n_replicates=50, quantiles=(0.05, 0.5, 0.95),
               random_state=0)
