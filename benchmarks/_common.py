"""Helpers shared by the benchmark scripts: timing and result tables with a header."""

import time

import numpy as np

__all__ = ["timed", "write_table"]


def timed(fn, repeats):
    """Median wall time of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def write_table(path, header, table):
    """Write ``table`` (a DataFrame) as CSV, after ``# key: value`` lines from ``header``.

    Read it back with ``pandas.read_csv(path, comment="#")``.
    """
    with open(path, "w") as fh:
        for k, v in header.items():
            fh.write(f"# {k}: {v}\n")
        table.to_csv(fh, index=False, float_format="%.4g")
