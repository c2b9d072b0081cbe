"""Time one training minibatch (forward + backward) at the double-receiver study's shape.

Batch of 36 series x K = 200 importance samples, 8 states, 86 time points,
Heun on the data grid, white-box ``DoubleReceiver`` model, DReG gradients.
Uses the real data when ``SKHDS_DATA`` points at it, else smooth synthetic
curves of the same shape (the cost does not depend on the values).

Usage::

    python benchmarks/bench_minibatch.py --device cpu --threads 2 --repeats 5
"""

import argparse
import json
import platform
import time
import warnings

import numpy as np
import torch

from skhds import HierarchicalODEVAE
from skhds.models import DoubleReceiver


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--K", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    X, times, inputs, groups, kind = study_shaped_data()
    est = HierarchicalODEVAE(DoubleReceiver(), batch_size=36, n_importance_samples=args.K,
                             device=args.device, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.partial_fit(X, groups=groups, inputs=inputs, times=times)
    data = est._prepare(X, groups, inputs, times, reset=False)
    dev = torch.device(args.device)
    batch = data.batch(np.arange(36), est.scaling_, None, dev, torch.float32)
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
        if i:  # first call warms up
            times_fwd.append(t1 - t0)
            times_total.append(t2 - t0)
    result = {
        "device": args.device if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "cpu": platform.processor() or platform.machine(), "threads": args.threads,
        "torch": torch.__version__, "data": kind, "K": args.K,
        "forward_s": float(np.median(times_fwd)), "forward_backward_s": float(np.median(times_total)),
        "epoch_estimate_s (7 minibatches)": 7 * float(np.median(times_total)),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
