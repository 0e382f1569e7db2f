"""NeuTra HMC: NUTS on the geometry a fitted guide warps, plain NUTS, and ArviZ output.

:func:`neutra_mcmc` fits a guide (:func:`~numpyro_coupling.fit_guide`) and runs NUTS on
the geometry it Gaussianises (:func:`neutra_nuts`, NumPyro's ``NeuTraReparam``);
:func:`nuts_mcmc` is the plain-NUTS baseline with the same outputs and
:func:`sampling_efficiency` their figures of merit. Every run returns NumPyro's ``MCMC``
object and an ArviZ ``InferenceData`` in the model's constrained space.
"""

from __future__ import annotations

import time

import jax
import jax.random as jr
import numpy as np
from numpyro.infer import MCMC, NUTS
from numpyro.infer.reparam import NeuTraReparam

from .bijection import Bijection
from .checks import as_key
from .diagnostics import (
    ChainDiagnostics,
    chain_diagnostics,
    guide_diagnostics,
    import_arviz,
    warn_about_chains,
    warn_about_guide,
)
from .global_moves import GLOBAL_MOVE_FIELDS, GlobalMoves, global_move_summary, with_global_moves
from .parameterisation import choose_parameterisation, hierarchical_sites, noncentre
from .refinement import guide_scores, refine_guide, refit_tails
from .sites import latent_shapes, prototype_trace, unconstrained_draws
from .step_count import StepCount
from .svi import fit_guide

__all__ = [
    "DIVERGENCE_RETRY",
    "GUIDE_DRAWS",
    "NEUTRA_PARTICLES",
    "NUM_CHAINS",
    "neutra_mcmc",
    "neutra_nuts",
    "nuts_mcmc",
    "sampling_efficiency",
]

#: Guide draws whose importance weights diagnose a guide before NUTS runs on it.
GUIDE_DRAWS = 2000

#: Chains a run takes by default: several give R-hat (one gives none, and ``az.summary``
#: warns); vectorised on one device, four took 1.2-1.5 times the CPU time of one and no
#: more than two, for 0.9-3.5 times the ESS per CPU second (benchmarks/results/chains.md).
NUM_CHAINS = 4

#: Guide draws per SVI step of the fit ``neutra_mcmc`` runs (``fit_guide``'s own default
#: is one). NUTS needs the guide right in the tails, where a one-draw fit's gradient noise
#: leaves it: on the reference posteriors four draws took the latent GP's divergences from
#: 16-55 to 3-15 in 4000 draws and eight schools' 0.5% quantile of log tau to within 0.04
#: of the exact one, for 9-17% less ESS per gradient where one draw was enough
#: (benchmarks/results/posteriors.md).
NEUTRA_PARTICLES = 4


#: NUTS's target acceptance for a second run, on a guide refitted in its tails, when the
#: first run diverged. On the banana, latent GP and horseshoe (keys 0-2) it took the
#: divergences from 44, 24 and 22 to 0, 0 and 1 (11, 1 and 8 without the refit), for about
#: twice the gradients (benchmarks/results/posteriors.md).
DIVERGENCE_RETRY = 0.9

# The per-transition statistics every run keeps (its ``sample_stats``).
_EXTRA_FIELDS = ("num_steps", "diverging", "accept_prob", "potential_energy")


def _warm_up(mcmc, key, args, model_kwargs) -> int:
    """Run ``mcmc``'s warm-up on its own, keeping its draws; returns its gradients spent
    (every leapfrog step of the warm-up)."""
    mcmc.warmup(key, *args, collect_warmup=True, extra_fields=("num_steps",), **model_kwargs)
    return int(np.asarray(mcmc.get_extra_fields()["num_steps"]).sum())


