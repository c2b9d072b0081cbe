"""Helpers shared by the benchmark scripts: timing, the machine, result tables with a header."""

import platform
import time

import numpy as np

__all__ = ["cpu_model", "timed", "write_table"]


def cpu_model():
    """The CPU's model name, family and model (Linux ``/proc/cpuinfo``), else the platform's.

    Hosts of one cloud "type" differ: the same 2-core box was once a slower CPU, and
    the family and model say which one a result came from.
    """
    fields = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields:
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return name


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
