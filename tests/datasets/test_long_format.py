"""Long-format tables <-> the estimator's arrays (``from_long_format``, ``to_long_format``)."""

import numpy as np
import pandas as pd
import pytest

from skhds import HierarchicalODEVAE
from skhds.datasets import from_long_format, make_logistic_growth, to_long_format


@pytest.fixture
def wide():
    """Two ragged series (ids in order of appearance w2, w1), two observables."""
    return pd.DataFrame({
        "well": ["w2", "w2", "w2", "w1", "w1"],
        "t": [0.0, 1.0, 2.0, 0.0, 1.5],
        "od": [0.1, 0.2, 0.3, 0.15, 0.25],
        "gfp": [1.0, 2.0, 3.0, 4.0, 5.0],
        "dose": [1.0, 1.0, 1.0, 2.0, 2.0],
        "strain": ["a", "a", "a", "b", "b"],
        "plate": ["p1", "p1", "p1", "p1", "p1"],
    })


def _stack(df):
    return df.melt(id_vars=["well", "t", "dose", "strain", "plate"], value_vars=["od", "gfp"],
                   var_name="obs", value_name="val")


EXPECTED_X = np.array([
    [[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]],
    [[0.15, 0.25, np.nan], [4.0, 5.0, np.nan]],
])
EXPECTED_T = np.array([[0.0, 1.0, 2.0], [0.0, 1.5, np.nan]])


def _check_wide_result(b):
    np.testing.assert_array_equal(b.X, EXPECTED_X)
    np.testing.assert_array_equal(b.times, EXPECTED_T)
    np.testing.assert_array_equal(b.inputs, [[1.0], [2.0]])
    assert isinstance(b.groups, pd.DataFrame)
    assert b.groups.columns.tolist() == ["strain", "plate"]
    assert b.groups["strain"].tolist() == ["a", "b"]
    assert b.groups.index.tolist() == [0, 1]
    assert b.series_ids.tolist() == ["w2", "w1"]
    assert b.observable_names == ["od", "gfp"]


def test_wide_form_ragged(wide):
    b = from_long_format(wide, series="well", time="t", observables=["od", "gfp"],
                         inputs=["dose"], groups=["strain", "plate"])
    _check_wide_result(b)


def test_stacked_form_matches_wide(wide):
    b = from_long_format(_stack(wide), series="well", time="t", value="val", observable="obs",
                         inputs=["dose"], groups=["strain", "plate"])
    _check_wide_result(b)


def test_row_order_does_not_matter_within_series(wide):
    shuffled = wide.iloc[[4, 1, 0, 3, 2]].reset_index(drop=True)  # w1 appears first now
    b = from_long_format(shuffled, series="well", time="t", observables=["od", "gfp"],
                         inputs=["dose"], groups=["strain"])
    assert b.series_ids.tolist() == ["w1", "w2"]
    np.testing.assert_array_equal(b.X, EXPECTED_X[::-1])
    np.testing.assert_array_equal(b.times, EXPECTED_T[::-1])
    np.testing.assert_array_equal(b.inputs, [[2.0], [1.0]])
    assert b.groups["strain"].tolist() == ["b", "a"]
    s = from_long_format(_stack(wide).sample(frac=1.0, random_state=0), series="well", time="t",
                         value="val", observable="obs", groups=["strain"])
    order = [s.series_ids.tolist().index(w) for w in ("w2", "w1")]
    np.testing.assert_array_equal(s.X[order][:, [s.observable_names.index("od"),
                                                  s.observable_names.index("gfp")]], EXPECTED_X)
    assert s.groups["strain"].iloc[order].tolist() == ["a", "b"]


def test_shared_times_collapse_to_1d(wide):
    df = wide[wide["t"] != 2.0].copy()
    df.loc[df["t"] == 1.5, "t"] = 1.0
    b = from_long_format(df, series="well", time="t", observables=["od"])
    assert b.times.shape == (2,)
    np.testing.assert_array_equal(b.times, [0.0, 1.0])
    assert b.X.shape == (2, 1, 2) and not np.isnan(b.X).any()
    assert b.inputs is None and b.groups is None


