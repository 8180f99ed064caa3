"""FLOPs, memory and MFU of a train step, and the table of chips (peak FLOP/s, memory) they are measured against.

MFU = model FLOPs per step / (step time x peak FLOP/s), per device; HFU uses the hardware FLOPs instead.
Both are counted on the step's jaxpr, never taken from XLA's cost analysis: on GPU that analysis does not see
cuBLAS GEMMs or cuDNN attention (custom calls), and on every backend it counts a while loop's body once (scanned
layers, gradient accumulation). What is counted: every dot_general and convolution, fused attention by its
shapes, a scan's body times its length.
  model FLOPs    - the step's work as the model defines it: forward + backward, no rematerialisation
                   (traced with `no_recompute()`: every remat policy saves everything).
  hardware FLOPs - the same plus the forward work the remat policy recomputes in the backward pass.
`tests/test_flops.py` checks both against analytic counts.
"""
import math
import time

import jax
import jax.numpy as jnp

from vlmjax.models.transformer import no_recompute

# The chips, by the one name `--target` takes: (dense bf16 peak FLOP/s, HBM GiB per chip, the `device_kind`
# substrings jax reports for it). Vendor figures, from the chips' spec sheets.
CHIPS = {
    "tpu_v4": (275e12, 32, ("tpu v4",)),
    "tpu_v5e": (197e12, 16, ("tpu v5e", "tpu v5 lite")),
    "tpu_v5p": (459e12, 95, ("tpu v5p", "tpu v5")),
    "tpu_v6e": (918e12, 32, ("tpu v6e", "tpu v6 lite")),
    "a100": (312e12, 80, ("a100",)),
    "h100": (989e12, 80, ("h100",)),
    "h200": (989e12, 141, ("h200",)),
}


def chip_of(device_kind: str):
    """The CHIPS name of a jax `device_kind` ('TPU v5 lite' -> 'tpu_v5e'), or None. The longest matching
    substring wins, so 'tpu v5 lite' is a v5e, not a v5p."""
    kind = device_kind.lower()
    hits = [(len(s), name) for name, (_, _, kinds) in CHIPS.items() for s in kinds if s in kind]
    return max(hits)[1] if hits else None


_CPU_PEAK = {}  # n -> [best FLOP/s so far, the jitted matmul, its operand]


def measured_cpu_peak(n: int = 1024, repeats: int = 5, refresh: bool = False) -> float:
    """FLOP/s of a float32 n x n matmul on one CPU device: the best rate this process has timed (`repeats` timings
    on the first call; cached after it, and `refresh=True` adds one more timing). A reading taken while other jobs
    shared the cores is low, and MFU against it reads high (over 100% once they stop): the trainer refreshes it at
    each log, so the peak can only rise towards the machine's."""
    entry, timings = _CPU_PEAK.get(n), int(refresh)
    if entry is None:
        dev = jax.devices("cpu")[0]
        a = jax.device_put(jnp.ones((n, n), jnp.float32), dev)
        # compiled ahead of time: a refresh runs inside the trainer's mesh context, whose devices jit would check
        f = jax.jit(lambda x: x @ x).lower(a).compile()
        f(a).block_until_ready()
        entry, timings = [0.0, f, a], repeats
        _CPU_PEAK[n] = entry
    for _ in range(timings):
        t = time.perf_counter()
        entry[1](entry[2]).block_until_ready()
        entry[0] = max(entry[0], 2 * n ** 3 / (time.perf_counter() - t))
    return entry[0]


def peak_flops(device=None, refresh: bool = False) -> tuple:
    """(peak FLOP/s per device, where the number comes from) for `device` (default: the first). A chip's figure is
    its spec sheet's; a CPU's is measured (`measured_cpu_peak`), and `refresh=True` times it once more."""
    device = device or jax.devices()[0]
    kind = getattr(device, "device_kind", "").lower()
    chip = chip_of(kind)
    if chip:
        return CHIPS[chip][0], f"table:{chip}"
    if device.platform == "cpu":
        return measured_cpu_peak(refresh=refresh), "measured:cpu_f32_matmul"
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


def _attention_flops(eqn, multiplier: int) -> float:
    """cuDNN fused attention (q float[B, T, N, H], k float[B, S, K, H]): the forward is QK^T and PV, 2 x 2BTNSH;
    the backward dQ, dK, dV and dP, 4 x 2BTNSH (its recomputed QK^T is the kernel's own business, as inside any
    fused kernel). Masked entries count: the formula is the one the XLA path computes."""
    (b, t, n, h), s = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape[1]
    return multiplier * 2.0 * b * t * n * s * h


# Fused attention primitives (jax._src.cudnn.fused_attention_stablehlo), by name prefix: matmuls per call.
_FUSED_ATTENTION = {"dot_product_attention_fwd": 2, "dot_product_attention_bwd": 4}


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
        fused = next((m for p, m in _FUSED_ATTENTION.items() if name.startswith(p)), 0)
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif fused:
            total += _attention_flops(eqn, fused)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "cond":
            total += max(matmul_flops(b, scan_lengths) for b in eqn.params["branches"])
        else:
            inner = sum(matmul_flops(j, scan_lengths) for v in eqn.params.values() for j in _sub_jaxprs(v))
            total += inner * (eqn.params["length"] if name == "scan" and scan_lengths else 1)
    return total


def has_remat(jaxpr) -> bool:
    """Whether a (closed) jaxpr holds a rematerialised (jax.checkpoint) region anywhere inside."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    return any(eqn.primitive.name in ("checkpoint", "remat2") or
               any(has_remat(j) for v in eqn.params.values() for j in _sub_jaxprs(v)) for eqn in jaxpr.eqns)


def step_flops(step_fn, *args) -> dict:
    """{'model', 'hardware'}: FLOPs of one call of the plain (not jitted) `step_fn(*args)`, all devices together
    (divide by the device count for per-device figures). The function is traced, never run.

    jax caches traced checkpoint regions by function, not by policy, so the model-FLOP trace runs between two
    `jax.clear_caches()`: a stale trace would otherwise give the wrong count here, or a save-everything program to
    a later compile. (Compiled executables already held are unaffected.)"""
    jaxpr = jax.make_jaxpr(step_fn)(*args)
    hardware = model = matmul_flops(jaxpr)
    if has_remat(jaxpr):
        jax.clear_caches()
        try:
            with no_recompute():
                model = matmul_flops(jax.make_jaxpr(step_fn)(*args))
        finally:
            jax.clear_caches()
    return {"model": model, "hardware": hardware}
