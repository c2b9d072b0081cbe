"""The double-receiver biosensor data set of Roeder et al. (ICML 2019), fetched on demand."""

import os
import tempfile
from collections import Counter
from urllib.error import URLError
from urllib.request import urlopen

import numpy as np
import pandas as pd
from sklearn.utils import Bunch

from ._plate_reader import load_plate_reader

__all__ = ["fetch_double_receiver", "get_data_home"]

_BASE_URL = "https://raw.githubusercontent.com/microsoft/vi-hds/master/data/"
_FILES = (
    "proc140916.csv",
    "proc140930.csv",
    "proc141006.csv",
    "proc141021.csv",
    "proc141023.csv",
    "proc141028.csv",
)
_SUBDIR = "vi-hds"
_SIGNALS = ["OD", "mRFP1", "EYFP", "ECFP"]
# Study devices, in the order of the factor coding, with their wells in the six files.
_DEVICES = (
    "Pcat_Y81C76",
    "RS100S32_Y81C76",
    "RS100S34_Y81C76",
    "R33S32_Y81C76",
    "R33S34_Y81C76",
    "R33S175_Y81C76",
)
_WELLS_PER_DEVICE = dict(zip(_DEVICES, (48, 48, 48, 48, 48, 72)))
_LUXR_RBS = dict(zip(_DEVICES, (0, 1, 1, 2, 2, 2)))
_LASR_RBS = dict(zip(_DEVICES, (0, 1, 2, 1, 2, 3)))
_N_WELLS = 312
_N_TIMES = 86

_DESCR = """\
.. _double_receiver_dataset:

Double-receiver biosensor time courses
--------------------------------------

Plate-reader time courses of *E. coli* "double receiver" devices from six
experiments (files proc140916 ... proc141028). Each well carries one device, a
LuxR/LasR receiver pair whose ribosome-binding sites (RBS) differ between
devices, and is induced with one of two signalling molecules (AHL: C6 or C12)
at one of 12 concentrations, 0 and 25000 / 3**k nM for k = 0..10.

**Data set characteristics**

:Number of series (wells): 312
:Signals (axis 1 of X): OD (cell density), mRFP1, EYFP, ECFP (fluorescence,
    raw plate-reader units, not scaled)
:Time points: 86, about every 11.6 minutes from 0 to about 16.5 hours; the six
    files are truncated to the shortest one (proc141028.csv) and ``times`` is
    the time row of proc140916.csv (the files' grids differ by at most about
    one minute)
:Inputs: C6 and C12 concentration in nM (columns of ``inputs``); in each well
    at most one of them is non-zero
:Devices and wells: Pcat_Y81C76 48, RS100S32_Y81C76 48, RS100S34_Y81C76 48,
    R33S32_Y81C76 48, R33S34_Y81C76 48, R33S175_Y81C76 72 (exact name match;
    e.g. "R33S175_Y81C76 P76LasI" is a different device and is left out)
:Grouping factors (``groups``): devices share components, giving two crossed
    factors coded as integers, in the device order above:
    ``luxR_rbs`` = [0, 1, 1, 2, 2, 2] and ``lasR_rbs`` = [0, 1, 2, 1, 2, 3]
:Other per-well information: ``metadata`` (device, colony, well column and
    row, file, raw treatment string, C6, C12)

**Source and licence**

Public data release accompanying T. Roeder, P. Grant, A. Phillips, N. Dalchau
and E. Meeds, "Efficient Amortised Bayesian Inference for Hierarchical and
Nonlinear Dynamical Systems", ICML 2019 (https://github.com/microsoft/vi-hds).
Copyright (c) Microsoft Corporation; released under the MIT licence.
"""


def get_data_home(data_home=None):
    """Return the folder where skhds keeps downloaded data sets.

    Parameters
    ----------
    data_home : str or path-like, default=None
        The folder to use. If None, the environment variable ``SKHDS_DATA``
        if set, else ``~/skhds_data``. A leading ``~`` is expanded.

    Returns
    -------
    data_home : str
        The path of the folder, created if it did not exist.
    """
    if data_home is None:
        data_home = os.environ.get("SKHDS_DATA", os.path.join("~", "skhds_data"))
    data_home = os.path.expanduser(os.fspath(data_home))
    os.makedirs(data_home, exist_ok=True)
    return data_home


def _locate(data_home, filename):
    """Path of ``filename`` in ``data_home`` or ``data_home/vi-hds``, or None."""
    for folder in (data_home, os.path.join(data_home, _SUBDIR)):
        path = os.path.join(folder, filename)
        if os.path.isfile(path):
            return path
    return None


