"""Per-device temporary memory of the sharded SigLIP loss + gradient: chunked ring vs all-gather (the reference).

Compiles value_and_grad of the sigmoid (and softmax) loss on 8 simulated CPU devices for a global batch of 4096,
D=128, and reads `compiled.memory_analysis().temp_size_in_bytes` (per device). The all-gather version holds a
local_B x global_B logit block (512 x 4096 float32 = 8 MiB) plus its gradient; the ring holds local_B x local_B
blocks. Target: ring <= 1/4 of all-gather. Also checks that both give the same loss and times one step.

Run: .venv/bin/python benchmarks/contrastive_loss_memory.py [--batch 4096] [--dim 128] [--repeats 3]
Writes benchmarks/results/contrastive_loss_memory.json.
"""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import timed, write_result  # noqa: E402

from vlmjax.losses.contrastive import make_loss_fn  # noqa: E402

MiB = 2 ** 20


def compile_step(kind, impl, mesh, args):
    fn = make_loss_fn(kind, impl, mesh)
    step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3), has_aux=True))
    return step.lower(*args).compile()


def bench(kind, mesh, args, repeats):
    out, losses = {}, {}
    for impl in ("all_gather", "ring", "dense"):
        compiled = compile_step(kind, impl, mesh, args)
        mem = compiled.memory_analysis()
        (loss, _), _ = compiled(*args)
        losses[impl] = float(loss)
        seconds = timed(lambda: jax.block_until_ready(compiled(*args)), repeats=repeats)
        out[impl] = {"temp_bytes_per_device": int(mem.temp_size_in_bytes), "step_ms": 1e3 * seconds, "loss": losses[impl]}
        print(f"{kind:8s} {impl:10s} temp {mem.temp_size_in_bytes / MiB:8.2f} MiB/device  "
              f"step {1e3 * seconds:8.1f} ms  loss {losses[impl]:.6f}")
    ratio = out["ring"]["temp_bytes_per_device"] / out["all_gather"]["temp_bytes_per_device"]
    out["ring_over_all_gather_temp"] = ratio
    out["ring_over_all_gather_time"] = out["ring"]["step_ms"] / out["all_gather"]["step_ms"]
    out["max_abs_loss_diff_vs_all_gather"] = max(abs(losses[i] - losses["all_gather"]) for i in losses)
    out["meets_target_ring_le_quarter"] = ratio <= 0.25
    print(f"{kind:8s} ring / all_gather temp memory = {ratio:.3f} (target <= 0.25)")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(8, 1, 1), ("data", "fsdp", "tensor"))
    sharding = NamedSharding(mesh, P(("data", "fsdp")))
    r = np.random.RandomState(0)
    zimg = r.randn(a.batch, a.dim).astype(np.float32)
    ztxt = (zimg + r.randn(a.batch, a.dim)).astype(np.float32)
    zimg /= np.linalg.norm(zimg, axis=1, keepdims=True)
    ztxt /= np.linalg.norm(ztxt, axis=1, keepdims=True)
    args = (jax.device_put(zimg, sharding), jax.device_put(ztxt, sharding),
            jnp.float32(np.log(10.0)), jnp.float32(-10.0))
    result = {"global_batch": a.batch, "dim": a.dim, "mesh": "data=8,fsdp=1,tensor=1",
              "local_batch": a.batch // 8, "dtype": "float32",
              "all_gather_logit_block_bytes": 4 * (a.batch // 8) * a.batch,
              "ring_logit_block_bytes": 4 * (a.batch // 8) ** 2,
              "sigmoid": bench("sigmoid", mesh, args, a.repeats),
              "softmax": bench("softmax", mesh, args, a.repeats)}
    write_result("contrastive_loss_memory", result)


if __name__ == "__main__":
    main()
