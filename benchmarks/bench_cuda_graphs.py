"""What CUDA graphs would give: the study-shaped solve, eager against captured (issue 5).

On a GPU the training minibatch of the double-receiver study is bound by
kernel launches, not arithmetic (``bench_minibatch.py``: K = 2,000 costs about
what K = 200 does). A CUDA graph records the launches of one forward and
backward pass once and replays them with one launch. This script measures
what that is worth before the package commits to it, on the part of the
minibatch that dominates it: the Heun solve of the white-box right-hand side
(``bench_integrator.rhs``, 86 output times, one step per interval), with
gradients to all 27 parameters, as ``skhds.solvers.odeint`` runs it.

Per batch size ``B`` (trajectories; the study's minibatch is 36 x 200 =
7,200), each the median of ``--repeats`` timings after warm-up, with a device
synchronisation around every timing:

* ``eager``: ``odeint`` forward plus backward, as training runs it now;
* ``torchdiffeq``: ``torchdiffeq.odeint`` (``heun2``) on the same right-hand
  side and grid, forward plus backward (when installed);
* ``graphed``: the same ``odeint`` call wrapped by
  ``torch.cuda.make_graphed_callables`` (forward and backward each captured
  once, then replayed); the capture time is reported separately.

It checks that the graphed gradients equal the eager ones (same inputs) and
prints one JSON line per batch size. On a machine without CUDA it times the
eager paths only.

With ``--training-step``, it also times the package's own mechanism
(``skhds/_cuda_graphs.py``): a whole training minibatch (encoder, draws,
solve, likelihood, DReG bound and backward; 36 series x ``--K`` samples)
eager and replayed from its CUDA graph, and whole epochs of ``partial_fit``
(234 series, 7 minibatches, optimiser step and checks included) with
``cuda_graphs=False`` and ``True`` (median epoch after the first, which holds
the captures; the first is reported too, and the loss of every epoch: with
the same seed both modes draw the same numbers, so their first epochs agree
up to the non-determinism of CUDA's atomic reductions), for the white-box
and (``--model black``) the black-box double receiver.

Usage::

    python benchmarks/bench_cuda_graphs.py --batch 7200 72000 --repeats 20
"""

import argparse
import importlib.util
import json
import time
from functools import partial

import numpy as np
import torch

from _common import cpu_model
from bench_integrator import PARAM_NAMES, N_STATES, make_params, rhs
from skhds.solvers import odeint


def solve(P, C, times):
    """Heun solve for parameters ``P`` (B, 27) and inputs ``C`` (B, 2): (B, 8, T)."""
    p = dict(zip(PARAM_NAMES, P.unbind(-1)))
    u = {"C6": C[:, 0], "C12": C[:, 1]}
    x0 = torch.zeros(P.shape[0], 1, N_STATES, dtype=P.dtype, device=P.device)
    x0[..., 0] = 0.002

    def func(t, x):
        return rhs(t.reshape(1), x[:, 0], p, u).unsqueeze(1)

    return odeint(func, x0, times, method="heun")[:, 0]


def solve_torchdiffeq(P, C, times):
    import torchdiffeq

    p = dict(zip(PARAM_NAMES, P.unbind(-1)))
    u = {"C6": C[:, 0], "C12": C[:, 1]}
    x0 = torch.zeros(P.shape[0], N_STATES, dtype=P.dtype, device=P.device)
    x0[:, 0] = 0.002
    return torchdiffeq.odeint(lambda t, x: rhs(t, x, p, u), x0, times, method="heun2").permute(1, 2, 0)