def test_missing_observation_kept_as_nan(wide):
    st = _stack(wide)
    st = st[~((st["well"] == "w2") & (st["t"] == 1.0) & (st["obs"] == "gfp"))]
    b = from_long_format(st, series="well", time="t", value="val", observable="obs")
    assert b.X.shape == (2, 2, 3)
    assert np.isnan(b.X[0, 1, 1]) and b.X[0, 0, 1] == pytest.approx(0.2)
    np.testing.assert_array_equal(b.times, EXPECTED_T)


# ------------------------------------------------------------------ errors
def test_not_a_dataframe(wide):
    with pytest.raises(TypeError, match="DataFrame"):
        from_long_format(wide.to_dict("list"), series="well", time="t", observables=["od"])
    with pytest.raises(TypeError, match="DataFrame"):
        from_long_format(wide.to_numpy(), series="well", time="t", observables=["od"])


def test_missing_column_is_named(wide):
    with pytest.raises(ValueError, match="nope"):
        from_long_format(wide, series="well", time="t", observables=["od", "nope"])
    with pytest.raises(ValueError, match="genotype"):
        from_long_format(wide, series="well", time="t", observables=["od"], groups=["genotype"])
    with pytest.raises(ValueError, match="time_h"):
        from_long_format(wide, series="well", time="time_h", observables=["od"])


@pytest.mark.parametrize("column, kind", [("dose", "inputs"), ("strain", "groups")])
def test_per_series_column_varying_within_series(wide, column, kind):
    df = wide.copy()
    df.loc[1, column] = 5.0 if column == "dose" else "z"
    with pytest.raises(ValueError, match=f"{column}.*varies within a series"):
        from_long_format(df, series="well", time="t", observables=["od"], **{kind: [column]})
    with pytest.raises(ValueError, match="varies within a series"):
        from_long_format(_stack(df), series="well", time="t", value="val", observable="obs",
                         **{kind: [column]})


def test_duplicate_times_wide(wide):
    df = pd.concat([wide, wide.iloc[[1]]], ignore_index=True)
    with pytest.raises(ValueError, match="repeated times"):
        from_long_format(df, series="well", time="t", observables=["od"])


def test_duplicate_times_stacked(wide):
    """A repeated (series, time, observable) row is an error, not silently averaged."""
    st = _stack(wide)
    dup = st.iloc[[1]].assign(val=99.0)
    with pytest.raises(ValueError, match="repeated|duplicate"):
        from_long_format(pd.concat([st, dup], ignore_index=True), series="well", time="t",
                         value="val", observable="obs")


def test_missing_time(wide):
    df = wide.copy()
    df.loc[2, "t"] = np.nan
    with pytest.raises(ValueError, match="missing times"):
        from_long_format(df, series="well", time="t", observables=["od"])


def test_both_or_neither_form(wide):
    with pytest.raises(ValueError, match="either"):
        from_long_format(wide, series="well", time="t")
    with pytest.raises(ValueError, match="either"):
        from_long_format(_stack(wide).assign(od=1.0), series="well", time="t", observables=["od"],
                         value="val", observable="obs")
    with pytest.raises(ValueError):
        from_long_format(_stack(wide), series="well", time="t", value="val")
    with pytest.raises(ValueError):
        from_long_format(_stack(wide), series="well", time="t", observable="obs")


# ------------------------------------------------------------ to_long_format
def test_to_long_format_layout_and_std():
    X = np.arange(12.0).reshape(2, 2, 3)
    t = np.array([0.0, 1.0, 2.0])
    df = to_long_format(X, t, std=X / 10)
    assert df.columns.tolist() == ["series", "time", "observable", "value", "std"]
    assert len(df) == 12
    assert df["series"].tolist() == [0] * 6 + [1] * 6
    assert df["observable"].tolist()[:6] == ["y0"] * 3 + ["y1"] * 3
    row = df[(df["series"] == 1) & (df["observable"] == "y1") & (df["time"] == 2.0)]
    assert row["value"].item() == X[1, 1, 2] and row["std"].item() == pytest.approx(X[1, 1, 2] / 10)
    assert "std" not in to_long_format(X, t).columns


def test_to_long_format_drops_padding_keeps_missing_values():
    X = np.array([[[1.0, np.nan, 3.0]], [[4.0, 5.0, np.nan]]])
    t = np.array([[0.0, 1.0, 2.0], [0.0, 0.5, np.nan]])
    df = to_long_format(X, t, series_ids=["a", "b"], observable_names=["od"])
    assert len(df) == 5  # the padded slot of "b" is dropped...
    assert df[df["series"] == "b"]["time"].tolist() == [0.0, 0.5]
    # ...a missing value at a real time is kept as a NaN row
    assert np.isnan(df[(df["series"] == "a") & (df["time"] == 1.0)]["value"].item())


