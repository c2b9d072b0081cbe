"""Tests for fetch_double_receiver on the real data (skipped when it is absent)."""

import io
import os
import shutil
from urllib.error import URLError

import numpy as np
import pytest

import skhds.datasets._double_receiver as dr_module
from skhds.datasets import fetch_double_receiver, get_data_home

DEVICES = [
    "Pcat_Y81C76", "RS100S32_Y81C76", "RS100S34_Y81C76",
    "R33S32_Y81C76", "R33S34_Y81C76", "R33S175_Y81C76",
]
LUXR = [0, 1, 1, 2, 2, 2]
LASR = [0, 1, 2, 1, 2, 3]
FILES = ["proc140916.csv", "proc140930.csv", "proc141006.csv",
         "proc141021.csv", "proc141023.csv", "proc141028.csv"]
# Wells of each study device per file (data README table).
WELLS = {
    "proc140916.csv": {"RS100S32_Y81C76": 24, "RS100S34_Y81C76": 24,
                       "R33S32_Y81C76": 24, "R33S34_Y81C76": 24},
    "proc140930.csv": {"RS100S32_Y81C76": 24, "RS100S34_Y81C76": 24,
                       "R33S32_Y81C76": 24, "R33S34_Y81C76": 24},
    "proc141006.csv": {"Pcat_Y81C76": 48},
    "proc141021.csv": {"R33S175_Y81C76": 24},
    "proc141023.csv": {"R33S175_Y81C76": 24},
    "proc141028.csv": {"R33S175_Y81C76": 24},
}


def _no_download(*args, **kwargs):
    raise AssertionError("a download was attempted")


@pytest.fixture
def data(data_home, monkeypatch):
    monkeypatch.setattr(dr_module, "urlopen", _no_download)
    return fetch_double_receiver(data_home=data_home)


def test_shapes_and_names(data):
    assert data.X.shape == (312, 4, 86)
    assert data.X.dtype == np.float64
    assert data.times.shape == (86,)
    assert data.inputs.shape == (312, 2)
    assert isinstance(data.inputs, np.ndarray)
    assert data.input_names == ["C6", "C12"]
    assert data.signals == ["OD", "mRFP1", "EYFP", "ECFP"]
    assert list(data.groups.columns) == ["luxR_rbs", "lasR_rbs", "device"]
    assert data.groups.shape == (312, 3)
    assert (data.groups["device"].to_numpy() == data.device).all()
    assert data.device.shape == (312,)
    assert len(data.metadata) == 312
    assert not np.isnan(data.X).any()
    assert "MIT" in data.DESCR and "312" in data.DESCR and "ICML 2019" in data.DESCR


def test_wells_per_device_and_file(data):
    counts = data.metadata.groupby(["file", "device"]).size()
    expected = {(f, d): n for f, per in WELLS.items() for d, n in per.items()}
    assert counts.to_dict() == expected
    totals = data.metadata["device"].value_counts().to_dict()
    assert totals == {d: (72 if d == "R33S175_Y81C76" else 48) for d in DEVICES}
    assert "R33S175_Y81C76 P76LasI" not in set(data.device)
    np.testing.assert_array_equal(data.device, data.metadata["device"].to_numpy())


def test_factor_coding_per_device(data):
    for device, a_r, a_s in zip(DEVICES, LUXR, LASR):
        rows = data.groups[data.device == device]
        assert set(rows["luxR_rbs"]) == {a_r}
        assert set(rows["lasR_rbs"]) == {a_s}
    assert data.groups[["luxR_rbs", "lasR_rbs"]].dtypes.tolist() == [np.int64, np.int64]
    # Crossed factors: the pair identifies the device.
    assert len(data.groups.drop_duplicates()) == 6
    assert len(data.groups[["luxR_rbs", "lasR_rbs"]].drop_duplicates()) == 6


