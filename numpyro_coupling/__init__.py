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
from .infer import AutoCouplingFlow, neutra_mcmc
from .information import entropy, mutual_information, total_correlation
from .io import IncompatibleFormatError, load, save
from .linear import ActNorm1D, Flip, HouseholderRotation, LULinear, Permute
from .masks import alternating_mask, checkerboard_mask, half_mask
from .rbig import (
    MarginalGaussianization,
    RBIGFlow,
    RBIGLayers,
    Rotation,
    fit_rbig,
    fit_rbig_coupling,
)
from .train import FitState, NonFiniteLossError, fit, flow_from_params, flow_module
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
    "AutoCouplingFlow",
    "Bijection",
    "Chain",
    "Coupling",
    "CouplingFlow",
    "FitState",
    "Flip",
    "HouseholderRotation",
    "IncompatibleFormatError",
    "LULinear",
    "MarginalGaussianization",
    "MixtureGaussianCDF",
    "MixtureGaussianCDFCoupling",
    "NonFiniteLossError",
    "Permute",
    "RBIGFlow",
    "RBIGLayers",
    "RQSpline",
    "RQSplineCoupling",
    "Rotation",
    "StandardNormal",
    "Transformer",
    "__version__",
    "alternating_mask",
    "checkerboard_mask",
    "coupling_flow",
    "entropy",
    "fit",
    "fit_rbig",
    "fit_rbig_coupling",
    "flow_from_params",
    "flow_module",
    "half_mask",
    "load",
    "mutual_information",
    "neutra_mcmc",
    "save",
    "standard_normal",
    "total_correlation",
]
