"""Declaration of one model parameter: its prior, level and grouping factor."""

from ..distributions import Prior

__all__ = ["Parameter", "LEVELS"]

LEVELS = ("population", "group", "individual")


class Parameter:
    """A named model parameter with a prior and a level in the hierarchy.

    Parameters
    ----------
    name : str
        Identifier used as the key in the ``params`` mapping passed to the model.
    prior : Prior
        Prior on the parameter's own scale (for example
        ``LogNormal(0.0, 0.5)``). For ``"individual"`` and ``"group"``
        parameters it is the declared distribution of values across series
        (or levels); the estimator builds hyperpriors for the population
        location and spread from it.
    level : {"population", "group", "individual"}, default="individual"
        ``"population"``: one value shared by all series; ``"group"``: one
        value per level of ``factor``; ``"individual"``: one value per series.
    factor : str, optional
        Name of the grouping factor; required for (and only allowed with)
        ``level="group"``. Must be one of the model's ``factors``.

    Examples
    --------
    >>> from skhds.distributions import LogNormal
    >>> Parameter("r", LogNormal(0.0, 0.3), level="individual")
    Parameter('r', LogNormal(loc=0, scale=0.3), level='individual')
    """

    def __init__(self, name, prior, level="individual", factor=None):
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"Parameter name must be a valid identifier, got {name!r}.")
        if not isinstance(prior, Prior):
            raise TypeError(
                f"Parameter {name!r}: prior must be a skhds.distributions.Prior "
                f"(Normal, LogNormal, LogitNormal), got {type(prior).__name__}."
            )
        if level not in LEVELS:
            raise ValueError(f"Parameter {name!r}: level must be one of {LEVELS}, got {level!r}.")
        if level == "group" and not isinstance(factor, str):
            raise ValueError(f"Parameter {name!r}: a group-level parameter needs a factor name.")
        if level != "group" and factor is not None:
            raise ValueError(f"Parameter {name!r}: factor is only allowed with level='group'.")
        self.name = name
        self.prior = prior
        self.level = level
        self.factor = factor

    def __repr__(self):
        extra = f", factor={self.factor!r}" if self.factor is not None else ""
        return f"Parameter({self.name!r}, {self.prior!r}, level={self.level!r}{extra})"

    def __eq__(self, other):
        return isinstance(other, Parameter) and (
            self.name,
            self.prior,
            self.level,
            self.factor,
        ) == (other.name, other.prior, other.level, other.factor)