def _run_nuts(
    model,
    args,
    model_kwargs,
    *,
    key,
    num_warmup,
    num_samples,
    num_chains,
    progress_bar,
    nuts_kwargs,
    mcmc_kwargs,
    global_moves=None,
):
    """Run NUTS on ``model`` with the sampler statistics kept; returns ``(mcmc, attrs)``.

    ``attrs``: ``mcmc_seconds`` (wall time) and ``warmup_grads`` (leapfrog steps of the
    warm-up, and the global moves' gradients with ``global_moves``).
    """
    mcmc_kwargs = {"chain_method": _chain_method(num_chains)} | dict(mcmc_kwargs or {})
    kernel = with_global_moves(NUTS(model, **(nuts_kwargs or {})), global_moves)
    moves = isinstance(kernel, GlobalMoves)
    # One run, one compiled loop: the running total tells the warm-up's gradients.
    mcmc = MCMC(
        StepCount(kernel),
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        progress_bar=progress_bar,
        **mcmc_kwargs,
    )
    start = time.perf_counter()
    extra_fields = _EXTRA_FIELDS + (GLOBAL_MOVE_FIELDS if moves else ())
    mcmc.run(key, *args, extra_fields=extra_fields, **model_kwargs)
    jax.block_until_ready(mcmc.get_samples())
    sampled = int(np.asarray(mcmc.get_extra_fields()["num_steps"]).sum())
    warmup_grads = int(np.asarray(mcmc.last_state.total_steps).sum()) - sampled
    attrs = {"mcmc_seconds": time.perf_counter() - start, "warmup_grads": warmup_grads}
    if moves:
        attrs |= global_move_summary(mcmc.get_extra_fields())
    return mcmc, attrs


