"""Gold standard: skhds posteriors against NUTS (NumPyro) on the same data and priors.

Two hierarchical ODE problems small enough for NUTS:

* ``logistic``: :func:`skhds.datasets.make_logistic_growth` (60 series, 3
  strains with their own carrying capacity, individual growth rate and lag,
  Gaussian noise), solved by Heun on the data grid in both packages (the same
  discretised model);
* ``pk``: :func:`skhds.datasets.make_pharmacokinetics` (40 subjects, one
  oral dose, 4-8 samples at irregular times, combined additive and
  proportional error); skhds integrates with RK4 (``dt=0.25``), NUTS uses
  the closed form.

The NumPyro model is built from the fitted estimator's own ``Hierarchy``
(every prior location and scale, hyperpriors included, is read from it), so
both packages target the same posterior; NUTS uses a non-centred
parameterisation of the same model. skhds is fitted with default settings
(``random_state=0``) and its posterior read in two ways: the variational
posterior (``sample_posterior()``) and the importance-reweighted one
(``sample_posterior(method="importance", refine=3)``).

For each quantity the script reports ``|mean_skhds - mean_NUTS| / sd_NUTS``
and ``sd_skhds / sd_NUTS``. Targets (statistical-validity issue): population
means within 0.25 NUTS sds, sds within 25%; per-series means within 0.5 sd.

Usage::

    pip install -e ".[benchmark]"   # numpyro, jax
    python benchmarks/bench_nuts.py --problem logistic pk --out benchmarks/results

Writes ``nuts_<problem>.csv`` (one row per quantity) and prints a summary.
"""

import argparse
import json
import os
import time
import warnings

import joblib
import numpy as np
import pandas as pd
import torch

from skhds import HierarchicalODEVAE
from skhds.datasets import make_logistic_growth, make_pharmacokinetics

from _common import cpu_model


# ----------------------------------------------------------------- problems
def logistic_problem():
    data = make_logistic_growth(random_state=0)
    est_kw = dict(random_state=0)
    fit_kw = dict(groups=data.groups, times=data.times)
    return data, est_kw, fit_kw


def pk_problem():
    data = make_pharmacokinetics(random_state=0)
    est_kw = dict(random_state=0, solver="rk4", dt=0.25)
    fit_kw = dict(inputs=data.inputs, times=data.times)
    return data, est_kw, fit_kw


PROBLEMS = {"logistic": logistic_problem, "pk": pk_problem}


# ------------------------------------------------------------- numpyro side
def _forward(prior, x):
    import jax.numpy as jnp

    name = type(prior.bijector).__name__
    if name == "Exp":
        return jnp.exp(x)
    if name == "Sigmoid":
        return 1.0 / (1.0 + jnp.exp(-x))
    return x


