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
from .flows import COUPLINGS, CouplingFlow, coupling_flow, standard_normal
from .linear import ActNorm1D, Flip, HouseholderRotation, LULinear, Permute
from .masks import alternating_mask, checkerboard_mask, half_mask
from .transformers import Additive, Affine, MixtureGaussianCDF, RQSpline, Transformer

__version__ = "0.1.0"

__all__ = [
    "ActNorm1D",
    "Additive",
    "AdditiveCoupling",
    "Affine",
    "AffineCoupling",
    "Bijection",
    "COUPLINGS",
    "Chain",
    "Coupling",
    "CouplingFlow",
    "Flip",
    "HouseholderRotation",
    "LULinear",
    "MLP",
    "MixtureGaussianCDF",
    "MixtureGaussianCDFCoupling",
    "Permute",
    "RQSpline",
    "RQSplineCoupling",
    "Transformer",
    "alternating_mask",
    "checkerboard_mask",
    "coupling_flow",
    "half_mask",
    "standard_normal",
    "__version__",
]