def test_to_long_format_errors():
    X = np.zeros((2, 1, 3))
    with pytest.raises(ValueError, match="3-D"):
        to_long_format(X[:, 0], np.arange(3.0))
    with pytest.raises(ValueError, match="times"):
        to_long_format(X, np.arange(4.0))
    with pytest.raises(ValueError, match="series_ids"):
        to_long_format(X, np.arange(3.0), series_ids=["a"])
    with pytest.raises(ValueError, match=r"std must have the shape of X \(2, 1, 3\); got \(3,\)"):
        to_long_format(X, np.arange(3.0), std=np.ones(3))  # broadcastable, but not X's shape


@pytest.mark.parametrize("ragged", [False, True])
def test_round_trip(ragged):
    rng = np.random.RandomState(0)
    X = rng.rand(4, 2, 5)
    t = np.linspace(0.0, 4.0, 5)
    if ragged:
        t = np.tile(t, (4, 1)) * np.array([[1.0], [1.5], [2.0], [1.0]])
        t[1, 3:] = np.nan
        t[3, 4:] = np.nan
        X[1, :, 3:] = np.nan
        X[3, :, 4:] = np.nan
    X[0, 1, 2] = np.nan  # a missing value of one observable
    ids = np.array(["s9", "s1", "s5", "s0"], dtype=object)
    df = to_long_format(X, t, series_ids=ids, observable_names=["od", "gfp"])
    b = from_long_format(df, series="series", time="time", value="value", observable="observable")
    assert b.series_ids.tolist() == ids.tolist()
    assert b.observable_names == ["od", "gfp"]
    np.testing.assert_array_equal(b.X, X)
    np.testing.assert_array_equal(b.times, t)
    assert b.times.ndim == (2 if ragged else 1)


def test_round_trip_keeps_time_with_every_observable_missing():
    """A time at which nothing was observed keeps its slot (shared grid stays shared)."""
    X = np.arange(12.0).reshape(2, 2, 3)
    X[0, :, 1] = np.nan
    t = np.array([0.0, 1.0, 2.0])
    b = from_long_format(to_long_format(X, t), series="series", time="time", value="value",
                         observable="observable")
    np.testing.assert_array_equal(b.times, t)
    np.testing.assert_array_equal(b.X, X)


# -------------------------------------------------------------- end to end
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_end_to_end_long_table_fit_predict_back_to_long():
    d = make_logistic_growth(n_series=24, n_times=10, random_state=0)
    ids = np.array([f"well{i:02d}" for i in range(24)], dtype=object)
    table = to_long_format(d.X, d.times, series_ids=ids, observable_names=["OD"])
    table["strain"] = np.repeat(d.groups, 10)
    # ragged: the last two series stop early
    table = table[~((table["series"].isin(["well22", "well23"])) & (table["time"] > 9.0))]
    table = table.sample(frac=1.0, random_state=0).rename(columns={"value": "od"})

    b = from_long_format(table, series="series", time="time", observables=["od"],
                         groups=["strain"])
    assert b.X.shape == (24, 1, 10) and b.times.shape == (24, 10)
    order = [list(ids).index(s) for s in b.series_ids]
    np.testing.assert_array_equal(b.groups["strain"].to_numpy(), d.groups[order])
    assert np.isnan(b.times[b.series_ids.tolist().index("well22"), -3:]).all()

    est = HierarchicalODEVAE(d.model, max_iter=2, random_state=0, n_eval_samples=32)
    est.fit(b.X, groups=b.groups, times=b.times)
    mean, std = est.predict(b.X, groups=b.groups, times=b.times, return_std=True)
    out = to_long_format(mean, b.times, series_ids=b.series_ids, observable_names=["od"], std=std)
    assert len(out) == len(table)
    keys = ["series", "time"]
    merged = table.merge(out, on=keys, how="outer", indicator=True)
    assert (merged["_merge"] == "both").all()
    assert np.isfinite(out["value"]).all() and (out["std"] > 0).all()
