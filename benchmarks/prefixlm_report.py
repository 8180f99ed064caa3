"""Prefix-LM reproduction report: (1) continuous ViT features vs VQ-VAE tokens as the image input, (2) bidirectional
prefix vs fully causal attention. Regenerates docs/prefixlm_report.png and the results block of docs/prefixlm.md.

    python benchmarks/prefixlm_report.py [--data_dir data/tfds] [--scale 1.0]   # ~12 min on 2 idle CPU cores

Every arm runs the same two-stage recipe as experiments/prefixlm_scenes.py (caption pretraining, then multi-turn QA
chat chained by init_from), shrunk to scenes/default at 32 px with a small model, and the same data order:
  continuous  hybrid ViT (conv stem 4x4 + 1x1 patches -> 64 tokens) + linear projector, bidirectional prefix
  causal      the same, every token causal (mask_ar all 1)
  vq          a VQ-VAE trained here first (f4: 8x8 = 64 codes of 256), frozen; `<|boi|> codes <|eoi|>` prefix
Metrics: caption CIDEr-D and exact match after stage 1 (stage 2 trains on QA only), VQA exact-match accuracy
(overall and per question type) after stage 2, on the first `--eval_images` test images. `--scale` multiplies
every step count (0.2 for a quick look).
"""
import argparse
import json
import os
import sys
import time

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import update_doc, write_result  # noqa: E402
from vlmjax.core.config import set_dotted  # noqa: E402
from vlmjax.experiments import prefixlm_scenes, prefixlm_vq_scenes  # noqa: E402


EXP, VQ_EXP = prefixlm_scenes, prefixlm_vq_scenes
SIZE, PRE_LEN, CHAT_LEN, TURNS = 32, 32, 60, 4
TYPES = EXP.TYPES


def arm_config(stage, arm, args, steps, workdirs):
    """One stage of one arm: the experiment's config shrunk to the report's budget."""
    vq = arm == "vq"
    c = (VQ_EXP if vq else EXP).get_config(stage)
    over = {"data.data_dir": args.data_dir, "total_steps": steps, "batch_size": 32, "log_every_steps": 50,
            "schedule.warmup_steps": 50, "optimizer.lr": 2e-3, "image_size": SIZE, "mesh.data": 1,
            "checkpoint.async_save": False, "eval.batch_size": 64}
    lm = EXP.model(64, 3, 96, 3)["lm"]
    over["model"] = dict(lm=lm) if vq else EXP.model(64, 3, 96, 3, token_merge=1, stem=32, stem_blocks=1)
    if not vq:  # stem /4 then 1x1 patches: 64 image tokens, as many as the VQ arm's 8x8 codes
        over["model"]["vit"]["patch_size"] = (1, 1)
    if vq:
        over["vq_workdir"] = workdirs["vqvae"]
    if arm == "causal":
        over["attention"] = "causal"
    n = args.eval_images
    if stage == "pretrain":
        over.update({"text_len": PRE_LEN, "data.preprocess": EXP.pretrain_pp(PRE_LEN, SIZE, 0.3 if vq else 0.0),
                     "init_from.workdir": ""})  # every arm's encoder from scratch
        evals = {"caption": dict(type="caption", max_new_tokens=28, data=dict(
            split="test", preprocess=EXP.caption_pp(SIZE), max_examples=n))}
        if vq:
            evals["caption"].update(gen_captions=VQ_EXP.GEN_CAPTIONS, cfg_scale=3.0, top_k=32)
    else:
        over.update({"text_len": CHAT_LEN, "data.preprocess": EXP.chat_pp(CHAT_LEN, TURNS, SIZE),
                     "init_from.workdir": workdirs[f"{arm}_pretrain"], "optimizer.lr": 1e-3})
        evals = {"vqa": dict(type="vqa", max_new_tokens=4, question_types=TYPES, data=dict(
            split="test", preprocess=EXP.vqa_pp(SIZE), max_examples=n))}
    over["evals"] = evals
    return set_dotted(c, over)


def run_arm(arm, args, workdirs, train):
    out = {}
    for stage, steps in (("pretrain", args.pretrain_steps), ("chat", args.chat_steps)):
        wd = workdirs[f"{arm}_{stage}"] = os.path.join(args.workdir, f"{arm}_{stage}")
        t0 = time.time()
        final = train(arm_config(stage, arm, args, int(steps * args.scale), workdirs), wd, jax.devices()[:1])
        out[f"{stage}_seconds"] = round(time.time() - t0, 1)
        out.update({k.split("/", 1)[1]: round(v, 4) for k, v in final.items() if k.startswith("eval/")})
        out[f"{stage}_final_loss"] = round(final.get("train/loss", float("nan")), 4)
        print(f"[{arm} {stage}] {json.dumps(out)}", flush=True)
    return out


def train_vqvae(args, workdirs, train):
    wd = workdirs["vqvae"] = os.path.join(args.workdir, "vqvae")
    c = VQ_EXP.vqvae_config(steps=int(args.vqvae_steps * args.scale), batch=32)
    set_dotted(c, {"data.data_dir": args.data_dir, "mesh.data": 1, "checkpoint.async_save": False,
             "model.ch": 16, "schedule.warmup_steps": 50})
    for ev in c.evals.values():
        ev.data.max_examples = 256
    t0 = time.time()
    final = train(c, wd, jax.devices()[:1])
    return {"seconds": round(time.time() - t0, 1),
            **{k.split("/", 1)[1]: round(v, 4) for k, v in final.items() if k.startswith("eval/")}}


