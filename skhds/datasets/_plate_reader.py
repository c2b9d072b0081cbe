"""Loader for wide plate-reader CSV files (one row per well, one column block per signal)."""

import csv
import os
import re

import numpy as np
import pandas as pd
from sklearn.utils import Bunch

__all__ = ["load_plate_reader"]

# Columns 1-5 of every file, by position (the header spells two of them "Content").
_META_COLUMNS = ("device", "colony", "well_col", "well_row", "treatment")
_N_META = len(_META_COLUMNS)

# "Raw Data (EYFP) 1 - 0 h" -> "EYFP"
_RAW_DATA = re.compile(r"^\s*Raw Data\s*\((?P<name>[^)]*)\)")
# "EYFP 1 - 0 h" -> "EYFP"; "OD 600 12 - 2 h 5 min" -> "OD 600"
_INDEXED = re.compile(r"^\s*(?P<name>.+?)\s+\d+\s*-\s")


def _signal_name(header):
    """Signal name of one data column header.

    Parameters
    ----------
    header : str
        Column header, e.g. ``"Raw Data (EYFP) 1 - 0 h"``, ``"EYFP 1 - 0 h"``
        or just ``"EYFP"``.

    Returns
    -------
    name : str
        The text inside ``Raw Data (...)`` if present, else the text before the
        ``<index> - <time>`` suffix if present, else the whole stripped header.
    """
    match = _RAW_DATA.match(header) or _INDEXED.match(header)
    if match is not None:
        return match.group("name").strip()
    return header.strip()


def _to_float(cells):
    """Convert an array of strings to float64; blank or non-numeric cells become NaN."""
    cells = np.asarray(cells, dtype=object)
    flat = pd.to_numeric(
        pd.Series(cells.ravel(), dtype=object).str.strip(), errors="coerce"
    )
    return flat.to_numpy(dtype=np.float64, na_value=np.nan).reshape(cells.shape)


def _read_rows(path):
    """Read the cells of the CSV file ``path`` as a list of rows of strings."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return [row for row in csv.reader(handle)]


def _parse_treatment(text, sep, where):
    """Parse a treatment string such as ``"C6=25000;Ara=5"`` into a dict.

    Parameters
    ----------
    text : str
        Raw treatment cell; blank means no treatment.
    sep : str
        Separator between ``species=value`` items.
    where : str
        Location used in error messages (file and row).

    Returns
    -------
    amounts : dict of str to float
        Species name -> amount, in the order of the string.
    """
    amounts = {}
    for item in text.split(sep):
        item = item.strip()
        if not item:
            continue
        name, eq, value = item.partition("=")
        name = name.strip()
        try:
            amount = float(value)
        except ValueError:
            amount = None
        if not eq or not name or amount is None:
            raise ValueError(
                f"{where}: cannot parse treatment {text!r}; expected items "
                f"'species=number' separated by treatment_sep={sep!r}."
            )
        if name in amounts:
            raise ValueError(f"{where}: species {name!r} appears twice in treatment {text!r}.")
        amounts[name] = amount
    return amounts


def _read_file(path, signals, devices):
    """Read one plate-reader file.

    Parameters
    ----------
    path : str
        Path of the CSV file.
    signals : list of str or None
        Signals to keep, in this order; None keeps all, in file order.
    devices : set of str or None
        Device names to keep (exact match); None keeps all wells.

    Returns
    -------
    part : dict
        ``signals`` (list, as chosen), ``available`` (all signals of the file),
        ``times`` (n_times,), ``X`` (n_wells, n_signals, n_times) and ``meta``
        (list of 5-tuples of stripped strings).
    """
    name = os.path.basename(path)
    rows = _read_rows(path)
    if not rows:
        raise ValueError(f"{name}: the file is empty.")
    header = rows[0]
    if len(header) <= _N_META:
        raise ValueError(
            f"{name}: expected {_N_META} descriptor columns followed by signal "
            f"columns, found {len(header)} columns in the header."
        )

    # Group data columns by signal name, in order of first appearance; blank
    # headers (e.g. trailing empty columns) are ignored.
    blocks = {}
    for col, text in enumerate(header[_N_META:], start=_N_META):
        if text.strip():
            blocks.setdefault(_signal_name(text), []).append(col)
    if signals is None:
        chosen = list(blocks)
    else:
        missing = [s for s in signals if s not in blocks]
        if missing:
            raise ValueError(
                f"{name}: signal(s) {missing} not found; the file has signals {list(blocks)}."
            )
        chosen = list(signals)
    lengths = {s: len(blocks[s]) for s in chosen}
    if len(set(lengths.values())) != 1:
        raise ValueError(
            f"{name}: signal blocks have different numbers of time points: {lengths}."
        )
    columns = np.array([blocks[s] for s in chosen])  # (n_signals, n_times)

    if len(rows) < 2:
        raise ValueError(f"{name}: no time row (row 2) and no wells.")
    time_row = rows[1] + [""] * (len(header) - len(rows[1]))
    times = _to_float([time_row[c] for c in columns[0]])
    if time_row[0].strip() or np.isnan(times).any():
        raise ValueError(
            f"{name}: row 2 must hold the time (in hours) of every data column, with "
            f"a blank first cell; found {time_row[:_N_META + 2]!r}... Is the time row missing?"
        )
    for k, s in enumerate(chosen[1:], start=1):
        if not np.array_equal(_to_float([time_row[c] for c in columns[k]]), times):
            # Signals read at different times cannot share one time axis.
            raise ValueError(
                f"{name}: the time row of signal {s!r} differs from that of {chosen[0]!r}."
            )

    meta, cells = [], []
    width = len(header)
    for row in rows[2:]:
        if not any(cell.strip() for cell in row):
            continue  # blank line
        row = (row + [""] * (width - len(row)))[:width]
        descriptor = tuple(cell.strip() for cell in row[:_N_META])
        if devices is not None and descriptor[0] not in devices:
            continue
        meta.append(descriptor)
        cells.append(row)
    if cells:
        X = _to_float(np.asarray(cells, dtype=object)[:, columns])
    else:
        X = np.empty((0, len(chosen), len(times)))
    return {"signals": chosen, "available": list(blocks), "times": times, "X": X, "meta": meta}


def _as_path_list(paths):
    """Normalise ``paths`` (one path or a sequence of paths) to a list of str."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    try:
        paths = [os.fspath(p) for p in paths]
    except TypeError as err:
        raise ValueError(
            f"paths must be a path or a sequence of paths, got {paths!r}."
        ) from err
    if not paths:
        raise ValueError("paths is empty: give at least one CSV file.")
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"paths: no such file {path!r}.")
    return paths