def _download(filename, data_home):
    """Download one data file into ``data_home`` (atomically) and return its path."""
    url = _BASE_URL + filename
    target = os.path.join(data_home, filename)
    try:
        with urlopen(url, timeout=60) as response:
            content = response.read()
    except (URLError, OSError) as err:
        raise OSError(
            f"Could not download {url} ({err}). If this machine is offline, copy the "
            f"files {', '.join(_FILES)} into {data_home!r} by hand."
        ) from err
    if not content.startswith(b"Content,"):
        raise OSError(f"{url} did not return the expected CSV file.")
    fd, tmp = tempfile.mkstemp(dir=data_home, prefix=f".{filename}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return target


def fetch_double_receiver(data_home=None, download_if_missing=True):
    """Load the double-receiver biosensor data set (download if needed).

    ==============  =========================================
    Series (wells)  312
    Signals         4: OD, mRFP1, EYFP, ECFP
    Time points     86 (hours, about 0 to 16.5)
    Inputs          2: C6, C12 (nM)
    Group factors   2: luxR_rbs (3 levels), lasR_rbs (4 levels)
    ==============  =========================================

    The six CSV files (``proc140916.csv`` ... ``proc141028.csv``) are looked
    for in ``data_home`` and then in ``data_home/vi-hds``; missing files are
    downloaded from the vi-hds GitHub repository into ``data_home``. Only the
    wells of the six study devices are kept, and all files are truncated to
    the shortest one, as in the original study. Read ``DESCR`` for details.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Folder holding (or receiving) the data files; see :func:`get_data_home`
        for the default.
    download_if_missing : bool, default=True
        If False, raise an OSError instead of downloading missing files.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with attributes

        X : ndarray of shape (312, 4, 86), dtype float64
            Raw readings, axis 1 in the order of ``signals``.
        times : ndarray of shape (86,)
            Time of each point, in hours.
        inputs : ndarray of shape (312, 2)
            C6 and C12 concentrations in nM.
        input_names : list of str
            ``["C6", "C12"]``.
        groups : pandas.DataFrame of shape (312, 3)
            Integer codes of the crossed factors ``luxR_rbs`` and ``lasR_rbs``,
            and the ``device`` name (a factor of its own, and the unit of
            leave-one-device-out splits).
        device : ndarray of shape (312,), dtype object
            Device name of each well.
        signals : list of str
            ``["OD", "mRFP1", "EYFP", "ECFP"]``.
        metadata : pandas.DataFrame
            Per-well information from :func:`load_plate_reader`.
        DESCR : str
            Description of the data set.

    Raises
    ------
    OSError
        If a file is missing and ``download_if_missing`` is False, or the
        download fails.
    ValueError
        If the files do not hold the published data (unexpected well counts).

    Examples
    --------
    >>> from skhds.datasets import fetch_double_receiver
    >>> data = fetch_double_receiver()  # doctest: +SKIP
    >>> data.X.shape  # doctest: +SKIP
    (312, 4, 86)
    """
    data_home = get_data_home(data_home)
    paths = []
    for filename in _FILES:
        path = _locate(data_home, filename)
        if path is None:
            if not download_if_missing:
                raise OSError(
                    f"Data file {filename} not found in {data_home!r} (nor in its "
                    f"{_SUBDIR!r} subfolder) and download_if_missing is False."
                )
            path = _download(filename, data_home)
        paths.append(path)

    data = load_plate_reader(paths, signals=_SIGNALS, devices=_DEVICES, align="shortest")
    metadata = data.metadata
    counts = Counter(metadata["device"])
    if dict(counts) != _WELLS_PER_DEVICE or data.X.shape != (_N_WELLS, 4, _N_TIMES):
        raise ValueError(
            f"The files in {data_home!r} do not hold the published data: wells per "
            f"device {dict(counts)}, X shape {data.X.shape}; expected "
            f"{_WELLS_PER_DEVICE} and {(_N_WELLS, 4, _N_TIMES)}. Delete them to re-download."
        )
    device = metadata["device"].to_numpy(dtype=object)
    groups = pd.DataFrame(
        {
            "luxR_rbs": np.array([_LUXR_RBS[d] for d in device], dtype=np.int64),
            "lasR_rbs": np.array([_LASR_RBS[d] for d in device], dtype=np.int64),
            "device": device,
        }
    )
    input_names = ["C6", "C12"]
    return Bunch(
        X=data.X,
        times=data.times,
        inputs=metadata[input_names].to_numpy(dtype=np.float64),
        input_names=input_names,
        groups=groups,
        device=device,
        signals=list(data.signals),
        metadata=metadata,
        DESCR=_DESCR,
    )
