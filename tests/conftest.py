"""Shared test configuration.

The real plate-reader data is read from ``../shared/data/vi-hds`` next to the
repository (never copied into it); ``SKHDS_DATA`` points there for the session.
"""
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "vi-hds"

if SHARED_DATA.is_dir():
    os.environ.setdefault("SKHDS_DATA", str(SHARED_DATA))

# Tests run tiny tensors, for which intra-op threads cost more than they give
# (and stall badly when the cores are shared): one thread. Tests whose seeded
# numbers depend on the thread count pin it themselves.
torch.set_num_threads(1)


@pytest.fixture
def data_home():
    """Directory holding the double-receiver CSV files (skips when absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("shared double-receiver data not available")
    return SHARED_DATA