def _pilot_draws(
    model, neutra, guide, args, model_kwargs, *, key, num_warmup, num_chains, nuts_kwargs
):
    """A NeuTra warm-up's own draws, flat and unconstrained: ``(draws, gradients spent)``.

    The first fifth of each chain (the step size still settling) is dropped.
    """
    mcmc = MCMC(
        NUTS(neutra.reparam(model), **(nuts_kwargs or {})),
        num_warmup=num_warmup,
        num_samples=1,
        num_chains=num_chains,
        chain_method=_chain_method(num_chains),
        progress_bar=False,
    )
    grads = _warm_up(mcmc, key, args, model_kwargs)
    z = mcmc.get_samples(group_by_chain=True)[f"{guide.prefix}_shared_latent"]
    z = z[:, z.shape[1] // 5 :].reshape(-1, z.shape[-1])
    return jax.vmap(neutra.transform)(z), grads


def _refined(
    model, guide, params, args, model_kwargs, *, refine, key, num_warmup, num_chains, nuts_kwargs
):
    """Refine ``params`` on a pilot warm-up (half of ``num_warmup``): ``(params, attrs)``."""
    options = {} if refine is True else dict(refine)
    pilot_key, refine_key = jr.split(key)
    draws, pilot_grads = _pilot_draws(
        model,
        NeuTraReparam(guide, params),
        guide,
        args,
        model_kwargs,
        key=pilot_key,
        num_warmup=num_warmup,
        num_chains=num_chains,
        nuts_kwargs=nuts_kwargs,
    )
    start = time.perf_counter()
    scores = guide_scores(guide, draws)
    params, losses = refine_guide(guide, params, draws, scores, key=refine_key, **options)
    attrs = {
        "refine_grads": pilot_grads + int(draws.shape[0]),
        "refine_seconds": time.perf_counter() - start,
    } | _loss_ends(losses, "refine")
    return params, attrs


def _loss_ends(losses, name) -> dict:
    """Mean loss over the first and the last tenth of a refit: ``{name}_loss_first/last``."""
    n = max(len(losses) // 10, 1)
    first, last = float(np.mean(losses[:n])), float(np.mean(losses[-n:]))
    return {f"{name}_loss_first": first, f"{name}_loss_last": last}


def _chain_method(num_chains):
    # Vectorised chains share one device's compiled step; parallel ones need a device each.
    return "parallel" if jax.local_device_count() >= num_chains > 1 else "vectorized"


def _sample_stats(mcmc) -> dict:
    extra = mcmc.get_extra_fields(group_by_chain=True)
    return {
        "diverging": np.asarray(extra["diverging"]),
        "n_steps": np.asarray(extra["num_steps"]),
        "acceptance_rate": np.asarray(extra["accept_prob"]),
        "lp": -np.asarray(extra["potential_energy"]),
    } | {k: np.asarray(extra[k]) for k in GLOBAL_MOVE_FIELDS if k in extra}


def _idata(posterior, unconstrained, mcmc, losses, attrs, *, nuts_kwargs, neutra):
    """The run's ``InferenceData``, its chains diagnosed (``attrs``) and warned about."""
    az = import_arviz()
    idata = az.from_dict(
        posterior={k: np.asarray(v) for k, v in posterior.items()},
        sample_stats=_sample_stats(mcmc),
    )
    idata.add_groups(
        {"unconstrained_posterior": {k: np.asarray(v) for k, v in unconstrained.items()}}
    )
    if losses is not None:
        import xarray as xr

        idata.add_groups({"svi": xr.Dataset({"loss": ("svi_step", np.asarray(losses))})})
    idata.attrs.update(attrs)
    max_depth = (nuts_kwargs or {}).get("max_tree_depth", 10)
    max_depth = max_depth if isinstance(max_depth, int) else max(max_depth)
    diag = chain_diagnostics(idata, max_tree_depth=max_depth)
    idata.attrs.update(diag._asdict())
    idata.attrs["warnings"] = warn_about_chains(diag, neutra=neutra)
    return idata


def neutra_nuts(
    model,
    guide,
    params,
    *args,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = NUM_CHAINS,
    key=None,
    progress_bar: bool = True,
    losses=None,
    refine: bool | dict = False,
    retry: float | None = DIVERGENCE_RETRY,
    nuts_kwargs: dict | None = None,
    mcmc_kwargs: dict | None = None,
    global_moves=None,
    **model_kwargs,
):
    """NUTS on the geometry warped by a fitted guide (NumPyro's ``NeuTraReparam``).

    Where the guide's tails and the posterior's part, the warped geometry curves more
    than the adapted step can follow and transitions diverge. If any did, the guide is
    first refitted by score matching on 2000 of its own draws, half of them from a
    widened base (:func:`~numpyro_coupling.refit_tails`: the tails a reverse-KL fit rarely
    sees), and NUTS runs again on it, from a fresh warm-up, with the smaller step of
    target acceptance ``retry``. The run that diverged less (the second on a tie) is the
    result, with the parameters it ran on, and every gradient of the other and of the
    refit counts as warm-up: ``attrs["retry_kept"]`` says which was kept,
    ``attrs["retry_divergences"]`` holds the second run's divergences and
    ``attrs["retry_refit_grads"]`` the refit's model gradients (none for a guide whose
    map is not a :class:`~numpyro_coupling.Bijection`, which is not refitted).

    With ``refine``, the first half of the warm-up is a pilot NeuTra run whose draws refit
    the guide by score matching (:func:`~numpyro_coupling.refine_guide`), and NUTS then
    adapts and samples on the refined guide in the second half; the pilot's gradients,
    and one per draw for the scores, count as warm-up gradients
    (``attrs["refine_grads"]``).

    Args:
        model: the NumPyro model.
        guide: a fitted ``AutoContinuous`` guide.
        params: its parameters.
        *args: model arguments.
        num_warmup: warmup iterations per chain.
        num_samples: kept draws per chain.
        num_chains: chains (in parallel with a device each, else vectorised).
        key: PRNG key (default ``jax.random.key(0)``).
        progress_bar: show NumPyro's progress bar.
        losses: optional SVI loss curve, stored in the ``svi`` group.
        refine: refine the guide on a pilot warm-up: ``True``, or a dict of
            :func:`~numpyro_coupling.refine_guide` options (``steps``,
            ``learning_rate``, ``batch_size``); ``False``: no refinement.
        retry: NUTS's target acceptance for a second run if the first one diverged
            (:data:`DIVERGENCE_RETRY`); ``None``: no second run. No retry either where
            ``nuts_kwargs`` already asks for as much.
        nuts_kwargs: extra ``NUTS`` arguments.
        mcmc_kwargs: extra ``MCMC`` arguments (e.g. ``chain_method``).
        global_moves: independence moves proposed from the guide between NUTS steps
            (:class:`~numpyro_coupling.GlobalMoves`): ``None`` (none), ``True`` (rate
            adapted in warm-up), a fixed rate, or a dict of its options. Their acceptance
            goes to ``sample_stats`` and ``attrs`` (``global_acceptance_rate``, ...).
        **model_kwargs: model keyword arguments.

    Returns:
        ``(mcmc, idata)``; ``mcmc.guide_params`` holds the parameters NUTS ran on (the
        refined ones with ``refine``, the refitted ones where the second run was kept);
        ``mcmc.get_samples()`` holds the warped draws (``{prefix}_shared_latent``);
        ``idata.posterior`` holds every latent site in the model's constrained space,
        ``idata.unconstrained_posterior`` the same draws unconstrained,
        ``idata.sample_stats`` ``diverging``/``n_steps``/... and
        ``idata.attrs["mcmc_seconds"]`` the wall time.
    """
    key, diag_key = jr.split(as_key(key))
    refine_key = jr.fold_in(diag_key, 1)
    refine_attrs = {}
    if refine:
        pilot = num_warmup // 2
        params, refine_attrs = _refined(
            model,
            guide,
            params,
            args,
            model_kwargs,
            refine=refine,
            key=refine_key,
            num_warmup=pilot,
            num_chains=num_chains,
            nuts_kwargs=nuts_kwargs,
        )
        num_warmup -= pilot
    # Checked before NUTS starts: a guide that misses mass is warned about at once.
    guide_diag = guide_diagnostics(guide, params, diag_key, GUIDE_DRAWS)
    guide_warnings = warn_about_guide(guide_diag, GUIDE_DRAWS)
    neutra = NeuTraReparam(guide, params)

    def run(key, nuts_kwargs, neutra):
        return _run_nuts(
            neutra.reparam(model),
            args,
            model_kwargs,
            key=key,
            num_warmup=num_warmup,
            num_samples=num_samples,
            num_chains=num_chains,
            progress_bar=progress_bar,
            nuts_kwargs=nuts_kwargs,
            mcmc_kwargs=mcmc_kwargs,
            global_moves=global_moves,
        )

    def spent(mcmc, attrs):
        extra = mcmc.get_extra_fields()
        grads = attrs["warmup_grads"] + int(np.asarray(extra["num_steps"]).sum())
        return int(np.asarray(extra["diverging"]).sum()), grads

    mcmc, attrs = run(key, nuts_kwargs, neutra)
    diverged, grads = spent(mcmc, attrs)
    target = (nuts_kwargs or {}).get("target_accept_prob", 0.8)
    if diverged and retry is not None and retry > target:
        # Divergences come from where the warped space still curves: mostly the tails,
        # which the reverse-KL fit rarely saw. Refit them first (where the map inverts).
        retry_params, retry_attrs = params, {"retry_refit_grads": 0}
        if isinstance(guide.get_transform(params), Bijection):
            retry_params, curve, n_refit = refit_tails(guide, params, jr.fold_in(refine_key, 2))
            retry_attrs = {"retry_refit_grads": n_refit} | _loss_ends(curve, "retry_refit")
        retry_neutra = NeuTraReparam(guide, retry_params)
        slower = dict(nuts_kwargs or {}, target_accept_prob=retry)
        second = run(jr.fold_in(key, 1), slower, retry_neutra)
        diverged_again, grads_again = spent(*second)
        # Both runs are valid chains; the one that diverged less is kept, and every
        # gradient of the other (and of the refit) counts as warm-up.
        kept = "second" if diverged_again <= diverged else "first"
        other_grads, other_seconds = grads, attrs["mcmc_seconds"]
        if kept == "first":
            other_grads, other_seconds = grads_again, second[1]["mcmc_seconds"]
        else:
            mcmc, attrs = second
            params, neutra = retry_params, retry_neutra
        attrs["warmup_grads"] += other_grads + retry_attrs["retry_refit_grads"]
        attrs["mcmc_seconds"] += other_seconds
        attrs |= retry_attrs | {"retry_divergences": diverged_again, "retry_kept": kept}
    # NumPyro's collection loop already replayed the model on every draw: its latent and
    # deterministic sites are the posterior, so the guide maps each draw once more only
    # for the unconstrained coordinates (one compiled transform, not two).
    draws = mcmc.get_samples(group_by_chain=True)
    latent = f"{guide.prefix}_shared_latent"
    z = draws[latent]
    posterior = {k: v for k, v in draws.items() if k != latent}
    x = jax.vmap(jax.vmap(neutra.transform))(z)
    unconstrained = jax.vmap(jax.vmap(guide._unpack_latent))(x)
    attrs |= {f"guide_{k}": v for k, v in guide_diag._asdict().items()} | refine_attrs
    attrs["warmup_grads"] += refine_attrs.get("refine_grads", 0)
    idata = _idata(
        posterior, unconstrained, mcmc, losses, attrs, nuts_kwargs=nuts_kwargs, neutra=True
    )
    idata.attrs["warnings"] = guide_warnings + idata.attrs["warnings"]
    mcmc.guide, mcmc.guide_params = guide, params
    return mcmc, idata


def _parameterised(model, args, model_kwargs, *, reparam, guide, key):
    """The model NeuTra runs on, as ``reparam`` says: ``(model, attrs)``."""
    if reparam is False or reparam is None:
        return model, {}
    builds_guide = guide is None or isinstance(guide, dict)
    if isinstance(reparam, str):
        if reparam != "auto":
            raise ValueError(f"reparam must be 'auto', True, False or site names, got {reparam!r}")
        if not builds_guide:
            # A guide instance is tied to the model it was built on: keep that model.
            return model, {"noncentred_sites": []}
        choice = choose_parameterisation(model, *args, key=key, **model_kwargs)
        elbo_items = choice.elbos.items()
        # Strings, so that the InferenceData still saves to netCDF.
        elbos = "; ".join(f"{','.join(k) or 'as written'}: {v:.3f}" for k, v in elbo_items)
        centring = "; ".join(
            f"{k}: {np.min(c):.2f}-{np.max(c):.2f} (mean {np.mean(c):.2f})"
            for k, c in choice.centring.items()
        )
        return choice.model, {
            "noncentred_sites": list(choice.noncentred),
            "reparam_grads": choice.n_grad,
            "reparam_elbos": elbos,
            "centring": centring,
        }
    candidates = hierarchical_sites(model, *args, **model_kwargs)
    sites = candidates if reparam is True else list(reparam)
    unknown = sorted(set(sites) - set(candidates))
    if unknown:
        raise ValueError(
            f"reparam names sites {unknown} that are not hierarchical location-scale latent "
            f"sites of the model (those are {candidates})"
        )
    if sites and not builds_guide:
        raise ValueError(
            "reparam non-centres the model, but the guide given was built on the model as "
            "written: pass guide=None or a dict of AutoCouplingFlow options, or build the "
            "guide on numpyro_coupling.noncentre(model, sites) and pass reparam=False"
        )
    return noncentre(model, sites), {"noncentred_sites": list(sites)}


def neutra_mcmc(
    model,
    *args,
    guide=None,
    fit_kwargs: dict | None = None,
    reparam: bool | str | list = "auto",
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = NUM_CHAINS,
    key=None,
    progress_bar: bool = True,
    refine: bool | dict = False,
    retry: float | None = DIVERGENCE_RETRY,
    nuts_kwargs: dict | None = None,
    mcmc_kwargs: dict | None = None,
    global_moves=None,
    **model_kwargs,
):
    """NeuTra HMC: fit a guide by SVI, then run NUTS on the geometry it Gaussianises.

    Args:
        model: the NumPyro model.
        *args: model arguments.
        guide: an ``AutoContinuous`` guide, a dict of
            :class:`~numpyro_coupling.AutoCouplingFlow` keyword arguments, or ``None`` for
            ``AutoCouplingFlow`` defaults.
        fit_kwargs: options of :func:`~numpyro_coupling.fit_guide` (``steps``,
            ``learning_rate``, ``average``, ``schedule``, ``clip_norm``, ``temper``,
            ``num_particles``, ``plateau``); ``num_particles`` defaults to
            :data:`NEUTRA_PARTICLES` (4) here.
        reparam: the parameterisation of hierarchical sites (``theta ~ Normal(mu, tau)``;
            :func:`~numpyro_coupling.hierarchical_sites`). ``"auto"`` (default): centred
            as written or non-centred (``theta = mu + tau * eta``), whichever posterior
            is nearer to Gaussian (:func:`~numpyro_coupling.choose_parameterisation`; its
            log-density evaluations count in ``attrs["reparam_grads"]``), or, nearer
            still, each element centred as far as the data pin it down (a sparse
            regression's coefficients; ``attrs["centring"]`` then gives the range of
            :func:`~numpyro_coupling.centredness`); kept as written when ``guide`` is a
            guide instance. ``True``: every such site non-centred; a
            list: those sites; ``False``: the model as written. The sites non-centred are
            in ``attrs["noncentred_sites"]``; the posterior holds them as they are in the
            model, and their standardised draws as ``{site}_decentered``.
        num_warmup: NUTS warmup iterations per chain.
        num_samples: NUTS draws per chain.
        num_chains: chains (in parallel with a device each, else vectorised).
        key: PRNG key (default ``jax.random.key(0)``), split between the fit and NUTS.
        progress_bar: show progress bars.
        refine: refine the guide by score matching on a pilot NeuTra warm-up (the first
            half of ``num_warmup``): ``True`` or :func:`~numpyro_coupling.refine_guide`
            options; see :func:`neutra_nuts`.
        retry: NUTS's target acceptance for a second run if the first one diverged
            (:data:`DIVERGENCE_RETRY`; ``None``: none); see :func:`neutra_nuts`.
        nuts_kwargs: extra ``NUTS`` arguments, e.g. ``{"target_accept_prob": 0.95}``.
        mcmc_kwargs: extra ``MCMC`` arguments (e.g. ``chain_method``).
        global_moves: independence moves from the guide between NUTS steps, for
            posteriors with several modes (see :func:`neutra_nuts`); the guide must put
            mass on every mode (``fit_kwargs={"temper": ...}``).
        **model_kwargs: model keyword arguments.

    Returns:
        ``(mcmc, idata)``: the NumPyro ``MCMC`` object, with the fitted guide and its
        parameters as ``mcmc.guide`` and ``mcmc.guide_params``, and an ArviZ
        ``InferenceData`` with ``posterior`` (constrained space),
        ``unconstrained_posterior``, ``sample_stats`` (``diverging``, ``n_steps``,
        ``acceptance_rate``, ``lp``), an ``svi`` group holding the loss curve, and
        ``attrs`` ``svi_seconds`` and ``mcmc_seconds``.

    Example:
        >>> import numpyro, numpyro.distributions as dist
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        >>> mcmc, idata = neutra_mcmc(
        ...     model, guide={"n_layers": 1, "nn_width": 4}, fit_kwargs={"steps": 20},
        ...     num_warmup=20, num_samples=10, progress_bar=False,
        ... )
        >>> idata.posterior["x"].shape, idata.svi["loss"].shape
        ((4, 10, 2), (20,))
    """
    fit_kwargs = {"num_particles": NEUTRA_PARTICLES} | dict(fit_kwargs or {})
    taken = sorted({"guide", "key", "progress_bar", "return_state"} & set(fit_kwargs))
    if taken:
        raise ValueError(f"fit_kwargs may not set {taken}: they are neutra_mcmc's own arguments")
    svi_key, mcmc_key = jr.split(as_key(key))
    model, reparam_attrs = _parameterised(
        model, args, model_kwargs, reparam=reparam, guide=guide, key=jr.fold_in(svi_key, 3)
    )
    start = time.perf_counter()
    guide, params, losses, fit_state = fit_guide(
        model,
        *args,
        guide=guide,
        key=svi_key,
        progress_bar=progress_bar,
        return_state=True,
        **fit_kwargs,
        **model_kwargs,
    )
    svi_seconds = time.perf_counter() - start
    mcmc, idata = neutra_nuts(
        model,
        guide,
        params,
        *args,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        key=mcmc_key,
        progress_bar=progress_bar,
        losses=losses,
        refine=refine,
        retry=retry,
        nuts_kwargs=nuts_kwargs,
        mcmc_kwargs=mcmc_kwargs,
        global_moves=global_moves,
        **model_kwargs,
    )
    idata.attrs["svi_seconds"] = svi_seconds
    idata.attrs["svi_grads"] = fit_state.n_grads
    idata.attrs.update(reparam_attrs)
    return mcmc, idata


def nuts_mcmc(
    model,
    *args,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = NUM_CHAINS,
    key=None,
    progress_bar: bool = True,
    nuts_kwargs: dict | None = None,
    mcmc_kwargs: dict | None = None,
    **model_kwargs,
):
    """Plain NUTS with the same outputs as :func:`neutra_mcmc` (the baseline).

    Args:
        model: the NumPyro model.
        *args: model arguments.
        num_warmup: warmup iterations per chain.
        num_samples: kept draws per chain.
        num_chains: chains (in parallel with a device each, else vectorised).
        key: PRNG key (default ``jax.random.key(0)``).
        progress_bar: show NumPyro's progress bar.
        nuts_kwargs: extra ``NUTS`` arguments.
        mcmc_kwargs: extra ``MCMC`` arguments (e.g. ``chain_method``).
        **model_kwargs: model keyword arguments.

    Returns:
        ``(mcmc, idata)`` with ``posterior`` (latent and deterministic sites),
        ``unconstrained_posterior``, ``sample_stats`` and ``attrs["mcmc_seconds"]``.

    Example:
        >>> import numpyro, numpyro.distributions as dist
        >>> def model():
        ...     numpyro.sample("s", dist.LogNormal(0.0, 1.0))
        >>> mcmc, idata = nuts_mcmc(model, num_warmup=20, num_samples=10, progress_bar=False)
        >>> idata.unconstrained_posterior["s"].shape
        (4, 10)
    """
    mcmc, attrs = _run_nuts(
        model,
        args,
        model_kwargs,
        key=as_key(key),
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        progress_bar=progress_bar,
        nuts_kwargs=nuts_kwargs,
        mcmc_kwargs=mcmc_kwargs,
    )
    trace = prototype_trace(model, args, model_kwargs)
    # Latent and deterministic sites, as neutra_mcmc reports them.
    keep = set(latent_shapes(trace))
    keep |= {name for name, site in trace.items() if site["type"] == "deterministic"}
    draws = mcmc.get_samples(group_by_chain=True)
    posterior = {k: v for k, v in draws.items() if k in keep}
    unconstrained = unconstrained_draws(model, posterior, *args, **model_kwargs)
    idata = _idata(
        posterior, unconstrained, mcmc, None, attrs, nuts_kwargs=nuts_kwargs, neutra=False
    )
    return mcmc, idata


def sampling_efficiency(idata) -> dict:
    """Sampler figures of merit from an ``InferenceData`` of :func:`neutra_mcmc`/:func:`nuts_mcmc`.

    Every gradient of the model's log density a run spent counts: the choice of
    parameterisation's, the SVI fit's (one per step and particle), NUTS's warm-up and its
    sampling.

    Args:
        idata: the run's ``InferenceData``.

    Returns:
        dict with ``min_ess`` (bulk ESS, minimum over every unconstrained latent
        coordinate), ``n_grads`` (leapfrog steps after warm-up), ``ess_per_grad``,
        ``total_grads`` (parameterisation, SVI, warm-up and sampling), ``ess_per_total_grad``,
        ``max_rhat`` (the largest split R-hat; ``nan`` with one chain), ``min_tail_ess``
        (tail ESS, minimum over the same coordinates), ``divergences``,
        ``depth_saturation``, ``seconds`` (MCMC wall time, warm-up included),
        ``ess_per_second`` and ``k_hat`` (the guide's Pareto k-hat; ``nan``
        without a guide).
    """
    # The run's own diagnostics (made with its tree depth), else computed here.
    stored = {k: idata.attrs[k] for k in ChainDiagnostics._fields if k in idata.attrs}
    if len(stored) == len(ChainDiagnostics._fields):
        diag = ChainDiagnostics(**stored)
    else:
        diag = chain_diagnostics(idata)
    n_grads = int(idata.sample_stats["n_steps"].values.sum())
    total = n_grads + sum(
        int(idata.attrs.get(k, 0)) for k in ("warmup_grads", "svi_grads", "reparam_grads")
    )
    seconds = float(idata.attrs.get("mcmc_seconds", np.nan))
    return {
        "min_ess": diag.min_ess,
        "n_grads": n_grads,
        "ess_per_grad": diag.min_ess / max(n_grads, 1),
        "total_grads": total,
        "ess_per_total_grad": diag.min_ess / max(total, 1),
        "max_rhat": diag.max_rhat,
        "min_tail_ess": diag.min_tail_ess,
        "divergences": diag.divergences,
        "depth_saturation": diag.depth_saturation,
        "seconds": seconds,
        "ess_per_second": diag.min_ess / seconds,
        "k_hat": float(idata.attrs.get("guide_k_hat", np.nan)),
    }
