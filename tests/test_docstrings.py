"""numpydoc validation of every public object (skipped when numpydoc is absent)."""

import importlib
import inspect

import pytest

validate = pytest.importorskip("numpydoc.validate").validate

MODULES = [
    "skhds", "skhds.models", "skhds.distributions", "skhds.solvers", "skhds.inference",
    "skhds.nn", "skhds.datasets", "skhds.preprocessing", "skhds.plotting",
]
METHOD_OWNERS = [
    "HierarchicalODEVAE", "models.ODEModel", "models.NoiseModel", "models.Gaussian",
    "models.Proportional", "models.Combined", "models.Laplace", "models.StudentT",
]
# Style checks we do not enforce (see-also sections, examples everywhere, ...).
IGNORE = {"GL01", "SA01", "EX01", "ES01", "RT02", "SS05", "PR09"}


def _targets():
    names, seen = [], set()
    for mod_name in MODULES:
        mod = importlib.import_module(mod_name)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if not (inspect.isclass(obj) or inspect.isroutine(obj)) or id(obj) in seen:
                continue
            seen.add(id(obj))
            names.append(f"{mod_name}.{name}")
    for owner in METHOD_OWNERS:
        cls = importlib.import_module("skhds")
        for part in owner.split("."):
            cls = getattr(cls, part)
        for attr, value in vars(cls).items():
            if not attr.startswith("_") and (
                inspect.isfunction(value) or isinstance(value, (property, staticmethod, classmethod))
            ):
                names.append(f"skhds.{owner}.{attr}")
    return names


@pytest.mark.parametrize("qualname", _targets())
def test_public_docstring_is_valid_numpydoc(qualname):
    errors = [f"{c}: {m}" for c, m in validate(qualname)["errors"] if c not in IGNORE]
    assert not errors, "\n".join(errors)