def load_plate_reader(paths, *, signals=None, devices=None, align="shortest", treatment_sep=";"):
    """Load wide plate-reader CSV files into a 3-D array of time courses.

    Each file has one row per well. Columns 1-5 are, by position, the device
    name, colony, well column, well row and treatment (e.g. ``"C6=25000"`` or
    ``"C6=25000;Ara=5"``); then come blocks of columns, one block per signal
    and one column per time point. A block is found by the signal name in its
    headers: the text inside ``Raw Data (...)`` (``"Raw Data (EYFP) 1 - 0 h"``),
    else the text before the ``<index> - <time>`` suffix (``"EYFP 1 - 0 h"``),
    else the whole header (``"EYFP"``); block order may differ between files.
    Row 2 holds the time of each column in hours. Rows 3+ are wells; blank or
    non-numeric cells are missing values (NaN). Blank lines and columns with a
    blank header are ignored, as are cells beyond the header's width.

    Parameters
    ----------
    paths : str, path-like or sequence of them
        CSV files to read. Wells are returned file by file, in this order, and
        in row order within each file.
    signals : sequence of str, default=None
        Signals to return, in this order. Every file must have every one of
        them. If None, all signals of the first file in its block order; the
        other files must then have the same set of signals.
    devices : sequence of str, default=None
        Keep only wells whose device name (first column, surrounding spaces
        stripped) equals one of these exactly. Every name must occur in at
        least one file. Files left with no wells are ignored, also for time
        alignment. If None, keep all wells.
    align : {"shortest", "pad"}, default="shortest"
        How to combine files with different numbers of time points (times are
        matched by index, not by value). ``"shortest"`` truncates every file to
        the shortest one; ``"pad"`` pads shorter files with NaN to the longest.
        The returned time of point ``j`` is that of the first file (in
        ``paths`` order) that has a point ``j``: with ``"shortest"``, the time
        row of the first file. The files' own grids are in ``file_times``.
    treatment_sep : str, default=";"
        Separator between ``species=value`` items of the treatment column.
        Spaces around items are ignored.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with attributes

        X : ndarray of shape (n_wells, n_signals, n_times), dtype float64
            Readings; NaN where missing (or padded).
        times : ndarray of shape (n_times,)
            Time of each point, in hours.
        signals : list of str
            Signal names, in the order of axis 1 of ``X``.
        metadata : pandas.DataFrame
            One row per well (aligned with ``X``) with columns ``device``,
            ``colony``, ``well_col`` (int when every value is an integer, else
            str), ``well_row``, ``file`` (basename), ``treatment`` (raw string)
            and one float column per treatment species found among the kept
            wells, in order of first appearance (0.0 where a well's treatment
            does not name the species).
        file_times : dict of str to ndarray
            The full time row of each file that contributed wells, keyed by
            the file's path as given.

    Raises
    ------
    ValueError
        If ``paths`` is empty, a file lacks the time row or a requested
        signal, a treatment cannot be parsed, a requested device matches no
        well, or no well is left.
    FileNotFoundError
        If a file in ``paths`` does not exist.

    Examples
    --------
    >>> data = load_plate_reader(["plate1.csv", "plate2.csv"],
    ...                          signals=["OD", "EYFP"])  # doctest: +SKIP
    >>> data.X.shape  # doctest: +SKIP
    (192, 2, 100)
    """
    paths = _as_path_list(paths)
    if align not in ("shortest", "pad"):
        raise ValueError(f"align must be 'shortest' or 'pad', got {align!r}.")
    if not isinstance(treatment_sep, str) or not treatment_sep or "=" in treatment_sep:
        raise ValueError(
            f"treatment_sep must be a non-empty string without '=', got {treatment_sep!r}."
        )
    if signals is not None:
        if isinstance(signals, str):
            signals = [signals]
        signals = list(signals)
        if not signals or len(set(signals)) != len(signals):
            raise ValueError(f"signals must be a non-empty list of distinct names, got {signals!r}.")
    device_set = None
    if devices is not None:
        if isinstance(devices, str):
            devices = [devices]
        device_set = set(devices)
        if not device_set:
            raise ValueError("devices is empty: give at least one device name, or None.")

    all_signals = signals is None
    parts = []
    for path in paths:
        part = _read_file(path, signals, device_set)
        if all_signals and sorted(part["available"]) != sorted(part["signals"]):
            raise ValueError(
                f"{os.path.basename(path)}: has signals {part['available']}, the first "
                f"file has {part['signals']}; pass signals= to choose common ones."
            )
        signals = part["signals"]
        part["path"] = path
        parts.append(part)

    if device_set is not None:
        found = {m[0] for part in parts for m in part["meta"]}
        unknown = sorted(device_set - found)
        if unknown:
            raise ValueError(f"devices: no well in any file has device name(s) {unknown}.")
    parts = [part for part in parts if part["meta"]]
    if not parts:
        raise ValueError("no wells found in the given files.")

    lengths = [len(part["times"]) for part in parts]
    n_times = min(lengths) if align == "shortest" else max(lengths)
    times = np.full(n_times, np.nan)
    for part in reversed(parts):  # earlier files win
        n = min(n_times, len(part["times"]))
        times[:n] = part["times"][:n]

    blocks, records = [], []
    for part in parts:
        X = part["X"][:, :, :n_times]
        if X.shape[2] < n_times:
            pad = np.full(X.shape[:2] + (n_times - X.shape[2],), np.nan)
            X = np.concatenate([X, pad], axis=2)
        blocks.append(X)
        base = os.path.basename(part["path"])
        for row, m in enumerate(part["meta"]):
            where = f"{base}, well row {row + 1} ({m[3]}{m[2]})"
            records.append((m, base, _parse_treatment(m[4], treatment_sep, where)))

    species = list(dict.fromkeys(name for _, _, amounts in records for name in amounts))
    clash = [s for s in species if s in (*_META_COLUMNS, "file")]
    if clash:
        raise ValueError(f"treatment species {clash} clash with metadata column names.")
    metadata = pd.DataFrame(
        [m[:4] for m, _, _ in records], columns=list(_META_COLUMNS[:4])
    )
    well_col = pd.to_numeric(metadata["well_col"], errors="coerce")
    if well_col.notna().all() and (well_col % 1 == 0).all():
        metadata["well_col"] = well_col.astype(np.int64)
    metadata["file"] = [base for _, base, _ in records]
    metadata["treatment"] = [m[4] for m, _, _ in records]
    for name in species:
        metadata[name] = np.array(
            [amounts.get(name, 0.0) for _, _, amounts in records], dtype=np.float64
        )

    return Bunch(
        X=np.concatenate(blocks, axis=0),
        times=times,
        signals=list(signals),
        metadata=metadata,
        file_times={part["path"]: part["times"] for part in parts},
    )
