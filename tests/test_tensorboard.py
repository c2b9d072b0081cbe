"""TensorBoard logging against the real package (skipped when tensorboard is absent)."""

import glob
import warnings

import numpy as np
import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from skhds import HierarchicalODEVAE  # noqa: E402
from skhds.datasets import make_logistic_growth  # noqa: E402


def test_history_scalars_reach_tensorboard_event_files(tmp_path):
    d = make_logistic_growth(n_series=12, n_times=8, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = HierarchicalODEVAE(d.model, max_iter=3, random_state=0, tensorboard_dir=str(tmp_path))
        est.fit(d.X, groups=d.groups, times=d.times)
    files = glob.glob(str(tmp_path / "**" / "*tfevents*"), recursive=True)
    assert len(files) == 1
    acc = EventAccumulator(files[0])
    acc.Reload()
    assert {"skhds/loss", "skhds/ess", "skhds/kl_global"} <= set(acc.Tags()["scalars"])
    logged = [e.value for e in acc.Scalars("skhds/loss")]
    np.testing.assert_allclose(logged, est.loss_curve_, rtol=1e-6)