def timer(device):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(fn, repeats, warmup=2):
        for _ in range(warmup):
            fn()
        ts = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts))

    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[7200, 72000])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--training-step", action="store_true",
                    help="also capture a whole training minibatch of the package")
    ap.add_argument("--K", type=int, default=200, help="importance samples (--training-step)")
    ap.add_argument("--model", nargs="+", choices=["white", "black"], default=["white"],
                    help="double-receiver model(s) of --training-step")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    run = timer(dev)
    times = torch.linspace(0.0, 17.0, 86, device=dev)
    head = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "processor": cpu_model(), "torch": torch.__version__,
            "threads": args.threads, "dtype": "float32", "method": "heun, 86 times, 1 step each"}
    print(json.dumps({"header": head}), flush=True)
    for B in args.batch:
        p, u = make_params(B)
        P0 = torch.stack([p[k] for k in PARAM_NAMES], -1).to(dev)
        C = torch.stack([u["C6"], u["C12"]], -1).to(dev)
        row = {"batch": B}

        def eager():
            P = P0.clone().requires_grad_(True)
            solve(P, C, times).square().sum().backward()
            return P.grad

        row["eager_s"] = run(eager, args.repeats)
        if importlib.util.find_spec("torchdiffeq") is not None:
            def tdq():
                P = P0.clone().requires_grad_(True)
                solve_torchdiffeq(P, C, times).square().sum().backward()

            row["torchdiffeq_s"] = run(tdq, args.repeats)
        if dev.type == "cuda":
            t0 = time.perf_counter()
            sample = P0.clone().requires_grad_(True)
            graphed = torch.cuda.make_graphed_callables(lambda P: solve(P, C, times), (sample,))
            torch.cuda.synchronize()
            row["capture_s"] = time.perf_counter() - t0

            def replay():
                P = P0.clone().requires_grad_(True)
                graphed(P).square().sum().backward()
                return P.grad

            row["graphed_s"] = run(replay, args.repeats)
            g_eager, g_graph = eager(), replay()
            row["grad_max_rel_diff"] = float((g_eager - g_graph).abs().max() / g_eager.abs().max())
            row["graphed_speedup"] = row["eager_s"] / row["graphed_s"]
            row["peak_memory_MB"] = torch.cuda.max_memory_allocated(dev) / 2**20
        print(json.dumps(row), flush=True)
    if args.training_step:
        for model in args.model:
            print(json.dumps(training_step(dev, args.K, args.repeats, run, model)), flush=True)


def training_step(dev, K, repeats, run, model="white", epochs=6):
    """The package's training minibatch and epoch, eager and replayed (see the module notes)."""
    import warnings

    from bench_minibatch import fitted_minibatch, study_shaped_data
    from skhds import HierarchicalODEVAE
    from skhds._cuda_graphs import CapturedTrainingPass
    from skhds.models import DoubleReceiver, DoubleReceiverBlackBox

    X, t, inputs, groups, kind = study_shaped_data(234)
    row = {"training_step": True, "model": model, "data": kind, "K": K, "series": 36}
    # the black box as first measured (the model's defaults before the double-receiver study)
    Model = (DoubleReceiver if model == "white" else
             partial(DoubleReceiverBlackBox, n_hidden=25, noise_states=False, hidden_activation="tanh"))

    def estimator(graphs):
        return HierarchicalODEVAE(Model(), batch_size=36, n_importance_samples=K,
                                  device=str(dev), random_state=0, cuda_graphs=graphs)

    est = estimator(False)
    batch = fitted_minibatch(est, X[:36], t, inputs[:36], groups[:36], 36, dev)
    vae = est.vae_
    gen = torch.Generator(device=dev)

    def eager():
        vae.zero_grad(set_to_none=True)
        loss, _, _ = vae.training_loss(batch, 234, K, gen, "dreg")
        loss.backward()

    row["minibatch_eager_s"] = run(eager, repeats)
    if dev.type == "cuda":
        for p in vae.parameters():
            p.grad = torch.zeros_like(p)
        try:
            t0 = time.perf_counter()
            captured = CapturedTrainingPass(vae, batch, 234, K, gen, "dreg")
            torch.cuda.synchronize()
            row["capture_s"] = time.perf_counter() - t0
            row["minibatch_graphed_s"] = run(lambda: captured(batch), repeats)
            row["minibatch_speedup"] = row["minibatch_eager_s"] / row["minibatch_graphed_s"]
        except RuntimeError as exc:  # report why the pass cannot be captured
            row["capture_error"] = f"{exc}"[:400]
    # whole epochs of partial_fit (234 series, 7 minibatches, optimiser and checks included)
    for mode in ([False, True] if dev.type == "cuda" else [False]):
        est = estimator(mode)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(epochs):
                est.partial_fit(X, groups=groups, inputs=inputs, times=t)
        if mode and est._captured is False:
            row["epoch_capture_failed"] = [str(w.message)[:300] for w in caught
                                           if "captured" in str(w.message)]
        times = est.history_["time"].to_numpy()
        name = "graphed" if mode else "eager"
        row[f"epoch_{name}_first_s"] = float(times[0])  # includes the captures
        row[f"epoch_{name}_s"] = float(np.median(times[1:]))
        row[f"epoch_{name}_losses"] = [round(float(v), 3) for v in est.loss_curve_]
    if dev.type == "cuda":
        row["epoch_speedup"] = row["epoch_eager_s"] / row["epoch_graphed_s"]
    return row


if __name__ == "__main__":
    main()
