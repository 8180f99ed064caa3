r"""What `scan_layers` costs, and why: the SigLIP train step with layers unrolled or scanned, under each remat policy.

    python benchmarks/scan_overhead.py [--size cpu|b16] [--rounds 5] [--steps 2]

Per variant: the Trainer's own step (AdamW, state donated) on one device with one fixed random batch; steps/s as
the median of rounds that alternate between the variants (so machine load hits them alike); XLA's temporary bytes;
and, from the step's jaxpr, the bytes of residuals the forward scans stack for the backward pass (`stacked_
residual_bytes`: every per-layer output of a forward scan besides its carry). An unrolled stack has no such
stacks: XLA sees the forward and the backward in one program and fuses the cheap elementwise work (GELU, softmax,
LayerNorm) into its consumers, storing little; a scanned stack must write every residual its body hands to the
backward loop. Which values those are is the remat policy's choice.

Sizes: `cpu` is the size ../shared/DEVICE.md profiled on 2 cores (towers 192 wide x 6 layers, 64 px / patch 8,
text 32, batch 64, float32); `b16` is SigLIP B/16 at 224 px, batch 256, bfloat16 (for an accelerator).
Writes benchmarks/results/scan_overhead_<platform>.json.
"""
import argparse
import math
import os
import sys
import tempfile
import time

import jax
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import timing_setup, write_result  # noqa: E402

from vlmjax.core.flops import _sub_jaxprs  # noqa: E402
from vlmjax.core.loop import Trainer  # noqa: E402

SIZES = {  # (tower width, depth, heads, image size, patch, text length, batch, dtype)
    "cpu": (192, 6, 3, 64, 8, 32, 64, "float32"),
    "b16": (768, 12, 12, 224, 16, 64, 256, "bfloat16"),
}
VARIANTS = {  # name -> tower settings
    "unrolled/none": dict(scan_layers=False, remat_policy="none"),
    "unrolled/dots_no_batch": dict(scan_layers=False, remat_policy="dots_no_batch"),
    "scan/none": dict(scan_layers=True, remat_policy="none"),
    "scan/dots_no_batch": dict(scan_layers=True, remat_policy="dots_no_batch"),
    "scan/dots": dict(scan_layers=True, remat_policy="dots"),
    "scan/full": dict(scan_layers=True, remat_policy="full"),
    "scan/dots_no_batch/unroll2": dict(scan_layers=True, remat_policy="dots_no_batch", scan_unroll=2),
}


def stacked_residual_bytes(jaxpr) -> int:
    """Bytes of the per-iteration outputs (ys) of every forward (non-reverse) scan, recursively: what a scanned
    stack writes for its backward pass. Backward scans (reverse=True) produce gradients, not residuals."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan" and not eqn.params["reverse"]:
            ys = eqn.outvars[eqn.params["num_carry"]:]
            total += sum(math.prod(v.aval.shape) * v.aval.dtype.itemsize for v in ys)
        for v in eqn.params.values():
            for sub in _sub_jaxprs(v):
                total += stacked_residual_bytes(sub)
    return total


def build(size: str, settings: dict, workdir: str, tok: str):
    width, depth, heads, image, patch, text_len, batch, dtype = SIZES[size]
    tower = dict(width=width, depth=depth, num_heads=heads, mlp_dim=4 * width, dtype=dtype, **settings)
    c = ml_collections.ConfigDict(dict(
        task="contrastive", tokenizer=tok, loss="sigmoid", loss_impl="dense", image_size=image, text_len=text_len,
        batch_size=batch, total_steps=1000, data=dict(name="bench:", preprocess=[]),
        model=dict(image=dict(tower, patch_size=(patch, patch), pool_type="map"),
                   text=dict(tower, vocab_size=1000, pool_type="last", mask_padding=False), out_dim=[0, width]),
        optimizer=dict(name="adamw", lr=1e-3), schedule=dict(name="constant"), mesh=dict(data=1, fsdp=1, tensor=1)))
    trainer = Trainer(c, workdir, devices=jax.devices()[:1])
    rng = np.random.default_rng(0)
    batch = trainer._global_batch({
        "image": rng.uniform(-1, 1, (batch, image, image, 3)).astype(np.float32),
        "text": rng.integers(3, 1000, (batch, text_len)).astype(np.int32),
        "text_mask": np.ones((batch, text_len), np.int32)})
    state = trainer.init_state()
    t = time.perf_counter()
    compiled = trainer.compile_step(state, batch)
    compile_s = time.perf_counter() - t
    with jax.set_mesh(trainer.mesh):
        jaxpr = jax.make_jaxpr(trainer.train_step_fn(jit=False))(state, batch)
    mem = compiled.memory_analysis()
    return dict(compiled=compiled, state=state, batch=batch, compile_s=compile_s,
                temp_bytes=int(mem.temp_size_in_bytes) if mem else None,
                stacked_residual_bytes=stacked_residual_bytes(jaxpr), flops=trainer.step_flops)


def run(v, steps):
    t = time.perf_counter()
    for _ in range(steps):
        v["state"], metrics = v["compiled"](v["state"], v["batch"])
    jax.block_until_ready(metrics["train/loss"])
    return (time.perf_counter() - t) / steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="cpu", choices=sorted(SIZES))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    a = ap.parse_args()
    workdir = tempfile.mkdtemp()
    tok = timing_setup(workdir)
    names = a.variants.split(",")
    built = {}
    for name in names:
        built[name] = build(a.size, VARIANTS[name], workdir, tok)
        run(built[name], 1)  # warm-up
        print(f"{name}: compiled in {built[name]['compile_s']:.1f}s", flush=True)
    times = {n: [] for n in names}
    for _ in range(a.rounds):
        for n in names:
            times[n].append(run(built[n], a.steps))
    ref = float(np.median(times["unrolled/none"])) if "unrolled/none" in times else None
    rows = {}
    for n in names:
        sec = float(np.median(times[n]))
        v = built[n]
        rows[n] = dict(step_s=sec, step_s_all=times[n], compile_s=v["compile_s"], temp_bytes=v["temp_bytes"],
                       stacked_residual_bytes=v["stacked_residual_bytes"], model_flops=v["flops"]["model"],
                       hardware_flops=v["flops"]["hardware"], time_vs_unrolled_none=sec / ref if ref else None)
        print(f"{n:28s} {1e3 * sec:8.1f} ms  x{rows[n]['time_vs_unrolled_none'] or 0:5.2f}  temp "
              f"{(v['temp_bytes'] or 0) / 2 ** 20:8.1f} MiB  stacked residuals "
              f"{v['stacked_residual_bytes'] / 2 ** 20:8.1f} MiB  compile {v['compile_s']:5.1f}s")
    write_result(f"scan_overhead_{jax.default_backend()}", {
        "benchmark": "SigLIP train step: unrolled vs scanned layers under each remat policy",
        "command": "python benchmarks/scan_overhead.py " + " ".join(sys.argv[1:]), "size": a.size,
        "size_spec": dict(zip(("width", "depth", "heads", "image", "patch", "text_len", "batch", "dtype"),
                              SIZES[a.size])),
        "device_kind": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(), "rows": rows,
        "load_average_at_end": os.getloadavg()})


if __name__ == "__main__":
    main()
