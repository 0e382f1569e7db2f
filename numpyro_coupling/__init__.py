"""Coupling normalizing flows as first-class NumPyro transforms, distributions and guides.

Every user-facing verb is importable from here: ``from numpyro_coupling import
coupling_flow, fit, AutoCouplingFlow, fit_guide, neutra_mcmc``.
"""

from ._version import __version__
from .bijection import Bijection, Chain, Conditioned, Invert
from .checks import as_key, as_shape
from .compilation_cache import (
    default_cache_dir,
    disable_compilation_cache,
    enable_compilation_cache,
)
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
from .global_moves import GLOBAL_MOVE_FIELDS, GlobalMoves, GlobalMovesState, with_global_moves
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
    DIVERGENCE_RETRY,
    GUIDE_DRAWS,
    NEUTRA_PARTICLES,
    NUM_CHAINS,
    neutra_mcmc,
    neutra_nuts,
    nuts_mcmc,
    sampling_efficiency,
)
from .parameterisation import (
    Parameterisation,
    centredness,
    choose_parameterisation,
    hierarchical_sites,
    noncentre,
)
from .preconditioning import gaussian_fit
from .rbig import RBIGFlow, RBIGLayers, fit_rbig
from .rbig_coupling import fit_rbig_coupling
from .refinement import guide_scores, refine_guide, refit_tails, score_matching_loss, tail_draws
from .sites import unconstrained_draws
from .svi import (
    GuideFitState,
    SiteOrderedTraceELBO,
    fit_guide,
    guide_optimizer,
    plateau_reached,
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
    "DIVERGENCE_RETRY",
    "GLOBAL_MOVE_FIELDS",
    "GUIDE_DRAWS",
    "MLP",
    "NEUTRA_PARTICLES",
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
    "Conditioned",
    "Coupling",
    "CouplingFlow",
    "DenseAffine",
    "DiagnosticWarning",
    "Elementwise",
    "FitState",
    "Flip",
    "GlobalMoves",
    "GlobalMovesState",
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
    "Parameterisation",
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
    "centredness",
    "chain_diagnostics",
    "checkerboard_mask",
    "choose_parameterisation",
    "coupling_flow",
    "coupling_layers",
    "default_cache_dir",
    "disable_compilation_cache",
    "enable_compilation_cache",
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
    "guide_scores",
    "half_mask",
    "hierarchical_sites",
    "importance_diagnostics",
    "load",
    "make_transformer",
    "mixing_layer",
    "mutual_information",
    "neutra_mcmc",
    "neutra_nuts",
    "noncentre",
    "nuts_mcmc",
    "partition_flow",
    "plateau_reached",
    "refine_guide",
    "refit_tails",
    "sampling_efficiency",
    "save",
    "score_matching_loss",
    "standard_normal",
    "tail_draws",
    "temper_likelihood",
    "total_correlation",
    "unconstrained_draws",
    "with_global_moves",
]
