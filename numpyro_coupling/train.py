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

from .bijection import Conditioned
from .checks import as_key
from .flows import parameter_dtype
from .loop import (
    LoopCarry,
    all_finite,
    average_decay,
    chunk_runner,
    run_chunks,
    start_carry,
    training_bar,
)

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
    trainable, except the context bound by a :class:`~numpyro_coupling.Conditioned`
    (data, not a parameter).

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
    spec = jax.tree.map(_trainable, flow, is_leaf=lambda node: isinstance(node, Conditioned))
    if isinstance(flow, TransformedDistribution):
        spec = eqx.tree_at(
            lambda f: f.base_dist, spec, replace_fn=lambda b: jax.tree.map(lambda _: False, b)
        )
    return eqx.partition(flow, spec)


def _trainable(node):
    """The partition spec of a leaf, or of a bound context's node (its context: never)."""
    if isinstance(node, Conditioned):
        inner = jax.tree.map(
            _trainable, node.bijection, is_leaf=lambda n: isinstance(n, Conditioned)
        )
        spec = jax.tree_util.tree_unflatten(jax.tree.structure(node), jax.tree.leaves(node))
        spec.bijection, spec.context = inner, False
        return spec
    return eqx.is_inexact_array(node)


def _event_shape(flow) -> tuple[int, ...]:
    shape = getattr(flow, "event_shape", None)
    if shape is None:
        shape = getattr(flow, "shape", None)
    if shape is None:
        raise TypeError(f"cannot tell the event shape of {type(flow).__name__}")
    return tuple(shape)


def _param_dtype(params):
    dtype = parameter_dtype(params)
    return jnp.zeros(()).dtype if dtype is None else dtype


# --------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------


