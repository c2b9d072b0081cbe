"""Figures of skhds.plotting: structure and data of the drawn artists."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from skhds import HierarchicalODEVAE, ODEModel, Parameter  # noqa: E402
from skhds import plotting  # noqa: E402
from skhds.datasets import make_logistic_growth, simulate  # noqa: E402
from skhds.distributions import LogNormal  # noqa: E402


@pytest.fixture(scope="module")
def fitted():
    data = make_logistic_growth(n_series=12, n_times=8, random_state=0)
    est = HierarchicalODEVAE(data.model, max_iter=3, n_eval_samples=64, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(data.X, groups=data.groups, times=data.times)
    return est, data


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _line(ax, label):
    return next(line for line in ax.lines if line.get_label() == label)


def test_plot_predictions(fitted):
    est, data = fitted
    fig = plotting.plot_predictions(est, data.X, groups=data.groups, times=data.times,
                                    series=[0, 5, 7])
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3
    for ax, i in zip(fig.axes, [0, 5, 7]):
        assert ax.get_ylabel() == "x"
        assert ax.get_title() == f"series {i}"
        assert len(ax.collections) == 2  # 50% and 90% bands
        points = _line(ax, "data")
        np.testing.assert_allclose(points.get_xdata(), data.times)
        np.testing.assert_allclose(points.get_ydata(), data.X[i, 0])
        mean = _line(ax, "predictive mean")
        assert len(mean.get_xdata()) == 100
    # The drawn mean is predict's mean (of the selected series) on the same grid.
    pt = np.linspace(data.times.min(), data.times.max(), 100)
    sel = [0, 5, 7]
    expected = est.predict(data.X[sel], groups=data.groups[sel], times=data.times,
                           prediction_times=pt)[1, 0]
    np.testing.assert_allclose(_line(fig.axes[1], "predictive mean").get_ydata(), expected,
                               rtol=1e-6)


def test_plot_predictions_defaults_and_grid(fitted):
    est, data = fitted
    fig = plotting.plot_predictions(est, data.X, groups=data.groups, times=data.times,
                                    prediction_times=data.times, observables=["x"])
    assert len(fig.axes) == 4
    np.testing.assert_allclose(_line(fig.axes[0], "predictive mean").get_xdata(), data.times)


def test_plot_group_predictions(fitted):
    est, data = fitted
    fig = plotting.plot_group_predictions(est, data.X, groups=data.groups, times=data.times)
    assert len(fig.axes) == 3  # three strains
    for ax, level in zip(fig.axes, ["s0", "s1", "s2"]):
        assert ax.get_title() == f"strain = {level}"
        n_members = int((data.groups == level).sum())
        assert len(ax.lines) == 2 * n_members + 1  # data + prediction per series, group mean
        data_lines = [ln for ln in ax.lines if ln.get_marker() == "o"]
        assert len(data_lines) == n_members
        np.testing.assert_allclose(data_lines[0].get_xdata(), data.times)
    # A DataFrame of labels with a named factor gives the same panels.
    df = pd.DataFrame({"strain": data.groups, "other": np.arange(12) % 2})
    fig2 = plotting.plot_group_predictions(est, data.X, groups=df, factor="strain",
                                           times=data.times)
    assert [ax.get_title() for ax in fig2.axes] == [ax.get_title() for ax in fig.axes]


def test_plot_posteriors(fitted):
    est, _ = fitted
    fig = plotting.plot_posteriors(est, n_draws=500)
    labels = [ax.get_xlabel() for ax in fig.axes]
    assert labels == ["K", "x0", "sigma_x"]
    k_ax = fig.axes[0]
    assert [ln.get_label() for ln in k_ax.lines] == ["strain = s0", "strain = s1", "strain = s2",
                                                     "prior"]
    # The prior overlay is the declared prior's density.
    prior_line = _line(fig.axes[1], "prior")
    spec = next(s for s in est.model_.parameter_specs() if s.name == "x0")
    x = prior_line.get_xdata()
    expected = np.exp(spec.prior.log_prob(np.asarray(x)).numpy())
    np.testing.assert_allclose(prior_line.get_ydata(), expected, rtol=1e-5)
    assert len(fig.axes[1].patches) == 40  # histogram bars
    fig = plotting.plot_posteriors(est, parameters=["mu_r", "omega_r"], n_draws=200, prior=False)
    assert len(fig.axes) == 2 and all(len(ax.lines) == 0 for ax in fig.axes)
    with pytest.raises(ValueError, match="Unknown quantities"):
        plotting.plot_posteriors(est, parameters=["nope"])


def test_plot_individual_parameters(fitted):
    est, data = fitted
    fig = plotting.plot_individual_parameters(est, data.X, groups=data.groups, times=data.times)
    assert [ax.get_xlabel() for ax in fig.axes] == ["r", "tlag"]
    values = est.transform(data.X, groups=data.groups, times=data.times)
    for j, ax in enumerate(fig.axes):
        heights = np.array([p.get_height() for p in ax.patches])
        widths = np.array([p.get_width() for p in ax.patches])
        assert math.isclose((heights * widths).sum(), 1.0, rel_tol=1e-6)  # one density histogram
        pop = _line(ax, "population")
        assert np.all(pop.get_ydata() >= 0) and pop.get_xdata().min() <= values[:, j].min()
    fig = plotting.plot_individual_parameters(est, data.X, groups=data.groups, times=data.times,
                                              by="strain")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["strain = s0", "strain = s1", "strain = s2", "population"]


def test_plot_training_curves(fitted):
    est, _ = fitted
    fig = plotting.plot_training_curves(est)
    assert len(fig.axes) == 2
    loss = _line(fig.axes[0], "training loss")
    np.testing.assert_allclose(loss.get_ydata(), est.loss_curve_)
    np.testing.assert_allclose(loss.get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(_line(fig.axes[1], "mean ESS").get_ydata(), est.history_["ess"])


def test_plot_importance_diagnostics(fitted):
    est, data = fitted
    fig = plotting.plot_importance_diagnostics(est, data.X, groups=data.groups, times=data.times)
    assert len(fig.axes) == 2
    ess_ax, k_ax = fig.axes
    diag = est.importance_diagnostics(data.X, groups=data.groups, times=data.times)
    offsets = ess_ax.collections[0].get_offsets()
    np.testing.assert_allclose(offsets[:, 0], np.arange(12))
    np.testing.assert_allclose(offsets[:, 1], diag["ess_fraction"], rtol=1e-6)
    assert sorted(ln.get_ydata()[0] for ln in k_ax.lines) == [0.5, 0.7]
    assert k_ax.get_ylabel() == "Pareto k"
    # the weights of the reference bound, passed through
    fig = plotting.plot_importance_diagnostics(est, data.X, groups=data.groups, times=data.times,
                                               include_global=True)
    ref = est.importance_diagnostics(data.X, groups=data.groups, times=data.times,
                                     include_global=True)
    np.testing.assert_allclose(fig.axes[0].collections[0].get_offsets()[:, 1],
                               ref["ess_fraction"], rtol=1e-6)


def test_plot_vpc(fitted):
    est, data = fitted
    fig = plotting.plot_vpc(est, data.X, groups=data.groups, times=data.times, n_replicates=20)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    med = _line(ax, "observed q0.5")
    np.testing.assert_allclose(med.get_xdata(), data.times)
    np.testing.assert_allclose(med.get_ydata(), np.nanquantile(data.X[:, 0], 0.5, axis=0))
    low = _line(ax, "observed q0.05")
    np.testing.assert_allclose(low.get_ydata(), np.nanquantile(data.X[:, 0], 0.05, axis=0))
    assert len(ax.collections) == 3  # one band per quantile
    assert ax.get_ylabel() == "x"
    # Simulated quantiles are reproducible with a seed and differ with another.
    sim = _line(ax, "simulated q0.5").get_ydata()
    fig2 = plotting.plot_vpc(est, data.X, groups=data.groups, times=data.times, n_replicates=20)
    np.testing.assert_allclose(_line(fig2.axes[0], "simulated q0.5").get_ydata(), sim)
    fig3 = plotting.plot_vpc(est, data.X, groups=data.groups, times=data.times, n_replicates=20,
                             random_state=1)
    assert not np.allclose(_line(fig3.axes[0], "simulated q0.5").get_ydata(), sim)


def test_simulate_replicates_follow_design(fitted):
    est, data = fitted
    X = data.X.copy()
    X[0, 0, 3] = np.nan
    prepared = est._prepare(X, data.groups, None, data.times, reset=False)
    gen = est._generator(est._device_dtype()[0], 0)
    sims = plotting.simulate_replicates(est, prepared, 5, gen)
    assert sims.shape == (5, 12, 1, 8)
    assert np.isnan(sims[:, 0, 0, 3]).all()
    assert np.isfinite(np.delete(sims.reshape(5, -1), 3, axis=1)).all()
    # Replicates differ from each other (globals and individuals redrawn).
    assert np.std(sims[:, 1, 0, -1]) > 0


class _Dosed(ODEModel):
    """Decay whose initial value scales with an input ``dose``."""

    states = ("x",)
    inputs = ("dose",)

    def declare_parameters(self):
        return [Parameter("k", LogNormal(math.log(0.5), 0.3)),
                Parameter("x0", LogNormal(0.0, 0.3), level="population")]

    def initial_state(self, params, inputs):
        return (params["x0"] * inputs["dose"]).unsqueeze(-1)

    def rhs(self, t, x, params, inputs):
        return -params["k"].unsqueeze(-1) * x


@pytest.mark.parametrize("doses, scale", [([0.0, 0.1, 1.0, 10.0, 100.0], "symlog"),
                                          ([1.0, 2.0, 3.0, 4.0, 5.0], "linear")])
def test_plot_dose_response(doses, scale):
    times = np.linspace(0.0, 4.0, 6)
    u = np.repeat(doses, 2)[:, None]
    sim = simulate(_Dosed(), times=times, inputs=u, random_state=0)
    est = HierarchicalODEVAE(_Dosed(), max_iter=2, n_eval_samples=16, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(sim.X, inputs=u, times=times)
    fig, ax = plt.subplots()
    out = plotting.plot_dose_response(est, sim.X, inputs=u, input_name="dose",
                                      at_times=[0.8, 3.0], times=times, ax=ax)
    assert out is fig and len(fig.axes) == 1
    assert ax.get_xscale() == scale and ax.get_xlabel() == "dose" and ax.get_ylabel() == "x"
    lines = [ln for ln in ax.lines if ln.get_label() in ("t = 0.8", "t = 3")]
    assert len(lines) == 2 and len(ax.collections) == 2
    np.testing.assert_allclose(lines[0].get_xdata(), doses)
    points = [ln for ln in ax.lines if ln.get_marker() == "o"]
    np.testing.assert_allclose(points[0].get_xdata(), u[:, 0])
    np.testing.assert_allclose(points[0].get_ydata(), sim.X[:, 0, 1])  # nearest time to 0.8
    np.testing.assert_allclose(points[1].get_ydata(), sim.X[:, 0, 4])  # nearest time to 3.0
    with pytest.raises(ValueError, match="not one of the model's inputs"):
        plotting.plot_dose_response(est, sim.X, inputs=u, input_name="nope", at_times=1.0,
                                    times=times)


def test_missing_matplotlib_message(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    from skhds.plotting._utils import pyplot

    with pytest.raises(ImportError, match="pip install matplotlib"):
        pyplot()
