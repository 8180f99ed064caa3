"""SigLIP train-step throughput: ours (the Trainer's jitted step) vs HF transformers' PyTorch `SiglipModel`.

Same architecture (our config comes from the HF config through `siglip_hf.siglip_model_config`), the SAME
initial weights (the torch model's, imported with `siglip_hf.from_hf`), the same batch, the same sigmoid loss
and AdamW (lr 1e-3, betas 0.9/0.999, eps 1e-8, weight decay 1e-4 on every parameter, no clipping, constant lr).
The first steps' losses are compared to show both sides compute the same thing. Timings alternate between the two
frameworks in one process, so machine load hits both alike; the median of the rounds is reported.

    .venv/bin/python benchmarks/siglip_vs_torch.py [--sizes scenes,tiny] [--batch 64] [--rounds 5] [--steps 3]
                                                   [--threads 1,2]

Threads: each value of `--threads` is measured in its own process pinned (CPU affinity) to that many cores, so both
frameworks get the same cores: torch through `torch.set_num_threads`, XLA because it sizes its thread pool from the
process's affinity. (XLA_FLAGS' `--xla_cpu_multi_thread_eigen=false` alone is not enough: XLA still runs
independent ops of one step on every core, which in an earlier version of this benchmark gave our step two cores
against torch's one.) `1` compares per-core efficiency; all cores is what a user gets.

Writes benchmarks/results/siglip_vs_torch.json. Target: ours >= 2x torch's examples/s.
"""
import argparse
import json
import os
import subprocess


def _args(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="scenes,tiny")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="steps per timed round")
    ap.add_argument("--threads", default="1,2", help="comma-separated core counts, one pinned process each")
    ap.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # internal: the pinned child process
    return ap.parse_known_args(argv)[0]


os.environ.setdefault("JAX_PLATFORMS", "cpu")
if __name__ == "__main__" and _args().one:  # before jax starts: XLA sizes its pool from the affinity
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:_args().one])

import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import timing_setup, write_result  # noqa: E402

from vlmjax.models import siglip_hf, weight_files  # noqa: E402
from vlmjax.core.flops import matmul_flops, measured_cpu_peak  # noqa: E402
from vlmjax.core.loop import Trainer  # noqa: E402

# (vision, text) HF config kwargs. 'scenes': the width/depth class of experiments/siglip_scenes.py; 'tiny': ViT-Ti
# widths (192, 3 heads) at 64 px / patch 8 and a 16-token text, 4 layers per tower.
SIZES = {
    "scenes": (dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=2,
                    image_size=64, patch_size=8),
               dict(vocab_size=1000, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                    num_attention_heads=2, max_position_embeddings=24)),
    "tiny": (dict(hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=3,
                  image_size=64, patch_size=8),
             dict(vocab_size=1000, hidden_size=192, intermediate_size=768, num_hidden_layers=4,
                  num_attention_heads=3, max_position_embeddings=16)),
}
LR, WD = 1e-3, 1e-4


def torch_setup(hf_config, batch):
    torch.manual_seed(0)
    model = transformers.SiglipModel(hf_config).train()
    with torch.no_grad():  # SigLIP's inits (HF zero-inits them when built from a config)
        model.logit_scale.fill_(np.log(10.0))
        model.logit_bias.fill_(-10.0)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WD)
    pixels = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).contiguous()
    ids = torch.from_numpy(batch["text"].astype(np.int64))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, pixel_values=pixels, return_loss=True).loss
        loss.backward()
        opt.step()
        return float(loss.detach())

    return model, step


def jax_setup(hf_config, torch_model, batch, workdir):
    spec = siglip_hf.siglip_model_config(hf_config)
    tok = timing_setup(workdir)
    c = ml_collections.ConfigDict()
    c.task, c.tokenizer, c.loss, c.loss_impl = "contrastive", tok, "sigmoid", "dense"
    c.image_size, c.text_len = spec["image_size"], spec["text_len"]
    c.batch_size, c.total_steps = len(batch["image"]), 1000
    c.model = spec["model"]
    c.data = dict(name="bench:", preprocess=[])
    c.optimizer = dict(name="adamw", lr=LR, b1=0.9, b2=0.999, eps=1e-8, weight_decay=WD, wd_mask=".*",
                       clip_norm=0.0)
    c.schedule = dict(name="constant")
    c.mesh = dict(data=1, fsdp=1, tensor=1)
    trainer = Trainer(c, workdir, devices=jax.devices()[:1])
    heads = (hf_config.vision_config.num_attention_heads, hf_config.text_config.num_attention_heads)
    params = weight_files.nest(siglip_hf.from_hf(torch_model.state_dict(), *heads))
    state = trainer.with_params(trainer.init_state(), params)
    gbatch = trainer._global_batch({"image": batch["image"], "text": batch["text"], "text_mask": batch["text_mask"]})
    with jax.set_mesh(trainer.mesh):
        jitted = trainer.train_step_fn()
        compiled = jitted.lower(state, gbatch).compile()
        flops = matmul_flops(jitted.trace(state, gbatch).jaxpr)
    holder = {"state": state}

    def step():
        with jax.set_mesh(trainer.mesh):
            holder["state"], metrics = compiled(holder["state"], gbatch)
        return float(metrics["train/loss"])  # blocks until the step is done

    return step, flops


