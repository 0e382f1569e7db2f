"""Maximum-likelihood fitting of a flow to data, and flows as trainable parts of NumPyro models.

:func:`fit` trains any flow of this package (any NumPyro ``TransformedDistribution`` whose
``log_prob`` is differentiable, or any pytree with a ``log_prob`` and an event shape) by
minibatch Adam on the mean negative log-likelihood. Steps run inside one compiled
``lax.scan`` per chunk of ``chunk_size`` steps, minibatches are drawn on the device by
random indices, so the Python loop only wakes up between chunks (progress bar, validation,
NaN check).

:func:`flow_module` registers a flow's parameters as a ``numpyro.param`` site, so a flow can
be the likelihood (or any density) inside a NumPyro model trained with ``SVI``;
:func:`flow_from_params` reads the learnt flow back from ``svi.get_params(state)``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import numpyro
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from numpyro.distributions import TransformedDistribution
from tqdm.auto import tqdm

from .flows import _parameter_dtype

__all__ = [
    "FitState",
    "NonFiniteLossError",
    "fit",
    "flow_from_params",
    "flow_module",
    "partition_flow",
]


# --------------------------------------------------------------------------------------
# Trainable leaves
# --------------------------------------------------------------------------------------


def partition_flow(flow):
    """Split a flow into its trainable leaves and everything else.

    For a NumPyro ``TransformedDistribution`` the trainable leaves are the floating-point
    arrays of its transforms; the base distribution stays fixed (it is the reference
    ``N(0, I)`` the data are mapped to). For any other pytree every floating-point array is
    trainable.

    Args:
        flow: a flow (e.g. from :func:`~numpyro_coupling.coupling_flow`).

    Returns:
        ``(params, static)`` such that ``eqx.combine(params, static)`` rebuilds ``flow``.

    Example:
        >>> import jax, jax.random as jr
        >>> from numpyro_coupling import coupling_flow
        >>> flow = coupling_flow(jr.key(0), (2,), transformer="affine", n_layers=2, nn_width=4)
        >>> params, static = partition_flow(flow)
        >>> sum(leaf.size for leaf in jax.tree.leaves(params))
        76
    """
    spec = jax.tree.map(eqx.is_inexact_array, flow)
    if isinstance(flow, TransformedDistribution):
        spec = eqx.tree_at(
            lambda f: f.base_dist, spec, replace_fn=lambda b: jax.tree.map(lambda _: False, b)
        )
    return eqx.partition(flow, spec)


def _event_shape(flow) -> tuple[int, ...]:
    shape = getattr(flow, "event_shape", None)
    if shape is None:
        shape = getattr(flow, "shape", None)
    if shape is None:
        raise TypeError(f"cannot tell the event shape of {type(flow).__name__}")
    return tuple(shape)


def _param_dtype(params):
    dtype = _parameter_dtype(params)
    return jnp.zeros(()).dtype if dtype is None else dtype


# --------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------


def _check_data(data, event_shape, name="data") -> np.ndarray:
    arr = np.asarray(data)
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real, got complex dtype {arr.dtype}")
    expected = "(n, " + ", ".join(str(s) for s in event_shape) + ")"
    if arr.ndim != 1 + len(event_shape) or tuple(arr.shape[1:]) != tuple(event_shape):
        raise ValueError(
            f"{name} must have shape {expected} to match the flow's event shape "
            f"{tuple(event_shape)}, got shape {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    finite = np.isfinite(arr)
    if not finite.all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(np.isinf(arr).sum())
        rows = int((~finite.reshape(len(arr), -1).all(1)).sum())
        raise ValueError(
            f"{name} contains {n_nan} NaN and {n_inf} infinite values (in {rows} of "
            f"{len(arr)} rows); drop or impute them before fitting"
        )
    return arr


# --------------------------------------------------------------------------------------
# Training state and errors
# --------------------------------------------------------------------------------------


class FitState(NamedTuple):
    """Everything needed to continue a :func:`fit` exactly where it stopped.

    A plain ``NamedTuple`` (and so a pytree): it can be pickled, or saved leaf by leaf.

    Attributes:
        params: the trainable leaves (``partition_flow(flow)[0]`` structure) at ``step``.
        opt_state: the optimiser state (holds the schedule's step count, and with
            ``ema_decay`` the moving average of the parameters).
        step: number of optimisation steps taken.
        total_steps: length of the learning-rate schedule (the ``steps`` of the run).
        key: the run's base PRNG key; step ``t`` draws its minibatch from
            ``fold_in(key, t)``, so the sequence does not depend on how the run is split.
        losses: ``(step,)`` training NLL per step.
        val_losses: validation NLL at step 0 and after every chunk (empty without
            validation data).
        best_params: trainable leaves with the lowest validation NLL so far (``None``
            without validation data).
        best_val: that lowest validation NLL (``inf`` without validation data).
        since_best: validation checks since the last improvement.
    """

    params: Any
    opt_state: Any
    step: int
    total_steps: int
    key: Any
    losses: np.ndarray
    val_losses: np.ndarray
    best_params: Any
    best_val: float
    since_best: int


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss or gradient.

    Attributes:
        step: index (0-based) of the first step whose loss or gradient was not finite;
            that step's update was not applied.
        last_finite_flow: the flow with the parameters that step started from (all
            finite: the last applied update's result).
        losses: ``(step,)`` the finite training losses before it.
        state: a :class:`FitState` at ``step`` (e.g. to inspect, or to resume).
    """

    def __init__(self, message, *, step, last_finite_flow, losses, state):
        super().__init__(message)
        self.step = step
        self.last_finite_flow = last_finite_flow
        self.losses = losses
        self.state = state


