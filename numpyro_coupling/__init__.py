"""Coupling normalizing flows as first-class NumPyro transforms and distributions."""

from .bijection import Bijection, Chain
from .conditioners import MLP
from .coupling import (
    AdditiveCoupling,
    AffineCoupling,
    Coupling,
    MixtureGaussianCDFCoupling,
    RQSplineCoupling,
)
from .flows import COUPLINGS, CouplingFlow, StandardNormal, coupling_flow, standard_normal
from .linear import ActNorm1D, Flip, HouseholderRotation, LULinear, Permute
from .masks import alternating_mask, checkerboard_mask, half_mask
from .transformers import Additive, Affine, MixtureGaussianCDF, RQSpline, Transformer

__version__ = "0.1.0"

__all__ = [
    "COUPLINGS",
    "MLP",
    "ActNorm1D",
    "Additive",
    "AdditiveCoupling",
    "Affine",
    "AffineCoupling",
    "Bijection",
    "Chain",
    "Coupling",
    "CouplingFlow",
    "Flip",
    "HouseholderRotation",
    "LULinear",
    "MixtureGaussianCDF",
    "MixtureGaussianCDFCoupling",
    "Permute",
    "RQSpline",
    "RQSplineCoupling",
    "StandardNormal",
    "Transformer",
    "__version__",
    "alternating_mask",
    "checkerboard_mask",
    "coupling_flow",
    "half_mask",
    "standard_normal",
]
