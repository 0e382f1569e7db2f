"""Training-step cost versus dimension, against flowjax on the same architecture.

For every transformer and dimension: 8 coupling layers with a 64x2 ReLU MLP conditioner
and random permutations between layers (flowjax's default), one training step = jitted
``value_and_grad`` of the mean NLL on a batch plus an Adam update. Reported per step:
wall time (the minimum over repeats, the least load-sensitive statistic on a shared
machine), compile time, the compiled program's peak-memory estimate
(``Compiled.memory_analysis()``), and the optimised HLO instruction count. flowjax has
affine and rational-quadratic-spline transformers; the additive and mixture-CDF rows have
no peer. Both libraries run side by side in one process, interleaved, so the ratios
ours / flowjax are meaningful even where absolute times drift.

Writes ``<out>/scaling.md`` (and ``scaling.json``).

Usage:
    python benchmarks/scaling.py --quick
    python benchmarks/scaling.py --dims 2 8 32 128 256 --batches 512 4096
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from collections import Counter
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax

import numpyro_coupling as nc
from numpyro_coupling import partition_flow

N_LAYERS, NN_WIDTH, NN_DEPTH = 8, 64, 2
OURS = {"affine": {}, "spline": {"n_bins": 8, "interval": 4.0}, "additive": {}, "mixture": {}}


# --- the two flows ---------------------------------------------------------------------------
def ours_flow(transformer, d, key, n_layers=N_LAYERS):
    flow = nc.coupling_flow(
        key,
        (d,),
        transformer=transformer,
        n_layers=n_layers,
        nn_width=NN_WIDTH,
        nn_depth=NN_DEPTH,
        permutation="random",
        **OURS[transformer],
    )
    params, static = partition_flow(flow)
    return params, static, lambda p, s: eqx.combine(p, s)


def flowjax_flow(transformer, d, key, n_layers=N_LAYERS):
    import paramax
    from flowjax.bijections import RationalQuadraticSpline
    from flowjax.distributions import Normal
    from flowjax.flows import coupling_flow

    if transformer == "affine":
        bij = None  # flowjax's default: affine with a softplus scale
    elif transformer == "spline":
        bij = RationalQuadraticSpline(knots=8, interval=4.0)
    else:
        return None
    flow = coupling_flow(
        key,
        base_dist=Normal(jnp.zeros(d)),
        transformer=bij,
        flow_layers=n_layers,
        nn_width=NN_WIDTH,
        nn_depth=NN_DEPTH,
    )
    params, static = eqx.partition(
        flow, eqx.is_inexact_array, is_leaf=lambda leaf: isinstance(leaf, paramax.NonTrainable)
    )
    return params, static, lambda p, s: paramax.unwrap(eqx.combine(p, s))


# --- one training step ----------------------------------------------------------------------------
def make_step(static, rebuild, optimizer):
    def loss(params, x):
        return -jnp.mean(rebuild(params, static).log_prob(x))

    @jax.jit
    def step(params, opt_state, x):
        value, grads = jax.value_and_grad(loss)(params, x)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step, loss


_HLO_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?\S+ = (?:\([^=]*?\)|\S+) ([a-z][\w\-]*)\(")


def hlo_opcodes(compiled) -> Counter:
    """Opcode counts of the optimised HLO (fused computations included)."""
    counts = Counter()
    for line in compiled.as_text().splitlines():
        match = _HLO_INSTRUCTION.match(line)
        if match:
            counts[match.group(1)] += 1
    return counts


def hlo_instructions(compiled) -> int:
    return sum(hlo_opcodes(compiled).values())


def jaxpr_primitives(jaxpr, counts=None) -> Counter:
    """Primitive counts of a jaxpr, sub-jaxprs (pjit, scan, custom_jvp, ...) included."""
    counts = Counter() if counts is None else counts
    for eqn in jaxpr.eqns:
        counts[eqn.primitive.name] += 1
        for param in eqn.params.values():
            for sub in param if isinstance(param, list | tuple) else [param]:
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    jaxpr_primitives(sub.jaxpr, counts)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    jaxpr_primitives(sub, counts)
    return counts


def jaxpr_equations(jaxpr) -> int:
    return sum(jaxpr_primitives(jaxpr).values())


def peak_bytes(compiled) -> int | None:
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend reports it
        return None
    if m is None:
        return None
    peak = getattr(m, "peak_memory_in_bytes", 0)
    if peak:
        return int(peak)
    return int(
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )


class Case:
    """A compiled training step of one library at one (transformer, d, batch)."""

    def __init__(self, build, transformer, d, batch, key):
        k_flow, k_data = jr.split(key)
        built = build(transformer, d, k_flow)
        self.available = built is not None
        if not self.available:
            return
        self.params, static, rebuild = built
        optimizer = optax.adam(1e-3)
        self.opt_state = optimizer.init(self.params)
        self.x = jr.normal(k_data, (batch, d))
        step, loss = make_step(static, rebuild, optimizer)
        t0 = time.perf_counter()
        lowered = step.lower(self.params, self.opt_state, self.x)
        compiled = lowered.compile()
        self.compile_s = time.perf_counter() - t0
        self.step = compiled
        self.peak = peak_bytes(compiled)
        self.hlo = hlo_instructions(compiled)
        grad_jaxpr = jax.make_jaxpr(jax.value_and_grad(loss))(self.params, self.x)
        self.eqns = jaxpr_equations(grad_jaxpr.jaxpr)
        self.params, self.opt_state, value = self.step(self.params, self.opt_state, self.x)
        jax.block_until_ready(value)
        self.times = []

    def time_steps(self, n):
        t0 = time.perf_counter()
        params, opt_state = self.params, self.opt_state
        for _ in range(n):
            params, opt_state, value = self.step(params, opt_state, self.x)
        jax.block_until_ready((params, value))
        self.times.append((time.perf_counter() - t0) / n)

    @property
    def best(self):
        return min(self.times)


def steps_for(case, budget_s):
    """Steps per timing run so one run takes about ``budget_s``."""
    t0 = time.perf_counter()
    case.time_steps(1)
    case.times.pop()
    return max(1, min(200, int(budget_s / max(time.perf_counter() - t0, 1e-6))))


# --- hot-path profile ---------------------------------------------------------------------------
def profile_hot_path(d, batch, transformers):
    """Primitive / HLO opcode counts of value_and_grad(mean NLL) for ONE coupling layer."""
    out = {}
    for transformer in transformers:
        for lib, build in (("ours", ours_flow), ("flowjax", flowjax_flow)):
            built = build(transformer, d, jr.key(0), n_layers=1)
            if built is None:
                continue
            params, static, rebuild = built

            def loss(p, x, static=static, rebuild=rebuild):
                return -jnp.mean(rebuild(p, static).log_prob(x))

            x = jnp.zeros((batch, d))
            vg = jax.value_and_grad(loss)
            prims = jaxpr_primitives(jax.make_jaxpr(vg)(params, x).jaxpr)
            hlo = hlo_opcodes(jax.jit(vg).lower(params, x).compile())
            out[(transformer, lib)] = (prims, hlo)
    return out


def profile_markdown(profile, d, batch) -> str:
    lines = [
        "",
        f"## Hot path: one coupling layer, value_and_grad of the mean NLL (d={d}, batch={batch})",
        "",
        "Counts of jaxpr primitives (before XLA) and of optimised HLO instructions (after).",
        "",
    ]
    for transformer in sorted({t for t, _ in profile}):
        ours = profile.get((transformer, "ours"))
        peer = profile.get((transformer, "flowjax"))
        if ours is None or peer is None:
            continue
        lines += [
            f"### {transformer}",
            "",
            f"Totals: jaxpr {sum(ours[0].values())} (ours) vs {sum(peer[0].values())} (flowjax); "
            f"HLO {sum(ours[1].values())} vs {sum(peer[1].values())}.",
            "",
            "| jaxpr primitive | ours | flowjax |",
            "|---|---|---|",
        ]
        keys = sorted(set(ours[0]) | set(peer[0]), key=lambda k: -abs(ours[0][k] - peer[0][k]))
        lines += [f"| {k} | {ours[0][k]} | {peer[0][k]} |" for k in keys[:15]]
        lines += ["", "| HLO opcode | ours | flowjax |", "|---|---|---|"]
        keys = sorted(set(ours[1]) | set(peer[1]), key=lambda k: -abs(ours[1][k] - peer[1][k]))
        lines += [f"| {k} | {ours[1][k]} | {peer[1][k]} |" for k in keys[:15]]
        lines.append("")
    return "\n".join(lines)


# --- driver ----------------------------------------------------------------------------------
def run(dims, batches, transformers, repeats, budget_s, with_flowjax):
    rows = []
    for transformer in transformers:
        for d in dims:
            for batch in batches:
                key = jr.key(d * 7 + batch)
                ours = Case(ours_flow, transformer, d, batch, key)
                peer = Case(flowjax_flow, transformer, d, batch, key) if with_flowjax else None
                peer = peer if peer is not None and peer.available else None
                n = steps_for(ours, budget_s)
                for _ in range(repeats):  # interleaved, so load drift hits both alike
                    ours.time_steps(n)
                    if peer is not None:
                        peer.time_steps(n)
                row = {
                    "transformer": transformer,
                    "d": d,
                    "batch": batch,
                    "ours_ms": 1e3 * ours.best,
                    "ours_compile_s": ours.compile_s,
                    "ours_peak_mb": None if ours.peak is None else ours.peak / 2**20,
                    "ours_hlo": ours.hlo,
                    "ours_eqns": ours.eqns,
                }
                if peer is not None:
                    row.update(
                        flowjax_ms=1e3 * peer.best,
                        flowjax_compile_s=peer.compile_s,
                        flowjax_peak_mb=None if peer.peak is None else peer.peak / 2**20,
                        flowjax_hlo=peer.hlo,
                        flowjax_eqns=peer.eqns,
                    )
                rows.append(row)
                print(_line(row), flush=True)
    return rows


def _ratio(a, b):
    return "-" if a is None or b is None else f"{a / b:.2f}"


def _num(v, fmt):
    return "-" if v is None else format(v, fmt)


def _line(r):
    return (
        f"{r['transformer']:8s} d={r['d']:5d} batch={r['batch']:5d} "
        f"ours {r['ours_ms']:8.2f} ms  flowjax {_num(r.get('flowjax_ms'), '8.2f')} ms  "
        f"ratio {_ratio(r['ours_ms'], r.get('flowjax_ms'))}"
    )


def to_markdown(rows, args) -> str:
    head = (
        "| transformer | d | batch | ours ms/step | flowjax ms/step | time ratio | "
        "ours peak MB | flowjax peak MB | memory ratio | ours compile s | flowjax compile s | "
        "ours HLO ops | flowjax HLO ops | ours jaxpr eqns | flowjax jaxpr eqns |"
    )
    lines = [
        "# Training-step scaling: numpyro_coupling vs flowjax",
        "",
        f"{N_LAYERS} coupling layers, {NN_WIDTH}x{NN_DEPTH} ReLU MLP conditioners, random "
        "permutations; one step = jitted value_and_grad of the mean NLL + Adam. Times are the "
        f"minimum over {args.repeats} interleaved repeats. Peak memory: XLA's estimate for the "
        "compiled step. HLO ops: optimised HLO instructions of the step; jaxpr eqns: "
        "equations of value_and_grad(loss), nested jaxprs included.",
        "",
        f"Machine: {platform.machine()}, {jax.devices()[0].device_kind}, "
        f"{jax.device_count()} device(s); jax {jax.__version__}; float32.",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                [
                    r["transformer"],
                    str(r["d"]),
                    str(r["batch"]),
                    f"{r['ours_ms']:.2f}",
                    _num(r.get("flowjax_ms"), ".2f"),
                    _ratio(r["ours_ms"], r.get("flowjax_ms")),
                    _num(r["ours_peak_mb"], ".2f"),
                    _num(r.get("flowjax_peak_mb"), ".2f"),
                    _ratio(r["ours_peak_mb"], r.get("flowjax_peak_mb")),
                    f"{r['ours_compile_s']:.1f}",
                    _num(r.get("flowjax_compile_s"), ".1f"),
                    str(r["ours_hlo"]),
                    _num(r.get("flowjax_hlo"), "d"),
                    str(r["ours_eqns"]),
                    _num(r.get("flowjax_eqns"), "d"),
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 8, 32, 128, 512, 1024])
    parser.add_argument("--batches", type=int, nargs="+", default=[512, 4096])
    parser.add_argument(
        "--transformers", nargs="+", default=list(OURS), choices=list(OURS), metavar="NAME"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=float, default=0.5, help="seconds per timing run")
    parser.add_argument("--no-flowjax", action="store_true")
    parser.add_argument(
        "--profile-dim", type=int, default=8, help="d of the hot-path profile (0 skips it)"
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    if args.quick:
        args.dims, args.batches, args.repeats, args.budget = [2, 8], [512], 2, 0.1
    rows = run(
        args.dims, args.batches, args.transformers, args.repeats, args.budget, not args.no_flowjax
    )
    report = to_markdown(rows, args)
    if args.profile_dim:
        batch = args.batches[0]
        profile = profile_hot_path(args.profile_dim, batch, ("affine", "spline"))
        report += profile_markdown(profile, args.profile_dim, batch)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.md").write_text(report)
    (out / "scaling.json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {out / 'scaling.md'}")


if __name__ == "__main__":
    main()
