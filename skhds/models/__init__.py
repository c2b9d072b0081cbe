"""Model specification: the ``ODEModel`` base class, parameters, noise models, shipped models."""

from ._base import ODEModel, check_model
from ._double_receiver import DoubleReceiver, DoubleReceiverBlackBox, DoubleReceiverMixed
from ._hierarchy import Hierarchy
from ._logistic import LogisticGrowth
from ._noise import Combined, Gaussian, Laplace, NoiseModel, Proportional, StudentT
from ._parameters import LEVELS, Parameter
from ._pharmacokinetics import OneCompartmentPK

__all__ = [
    "ODEModel",
    "Parameter",
    "LEVELS",
    "Hierarchy",
    "check_model",
    "NoiseModel",
    "Gaussian",
    "Proportional",
    "Combined",
    "Laplace",
    "StudentT",
    "LogisticGrowth",
    "DoubleReceiver",
    "DoubleReceiverBlackBox",
    "DoubleReceiverMixed",
    "OneCompartmentPK",
]
