"""The one training engine: compiled chunks of steps, a moving average, a progress bar.

Both :func:`~numpyro_coupling.fit` (maximum likelihood on data) and
:func:`~numpyro_coupling.fit_guide` (SVI) hand this loop a *step*: a pure function
``step(state, t, *args) -> (new_state, loss, finite)`` that takes optimisation step ``t``
from ``state``. The loop runs the steps ``chunk`` at a time inside one compiled
``lax.scan`` (the Python loop only wakes up between chunks, to move the progress bar),
keeps an exponential moving average of the parameters, and applies one policy to steps
whose loss or gradient is not finite: such a step is never applied; with ``halt`` the steps
after it are not applied either, so the carried state stays the last finite one.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

__all__ = [
    "LoopCarry",
    "all_finite",
    "average_decay",
    "chunk_length",
    "chunk_runner",
    "run_chunks",
    "start_carry",
    "training_bar",
]


class LoopCarry(NamedTuple):
    """What the compiled chunks carry from step to step.

    Attributes:
        state: the step's own state (parameters and optimiser state).
        average: the moving average of ``view(state)`` (bias-corrected: a weighted mean of
            the iterates with weights ``decay**(t - i)``).
        weight: the sum of those weights (0 before the first applied step).
        ok: ``False`` once a step has been refused under the ``halt`` policy.
    """

    state: Any
    average: Any
    weight: jax.Array
    ok: jax.Array


def start_carry(state, view, dtype=None) -> LoopCarry:
    """The carry before the first step: the average starts at ``view(state)``, weight 0."""
    dtype = dtype or jnp.result_type(float)
    return LoopCarry(state, view(state), jnp.zeros((), dtype), jnp.array(True))


def all_finite(tree) -> jax.Array:
    """Whether every array of ``tree`` is finite (``True`` for a tree without arrays).

    Example:
        >>> import jax.numpy as jnp
        >>> bool(all_finite({"a": jnp.ones(2), "b": jnp.array([jnp.nan])}))
        False
    """
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _select(pred, on_true, on_false):
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def average_decay(average: float | None, steps: int) -> float:
    """The moving average's decay for a time constant of ``average * steps`` steps.

    ``average`` is a fraction of the run (``None`` or ``0``: no averaging, decay 0, so the
    "average" is the last iterate).

    Example:
        >>> average_decay(0.1, 10_000), average_decay(None, 100)
        (0.999, 0.0)
    """
    if not average:
        return 0.0
    return 1.0 - 1.0 / max(average * steps, 1.0)


def chunk_runner(step, view):
    """A compiled ``run_chunk(carry, args, decay, start, n_active, length, halt)``.

    It takes ``length`` steps ``t = start, start + 1, ...`` from ``carry`` (a
    :class:`LoopCarry`) by ``step(state, t, *args)``, of which the first ``n_active`` count
    (the rest leave the carry as it is, so chunks of one length serve any remainder); a
    step is applied when it counts, its loss and gradient are finite, and (with
    ``halt``) no step was refused before it. ``view(state)`` is what the moving average
    follows. Cached on ``(step, view)``: module-level functions make repeated fits of the
    same structure reuse their compilations.

    Returns:
        ``(carry, (losses, applied))`` with ``(length,)`` per-step losses and flags.
    """

    @eqx.filter_jit
    def run_chunk(carry, args, decay, start, n_active, length, halt):
        def body(carry, i):
            new_state, loss, finite = step(carry.state, start + i, *args)
            active = i < n_active
            applied = active & finite & (carry.ok | (not halt))
            state = _select(applied, new_state, carry.state)
            weight = jnp.where(applied, decay * carry.weight + 1.0, carry.weight)
            average = jax.tree.map(
                lambda a, p: jnp.where(applied, a + (p - a) / weight, a),
                carry.average,
                view(state),
            )
            ok = carry.ok & (applied | ~active)
            return LoopCarry(state, average, weight, ok), (loss, applied)

        return jax.lax.scan(body, carry, jnp.arange(length))

    return run_chunk


def chunk_length(steps: int, target: int) -> int:
    """Steps per compiled chunk: about ``target``, and dividing ``steps`` where it can.

    Equal chunks compile once; the chunk is the largest divisor of ``steps`` from about
    ``target / 2`` to ``target``, else ``target`` (the last chunk then runs its remainder
    as inactive steps of the same program).

    Example:
        >>> chunk_length(10_000, 200), chunk_length(2500, 200), chunk_length(2503, 200)
        (200, 125, 200)
    """
    n_min = -(-steps // target)
    return next((steps // n for n in range(n_min, 2 * n_min + 1) if steps % n == 0), target)


def training_bar(total: int, *, enabled: bool, desc: str, initial: int = 0):
    """The training progress bar; it says "compiling" until the first chunk has run."""
    bar = tqdm(total=total, initial=initial, disable=not enabled, desc=desc, leave=True)
    bar.set_postfix_str("compiling", refresh=True)
    return bar


def run_chunks(
    run_chunk,
    carry: LoopCarry,
    args,
    *,
    steps: int,
    start: int = 0,
    chunk: int,
    decay: float,
    halt: bool,
    bar=None,
    after_chunk=None,
):
    """Run ``steps`` steps from step ``start`` in chunks of ``chunk`` (one compilation).

    Args:
        run_chunk: from :func:`chunk_runner`.
        carry: the :class:`LoopCarry` to start from.
        args: the step's extra arguments (a tuple).
        steps: how many steps to run.
        start: the index ``t`` of the first step.
        chunk: steps per compiled chunk.
        decay: the moving average's decay (:func:`average_decay`).
        halt: stop applying steps after the first refused one (and return).
        bar: a progress bar to advance (or ``None``).
        after_chunk: ``after_chunk(carry, losses) -> (stop, note)`` called after each
            chunk with that chunk's losses: ``stop`` ends the run early, ``note`` (a string
            or ``None``) joins the loss on the progress bar.

    Returns:
        ``(carry, losses, refused)``: the final carry, the ``(n,)`` losses of the steps run
        (up to, not including, a refused step under ``halt``), and the index of the first
        refused step (``None`` if none).
    """
    dtype = jnp.result_type(float)
    decay = jnp.asarray(decay, dtype)
    losses, done, refused = [], 0, None
    while done < steps:
        n = min(chunk, steps - done)
        carry, (chunk_losses, applied) = run_chunk(
            carry, args, decay, jnp.asarray(start + done), jnp.asarray(n), chunk, halt
        )
        chunk_losses, applied = np.asarray(chunk_losses)[:n], np.asarray(applied)[:n]
        if refused is None and not applied.all():
            refused = start + done + int(np.argmin(applied))
        if halt and refused is not None:
            losses.append(chunk_losses[: refused - start - done])
            break
        losses.append(chunk_losses)
        done += n
        stop, note = (False, None) if after_chunk is None else after_chunk(carry, chunk_losses)
        if bar is not None:
            text = f"loss {float(np.mean(chunk_losses)):.4g}"
            bar.set_postfix_str(text if note is None else f"{text}, {note}", refresh=False)
            bar.update(n)
        if stop:
            break
    out = np.concatenate(losses) if losses else np.zeros((0,), dtype)
    return carry, out, refused
