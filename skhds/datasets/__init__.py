"""Data: simulation with known truth, synthetic problems and the plate-reader study."""

from ._double_receiver import fetch_double_receiver, get_data_home
from ._long import from_long_format, to_long_format
from ._pharmacokinetics import make_pharmacokinetics
from ._plate_reader import load_plate_reader
from ._simulate import simulate
from ._synthetic import make_logistic_growth

__all__ = [
    "simulate",
    "make_logistic_growth",
    "make_pharmacokinetics",
    "load_plate_reader",
    "fetch_double_receiver",
    "get_data_home",
    "from_long_format",
    "to_long_format",
]