def torch_matmul_peak(n=1024, repeats=5):
    """FLOP/s of a float32 n x n matmul in torch (its BLAS, its threads), best of `repeats`."""
    a = torch.ones((n, n))
    a @ a
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def bench(name, batch_size, rounds, steps):
    vision, text = SIZES[name]
    hf_config = transformers.SiglipConfig(vision_config=vision, text_config=text)
    rng = np.random.default_rng(0)
    s, n = vision["image_size"], text["max_position_embeddings"]
    batch = {"image": rng.uniform(-1, 1, (batch_size, s, s, 3)).astype(np.float32),
             "text": rng.integers(4, text["vocab_size"], (batch_size, n)).astype(np.int32),
             "text_mask": np.ones((batch_size, n), np.int32)}
    torch_model, torch_step = torch_setup(hf_config, batch)
    with tempfile.TemporaryDirectory() as workdir:
        t0 = time.perf_counter()
        jax_step, flops = jax_setup(hf_config, torch_model, batch, workdir)  # copies torch's weights before it trains
        compile_s = time.perf_counter() - t0
        losses = {"ours": [jax_step() for _ in range(3)], "torch": [torch_step() for _ in range(3)]}
        times = {"ours": [], "torch": []}
        for _ in range(rounds):  # alternate, so load from other processes hits both alike
            for key, fn in (("ours", jax_step), ("torch", torch_step)):
                t = time.perf_counter()
                for _ in range(steps):
                    fn()
                times[key].append((time.perf_counter() - t) / steps)
    med = {k: float(np.median(v)) for k, v in times.items()}
    best = {k: float(np.min(v)) for k, v in times.items()}  # noise from other tenants only ever adds time
    eps = {k: batch_size / v for k, v in med.items()}
    n_params = sum(p.numel() for p in torch_model.parameters())
    # Roofline: both sides run the same matmuls (same architecture); `flops` counts the dots and convs of our step's
    # jaxpr (forward + backward), so FLOPs / step time is each side's achieved matmul rate. No step can beat the
    # machine's float32 matmul rate, so `speedup_ceiling` = best matmul rate / torch's achieved rate bounds any
    # speedup over torch at these sizes.
    peaks = {"xla": measured_cpu_peak(), "torch": torch_matmul_peak()}
    achieved = {k: flops / v for k, v in med.items()}
    return {"vision": vision, "text": text, "batch": batch_size, "params": int(n_params),
            "examples_per_s": eps, "step_s_median": med, "step_s_best": best, "step_s_all": times,
            "speedup": eps["ours"] / eps["torch"], "speedup_of_best_rounds": best["torch"] / best["ours"],
            "first_losses": losses, "max_loss_diff_first_3_steps": float(np.max(np.abs(
                np.array(losses["ours"]) - np.array(losses["torch"])))), "ours_setup_compile_s": compile_s,
            "matmul_flops_per_step": flops, "achieved_flops_per_s": achieved, "f32_matmul_peak_flops_per_s": peaks,
            "fraction_of_best_peak": {k: v / max(peaks.values()) for k, v in achieved.items()},
            "speedup_ceiling": max(peaks.values()) / achieved["torch"]}


def measure(args):
    """The child process: every size at `args.one` cores; prints its results as one JSON line."""
    torch.set_num_threads(args.one)
    results = {name: bench(name, args.batch, args.rounds, args.steps) for name in args.sizes.split(",")}
    print("RESULT " + json.dumps({"results": results, "torch_threads": torch.get_num_threads(),
                                  "cores": len(os.sched_getaffinity(0)), "load_average_at_end": os.getloadavg()}))


def main():
    args = _args()
    if args.one:
        return measure(args)
    runs = {}
    for n in [int(t) for t in args.threads.split(",")]:
        child = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", str(n), "--sizes", args.sizes,
                                "--batch", str(args.batch), "--rounds", str(args.rounds), "--steps", str(args.steps)],
                               capture_output=True, text=True)
        if child.returncode or "RESULT " not in child.stdout:
            sys.exit(f"the {n}-core measurement failed (exit {child.returncode}):\n{child.stderr[-4000:]}")
        runs[f"cores_{n}"] = run = json.loads(child.stdout.split("RESULT ", 1)[1])
        for name, r in run["results"].items():
            print(f"{n} core(s), {name}: ours {r['examples_per_s']['ours']:.1f} ex/s, torch "
                  f"{r['examples_per_s']['torch']:.1f} ex/s -> {r['speedup']:.2f}x (best rounds "
                  f"{r['speedup_of_best_rounds']:.2f}x); torch at "
                  f"{r['fraction_of_best_peak']['torch']:.0%} of the f32 matmul peak, so no step can be more "
                  f"than {r['speedup_ceiling']:.2f}x faster than torch's", flush=True)
    write_result("siglip_vs_torch", {
        "what": "SigLIP train step examples/s, ours (jax, Trainer step) vs HF transformers SiglipModel (torch eager), "
                "same sizes/weights/batch/AdamW, one process per core count pinned to those cores, alternating "
                "rounds, median",
        "target": "speedup >= 2", "runs": runs,
        "versions": {"jax": jax.__version__, "torch": torch.__version__, "transformers": transformers.__version__},
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "min_speedup": min(r["speedup"] for run in runs.values() for r in run["results"].values())})


if __name__ == "__main__":
    main()
