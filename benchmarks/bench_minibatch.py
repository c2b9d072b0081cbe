"""Time one training minibatch (forward + backward) at the double-receiver study's shape.

Batch of 36 series (``--batch-size``) x K = 200 importance samples, 8 states, 86 time points,
Heun on the data grid, white-box ``DoubleReceiver`` model, DReG gradients.
Uses the real data when ``SKHDS_DATA`` points at it, else smooth synthetic
curves of the same shape (the cost does not depend on the values).

Side by side in the same run, the **eager baseline** (issue 5): a plain
PyTorch loop of the same math as the reference implementation writes it, with
no skhds machinery: reparameterised draws of the 27 parameters of every
(series, sample) pair, the right-hand side inline (receptor activation
recomputed at every stage), Heun steps collected in a list and stacked,
Gaussian log-likelihood, log-mean-exp over samples, backward. ``speedup`` is
the baseline's forward+backward time over skhds's.

Usage::

    python benchmarks/bench_minibatch.py --device cpu --threads 2 --repeats 5
"""

import argparse
import json
import time
import warnings

import numpy as np
import torch

from skhds import HierarchicalODEVAE
from skhds.models import DoubleReceiver

from _common import cpu_model


def study_shaped_data(n=36, seed=0):
    try:
        from skhds.datasets import fetch_double_receiver
        from skhds.preprocessing import SignalScaler

        d = fetch_double_receiver(download_if_missing=False)
        X = SignalScaler().fit_transform(d.X)[:n]
        return X, d.times, d.inputs[:n], d.groups[["luxR_rbs", "lasR_rbs"]].iloc[:n], "real"
    except OSError:
        rng = np.random.RandomState(seed)
        times = np.linspace(0, 16.5, 86)
        od = 1 / (1 + np.exp(-(times - 6) / 1.5))
        X = np.stack([od * rng.uniform(0.5, 1.0, (n, 1)) for _ in range(4)], 1)
        X = X + 0.01 * rng.randn(*X.shape)
        inputs = np.column_stack([rng.choice([0, 25000 / 3**4], n), rng.choice([0, 25000 / 3**6], n)])
        groups = np.column_stack([rng.randint(0, 3, n), rng.randint(0, 4, n)])
        return X, times, inputs, groups, "synthetic"


def fitted_minibatch(est, X, times, inputs, groups, n, device):
    """One ``partial_fit`` epoch of ``est`` on the series, then the first ``n`` as a device batch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.partial_fit(X, groups=groups, inputs=inputs, times=times)
    data = est._prepare(X, groups, inputs, times, reset=False)
    return data.batch(np.arange(n), est.scaling_, None, torch.device(device), torch.float32)


def eager_baseline(batch, K, device):
    """One forward+backward of the plain eager loop; returns a closure to time."""
    import math

    from bench_integrator import PARAM_NAMES, make_params, rhs, x0_for  # same folder

    y = batch["y"]  # (S, 4, T)
    S, T = y.shape[0], y.shape[-1]
    centre, _ = make_params(S * K)
    loc0 = torch.stack([centre[k].reshape(S, K).mean(1).log() for k in PARAM_NAMES], -1).to(device)
    u = batch["inputs"].to(device)
    times = batch["solve_times"][0].to(device)

    def step():
        loc = loc0.clone().requires_grad_(True)  # encoder output stand-in (S, n)
        log_sd = torch.full_like(loc0, -3.0).requires_grad_(True)
        eps = torch.randn(S, K, loc.shape[-1], device=device)
        z = loc.unsqueeze(1) + log_sd.exp().unsqueeze(1) * eps
        p = {k: z[..., j].exp().reshape(-1) for j, k in enumerate(PARAM_NAMES)}
        inputs = {"C6": u[:, 0].repeat_interleave(K), "C12": u[:, 1].repeat_interleave(K)}
        x = x0_for(S * K).to(device)
        states = [x]
        for j in range(T - 1):
            t, h = times[j], times[j + 1] - times[j]
            k1 = rhs(t, x, p, inputs)
            k2 = rhs(t + h, x + h * k1, p, inputs)
            x = x + 0.5 * h * (k1 + k2)
            states.append(x)
        traj = torch.stack(states, -1).reshape(S, K, 8, T)
        obs = torch.stack([traj[:, :, 0], traj[:, :, 0] * traj[:, :, 1],
                           traj[:, :, 0] * (traj[:, :, 2] + traj[:, :, 4]),
                           traj[:, :, 0] * (traj[:, :, 3] + traj[:, :, 5])], 2)
        sigma = 0.02
        ll = (-0.5 * ((y.unsqueeze(1) - obs) / sigma) ** 2 - math.log(sigma * math.sqrt(2 * math.pi)))
        log_q = (-0.5 * eps ** 2 - log_sd.unsqueeze(1)).sum(-1)
        log_w = ll.sum((-2, -1)) - log_q
        loss = -(torch.logsumexp(log_w, 1) - math.log(K)).mean()
        loss.backward()

    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--K", type=int, default=200)
    ap.add_argument("--compile-solver", action="store_true",
                    help="time skhds with compile_solver=True (the first, compiling call is "
                         "reported as compile_s and excluded from the medians)")
    ap.add_argument("--batch-size", type=int, default=36,
                    help="series per minibatch (the study: 36; an epoch is 234 series)")
    args = ap.parse_args()
    bs = args.batch_size
    n_batches = -(-234 // bs)
    torch.set_num_threads(args.threads)
    X, times, inputs, groups, kind = study_shaped_data(max(bs, 36))
    est = HierarchicalODEVAE(DoubleReceiver(), batch_size=bs, n_importance_samples=args.K,
                             device=args.device, random_state=0)
    batch = fitted_minibatch(est, X, times, inputs, groups, bs, args.device)
    est.vae_.compile_solver = args.compile_solver
    dev = torch.device(args.device)
    gen = torch.Generator(device=dev).manual_seed(0)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times_fwd, times_total = [], []
    for i in range(args.repeats + 1):
        est.vae_.zero_grad()
        sync()
        t0 = time.perf_counter()
        loss, _, _ = est.vae_.training_loss(batch, 234, args.K, gen, "dreg")
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        if i:  # first call warms up (and compiles, with --compile-solver)
            times_fwd.append(t1 - t0)
            times_total.append(t2 - t0)
        else:
            first_call = t2 - t0
    baseline = eager_baseline(batch, args.K, dev)
    times_base = []
    for i in range(args.repeats + 1):
        sync()
        t0 = time.perf_counter()
        baseline()
        sync()
        if i:
            times_base.append(time.perf_counter() - t0)
    result = {
        "device": args.device if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "cpu": cpu_model(), "threads": args.threads,
        "torch": torch.__version__, "data": kind, "K": args.K, "batch_size": bs,
        "compile_solver": args.compile_solver, "first_call_s": first_call,
        "forward_s": float(np.median(times_fwd)), "forward_backward_s": float(np.median(times_total)),
        "minibatches_per_epoch": n_batches,
        "epoch_estimate_s": n_batches * float(np.median(times_total)),
        "eager_baseline_forward_backward_s": float(np.median(times_base)),
        "speedup": float(np.median(times_base)) / float(np.median(times_total)),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