def numpyro_model_factory(est, data, problem, substeps=1):
    """A NumPyro model with exactly the priors of the estimator's hierarchy.

    ``data`` needs ``X``, ``times`` and (logistic) ``groups``; the logistic ODE
    is stepped by Heun with ``substeps`` steps per observation interval (the
    estimator's ``dt``: 1 for ``dt=None``).
    """
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    hier = est.vae_.hierarchy
    loc, scale = hier.prior_loc, hier.prior_scale
    N = data.X.shape[0]
    y = np.asarray(data.X[:, 0], dtype=float)
    mask = np.isfinite(y)
    y0 = np.where(mask, y, 0.0)
    codes = None
    if hier.group:
        cats = list(est.categories_["strain"])
        codes = np.array([cats.index(g) for g in data.groups])

    if problem == "logistic":
        times = np.asarray(data.times, dtype=float)
        h = np.diff(times) / substeps

        def mean_fn(p):
            r, tlag, K, x0 = p["r"], p["tlag"], p["K"][codes], p["x0"]

            def f(t, x):
                return r / (1.0 + jnp.exp(-4.0 * (t - tlag))) * x * (1.0 - x / K)

            def step(x, th):
                t, dt = th
                for j in range(substeps):
                    k1 = f(t + j * dt, x)
                    k2 = f(t + (j + 1) * dt, x + dt * k1)
                    x = x + 0.5 * dt * (k1 + k2)
                return x, x

            x_init = jnp.broadcast_to(x0, (N,))
            _, xs = jax.lax.scan(step, x_init, (times[:-1], h))
            return jnp.concatenate([x_init[None], xs], 0).T  # (N, T)

        def sd_fn(p, m):
            return p["sigma_x"] * jnp.ones_like(m)
    else:
        times = np.where(mask, np.nan_to_num(np.asarray(data.times, dtype=float)), 1.0)
        dose = np.asarray(data.inputs[:, 0], dtype=float)

        def mean_fn(p):
            ka, cl, v = p["ka"][:, None], p["CL"][:, None], p["V"][:, None]
            ke = cl / v
            return dose[:, None] * ka / (v * (ka - ke)) * (jnp.exp(-ke * times) - jnp.exp(-ka * times))

        def sd_fn(p, m):
            return jnp.sqrt(p["a_C"] ** 2 + (p["b_C"] * m) ** 2)

    def model():
        p = {}
        for s in hier.population:
            i = hier.pop_index[s.name]
            p[s.name] = _forward(s.prior, numpyro.sample(s.name + "_u", dist.Normal(loc[i], scale[i])))
        for s in hier.individual:
            i_mu, i_om = hier.ind_index[s.name]
            mu = numpyro.sample(f"mu_{s.name}", dist.Normal(loc[i_mu], scale[i_mu]))
            log_om = numpyro.sample(f"log_omega_{s.name}", dist.Normal(loc[i_om], scale[i_om]))
            numpyro.deterministic(f"omega_{s.name}", jnp.exp(log_om))
            with numpyro.plate(f"series_{s.name}", N):
                eta = numpyro.sample(f"eta_{s.name}", dist.Normal(0.0, 1.0))
            p[s.name] = numpyro.deterministic(s.name, _forward(s.prior, mu + jnp.exp(log_om) * eta))
        for s in hier.group:
            i_mu, i_tau, _ = hier.grp_index[s.name]
            mu = numpyro.sample(f"mu_{s.name}", dist.Normal(loc[i_mu], scale[i_mu]))
            log_tau = numpyro.sample(f"log_tau_{s.name}", dist.Normal(loc[i_tau], scale[i_tau]))
            numpyro.deterministic(f"tau_{s.name}", jnp.exp(log_tau))
            with numpyro.plate(f"levels_{s.name}", hier.n_levels[s.factor]):
                eta = numpyro.sample(f"eta_{s.name}", dist.Normal(0.0, 1.0))
            p[s.name] = numpyro.deterministic(s.name, _forward(s.prior, mu + jnp.exp(log_tau) * eta))
        for s in hier.population:
            numpyro.deterministic(s.name, p[s.name])
        m = mean_fn(p)
        m = jnp.where(jnp.isfinite(m), m, 1e6)  # an overflowing simulation: zero likelihood
        sd = sd_fn(p, m)
        ll = jnp.where(mask, dist.Normal(m, sd).log_prob(y0), 0.0)
        numpyro.factor("loglik", ll.sum())

    return model


def run_nuts(model, seed=0, warmup=1000, samples=1000, chains=2):
    import jax
    from numpyro.infer import MCMC, NUTS, init_to_median

    kernel = NUTS(model, target_accept_prob=0.9, init_strategy=init_to_median)
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=samples, num_chains=chains,
                chain_method="sequential", progress_bar=False)
    t = time.time()
    mcmc.run(jax.random.PRNGKey(seed))
    elapsed = time.time() - t
    from numpyro.diagnostics import summary

    draws = mcmc.get_samples()
    grouped = mcmc.get_samples(group_by_chain=True)
    diag = summary({k: v for k, v in grouped.items()}, group_by_chain=True)
    rhat = max(float(np.nanmax(np.asarray(d["r_hat"]))) for d in diag.values())
    n_eff = min(float(np.nanmin(np.asarray(d["n_eff"]))) for d in diag.values())
    n_div = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
    return {k: np.asarray(v, dtype=float) for k, v in draws.items()}, elapsed, rhat, n_eff, n_div


