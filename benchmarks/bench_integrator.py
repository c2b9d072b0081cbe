"""Integrator throughput: ``skhds.solvers.odeint`` against torchdiffeq and torchode.

Every library integrates the same right-hand side (the double-receiver
dynamics of :class:`skhds.models.DoubleReceiver`, written once below as a
plain function of a ``(B, 8)`` state and ``(B,)`` parameters) with Heun's
method on the same fixed grid (86 output times, one step per interval: the
study's setting), in float32, for ``B`` trajectories. Two timings per
library and batch size, each the median of ``--repeats`` runs after a warm-up:

* ``forward``: the solve without autograd;
* ``forward_backward``: the solve with autograd on the parameters, then the
  gradient of ``sum(trajectory**2)`` (discretise-then-optimise: backprop
  through the steps, which is what training uses).

The study's shape is ``B = 7200`` (36 series x 200 importance samples).
The right-hand side is written the way the reference implementation writes
it (receptor activation recomputed at every stage); it is the baseline of
``bench_minibatch.py`` too. ``skhds`` solves it as a batch ``(S = B, K = 1)``.

torchdiffeq and torchode are benchmark-only dependencies
(``pip install -e ".[benchmark]"``); a library that is not installed is skipped.

With ``--compile``, ``skhds_compiled`` is skhds with the compiled step
(``odeint(..., compile=True)``, the solver behind ``compile_solver=True``); its
compilation happens in the first calls, which are timed apart (``first_calls_s``)
and not in the medians.

Usage::

    python benchmarks/bench_integrator.py --batch 100 1000 7200 100000 --threads 1
"""

import argparse
import functools
import json
import platform
import time

import torch

from _common import cpu_model, timed, write_table
from skhds.solvers import odeint

N_STATES = 8
PARAM_NAMES = ("r", "K", "tlag", "rc", "KR6", "KR12", "nR", "KS6", "KS12", "nS", "e76", "e81",
               "KGR_76", "KGS_76", "KGR_81", "KGS_81", "aYFP", "aCFP", "a530", "a480", "aR", "aS",
               "drfp", "dyfp", "dcfp", "dR", "dS")


def make_params(B, seed=0, requires_grad=False):
    """Plausible parameter values (the model's prior medians, jittered) and inputs."""
    g = torch.Generator().manual_seed(seed)
    centre = dict(r=1.0, K=2.7, tlag=1.0, rc=1.0, KR6=2.5e-3, KR12=6e-6, nR=1.0, KS6=6e-6,
                  KS12=2.5e-3, nS=1.0, e76=0.05, e81=0.05, KGR_76=7.4, KGS_76=0.14, KGR_81=0.14,
                  KGS_81=7.4, aYFP=1.0, aCFP=1.0, a530=7e-3, a480=7e-3, aR=1.0, aS=1.0,
                  drfp=0.14, dyfp=0.14, dcfp=0.14, dR=0.14, dS=0.14)
    p = {k: (v * torch.exp(0.1 * torch.randn(B, generator=g))).requires_grad_(requires_grad)
         for k, v in centre.items()}
    c = 25000.0 / 3.0 ** torch.randint(0, 10, (2, B), generator=g).float()
    return p, {"C6": c[0], "C12": c[1]}


def rhs(t, x, p, u):
    """Double-receiver dynamics: ``x`` (B, 8), ``p`` and ``u`` values (B,)."""
    xx, rfp, yfp, cfp, f530, f480, luxR, lasR = x.unbind(-1)
    gamma = p["r"] * torch.sigmoid(4.0 * (t - p["tlag"])) * (1.0 - xx / p["K"])
    a6, a12 = p["KR6"] * u["C6"], p["KR12"] * u["C12"]
    fR = (a6 ** p["nR"] + a12 ** p["nR"]) / (1.0 + a6 + a12) ** p["nR"]
    s6, s12 = p["KS6"] * u["C6"], p["KS12"] * u["C12"]
    fS = (s6 ** p["nS"] + s12 ** p["nS"]) / (1.0 + s6 + s12) ** p["nS"]
    bR, bS = luxR * luxR * fR, lasR * lasR * fS
    gr76, gs76 = p["KGR_76"] * bR, p["KGS_76"] * bS
    gr81, gs81 = p["KGR_81"] * bR, p["KGS_81"] * bS
    P76 = (p["e76"] + gr76 + gs76) / (1.0 + gr76 + gs76)
    P81 = (p["e81"] + gr81 + gs81) / (1.0 + gr81 + gs81)
    rc = p["rc"]
    return torch.stack([
        gamma * xx,
        rc - (gamma + p["drfp"]) * rfp,
        rc * p["aYFP"] * P81 - (gamma + p["dyfp"]) * yfp,
        rc * p["aCFP"] * P76 - (gamma + p["dcfp"]) * cfp,
        rc * p["a530"] - gamma * f530,
        rc * p["a480"] - gamma * f480,
        rc * p["aR"] - (gamma + p["dR"]) * luxR,
        rc * p["aS"] - (gamma + p["dS"]) * lasR,
    ], -1)


