"""One-compartment pharmacokinetics with first-order oral absorption."""

import math

from ..distributions import LogNormal
from ._base import ODEModel
from ._noise import Combined
from ._parameters import Parameter

__all__ = ["OneCompartmentPK"]


class OneCompartmentPK(ODEModel):
    r"""One-compartment model with first-order oral absorption and linear elimination.

    A single oral dose :math:`D` (input ``dose``, an amount, e.g. mg) enters
    the gut depot at :math:`t_0 = 0` and is absorbed into the central
    compartment of volume :math:`V`, from which it is cleared at rate
    :math:`CL`:

    .. math::

        \frac{dA_d}{dt} = -k_a A_d, \qquad
        \frac{dA_c}{dt} = k_a A_d - \frac{CL}{V} A_c, \qquad
        A_d(0) = D, \quad A_c(0) = 0,

    observed as the plasma concentration :math:`C = A_c / V`. With
    :math:`k_e = CL / V \ne k_a` the solution is

    .. math::

        C(t) = \frac{D\,k_a}{V (k_a - k_e)}
        \left(e^{-k_e t} - e^{-k_a t}\right).

    The absorption rate ``ka`` (1/h), clearance ``CL`` (L/h) and volume
    ``V`` (L) are individual parameters with log-normal between-subject
    variability, the usual NLME parameterisation
    :math:`\log \theta_i = \mu_\theta + \omega_\theta \eta_i`. Their priors
    describe a typical orally dosed small molecule: median ``ka = 1``,
    ``CL = 4``, ``V = 30``, so a 100 mg dose peaks near 2.4 mg/L after about
    2.3 h (half-life about 5 h). The default noise is the combined
    additive-plus-proportional error model of pharmacometrics, with standard
    deviation :math:`\sqrt{a^2 + (b\,C)^2}`.

    Parameters
    ----------
    noise : NoiseModel, optional
        Observation noise of the concentration. Default
        :class:`~skhds.models.Combined` with additive part ``a`` (mg/L) prior
        ``LogNormal(log 0.05, 1)`` and proportional part ``b`` prior
        ``LogNormal(log 0.1, 0.5)``; the noise parameters are named ``a_C``
        and ``b_C``.

    Notes
    -----
    The model is linear in the dose, which is the only input; times are in
    hours and the dose is given at ``t0 = 0``. Absorption is fast compared
    with sparse sampling (``ka`` of several per hour for some subjects), so
    explicit fixed-step solvers need steps well below ``1 / ka``: fit with
    ``dt=0.25`` or smaller (``dt=None``, one step per observation interval,
    is unstable on sparse PK designs).

    Examples
    --------
    >>> import torch
    >>> from skhds.models import OneCompartmentPK
    >>> model = OneCompartmentPK()
    >>> [p.name for p in model.parameter_specs()]
    ['ka', 'CL', 'V', 'a_C', 'b_C']
    >>> params = {"ka": torch.tensor([[1.0]]), "CL": torch.tensor([[4.0]]),
    ...           "V": torch.tensor([[30.0]])}
    >>> model.initial_state(params, {"dose": torch.tensor([[100.0]])})
    tensor([[[100.,   0.]]])
    """

    states = ("depot", "central")
    observables = ("C",)
    inputs = ("dose",)

    def __init__(self, noise=None):
        super().__init__()
        self.noise = noise if noise is not None else Combined(
            a_prior=LogNormal(math.log(0.05), 1.0), b_prior=LogNormal(math.log(0.1), 0.5)
        )

    def declare_parameters(self):
        """Absorption rate ``ka``, clearance ``CL`` and volume ``V``, all individual.

        Returns
        -------
        list of Parameter
            ``ka ~ LogNormal(log 1, 0.5)``, ``CL ~ LogNormal(log 4, 0.4)``,
            ``V ~ LogNormal(log 30, 0.3)``, each at the individual level.
        """
        return [
            Parameter("ka", LogNormal(math.log(1.0), 0.5), level="individual"),
            Parameter("CL", LogNormal(math.log(4.0), 0.4), level="individual"),
            Parameter("V", LogNormal(math.log(30.0), 0.3), level="individual"),
        ]

    def initial_state(self, params, inputs):
        """The whole dose in the depot, nothing in the central compartment.

        Parameters
        ----------
        params : dict of str to torch.Tensor
            Parameter values by name, each broadcastable to ``(S, K)``.
        inputs : dict of str to torch.Tensor
            ``{"dose": (S, 1)}``.

        Returns
        -------
        torch.Tensor
            ``(S, 1, 2)`` with ``depot = dose`` and ``central = 0``
            (broadcast over the samples by the caller).
        """
        return self.stack(inputs["dose"], 0.0)

    def rhs(self, t, x, params, inputs):
        """First-order absorption from the depot and linear elimination.

        Parameters
        ----------
        t : torch.Tensor
            Current time, of shape ``(S, 1)`` or ``(1, 1)``.
        x : torch.Tensor
            Amounts ``(depot, central)``, of shape ``(S, K, 2)``.
        params : dict of str to torch.Tensor
            ``ka``, ``CL`` and ``V``, each broadcastable to ``(S, K)``.
        inputs : dict of str to torch.Tensor
            ``{"dose": (S, 1)}`` (unused after ``t0``).

        Returns
        -------
        torch.Tensor
            ``(S, K, 2)`` time derivatives of the amounts.
        """
        depot, central = x[..., 0], x[..., 1]
        absorption = params["ka"] * depot
        return self.stack(-absorption, absorption - params["CL"] / params["V"] * central)

    def observe(self, x, params, inputs):
        """Concentration ``C = central / V``.

        Parameters
        ----------
        x : torch.Tensor
            Time-major amounts, of shape ``(S, K, n_times, 2)``.
        params : dict of str to torch.Tensor
            Parameter values, each broadcastable to ``(S, K, 1)``.
        inputs : dict of str to torch.Tensor
            ``{"dose": (S, 1, 1)}``.

        Returns
        -------
        torch.Tensor
            ``(S, K, n_times, 1)`` concentrations.
        """
        return (x[..., 1] / params["V"]).unsqueeze(-1)
