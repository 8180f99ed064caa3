"""FLOPs, memory and MFU of a compiled step, and the peak-FLOP/s table MFU is measured against.

MFU = model FLOPs per step / (step time x peak FLOP/s), per device. The FLOPs come from XLA's cost analysis of the
compiled (per-device, SPMD-partitioned) train step; `tests/test_flops.py` checks them against an analytic count.
"""
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