def bar_chart(results, path):
    """PNG: grouped bars of VQA accuracy per question type and caption CIDEr-D / 10, one colour per arm."""
    from PIL import Image, ImageDraw

    arms = [a for a in ("continuous", "causal", "vq") if a in results]
    groups = [("VQA all", "vqa/accuracy")] + [(t, f"vqa/accuracy_{t}") for t in TYPES] + \
             [("CIDEr/10", "caption/cider"), ("cap exact", "caption/exact")]
    colours = {"continuous": (40, 90, 225), "causal": (250, 140, 30), "vq": (40, 180, 60)}
    w, h, pad, bw = 900, 420, 50, 22
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.line([(pad, h - pad), (w - 10, h - pad)], fill="black")
    for frac in (0.25, 0.5, 0.75, 1.0):
        y = h - pad - frac * (h - 2 * pad)
        d.line([(pad, y), (w - 10, y)], fill=(220, 220, 220))
        d.text((8, y - 6), f"{frac:.2f}", fill="black")
    gw = (w - pad - 20) / len(groups)
    for gi, (label, key) in enumerate(groups):
        x0 = pad + 10 + gi * gw
        for ai, arm in enumerate(arms):
            v = results[arm].get(key, 0.0) / (10.0 if "cider" in key else 1.0)
            x = x0 + ai * bw
            d.rectangle([x, h - pad - v * (h - 2 * pad), x + bw - 3, h - pad], fill=colours[arm])
        d.text((x0, h - pad + 8), label, fill="black")
    for ai, arm in enumerate(arms):
        d.rectangle([w - 160, 12 + ai * 16, w - 150, 22 + ai * 16], fill=colours[arm])
        d.text((w - 145, 10 + ai * 16), arm, fill="black")
    img.save(path)


DOC = os.path.join(ROOT, "docs", "prefixlm.md")
BEGIN, END = "<!-- results:begin (written by benchmarks/prefixlm_report.py) -->", "<!-- results:end -->"
ARMS = {"continuous": "continuous ViT features, bidirectional prefix", "causal": "continuous, fully causal",
        "vq": "VQ-VAE tokens, bidirectional prefix"}


def markdown(results, blind) -> str:
    """The results block: one row per arm, then sentences computed from the same numbers."""
    s = results["settings"]
    head = "| arm | VQA | " + " | ".join(TYPES) + " | caption CIDEr-D | caption exact | wall s (both stages) |"
    lines = [BEGIN, "",
             f"`scenes/default` at {SIZE} px, caption pretraining {int(s['pretrain_steps'] * s['scale'])} steps then "
             f"QA chat {int(s['chat_steps'] * s['scale'])} steps, batch 32, one seed; VQA exact match on the "
             f"questions of the first {s['eval_images']} test images, captions (after stage 1) on the same images. "
             "Blind prior (most common train answer of the question, from the question alone): "
             f"{blind['all']:.3f} (" + ", ".join(f"{t} {blind[t]:.3f}" for t in TYPES) + "). Wall seconds on 2 CPU "
             "cores. Regenerate with `.venv/bin/python benchmarks/prefixlm_report.py`.", "",
             head, "|" + "---|" * (len(TYPES) + 5)]
    for arm, what in ARMS.items():
        r = results.get(arm)
        if r:
            lines.append(f"| {what} | {r['vqa/accuracy']:.3f} | " +
                         " | ".join(f"{r[f'vqa/accuracy_{t}']:.3f}" for t in TYPES) +
                         f" | {r['caption/cider']:.3f} | {r['caption/exact']:.3f} | "
                         f"{r['pretrain_seconds'] + r['chat_seconds']:.0f} |")
    lines += ["", "![VQA accuracy per question type and caption CIDEr-D per arm](prefixlm_report.png)", ""]
    c, k, v = (results.get(a) for a in ("continuous", "causal", "vq"))
    for name, other in (("VQ tokens", v), ("fully causal attention", k)):
        if c and other:
            lines.append(f"- {name} vs continuous bidirectional: VQA "
                         f"{100 * (other['vqa/accuracy'] - c['vqa/accuracy']):+.1f} points, CIDEr-D "
                         f"{other['caption/cider'] - c['caption/cider']:+.3f}.")
    return "\n".join(lines + ["", END])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", default=os.path.join(ROOT, "data", "tfds"))
    p.add_argument("--workdir", default="/tmp/prefixlm_report")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--vqvae_steps", type=int, default=300)
    p.add_argument("--pretrain_steps", type=int, default=250)
    p.add_argument("--chat_steps", type=int, default=350)
    p.add_argument("--eval_images", type=int, default=256)
    p.add_argument("--arms", default="continuous,causal,vq")
    args = p.parse_args(argv)
    from vlmjax.data.sources import scenes
    from vlmjax.core.loop import train

    t0 = time.time()
    workdirs, results = {}, {}
    arms = args.arms.split(",")
    if "vq" in arms:
        results["vqvae"] = train_vqvae(args, workdirs, train)
    for arm in arms:
        results[arm] = run_arm(arm, args, workdirs, train)
    results["total_seconds"] = round(time.time() - t0, 1)
    results["settings"] = {k: v for k, v in vars(args).items() if k != "workdir"}
    results["blind"] = scenes.blind_vqa_prior(args.data_dir, "default", args.eval_images)[0]
    write_result("prefixlm_report", results)
    bar_chart(results, os.path.join(ROOT, "docs", "prefixlm_report.png"))
    update_doc(DOC, "Prefix-LM VLM", BEGIN, END, markdown(results, results["blind"]))
    print(f"wrote docs/prefixlm_report.png and the results of {DOC}")


if __name__ == "__main__":
    main()