# ------------------------------------------------------------------ compare
def compare(est, ref, skhds_draws, label):
    hier = est.vae_.hierarchy
    names = [s.name for s in hier.population]
    for s in hier.individual:
        names += [f"mu_{s.name}", f"omega_{s.name}"]
    for s in hier.group:
        names += [f"mu_{s.name}", f"tau_{s.name}", s.name]
    group_names = {s.name for s in hier.group}
    rows = []
    for n in names:
        a, b = np.asarray(skhds_draws[n]), np.asarray(ref[n])
        a = a.reshape(a.shape[0], -1)
        b = b.reshape(b.shape[0], -1)
        for j in range(a.shape[1]):
            sd_ref = b[:, j].std()
            rows.append({"posterior": label, "quantity": n if a.shape[1] == 1 else f"{n}[{j}]",
                         "level": "group" if n in group_names else "population",
                         "nuts_mean": b[:, j].mean(), "nuts_sd": sd_ref,
                         "skhds_mean": a[:, j].mean(), "skhds_sd": a[:, j].std(),
                         "mean_err_sd": abs(a[:, j].mean() - b[:, j].mean()) / sd_ref,
                         "sd_ratio": a[:, j].std() / sd_ref})
    for s in hier.individual:
        a, b = skhds_draws[s.name], ref[s.name]
        # compare on the unconstrained (log) scale, where the posteriors are near-Gaussian
        la, lb = np.log(a), np.log(b)
        err = np.abs(la.mean(0) - lb.mean(0)) / lb.std(0)
        ratio = la.std(0) / lb.std(0)
        rows.append({"posterior": label, "quantity": f"{s.name} (per series, median)",
                     "level": "individual", "mean_err_sd": float(np.median(err)),
                     "sd_ratio": float(np.median(ratio))})
        rows.append({"posterior": label, "quantity": f"{s.name} (per series, max)",
                     "level": "individual", "mean_err_sd": float(np.max(err)),
                     "sd_ratio": float(ratio[np.argmax(np.abs(np.log(ratio)))])})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problem", nargs="+", default=["logistic", "pk"], choices=sorted(PROBLEMS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--draws", type=int, default=4000)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--cache", default=None,
                        help="folder to keep fitted estimators in (reused when present)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    import jax
    import numpyro

    for problem in args.problem:
        data, est_kw, fit_kw = PROBLEMS[problem]()
        cached = os.path.join(args.cache, f"{problem}.joblib") if args.cache else None
        t = time.time()
        if cached and os.path.exists(cached):
            est = joblib.load(cached)
        else:
            est = HierarchicalODEVAE(data.model, **est_kw)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                est.fit(data.X, **fit_kw)
            if cached:
                os.makedirs(args.cache, exist_ok=True)
                joblib.dump(est, cached)
        t_fit = time.time() - t
        t = time.time()
        var = est.sample_posterior(data.X, n_draws=args.draws, **fit_kw)
        t_var = time.time() - t
        t = time.time()
        imp = est.sample_posterior(data.X, n_draws=args.draws, method="importance", refine=3, **fit_kw)
        t_imp = time.time() - t
        nuts_cached = os.path.join(args.cache, f"{problem}_nuts.joblib") if args.cache else None
        if nuts_cached and os.path.exists(nuts_cached):
            ref, t_nuts, rhat, n_eff, n_div = joblib.load(nuts_cached)
        else:
            ref, t_nuts, rhat, n_eff, n_div = run_nuts(numpyro_model_factory(est, data, problem),
                                                        warmup=args.warmup, samples=args.samples)
            if nuts_cached:
                joblib.dump((ref, t_nuts, rhat, n_eff, n_div), nuts_cached)
        rows = compare(est, ref, var, "variational") + compare(est, ref, imp, "importance")
        keep = sorted({r["quantity"].split("[")[0] for r in rows if r["level"] != "individual"})
        np.savez_compressed(
            os.path.join(args.out, f"nuts_{problem}_draws.npz"),
            **{f"{label}__{k}": np.asarray(d[k], dtype=np.float32)[: args.draws]
               for label, d in (("nuts", ref), ("variational", var), ("importance", imp)) for k in keep})
        table = pd.DataFrame(rows)
        table.to_csv(os.path.join(args.out, f"nuts_{problem}.csv"), index=False, float_format="%.4g")
        pop = table[table.level != "individual"]
        summary = {
            "problem": problem, "n_series": int(data.X.shape[0]), "fit_s": round(t_fit, 1),
            "epochs": int(est.n_iter_), "variational_s": round(t_var, 2), "importance_s": round(t_imp, 1),
            "nuts_s": round(t_nuts, 1), "nuts_max_rhat": round(rhat, 3), "nuts_min_ess": round(n_eff),
            "nuts_divergences": n_div,
        }
        for label in ("variational", "importance"):
            p = pop[pop.posterior == label]
            ind = table[(table.level == "individual") & (table.posterior == label)]
            summary[label] = {
                "pop_max_mean_err_sd": round(float(p.mean_err_sd.max()), 3),
                "pop_frac_mean_within_0.25": round(float((p.mean_err_sd <= 0.25).mean()), 3),
                "pop_frac_sd_within_25pct": round(float(((p.sd_ratio - 1).abs() <= 0.25).mean()), 3),
                "ind_median_mean_err_sd": round(float(ind[ind.quantity.str.contains("median")]
                                                      .mean_err_sd.max()), 3),
            }
        summary.update(machine=cpu_model(), torch=torch.__version__,
                       numpyro=numpyro.__version__, jax=jax.__version__, threads=args.threads)
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
