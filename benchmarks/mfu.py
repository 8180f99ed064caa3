"""MFU of the SigLIP and prefix-LM train steps on CPU: bf16 compute on/off x every remat policy.

    .venv/bin/python benchmarks/mfu.py [--rounds 3] [--steps 2] [--models siglip,prefixlm] [--batch 32]

The configs are experiments/siglip_scenes.py and experiments/prefixlm_scenes.py (`pretrain`) with the model made
smaller (keys overridden below). The 16 compiles dominate: ~8 CPU-minutes in all (19 minutes of wall time once on a
loaded 2-core machine; the committed run took 3 with a warm cache); the persistent compilation cache in .jax_cache, which the tests use
too, makes re-runs much faster. Each variant is
the Trainer's own jitted train step (optimizer included, state donated) on one CPU device, fed one fixed random
batch. Per variant: steps/s (median over rounds; the rounds alternate between all variants so that machine load
hits them alike), model FLOPs per step (`vlmjax.core.flops.step_flops`, counted on the jaxpr, as the trainer logs it),
MFU against the measured float32 matmul peak of this CPU, and XLA's temporaries (the activation memory remat
trades for recompute). Ratios are against the float32 / no-remat step of the same model, measured in the same run.

Writes benchmarks/results/mfu_cpu.json.
"""
import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), ".jax_cache"))

import jax  # noqa: E402
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_result  # noqa: E402

from vlmjax.models.transformer import REMAT_POLICIES  # noqa: E402
from vlmjax.core.config import load_experiment  # noqa: E402
from vlmjax.core.flops import memory_of, peak_flops, step_flops  # noqa: E402
from vlmjax.core.loop import Trainer  # noqa: E402

DTYPES = ("float32", "bfloat16")
TOKENIZER = os.path.join(ROOT, "data", "tfds", "scenes_spm.model")


def siglip_config(batch: int):
    """experiments/siglip_scenes.py, towers of width 64 x depth 2 (the experiment's class), 64 px, text 24."""
    c = load_experiment(os.path.join(ROOT, "experiments", "siglip_scenes.py:baseline"))
    c.model.image.update(width=64, depth=2, num_heads=2, mlp_dim=256)
    c.model.text.update(width=64, depth=2, num_heads=2, mlp_dim=256)
    c.batch_size = batch
    return c, ("image", "text")


def prefixlm_config(batch: int):
    """experiments/prefixlm_scenes.py:pretrain (its ViT patching, projector, text 32) with ViT 64 x 2, LM 128 x 2."""
    c = load_experiment(os.path.join(ROOT, "experiments", "prefixlm_scenes.py") + ":pretrain")
    c.model.vit.update(width=64, depth=2, num_heads=2, mlp_dim=256)
    c.model.lm.update(width=128, depth=2, num_heads=4, num_kv_heads=1, head_dim=32, mlp_dim=384)
    c.init_from.workdir = ""  # timing needs no pretrained ViT (and this smaller one would not take its weights)
    c.batch_size = batch
    return c, ("vit", "lm")


MODELS = {"siglip": siglip_config, "prefixlm": prefixlm_config}


def model_summaries(names, batch: int) -> dict:
    """What was measured: each model's config.model and input sizes (the experiment files may change later)."""
    out = {}
    for name in names:
        c, _ = MODELS[name](batch)
        out[name] = {"model": c.model.to_dict(), "batch_size": c.batch_size, "image_size": c.image_size,
                     "text_len": c.text_len}
    return out


def random_batch(task_name: str, dummy: dict, vocab: int, rng) -> dict:
    """The task's dummy batch with random images and tokens and masks of a real example (the dummy's masks are
    zeros, which would time a step that attends to nothing)."""
    b = {k: np.array(v) for k, v in dummy.items()}
    b["image"] = rng.uniform(-1, 1, b["image"].shape).astype(np.float32)
    if task_name == "contrastive":
        b["text"] = rng.integers(3, vocab, b["text"].shape).astype(np.int32)
    else:  # prefix-LM: a 4-token prompt, then the caption the loss is on
        n = b["tokens"].shape[1]
        b["tokens"] = rng.integers(3, vocab, b["tokens"].shape).astype(np.int32)
        b["input_mask"][:] = 1
        b["mask_ar"][:] = (np.arange(n) >= 4).astype(np.int32)
        b["mask_loss"][:] = b["mask_ar"]
    return b


def same_layout(state, abstract) -> bool:
    same = jax.tree.structure(state) == jax.tree.structure(abstract)
    return same and all(x.shape == y.shape and x.dtype == y.dtype
                        for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(abstract)))


def build_variant(base_config, towers, dtype: str, remat: str, initial=None):
    """(compiled step, fresh state, batch, FLOPs per step, memory analysis) for one variant on one CPU device.

    `initial`: a state to start from when its layout matches (dtype and remat change the compute, not the
    parameters, which stay float32), saving one init compile per variant; a copy is used (steps donate it)."""
    cfg = base_config.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.tokenizer = TOKENIZER
        cfg.evals = {}
        cfg.mesh = dict(data=1, fsdp=1, tensor=1)
        for t in towers:
            cfg.model[t].update(dtype=dtype, remat_policy=remat)
    trainer = Trainer(cfg, workdir="", devices=jax.devices()[:1], open_data=False)
    task = trainer.task
    vocab = task.tokenizer().vocab_size
    batch = random_batch(cfg.task, task.dummy_batch(cfg.batch_size), vocab, np.random.default_rng(0))
    if initial is not None and same_layout(initial, trainer.abstract_state):
        state = jax.device_put(jax.tree.map(np.copy, jax.device_get(initial)), trainer.state_shardings)
    else:
        state = trainer.init_state()
    step = trainer.train_step_fn()
    with jax.set_mesh(trainer.mesh):
        gbatch = trainer._global_batch(batch)
        compiled = step.lower(state, gbatch).compile()
        flops = step_flops(trainer.train_step_fn(jit=False), state, gbatch)["model"]
    return compiled, state, gbatch, flops, memory_of(compiled)


