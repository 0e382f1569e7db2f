"""Coupling normalizing flows as first-class NumPyro transforms, distributions and guides.

Every user-facing verb is importable from here: ``from numpyro_coupling import
coupling_flow, fit, AutoCouplingFlow, fit_guide, neutra_mcmc``.
"""

from ._version import __version__
from .bijection import Bijection, Chain, Invert
from .checks import as_key, as_shape
from .conditioners import MLP, GuideConditioner
from .coupling import (
    COUPLINGS,
    AdditiveCoupling,
    AffineCoupling,
    Coupling,
    MixtureGaussianCDFCoupling,
    RQSplineCoupling,
)
from .diagnostics import (
    DiagnosticWarning,
    chain_diagnostics,
    guide_diagnostics,
    importance_diagnostics,
)
from .elementwise import Elementwise
from .flows import (
    PERMUTATIONS,
    CouplingFlow,
    StandardNormal,
    coupling_flow,
    coupling_layers,
    standard_normal,
)
from .guide import AutoCouplingFlow
from .information import entropy, mutual_information, total_correlation
from .io import IncompatibleFormatError, load, save
from .linear import (
    ActNorm1D,
    DenseAffine,
    Flip,
    HouseholderRotation,
    LULinear,
    Permute,
    Rotation,
    mixing_layer,
)
from .masks import alternating_mask, bit_masks, checkerboard_mask, half_mask
from .neutra import (
    GUIDE_DRAWS,
    NUM_CHAINS,
    neutra_mcmc,
    neutra_nuts,
    nuts_mcmc,
    sampling_efficiency,
)
from .preconditioning import gaussian_fit
from .rbig import RBIGFlow, RBIGLayers, fit_rbig
from .rbig_coupling import fit_rbig_coupling
from .sites import unconstrained_draws
from .svi import (
    GuideFitState,
    SiteOrderedTraceELBO,
    fit_guide,
    guide_optimizer,
    temper_likelihood,
)
from .train import FitState, NonFiniteLossError, fit, flow_from_params, flow_module, partition_flow
from .transformers import (
    TRANSFORMERS,
    Additive,
    Affine,
    LocScale,
    LocScaleRQSpline,
    MixtureGaussianCDF,
    RQSpline,
    Transformer,
    make_transformer,
)

__all__ = [
    "COUPLINGS",
    "GUIDE_DRAWS",
    "MLP",
    "NUM_CHAINS",
    "PERMUTATIONS",
    "TRANSFORMERS",
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
    "DenseAffine",
    "DiagnosticWarning",
    "Elementwise",
    "FitState",
    "Flip",
    "GuideConditioner",
    "GuideFitState",
    "HouseholderRotation",
    "IncompatibleFormatError",
    "Invert",
    "LULinear",
    "LocScale",
    "LocScaleRQSpline",
    "MixtureGaussianCDF",
    "MixtureGaussianCDFCoupling",
    "NonFiniteLossError",
    "Permute",
    "RBIGFlow",
    "RBIGLayers",
    "RQSpline",
    "RQSplineCoupling",
    "Rotation",
    "SiteOrderedTraceELBO",
    "StandardNormal",
    "Transformer",
    "__version__",
    "alternating_mask",
    "as_key",
    "as_shape",
    "bit_masks",
    "chain_diagnostics",
    "checkerboard_mask",
    "coupling_flow",
    "coupling_layers",
    "entropy",
    "fit",
    "fit_guide",
    "fit_rbig",
    "fit_rbig_coupling",
    "flow_from_params",
    "flow_module",
    "gaussian_fit",
    "guide_diagnostics",
    "guide_optimizer",
    "half_mask",
    "importance_diagnostics",
    "load",
    "make_transformer",
    "mixing_layer",
    "mutual_information",
    "neutra_mcmc",
    "neutra_nuts",
    "nuts_mcmc",
    "partition_flow",
    "sampling_efficiency",
    "save",
    "standard_normal",
    "temper_likelihood",
    "total_correlation",
    "unconstrained_draws",
]