def x0_for(B):
    x0 = torch.zeros(B, N_STATES)
    x0[:, 0] = 0.002
    return x0


def solve_skhds(p, u, times, compile=False):
    """skhds's solver; ``compile=True``: the compiled step (``odeint(..., compile=True)``)."""
    x0 = x0_for(len(p["r"])).unsqueeze(1)  # (S, K=1, n)

    def func(t, x):  # t (1, 1), x (B, 1, n)
        return rhs(t.reshape(1), x[:, 0], p, u).unsqueeze(1)

    return odeint(func, x0, times, method="heun", compile=compile)[:, 0]  # (B, n, T)


def solve_torchdiffeq(p, u, times):
    import torchdiffeq

    out = torchdiffeq.odeint(lambda t, x: rhs(t, x, p, u), x0_for(len(p["r"])), times,
                             method="heun2")
    return out.permute(1, 2, 0)  # (T, B, n) -> (B, n, T)


def solve_torchode(p, u, times):
    import torchode as to

    B = len(p["r"])
    term = to.ODETerm(lambda t, x: rhs(t.unsqueeze(-1).squeeze(-1), x, p, u))
    solver = to.AutoDiffAdjoint(to.Heun(term), to.FixedStepController())
    t_eval = times.expand(B, -1)
    dt0 = torch.full((B,), float(times[1] - times[0]))
    sol = solver.solve(to.InitialValueProblem(y0=x0_for(B), t_eval=t_eval), dt0=dt0)
    return sol.ys.permute(0, 2, 1)  # (B, T, n) -> (B, n, T)


def available(name):
    try:
        __import__(name)
        return True
    except ImportError:
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[100, 1000, 7200, 10000, 100000])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="CSV path for the table")
    ap.add_argument("--compile", action="store_true",
                    help="also time skhds with the compiled step (odeint(compile=True)); the "
                         "first calls, which compile, are timed separately (compile_s)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    times = torch.linspace(0.0, 17.0, 86)
    solvers = {"skhds": solve_skhds}
    if args.compile:
        solvers["skhds_compiled"] = functools.partial(solve_skhds, compile=True)
    if available("torchdiffeq"):
        solvers["torchdiffeq"] = solve_torchdiffeq
    if available("torchode"):
        solvers["torchode"] = solve_torchode
    header = {"machine": platform.machine(), "processor": cpu_model(),
              "torch": torch.__version__, "threads": args.threads, "dtype": "float32",
              "method": "heun, one step per interval, 86 times"}
    print(json.dumps({"header": header}), flush=True)
    rows = []
    for B in args.batch:
        p, u = make_params(B)
        reference = None
        for name, solve in solvers.items():
            start = time.perf_counter()
            with torch.no_grad():
                traj = solve(p, u, times)
            compile_s = time.perf_counter() - start  # first call: includes any compilation
            if reference is None:
                reference = traj
            err = float((traj - reference).abs().max() / reference.abs().max())
            # same grid and method: trajectories agree to float32 round-off
            assert err < 1e-4, f"{name} disagrees with skhds at B={B}: {err:.2e}"
            with torch.no_grad():
                t_fwd = timed(lambda: solve(p, u, times), args.repeats)

            def fwd_bwd():
                pg = {k: v.detach().requires_grad_(True) for k, v in p.items()}
                solve(pg, u, times).square().sum().backward()

            start = time.perf_counter()
            fwd_bwd()  # first call with autograd (compiles once more for the compiled step)
            compile_s += time.perf_counter() - start
            t_fb = timed(fwd_bwd, args.repeats)
            row = {"library": name, "batch": B, "forward_s": t_fwd, "forward_backward_s": t_fb,
                   "max_rel_diff": err, "first_calls_s": compile_s}
            rows.append(row)
            print(json.dumps(row), flush=True)
    import pandas as pd

    table = pd.DataFrame(rows)
    base = table[table.library == "skhds"].set_index("batch")
    for col in ("forward_s", "forward_backward_s"):
        table[col.replace("_s", "_vs_skhds")] = table[col] / table.batch.map(base[col])
    print(table.to_string(index=False))
    if args.out:
        write_table(args.out, header, table)


if __name__ == "__main__":
    main()