# --------------------------------------------------------------------------------------
# Compiled pieces (module level, so repeated fits of the same structure reuse compilations)
# --------------------------------------------------------------------------------------


class _AverageState(NamedTuple):
    count: jax.Array
    mean: Any


def _moving_average(decay):
    """Last link of the optimiser: an exponential moving average of the updated parameters.

    The updates pass through unchanged; the state keeps ``sum_t decay^(n-t) (1 - decay)
    params_t``, debiased by :func:`_averaged_params`. Kept in the optimiser state, so it
    is saved and resumed with it.
    """

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return _AverageState(jnp.zeros((), jnp.int32), zeros)

    def update(updates, state, params):
        new = optax.apply_updates(params, updates)
        mean = jax.tree.map(lambda m, p: decay * m + (1 - decay) * p, state.mean, new)
        return updates, _AverageState(state.count + 1, mean)

    return optax.GradientTransformation(init, update)


def _averaged_params(opt_state, params, decay):
    """The debiased moving average kept by :func:`_moving_average` (``params`` if none yet)."""
    state = opt_state[-1]
    if int(state.count) == 0:
        return params
    norm = 1 - decay ** int(state.count)
    return jax.tree.map(lambda m, p: (m / norm).astype(p.dtype), state.mean, params)


def _optimizer(learning_rate, total_steps, clip_norm, weight_decay=0.0, ema_decay=None):
    schedule = optax.cosine_onecycle_schedule(total_steps, learning_rate)
    # Decoupled decay (AdamW): each step shrinks the parameters by lr * weight_decay.
    if weight_decay:
        adam = optax.adamw(schedule, weight_decay=weight_decay)
    else:
        adam = optax.adam(schedule)
    links = [] if clip_norm is None else [optax.clip_by_global_norm(clip_norm)]
    links.append(adam)
    if ema_decay is not None:
        links.append(_moving_average(ema_decay))
    return links[0] if len(links) == 1 else optax.chain(*links)


def _mean_nll(params, static, x):
    return -jnp.mean(eqx.combine(params, static).log_prob(x))


def _tree_select(pred, on_true, on_false):
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _all_finite(tree):
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


@eqx.filter_jit
def _run_chunk(params, static, opt_state, data, key, start, n_active, hyper):
    """Run ``n_active <= chunk_len`` steps in one scan; ``hyper`` holds the static settings.

    Returns the new parameters and optimiser state, the per-step losses and a per-step
    flag telling whether the step was applied. A step whose loss or gradient is not finite
    is not applied, and the steps after it are skipped: the carried parameters stay the
    last finite ones.
    """
    # hyper = (chunk_len, batch_size, <the arguments of _optimizer>, batch_sharding)
    chunk_len, batch_size, *optimizer_settings, batch_sharding = hyper
    optimizer = _optimizer(*optimizer_settings)
    n = data.shape[0]

    def body(carry, i):
        params, opt_state, ok = carry
        idx = jr.randint(jr.fold_in(key, start + i), (batch_size,), 0, n)
        batch = jnp.take(data, idx, axis=0)
        if batch_sharding is not None:
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        loss, grads = jax.value_and_grad(_mean_nll)(params, static, batch)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        active = i < n_active
        applied = active & ok & jnp.isfinite(loss) & _all_finite(grads)
        params = _tree_select(applied, new_params, params)
        opt_state = _tree_select(applied, new_opt_state, opt_state)
        ok = ok & (applied | ~active)
        return (params, opt_state, ok), (loss, applied)

    init = (params, opt_state, jnp.array(True))
    (params, opt_state, _), (losses, applied) = jax.lax.scan(body, init, jnp.arange(chunk_len))
    return params, opt_state, losses, applied


