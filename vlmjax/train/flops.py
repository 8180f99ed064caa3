"""FLOPs, memory and MFU of a compiled step, and the peak-FLOP/s table MFU is measured against.

MFU = model FLOPs per step / (step time x peak FLOP/s), per device. The FLOPs come from XLA's cost analysis of the
compiled (per-device, SPMD-partitioned) train step; `tests/test_flops.py` checks them against an analytic count.
XLA's cost analysis counts the body of a while loop once, whatever its trip count, so a step with scanned layers
(`scan_layers`) or gradient accumulation would read ~depth (or ~accum) times too few FLOPs: `step_flops` adds the
missing matmul FLOPs, counted on the step's jaxpr where every scan's length is known. Rematerialised forwards are
counted (they are FLOPs the chip does), as XLA counts them.
"""
import math
import time

import jax
import jax.numpy as jnp

# Dense bf16 peak FLOP/s per chip (vendor figures; ANCHORS.md).
PEAK_FLOPS = {
    "tpu v4": 275e12,
    "tpu v5e": 197e12, "tpu v5 lite": 197e12,
    "tpu v5p": 459e12, "tpu v5": 459e12,
    "tpu v6e": 918e12, "tpu v6 lite": 918e12,
    "a100": 312e12,
    "h100": 989e12,
    "h200": 989e12,
}

_CPU_PEAK = {}


def measured_cpu_peak(n: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of a float32 n x n matmul on one CPU device (best of `repeats`); cached per process."""
    if n not in _CPU_PEAK:
        dev = jax.devices("cpu")[0]
        a = jax.device_put(jnp.ones((n, n), jnp.float32), dev)
        f = jax.jit(lambda x: x @ x)
        f(a).block_until_ready()
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            f(a).block_until_ready()
            best = min(best, time.perf_counter() - t)
        _CPU_PEAK[n] = 2 * n ** 3 / best
    return _CPU_PEAK[n]


def peak_flops(device=None) -> tuple:
    """(peak FLOP/s per device, where the number comes from) for `device` (default: the first)."""
    device = device or jax.devices()[0]
    kind = getattr(device, "device_kind", "").lower()
    for name, flops in PEAK_FLOPS.items():
        if name in kind:
            return flops, f"table:{name}"
    if device.platform == "cpu":
        return measured_cpu_peak(), "measured:cpu_f32_matmul"
    return float("nan"), f"unknown:{kind}"


def cost_of(compiled) -> dict:
    """{'flops', 'bytes_accessed'} per device from XLA's cost analysis (0 when the backend gives none)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    cost = cost or {}
    return {"flops": float(cost.get("flops", 0.0)), "bytes_accessed": float(cost.get("bytes accessed", 0.0))}


def memory_of(compiled) -> dict:
    """Per-device bytes: arguments, outputs, temporaries, generated code (what the compiler reports)."""
    m = compiled.memory_analysis()
    if m is None:
        return {}
    keys = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes",
            "generated_code_size_in_bytes")
    return {k: int(getattr(m, k, 0)) for k in keys}


def per_device_bytes(abstract_tree) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs with `.sharding` (the largest shard of each leaf)."""
    total = 0
    for x in jax.tree.leaves(abstract_tree):
        shard = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        n = 1
        for d in shard:
            n *= d
        total += n * jnp.dtype(x.dtype).itemsize
    return total


def _dot_flops(eqn) -> float:
    """2 x multiply-adds of a dot_general: every lhs element meets every free (non-contracted, non-batch) rhs one."""
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    (_, rc), (_, rb) = eqn.params["dimension_numbers"]
    free = math.prod(d for i, d in enumerate(rhs) if i not in rc and i not in rb)
    return 2.0 * math.prod(lhs) * free


def _conv_flops(eqn) -> float:
    """2 x multiply-adds of a convolution: each output element sums (kernel elements / output features) products."""
    rhs = eqn.invars[1].aval.shape
    out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) / out_features


def _sub_jaxprs(value):
    if hasattr(value, "eqns"):
        yield value
    elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        yield value.jaxpr
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _sub_jaxprs(v)


def matmul_flops(jaxpr, scan_lengths: bool = True) -> float:
    """Matmul and convolution FLOPs of a (closed) jaxpr, recursing into every sub-jaxpr (jit, remat, custom
    derivatives, shard_map, ...). Scan bodies count `length` times (once with scan_lengths=False, which is what XLA's
    cost analysis does); a while loop's trip count is unknown, so its body counts once; a cond counts its most
    expensive branch."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "cond":
            total += max(matmul_flops(b, scan_lengths) for b in eqn.params["branches"])
        else:
            inner = sum(matmul_flops(j, scan_lengths) for v in eqn.params.values() for j in _sub_jaxprs(v))
            total += inner * (eqn.params["length"] if name == "scan" and scan_lengths else 1)
    return total


def step_flops(compiled, jaxpr, num_devices: int) -> float:
    """FLOPs per device of a compiled step: XLA's cost analysis plus the loop iterations it leaves out.

    `jaxpr` is the step's (global, unpartitioned) jaxpr, e.g. `jitted.trace(*args).jaxpr`. When XLA's count already
    reaches the full matmul count (no loops, or a backend that unrolled them), it is returned as is."""
    xla = cost_of(compiled)["flops"]
    full = matmul_flops(jaxpr) / num_devices
    if xla >= full:
        return xla
    return xla + full - matmul_flops(jaxpr, scan_lengths=False) / num_devices
