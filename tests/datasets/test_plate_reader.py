"""Tests for the general plate-reader CSV loader, on small synthetic files."""

import csv

import numpy as np
import pytest

from skhds.datasets import load_plate_reader

HEADER_STYLES = {
    "raw": lambda s, j, t: f"Raw Data ({s}) {j + 1} - {t:g} h  ",
    "plain": lambda s, j, t: f"{s} {j + 1} - {t:g} h",
    "bare": lambda s, j, t: s,
}


def write_plate(path, wells, times, signals, order=None, style="raw", time_row=True):
    """Write a wide plate-reader CSV file.

    ``wells`` is a list of ``(device, treatment, values)`` with ``values`` of
    shape ``(len(signals), len(times))`` (floats, or strings written verbatim);
    blocks are written in ``order`` (default: ``signals``).
    """
    order = list(signals) if order is None else list(order)
    header = ["Content", "Colony", "Well Col", "Well Row", "Content"]
    header += [HEADER_STYLES[style](s, j, t) for s in order for j, t in enumerate(times)]
    rows = [header]
    if time_row:
        rows.append([""] * 5 + [repr(float(t)) for _ in order for t in times])
    for i, (device, treatment, values) in enumerate(wells):
        row = [device, "", str(i % 12 + 1), "ABCDEFGH"[i // 12], treatment]
        for s in order:
            row += [v if isinstance(v, str) else repr(float(v)) for v in values[signals.index(s)]]
        rows.append(row)
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def random_wells(rng, devices, treatments, n_signals, n_times):
    return [
        (d, t, rng.uniform(0, 100, size=(n_signals, n_times)))
        for d, t in zip(devices, treatments)
    ]


@pytest.mark.parametrize("style", ["raw", "plain", "bare"])
def test_single_file_values_times_and_metadata(tmp_path, rng, style):
    times = [0.0, 0.2, 0.4, 0.6]
    wells = random_wells(rng, ["D1", "D2", "D1"], ["C6=25000", "C12=0", "C6=0"], 2, 4)
    path = write_plate(tmp_path / "plate.csv", wells, times, ["OD", "EYFP"], style=style)

    data = load_plate_reader(path)

    assert data.signals == ["OD", "EYFP"]
    assert data.X.dtype == np.float64
    assert data.X.shape == (3, 2, 4)
    np.testing.assert_allclose(data.X, np.stack([w[2] for w in wells]))
    np.testing.assert_allclose(data.times, times)
    meta = data.metadata
    assert list(meta.columns) == [
        "device", "colony", "well_col", "well_row", "file", "treatment", "C6", "C12",
    ]
    assert meta["device"].tolist() == ["D1", "D2", "D1"]
    assert meta["well_col"].tolist() == [1, 2, 3]
    assert meta["well_col"].dtype == np.int64
    assert meta["well_row"].tolist() == ["A", "A", "A"]
    assert set(meta["file"]) == {"plate.csv"}
    assert meta["treatment"].tolist() == ["C6=25000", "C12=0", "C6=0"]
    np.testing.assert_array_equal(meta["C6"], [25000.0, 0.0, 0.0])
    np.testing.assert_array_equal(meta["C12"], [0.0, 0.0, 0.0])


def test_signal_names_with_spaces_in_raw_data_header(tmp_path, rng):
    wells = random_wells(rng, ["D"], ["C6=1"], 2, 3)
    path = write_plate(tmp_path / "p.csv", wells, [0, 1, 2], ["OD 600", "GFP"], style="raw")
    assert load_plate_reader(path).signals == ["OD 600", "GFP"]
    path = write_plate(tmp_path / "q.csv", wells, [0, 1, 2], ["OD 600", "GFP"], style="plain")
    assert load_plate_reader(path).signals == ["OD 600", "GFP"]


def test_blocks_found_by_name_across_orders_and_spellings(tmp_path, rng):
    signals = ["OD", "mRFP1", "EYFP", "ECFP"]
    times = [0.0, 0.19, 0.39]
    wells1 = random_wells(rng, ["A", "B"], ["C6=1", "C12=2"], 4, 3)
    wells2 = random_wells(rng, ["A", "B"], ["C6=3", "C12=4"], 4, 3)
    p1 = write_plate(tmp_path / "one.csv", wells1, times, signals,
                     order=["EYFP", "ECFP", "mRFP1", "OD"], style="raw")
    p2 = write_plate(tmp_path / "two.csv", wells2, times, signals,
                     order=["OD", "EYFP", "ECFP", "mRFP1"], style="bare")
    expected = np.stack([w[2] for w in wells1 + wells2])

    data = load_plate_reader([p1, p2], signals=signals)
    assert data.signals == signals
    np.testing.assert_allclose(data.X, expected)
    assert data.metadata["file"].tolist() == ["one.csv"] * 2 + ["two.csv"] * 2

    # Default: every signal, in the first file's block order.
    default = load_plate_reader([p1, p2])
    assert default.signals == ["EYFP", "ECFP", "mRFP1", "OD"]
    np.testing.assert_allclose(default.X, expected[:, [2, 3, 1, 0]])

    # A subset, in the requested order.
    sub = load_plate_reader([p1, p2], signals=["ECFP", "OD"])
    np.testing.assert_allclose(sub.X, expected[:, [3, 0]])


def test_multi_species_treatments(tmp_path, rng):
    treatments = ["C6=25000;Ara=5", "C12=0", "", "Ara=25; C6=3", "C12=8.5"]
    wells = random_wells(rng, ["D"] * 5, treatments, 1, 2)
    path = write_plate(tmp_path / "p.csv", wells, [0, 1], ["OD"])

    meta = load_plate_reader(path).metadata

    assert meta["treatment"].tolist() == treatments
    assert [c for c in meta.columns if c not in (
        "device", "colony", "well_col", "well_row", "file", "treatment")] == ["C6", "Ara", "C12"]
    np.testing.assert_array_equal(meta["C6"], [25000, 0, 0, 3, 0])
    np.testing.assert_array_equal(meta["Ara"], [5, 0, 0, 25, 0])
    np.testing.assert_array_equal(meta["C12"], [0, 0, 0, 0, 8.5])
    assert all(meta[c].dtype == np.float64 for c in ("C6", "Ara", "C12"))


def test_custom_treatment_separator(tmp_path, rng):
    wells = random_wells(rng, ["D", "D"], ["C6=1|Ara=2", "C12=3"], 1, 2)
    path = write_plate(tmp_path / "p.csv", wells, [0, 1], ["OD"])
    meta = load_plate_reader(path, treatment_sep="|").metadata
    np.testing.assert_array_equal(meta["Ara"], [2, 0])
    np.testing.assert_array_equal(meta["C12"], [0, 3])
    with pytest.raises(ValueError, match="treatment"):
        load_plate_reader(path)  # "1|Ara=2" is not a number


def test_blank_and_non_numeric_cells_are_nan(tmp_path):
    values = [["1.5", "", "OVER", " 4 "]]
    wells = [("D", "C6=1", values), ("D", "C6=2", [["1", "2", "3", "4"]])]
    path = write_plate(tmp_path / "p.csv", wells, [0, 1, 2, 3], ["OD"])
    # A short row (trailing cells absent) is also read as missing values.
    with open(path, "a", newline="") as handle:
        csv.writer(handle).writerow(["D", "", "3", "A", "C6=3", "7", "8"])
        handle.write("\n,,,,\n")  # blank lines are skipped

    data = load_plate_reader(path)

    assert data.X.shape == (3, 1, 4)
    np.testing.assert_array_equal(data.X[0, 0], [1.5, np.nan, np.nan, 4.0])
    np.testing.assert_array_equal(data.X[1, 0], [1, 2, 3, 4])
    np.testing.assert_array_equal(data.X[2, 0], [7, 8, np.nan, np.nan])


def test_devices_exact_match(tmp_path, rng):
    devices = ["R33S175", "R33S175 P76LasI", "Other", "R33S175", "R33S175_x"]
    wells = random_wells(rng, devices, ["C6=1"] * 5, 1, 2)
    path = write_plate(tmp_path / "p.csv", wells, [0, 1], ["OD"])

    data = load_plate_reader(path, devices=["R33S175"])

    assert data.metadata["device"].tolist() == ["R33S175", "R33S175"]
    np.testing.assert_allclose(data.X, np.stack([wells[0][2], wells[3][2]]))

    both = load_plate_reader(path, devices=["Other", "R33S175"])
    assert both.metadata["device"].tolist() == ["R33S175", "Other", "R33S175"]  # file order

    with pytest.raises(ValueError, match="R33S17"):
        load_plate_reader(path, devices=["R33S17"])


def test_species_columns_come_from_kept_wells_only(tmp_path, rng):
    wells = random_wells(rng, ["A", "B"], ["C6=1", "Ara=2;C6=3"], 1, 2)
    path = write_plate(tmp_path / "p.csv", wells, [0, 1], ["OD"])
    meta = load_plate_reader(path, devices=["A"]).metadata
    assert "Ara" not in meta.columns
    assert meta["C6"].tolist() == [1.0]


def test_align_shortest_and_pad(tmp_path, rng):
    long_times = [0.0, 0.2, 0.4, 0.6, 0.8]
    short_times = [0.0, 0.21, 0.39]
    wl = random_wells(rng, ["D", "D"], ["C6=1", "C6=2"], 2, 5)
    ws = random_wells(rng, ["D"], ["C12=1"], 2, 3)
    p_long = write_plate(tmp_path / "long.csv", wl, long_times, ["OD", "GFP"])
    p_short = write_plate(tmp_path / "short.csv", ws, short_times, ["OD", "GFP"])

    shortest = load_plate_reader([p_long, p_short])  # default align="shortest"
    assert shortest.X.shape == (3, 2, 3)
    np.testing.assert_allclose(shortest.times, long_times[:3])  # first file's grid
    np.testing.assert_allclose(shortest.X[:2], np.stack([w[2] for w in wl])[:, :, :3])
    np.testing.assert_allclose(shortest.X[2], ws[0][2])
    np.testing.assert_allclose(shortest.file_times[str(p_short)], short_times)
    np.testing.assert_allclose(shortest.file_times[str(p_long)], long_times)

    pad = load_plate_reader([p_short, p_long], align="pad")
    assert pad.X.shape == (3, 2, 5)
    # First file wins where it has points; the longer file supplies the rest.
    np.testing.assert_allclose(pad.times, short_times + long_times[3:])
    np.testing.assert_allclose(pad.X[0, :, :3], ws[0][2])
    assert np.isnan(pad.X[0, :, 3:]).all()
    np.testing.assert_allclose(pad.X[1:], np.stack([w[2] for w in wl]))
    assert not np.isnan(pad.X[1:]).any()


def test_file_without_kept_wells_does_not_truncate(tmp_path, rng):
    p_long = write_plate(tmp_path / "a.csv", random_wells(rng, ["A"], ["C6=1"], 1, 4),
                         [0, 1, 2, 3], ["OD"])
    p_short = write_plate(tmp_path / "b.csv", random_wells(rng, ["B"], ["C6=1"], 1, 2),
                          [0, 1], ["OD"])
    data = load_plate_reader([p_long, p_short], devices=["A"])
    assert data.X.shape == (1, 1, 4)
    assert list(data.file_times) == [str(p_long)]


def test_paths_accepts_single_path_and_str(tmp_path, rng):
    path = write_plate(tmp_path / "p.csv", random_wells(rng, ["A"], ["C6=1"], 1, 2),
                       [0, 1], ["OD"])
    a = load_plate_reader(path)
    b = load_plate_reader(str(path))
    c = load_plate_reader([path])
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.X, c.X)


def test_error_empty_paths():
    with pytest.raises(ValueError, match="paths"):
        load_plate_reader([])


def test_error_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.csv"):
        load_plate_reader([tmp_path / "nothere.csv"])


def test_error_no_time_row(tmp_path, rng):
    wells = random_wells(rng, ["A", "B"], ["C6=1", "C6=2"], 1, 3)
    path = write_plate(tmp_path / "notime.csv", wells, [0, 1, 2], ["OD"], time_row=False)
    with pytest.raises(ValueError, match=r"notime\.csv.*time row"):
        load_plate_reader(path)


def test_error_unknown_signal_names_file_and_signal(tmp_path, rng):
    p1 = write_plate(tmp_path / "a.csv", random_wells(rng, ["A"], ["C6=1"], 2, 2),
                     [0, 1], ["OD", "GFP"])
    p2 = write_plate(tmp_path / "b.csv", random_wells(rng, ["A"], ["C6=1"], 1, 2),
                     [0, 1], ["OD"])
    with pytest.raises(ValueError, match=r"b\.csv.*'GFP'"):
        load_plate_reader([p1, p2], signals=["OD", "GFP"])
    with pytest.raises(ValueError, match=r"a\.csv.*'RFP'"):
        load_plate_reader([p1, p2], signals=["RFP"])
    # Without signals=, files must have the same signals as the first one.
    with pytest.raises(ValueError, match=r"b\.csv.*'GFP'"):
        load_plate_reader([p1, p2])
    with pytest.raises(ValueError, match=r"a\.csv.*signals="):
        load_plate_reader([p2, p1])
    # Choosing the common ones works.
    assert load_plate_reader([p1, p2], signals=["OD"]).X.shape == (2, 1, 2)


def test_error_bad_arguments(tmp_path, rng):
    path = write_plate(tmp_path / "p.csv", random_wells(rng, ["A"], ["C6=x"], 1, 2),
                       [0, 1], ["OD"])
    with pytest.raises(ValueError, match="align"):
        load_plate_reader(path, align="longest")
    with pytest.raises(ValueError, match=r"p\.csv.*C6=x"):
        load_plate_reader(path)
    with pytest.raises(ValueError, match="signals"):
        load_plate_reader(path, signals=["OD", "OD"])
    with pytest.raises(ValueError, match="treatment_sep"):
        load_plate_reader(path, treatment_sep="")


def test_error_blocks_of_different_lengths(tmp_path):
    header = ["Content", "Colony", "Well Col", "Well Row", "Content",
              "OD 1 - 0 h", "OD 2 - 1 h", "GFP 1 - 0 h"]
    rows = [header, [""] * 5 + ["0", "1", "0"], ["A", "", "1", "A", "C6=1", "1", "2", "3"]]
    path = tmp_path / "ragged.csv"
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    with pytest.raises(ValueError, match=r"ragged\.csv.*different numbers"):
        load_plate_reader(path)
    assert load_plate_reader(path, signals=["OD"]).X.shape == (1, 1, 2)