def _check_data(data, event_shape, name="data", of="the flow's event shape") -> np.ndarray:
    arr = np.asarray(data)
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real, got complex dtype {arr.dtype}")
    expected = "(n, " + ", ".join(str(s) for s in event_shape) + ")"
    if arr.ndim != 1 + len(event_shape) or tuple(arr.shape[1:]) != tuple(event_shape):
        raise ValueError(
            f"{name} must have shape {expected} to match {of} "
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
        opt_state: the optimiser state (holds the schedule's step count).
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
        average: the moving average of the parameters (see ``average`` of :func:`fit`).
        average_weight: the sum of that average's weights.
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
    average: Any
    average_weight: Any


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
# The step handed to the training loop (module level: one compilation per flow structure)
# --------------------------------------------------------------------------------------


def _optimizer(learning_rate, total_steps, clip_norm, weight_decay=0.0):
    schedule = optax.cosine_onecycle_schedule(total_steps, learning_rate)
    # Decoupled decay (AdamW): each step shrinks the parameters by lr * weight_decay.
    if weight_decay:
        adam = optax.adamw(schedule, weight_decay=weight_decay)
    else:
        adam = optax.adam(schedule)
    return adam if clip_norm is None else optax.chain(optax.clip_by_global_norm(clip_norm), adam)


def _mean_nll(params, static, x, context=None):
    flow = eqx.combine(params, static)
    if context is not None:
        flow = flow.condition(context)
    return -jnp.mean(flow.log_prob(x))


def _nll_step(state, t, static, data, key, hyper):
    """One minibatch Adam step on the mean NLL; step ``t`` draws its rows from ``fold_in(key, t)``.

    ``hyper = (batch_size, <the arguments of _optimizer>, batch_sharding)``, all static.
    """
    params, opt_state = state
    batch_size, *optimizer_settings, batch_sharding = hyper
    # ``data``: ``(x,)``, or ``(x, context)`` for a conditional flow, rows paired.
    idx = jr.randint(jr.fold_in(key, t), (batch_size,), 0, data[0].shape[0])
    batch = tuple(jnp.take(a, idx, axis=0) for a in data)
    if batch_sharding is not None:
        batch = tuple(jax.lax.with_sharding_constraint(b, batch_sharding) for b in batch)
    loss, grads = jax.value_and_grad(_mean_nll)(params, static, *batch)
    updates, opt_state = _optimizer(*optimizer_settings).update(grads, opt_state, params)
    new_state = (optax.apply_updates(params, updates), opt_state)
    return new_state, loss, jnp.isfinite(loss) & all_finite(grads)


def _params_of(state):
    return state[0]


_run_chunk = chunk_runner(_nll_step, _params_of)
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


def _split_validation(data, validation, key, event_shape, context_shape=None):
    """``(train, val)`` as tuples of arrays, ``(x,)`` or ``(x, context)``.

    ``validation`` is held-out data (for a conditional flow a pair ``(x, context)``), a
    fraction of ``data`` or ``None``. ``data`` is the tuple of training arrays.
    """
    if validation is None:
        return data, None
    n = len(data[0])
    if np.ndim(validation) == 0 and not isinstance(validation, tuple | list):
        frac = float(validation)
        if not 0.0 < frac < 1.0:
            raise ValueError(f"validation fraction must be in (0, 1), got {frac}")
        n_val = round(frac * n)
        if not 0 < n_val < n:
            raise ValueError(f"validation={frac} leaves no data for training or validation")
        perm = np.asarray(jr.permutation(key, n))
        return tuple(a[perm[n_val:]] for a in data), tuple(a[perm[:n_val]] for a in data)
    if context_shape is None:
        return data, (_check_data(validation, event_shape, "validation"),)
    if not (isinstance(validation, tuple | list) and len(validation) == 2):
        raise ValueError(
            "validation of a conditional flow must be a fraction or a pair (x, context) of "
            f"held-out rows, got {type(validation).__name__}"
        )
    return data, _paired(validation[0], validation[1], event_shape, context_shape, "validation")


def _paired(data, context, event_shape, context_shape, name="data"):
    """``(data, context)`` checked: shapes, finite values, one context row per data row."""
    data = _check_data(data, event_shape, name)
    label = "context" if name == "data" else f"{name} context"
    context = _check_data(context, context_shape, label, of="the flow's context_shape")
    if len(context) != len(data):
        raise ValueError(
            f"context must have one row per row of {name}: got {len(context)} context rows "
            f"for {len(data)} rows"
        )
    return data, context


def _check_options(steps, batch_size, chunk_size, weight_decay, average, patience, validation):
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"need batch_size, chunk_size >= 1, got {batch_size}, {chunk_size}")
    if not (np.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay}")
    if average is not None and not 0.0 <= average <= 1.0:
        raise ValueError(f"average must be a fraction in [0, 1] or None, got {average}")
    if patience is not None and validation is None:
        raise ValueError("patience needs validation data (validation=fraction or array)")


def fit(
    flow,
    data,
    *,
    key=None,
    steps: int | None = None,
    batch_size: int = 512,
    learning_rate: float = 3e-3,
    clip_norm: float | None = 1.0,
    weight_decay: float = 0.0,
    average: float | None = None,
    validation=None,
    patience: int | None = None,
    chunk_size: int = 100,
    progress_bar: bool = True,
    mesh=None,
    resume: FitState | None = None,
    stop_at: int | None = None,
    return_state: bool = False,
    context=None,
):
    """Fit a flow to data by maximum likelihood (minibatch Adam on the mean NLL).

    A conditional flow (built with ``context_shape``) is fitted to pairs: row ``i`` of
    ``data`` is a draw from ``p(x | context[i])``, and the loss is the mean of
    ``-flow.condition(context).log_prob(data)``; every option works alike.

    The learning rate follows ``optax.cosine_onecycle_schedule(steps, learning_rate)``
    after ``optax.clip_by_global_norm(clip_norm)``. Minibatches of ``batch_size`` rows are
    drawn with replacement by random indices on the device. The steps run in the training
    loop shared with :func:`~numpyro_coupling.fit_guide` (:mod:`numpyro_coupling.loop`).

    Args:
        flow: the flow to train, e.g. from :func:`~numpyro_coupling.coupling_flow`.
        data: ``(n, *event_shape)`` finite training data.
        key: PRNG key (minibatches and the validation split; default
            ``jax.random.key(0)``).
        steps: optimisation steps, also the length of the learning-rate schedule
            (default 3000; when resuming, the resumed run's ``total_steps``).
        batch_size: rows per step (divisible by the device count when ``mesh`` is set).
        learning_rate: peak learning rate of the one-cycle schedule.
        clip_norm: global gradient-norm clip (``None`` disables it).
        weight_decay: decoupled weight decay (AdamW): every step shrinks all trainable
            leaves by ``lr * weight_decay``.
        average: if set, the returned flow (and the one validation scores) has an
            exponential moving average of the parameters with a time constant of
            ``average * steps`` steps (Polyak averaging, bias-corrected) instead of the
            last iterate; ``None`` or ``0``: the last iterate.
        validation: held-out data ``(m, *event_shape)``, or a fraction in ``(0, 1)`` of
            ``data`` to hold out. With validation data the returned flow is the one with
            the lowest validation NLL seen (checked at step 0 and after every chunk).
        patience: stop after this many validation checks without improvement (needs
            ``validation``).
        chunk_size: steps per compiled ``lax.scan`` call; also the interval of the
            progress bar, the validation checks and the NaN check.
        progress_bar: show a tqdm bar with the current loss.
        mesh: a one-axis ``jax.sharding.Mesh`` (or ``"auto"`` for all local devices) to
            split every minibatch across devices; parameters are replicated.
        resume: a :class:`FitState` from an earlier call with ``return_state=True``;
            training continues exactly where it stopped (pass the same ``flow``, ``data``,
            ``key`` and hyper-parameters).
        stop_at: pause after this many steps (``< steps``), e.g. to checkpoint; continue
            later with ``resume=``.
        return_state: also return the :class:`FitState`.
        context: ``(n, *context_shape)`` contexts, one per row of ``data`` (a
            conditional flow only). A validation fraction splits the pairs together;
            held-out ``validation`` is then a pair ``(x, context)``.

    Returns:
        ``(fitted_flow, losses)``, or ``(fitted_flow, losses, state)`` with
        ``return_state``; ``losses`` is a numpy array of the training NLL at every step.

    Raises:
        ValueError: bad data (wrong shape, NaN/inf values) or arguments.
        TypeError: ``key`` is not a PRNG key.
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
    key = as_key(key)
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
    _check_options(steps, batch_size, chunk_size, weight_decay, average, patience, validation)
    stop = steps if stop_at is None else int(stop_at)
    if not 0 < stop <= steps:
        raise ValueError(f"stop_at must be in [1, steps={steps}], got {stop_at}")

    context_shape = getattr(flow, "context_shape", None)
    if context_shape is None:
        if context is not None:
            raise ValueError("context was given, but the flow reads none (no context_shape)")
        data = (_check_data(data, event_shape),)
    else:
        if context is None:
            raise ValueError(
                f"the flow is conditional (context_shape={tuple(context_shape)}): pass "
                "context=, one row per row of data"
            )
        data = _paired(data, context, event_shape, context_shape)
    split_key, batch_key = jr.split(key)
    data, val = _split_validation(data, validation, split_key, event_shape, context_shape)

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

    train_x = tuple(put(jnp.asarray(a, dtype)) for a in data)
    val_x = None if val is None else tuple(put(jnp.asarray(a, dtype)) for a in val)
    static = put(static)

    # ---- state -------------------------------------------------------------------------
    if resume is None:
        opt_state = _optimizer(learning_rate, steps, clip_norm, weight_decay).init(params)
        carry = start_carry((put(params), put(opt_state)), _params_of, dtype)
        step, losses, val_losses = 0, [], []
        best_params, best_val, since_best = None, np.inf, 0
        if val_x is not None:
            best_val = float(_eval_nll(put(params), static, *val_x))
            best_params, val_losses = params, [best_val]
    else:
        if stop < resume.step:
            raise ValueError(f"stop_at={stop} is before the resumed step {resume.step}")
        state = (put(resume.params), put(resume.opt_state))
        carry = LoopCarry(state, put(resume.average), resume.average_weight, jnp.array(True))
        step, losses = int(resume.step), [np.asarray(resume.losses)]
        val_losses = list(np.asarray(resume.val_losses))
        best_params, best_val, since_best = resume.best_params, resume.best_val, resume.since_best
        batch_key = resume.key

    def current(carry):
        """The parameters a fit stands for now: the last iterate, or their average."""
        return carry.average if average else carry.state[0]

    def make_state(carry, losses):
        return FitState(
            params=carry.state[0],
            opt_state=carry.state[1],
            step=step,
            total_steps=steps,
            key=batch_key,
            losses=np.concatenate(losses) if losses else np.zeros((0,), dtype),
            val_losses=np.asarray(val_losses, dtype=float),
            best_params=best_params,
            best_val=float(best_val),
            since_best=int(since_best),
            average=carry.average,
            average_weight=carry.weight,
        )

    def validate(carry, _):
        nonlocal best_val, best_params, since_best
        if val_x is None:
            return False, None
        candidate = current(carry)
        v = float(_eval_nll(candidate, static, *val_x))
        val_losses.append(v)
        if v < best_val:
            best_val, best_params, since_best = v, candidate, 0
        else:
            since_best += 1
        return patience is not None and since_best >= patience, f"val {v:.4g}"

    # Equal chunks covering what is left, so one compilation serves the whole run.
    n_chunks = -(-(stop - step) // chunk_size)
    chunk = -(-(stop - step) // n_chunks) if n_chunks else chunk_size
    hyper = (
        batch_size,
        float(learning_rate),
        steps,
        clip_norm,
        float(weight_decay),
        batch_sharding,
    )
    bar = training_bar(steps, enabled=progress_bar, desc="fit", initial=step)
    try:
        carry, new_losses, refused = run_chunks(
            _run_chunk,
            carry,
            (static, train_x, batch_key, hyper),
            steps=stop - step,
            start=step,
            chunk=chunk,
            decay=average_decay(average, steps),
            halt=True,
            bar=bar,
            after_chunk=validate,
        )
    finally:
        bar.close()
    losses.append(new_losses)
    step += len(new_losses)
    if refused is not None:
        state = make_state(carry, losses)
        raise NonFiniteLossError(
            f"the loss or its gradient became non-finite at step {step} (0-based) of "
            f"{steps}, after a loss of {_last(losses):.4g}; lower learning_rate, keep "
            "clip_norm, or standardise the data. The parameters from before that step are "
            "on this error's `last_finite_flow`.",
            step=step,
            last_finite_flow=eqx.combine(carry.state[0], static),
            losses=state.losses,
            state=state,
        )

    state = make_state(carry, losses)
    final = best_params if best_params is not None else current(carry)
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