_eval_nll = eqx.filter_jit(_mean_nll)


# --------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------


def _resolve_mesh(mesh):
    if mesh is None:
        return None, None
    if isinstance(mesh, str):
        if mesh != "auto":
            raise ValueError(f'mesh must be a jax.sharding.Mesh, "auto" or None, got {mesh!r}')
        mesh = jax.make_mesh((len(jax.local_devices()),), ("data",), axis_types=(AxisType.Auto,))
    if not isinstance(mesh, Mesh) or len(mesh.axis_names) != 1:
        raise ValueError("mesh must be a jax.sharding.Mesh with exactly one axis")
    # Data parallelism needs no sharding-aware model code: let the compiler propagate
    # the batch sharding (an "auto" axis) whatever the axis type of the given mesh.
    mesh = Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,))
    return mesh, mesh.axis_names[0]


def fit(
    flow,
    data,
    *,
    key,
    steps: int | None = None,
    batch_size: int = 512,
    learning_rate: float = 3e-3,
    clip_norm: float | None = 1.0,
    weight_decay: float = 0.0,
    ema_decay: float | None = None,
    validation=None,
    patience: int | None = None,
    chunk_size: int = 100,
    progress_bar: bool = True,
    mesh=None,
    resume: FitState | None = None,
    stop_at: int | None = None,
    return_state: bool = False,
):
    """Fit a flow to data by maximum likelihood (minibatch Adam on the mean NLL).

    The learning rate follows ``optax.cosine_onecycle_schedule(steps, learning_rate)``
    after ``optax.clip_by_global_norm(clip_norm)``. Minibatches of ``batch_size`` rows are
    drawn with replacement by random indices on the device.

    Args:
        flow: the flow to train, e.g. from :func:`~numpyro_coupling.coupling_flow`.
        data: ``(n, *event_shape)`` finite training data.
        key: PRNG key (minibatches and the validation split).
        steps: optimisation steps, also the length of the learning-rate schedule
            (default 3000; when resuming, the resumed run's ``total_steps``).
        batch_size: rows per step (divisible by the device count when ``mesh`` is set).
        learning_rate: peak learning rate of the one-cycle schedule.
        clip_norm: global gradient-norm clip (``None`` disables it).
        weight_decay: decoupled weight decay (AdamW): every step shrinks all trainable
            leaves by ``lr * weight_decay``. A small flow fitted to a few thousand points
            overfits less with it (e.g. 0.3 on two-moons; see ``benchmarks/density.py``).
        ema_decay: if set (in ``(0, 1)``, e.g. 0.998), the returned flow (and the one
            validation scores) has the exponential moving average of the parameters over
            the steps (Polyak averaging), debiased for its zero start, instead of the
            last iterate.
        validation: held-out data ``(m, *event_shape)``, or a fraction in ``(0, 1)`` of
            ``data`` to hold out. With validation data the returned flow is the one with
            the lowest validation NLL seen (checked at step 0 and after every chunk).
        patience: stop after this many validation checks without improvement (needs
            ``validation``).
        chunk_size: steps per compiled ``lax.scan`` call; also the interval of the
            progress bar, the validation checks and the NaN check.
        progress_bar: show a tqdm bar with the current loss.
        mesh: a one-axis ``jax.sharding.Mesh`` (or ``"auto"`` for all local devices) to
            split every minibatch across devices; parameters are replicated. Results equal
            the single-device run up to the order of float reductions.
        resume: a :class:`FitState` from an earlier call with ``return_state=True``;
            training continues exactly where it stopped (pass the same ``flow``, ``data``,
            ``key`` and hyper-parameters).
        stop_at: pause after this many steps (``< steps``), e.g. to checkpoint; continue
            later with ``resume=``.
        return_state: also return the :class:`FitState`.

    Returns:
        ``(fitted_flow, losses)``, or ``(fitted_flow, losses, state)`` with
        ``return_state``; ``losses`` is a numpy array of the training NLL at every step.

    Raises:
        ValueError: bad data (wrong shape, NaN/inf values) or arguments.
        NonFiniteLossError: (a ``FloatingPointError``) a loss or gradient became NaN/inf;
            it names the step and carries ``last_finite_flow``.

    Example:
        >>> import jax.random as jr
        >>> from numpyro_coupling import coupling_flow
        >>> X = jr.normal(jr.key(0), (256, 2)) * 0.5 + 1.0
        >>> flow = coupling_flow(jr.key(1), (2,), transformer="affine", n_layers=2, nn_width=8)
        >>> fitted, losses = fit(flow, X, key=jr.key(2), steps=200, batch_size=64,
        ...                      progress_bar=False)
        >>> losses.shape, bool(losses[-20:].mean() < losses[:20].mean())
        ((200,), True)
    """
    event_shape = _event_shape(flow)
    params, static = partition_flow(flow)
    dtype = _param_dtype(params)

    # ---- arguments -------------------------------------------------------------------
    if resume is not None:
        if steps is not None and steps != resume.total_steps:
            raise ValueError(
                f"resume continues a run of steps={resume.total_steps} (the schedule's "
                f"length), got steps={steps}; to train further start a new fit from the "
                "returned flow"
            )
        steps = resume.total_steps
        if jax.tree.structure(resume.params) != jax.tree.structure(params):
            raise ValueError("resume state does not match the flow's parameter structure")
    steps = 3000 if steps is None else int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"need batch_size, chunk_size >= 1, got {batch_size}, {chunk_size}")
    if not (np.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay}")
    if ema_decay is not None and not 0.0 < ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in (0, 1) or None, got {ema_decay}")
    if patience is not None and validation is None:
        raise ValueError("patience needs validation data (validation=fraction or array)")
    stop = steps if stop_at is None else int(stop_at)
    if not 0 < stop <= steps:
        raise ValueError(f"stop_at must be in [1, steps={steps}], got {stop_at}")

    data = _check_data(data, event_shape)
    split_key, batch_key = jr.split(key)
    if validation is None:
        val = None
    elif np.ndim(validation) == 0:
        frac = float(validation)
        if not 0.0 < frac < 1.0:
            raise ValueError(f"validation fraction must be in (0, 1), got {frac}")
        n_val = round(frac * len(data))
        if not 0 < n_val < len(data):
            raise ValueError(f"validation={frac} leaves no data for training or validation")
        perm = np.asarray(jr.permutation(split_key, len(data)))
        data, val = data[perm[n_val:]], data[perm[:n_val]]
    else:
        val = _check_data(validation, event_shape, "validation")

    mesh, axis = _resolve_mesh(mesh)
    replicated = batch_sharding = None
    if mesh is not None:
        if batch_size % mesh.size:
            raise ValueError(
                f"batch_size={batch_size} must be divisible by the {mesh.size} devices of mesh"
            )
        replicated = NamedSharding(mesh, P())
        batch_sharding = NamedSharding(mesh, P(axis))

    def put(x):
        return x if replicated is None else jax.device_put(x, replicated)

    train_x = put(jnp.asarray(data, dtype))
    val_x = None if val is None else put(jnp.asarray(val, dtype))
    static = put(static)

    # ---- state -------------------------------------------------------------------------
    if resume is None:
        optimizer = _optimizer(learning_rate, steps, clip_norm, weight_decay, ema_decay)
        opt_state = optimizer.init(params)
        step, losses, val_losses = 0, [], []
        best_params, best_val, since_best = None, np.inf, 0
        if val_x is not None:
            best_val = float(_eval_nll(put(params), static, val_x))
            best_params, val_losses = params, [best_val]
    else:
        if stop < resume.step:
            raise ValueError(f"stop_at={stop} is before the resumed step {resume.step}")
        params, opt_state = resume.params, resume.opt_state
        step, losses = int(resume.step), [np.asarray(resume.losses)]
        val_losses = list(np.asarray(resume.val_losses))
        best_params, best_val, since_best = resume.best_params, resume.best_val, resume.since_best
        batch_key = resume.key
    params, opt_state = put(params), put(opt_state)

    def make_state():
        return FitState(
            params=params,
            opt_state=opt_state,
            step=step,
            total_steps=steps,
            key=batch_key,
            losses=np.concatenate(losses) if losses else np.zeros((0,), dtype),
            val_losses=np.asarray(val_losses, dtype=float),
            best_params=best_params,
            best_val=float(best_val),
            since_best=int(since_best),
        )

    # Equal chunks covering what is left, so one compilation serves the whole run.
    n_chunks = -(-(stop - step) // chunk_size)
    chunk_len = -(-(stop - step) // n_chunks) if n_chunks else chunk_size
    hyper = (
        chunk_len,
        batch_size,
        float(learning_rate),
        steps,
        clip_norm,
        float(weight_decay),
        None if ema_decay is None else float(ema_decay),
        batch_sharding,
    )

    def current(params, opt_state):
        """The parameters a fit stands for now: the last iterate, or their average."""
        return params if ema_decay is None else _averaged_params(opt_state, params, ema_decay)

    bar = tqdm(total=steps, initial=step, disable=not progress_bar, desc="fit", leave=True)
    try:
        while step < stop:
            n_active = min(chunk_len, stop - step)
            params, opt_state, chunk_losses, applied = _run_chunk(
                params,
                static,
                opt_state,
                train_x,
                batch_key,
                jnp.asarray(step),  # arrays, not Python ints: one compilation for all chunks
                jnp.asarray(n_active),
                hyper,
            )
            chunk_losses = np.asarray(chunk_losses)[:n_active]
            applied = np.asarray(applied)[:n_active]
            if not applied.all():
                bad = int(np.argmin(applied))
                losses.append(chunk_losses[:bad])
                step += bad
                state = make_state()
                raise NonFiniteLossError(
                    f"the loss or its gradient became non-finite at step {step} (0-based) of "
                    f"{steps}, loss {chunk_losses[bad]:.4g} after {_last(losses):.4g}; lower "
                    "learning_rate, keep clip_norm, or standardise the data. The parameters "
                    "from before that step are on this error's `last_finite_flow`.",
                    step=step,
                    last_finite_flow=eqx.combine(params, static),
                    losses=state.losses,
                    state=state,
                )
            losses.append(chunk_losses)
            step += n_active
            postfix = {"loss": f"{chunk_losses[-1]:.4f}"}
            if val_x is not None:
                candidate = current(params, opt_state)
                v = float(_eval_nll(candidate, static, val_x))
                val_losses.append(v)
                if v < best_val:
                    best_val, best_params, since_best = v, candidate, 0
                else:
                    since_best += 1
                postfix["val"] = f"{v:.4f}"
            bar.set_postfix(postfix, refresh=False)
            bar.update(n_active)
            if patience is not None and since_best >= patience:
                break
    finally:
        bar.close()

    state = make_state()
    final = best_params if best_params is not None else current(params, opt_state)
    fitted = eqx.combine(final, static)
    if return_state:
        return fitted, state.losses, state
    return fitted, state.losses


def _last(losses):
    flat = np.concatenate(losses) if losses else np.zeros(0)
    return float(flat[-1]) if flat.size else float("nan")


# --------------------------------------------------------------------------------------
# Flows inside NumPyro models
# --------------------------------------------------------------------------------------


def flow_module(name: str, flow):
    """Use a flow as a trainable density inside a NumPyro model.

    Registers the flow's trainable leaves (see :func:`partition_flow`) as the single
    ``numpyro.param`` site ``name + "$params"`` (a pytree, like
    ``numpyro.contrib.module.eqx_module``) and returns the flow rebuilt with the site's
    current value, so ``SVI`` optimises the flow together with the rest of the model.

    Args:
        name: site name prefix.
        flow: an initialised flow (built once, outside the model).

    Returns:
        The flow with the current parameter values.

    Example:
        >>> import jax.random as jr, optax, numpyro
        >>> from numpyro.infer import SVI, Trace_ELBO
        >>> from numpyro_coupling import coupling_flow
        >>> flow0 = coupling_flow(jr.key(0), (2,), transformer="affine", n_layers=2, nn_width=8)
        >>> X = jr.normal(jr.key(1), (100, 2)) + 3.0
        >>> def model(X):
        ...     numpyro.sample("x", flow_module("density", flow0), obs=X)
        >>> svi = SVI(model, lambda X: None, optax.adam(1e-2), Trace_ELBO())
        >>> result = svi.run(jr.key(2), 200, X, progress_bar=False)
        >>> bool(result.losses[-1] < result.losses[0])
        True
        >>> learnt = flow_from_params("density", flow0, result.params)
    """
    if not numpyro.primitives._PYRO_STACK:
        # Outside any handler numpyro.param hands back its initial value: the flow as given.
        return flow
    params, static = partition_flow(flow)
    # The initial value goes in as a function: the partitioned flow is itself callable.
    params = numpyro.param(name + "$params", lambda _: params)
    return eqx.combine(params, static)


def flow_from_params(name: str, flow, params: dict):
    """Rebuild the flow registered by :func:`flow_module` from SVI parameters.

    Args:
        name: the name given to :func:`flow_module`.
        flow: the flow given to :func:`flow_module` (its structure and fixed parts).
        params: ``svi.get_params(state)`` or ``svi.run(...).params``.

    Returns:
        The flow with the learnt parameters.
    """
    site = name + "$params"
    if site not in params:
        raise KeyError(f"no parameter site {site!r}; available: {sorted(params)}")
    return eqx.combine(params[site], partition_flow(flow)[1])