def run_steps(v: dict, n: int) -> float:
    """Seconds for n chained steps of variant v (its state is donated and replaced)."""
    t = time.perf_counter()
    for _ in range(n):
        v["state"], metrics = v["compiled"](v["state"], v["batch"])
    jax.block_until_ready(metrics["train/loss"])
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="siglip,prefixlm")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2, help="steps per timed round")
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args()
    if not os.path.isfile(TOKENIZER):
        raise SystemExit(f"benchmarks/mfu.py: {TOKENIZER} is missing; run `make data`")
    peak, peak_src = peak_flops(jax.devices()[0])
    t0 = time.time()
    variants = []
    for model in a.models.split(","):
        if model not in MODELS:
            raise SystemExit(f"--models: unknown {model!r}; expected some of {', '.join(MODELS)}")
        base, towers = MODELS[model](a.batch)
        initial = None
        for dtype in DTYPES:
            for remat in REMAT_POLICIES:
                tc = time.time()
                compiled, state, batch, flops, mem = build_variant(base, towers, dtype, remat, initial)
                if initial is None:
                    initial = jax.device_get(state)  # a host copy: the device state is donated by the steps
                v = dict(model=model, dtype=dtype, remat=remat, compiled=compiled, state=state, batch=batch,
                         flops=flops, temp_bytes=mem.get("temp_size_in_bytes", 0),
                         argument_bytes=mem.get("argument_size_in_bytes", 0), compile_s=time.time() - tc)
                run_steps(v, 1)  # warm-up
                variants.append(v)
                print(f"compiled {model} {dtype} remat={remat} in {v['compile_s']:.1f}s", flush=True)
    times = {id(v): [] for v in variants}
    for _ in range(a.rounds):
        for v in variants:
            times[id(v)].append(run_steps(v, a.steps) / a.steps)
    rows = []
    for v in variants:
        sec = float(np.median(times[id(v)]))
        rows.append(dict(model=v["model"], dtype=v["dtype"], remat=v["remat"], steps_per_s=1 / sec,
                         flops_per_step=v["flops"], tflops_per_s=v["flops"] / sec / 1e12,
                         mfu=v["flops"] / sec / peak, temp_bytes=v["temp_bytes"],
                         argument_bytes=v["argument_bytes"], compile_s=v["compile_s"]))
    for r in rows:
        ref = next(x for x in rows if x["model"] == r["model"] and x["dtype"] == "float32" and x["remat"] == "none")
        r["speed_vs_f32_none"] = r["steps_per_s"] / ref["steps_per_s"]
        r["flops_vs_f32_none"] = r["flops_per_step"] / ref["flops_per_step"]
        r["temp_vs_f32_none"] = r["temp_bytes"] / max(ref["temp_bytes"], 1)

    head = (f"{'model':9s} {'dtype':9s} {'remat':14s} {'steps/s':>8s} {'GFLOP/step':>10s} {'MFU':>6s} "
            f"{'temp MiB':>8s} {'speed':>6s} {'FLOPs':>6s} {'temp':>6s}")
    print(f"\nCPU peak {peak / 1e9:.1f} GFLOP/s ({peak_src}); ratios vs float32/none of the same model")
    print(head)
    for r in rows:
        print(f"{r['model']:9s} {r['dtype']:9s} {r['remat']:14s} {r['steps_per_s']:8.2f} "
              f"{r['flops_per_step'] / 1e9:10.3f} {100 * r['mfu']:5.1f}% {r['temp_bytes'] / 2 ** 20:8.1f} "
              f"{r['speed_vs_f32_none']:6.2f} {r['flops_vs_f32_none']:6.2f} {r['temp_vs_f32_none']:6.2f}")
    write_result("mfu_cpu", {
        "benchmark": "train-step MFU on CPU: SigLIP and prefix-LM, bf16 on/off x remat policies",
        "models": model_summaries(a.models.split(","), a.batch),
        "command": "python benchmarks/mfu.py " + " ".join(sys.argv[1:]),
        "args": vars(a), "peak_flops_per_s": peak, "peak_source": peak_src, "rows": rows,
        "wall_s": time.time() - t0,
        "note": ("One CPU device (XLA uses all cores for it) on a machine whose 2 cores were shared with other "
                 "jobs during the run: absolute steps/s and MFU are noisy; the rounds alternate between variants, "
                 "so the ratios are the figures to read. The peak is a float32 matmul's; this CPU has no bf16 "
                 "matrix unit, so bf16 compute is converted and measures XLA's CPU bf16 path, not what a TPU/GPU "
                 "gains. temp_bytes is XLA's temporary allocation of the compiled step (activations kept for the "
                 "backward pass and workspace): the memory remat trades for recompute. FLOPs per step are model "
                 "FLOPs (the jaxpr's matmuls without remat's recomputed forward, as train/mfu counts them), so "
                 "remat shows as a lower MFU for the same model FLOPs. At these widths remat adds its "
                 "recompute but barely moves temp_bytes (the blocks' saved activations are a small part of the "
                 "step's temporaries), so the memory side of remat is not measured here."),
    })


if __name__ == "__main__":
    main()