def test_times_in_hours(data):
    t = data.times
    assert t[0] == pytest.approx(0.0, abs=1e-9)
    assert np.all(np.diff(t) > 0)
    np.testing.assert_allclose(np.diff(t), 0.194, atol=0.005)  # ~11.6 minutes
    assert 16.4 < t[-1] < 16.6


def test_inputs_values(data):
    allowed = np.concatenate([[0.0], 25000.0 / 3.0 ** np.arange(11)])
    for value in np.unique(data.inputs):
        assert np.isclose(value, allowed, rtol=1e-9, atol=0).any(), value
    # At most one inducer per well; zero-dose controls of each kind exist.
    assert ((data.inputs > 0).sum(axis=1) <= 1).all()
    treatment = data.metadata["treatment"]
    assert treatment.str.match(r"^C(6|12)=").all()
    c6_wells = treatment.str.startswith("C6=").to_numpy()
    assert (data.inputs[~c6_wells, 0] == 0).all()
    assert (data.inputs[c6_wells, 1] == 0).all()
    # Each device sees both inducers at all 12 doses.
    for device in DEVICES:
        sub = data.metadata[data.device == device]
        assert sub["C6"][sub["treatment"].str.startswith("C6=")].nunique() == 12
        assert sub["C12"][sub["treatment"].str.startswith("C12=")].nunique() == 12


def test_signal_blocks_match_by_name(data):
    # OD is an optical density (order 0.1-3); fluorescence is in the hundreds or more.
    assert data.X[:, 0].max() < 5
    assert data.X[:, 1:].min() > 10


def test_files_in_vi_hds_subfolder(data_home, tmp_path, monkeypatch):
    monkeypatch.setattr(dr_module, "urlopen", _no_download)
    sub = tmp_path / "vi-hds"
    sub.mkdir()
    for name in FILES:
        shutil.copy(data_home / name, sub / name)
    data = fetch_double_receiver(data_home=tmp_path)
    assert data.X.shape == (312, 4, 86)
    assert sorted(os.listdir(tmp_path)) == ["vi-hds"]


def test_missing_without_download_raises_oserror(tmp_path, monkeypatch):
    monkeypatch.setattr(dr_module, "urlopen", _no_download)
    with pytest.raises(OSError, match="proc140916.csv"):
        fetch_double_receiver(data_home=tmp_path, download_if_missing=False)


def test_download_is_atomic_and_complete(data_home, tmp_path, monkeypatch):
    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append(url)
        return io.BytesIO((data_home / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(dr_module, "urlopen", fake_urlopen)
    shutil.copy(data_home / FILES[0], tmp_path / FILES[0])  # one file already there
    data = fetch_double_receiver(data_home=tmp_path)

    assert calls == [
        "https://raw.githubusercontent.com/microsoft/vi-hds/master/data/" + f
        for f in FILES[1:]
    ]
    assert sorted(os.listdir(tmp_path)) == FILES  # no temporary files left
    assert data.X.shape == (312, 4, 86)


def test_download_failure_is_clear_oserror(tmp_path, monkeypatch):
    def offline(url, timeout=None):
        raise URLError("no network")

    monkeypatch.setattr(dr_module, "urlopen", offline)
    with pytest.raises(OSError, match="offline"):
        fetch_double_receiver(data_home=tmp_path)
    assert os.listdir(tmp_path) == []


def test_data_home_from_environment(data_home, tmp_path, monkeypatch):
    monkeypatch.setattr(dr_module, "urlopen", _no_download)
    target = tmp_path / "somewhere"
    monkeypatch.setenv("SKHDS_DATA", str(target))
    assert get_data_home() == str(target)
    assert target.is_dir()
    assert get_data_home(tmp_path / "explicit") == str(tmp_path / "explicit")

    monkeypatch.setenv("SKHDS_DATA", str(data_home))
    assert fetch_double_receiver().X.shape == (312, 4, 86)

    monkeypatch.delenv("SKHDS_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert get_data_home() == str(tmp_path / "skhds_data")
