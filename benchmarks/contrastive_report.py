"""Sigmoid (SigLIP) vs softmax (CLIP) loss at batch 32, 128 and 512 with the same number of examples seen.

Trains tiny two-tower models on `scenes/default` images downscaled to 32 px (the siglip_scenes recipe shrunk: the
same data, captions, templates, optimizer and schedule; a conv-stem ViT of width 48 and a 1-layer text tower) on one
CPU device, and reports zero-shot accuracy on the main-object label and retrieval R@1 on the test split. Every run
sees the same 32768 training examples (batch 32: 1024 steps, 128: 256, 512: 64) with the same learning rate and
10% warmup; only the loss (and its t/b init) and the batch size change. Regenerates, in one command:

    .venv/bin/python benchmarks/contrastive_report.py            # ~20-25 min on 2 cores (needs `make data`)
    .venv/bin/python benchmarks/contrastive_report.py --quick    # a few-minute smoke run, nothing written to docs/

Writes benchmarks/results/contrastive_report.json, docs/contrastive_batch_size.png and the results section of
docs/contrastive.md (between the `results:begin` / `results:end` markers; the rest of the page is kept).
"""
import argparse
import json
import os
import sys
import tempfile
import time

from PIL import Image, ImageDraw

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
from common import update_doc, write_result  # noqa: E402

DOC = os.path.join(ROOT, "docs", "contrastive.md")
PLOT = os.path.join(ROOT, "docs", "contrastive_batch_size.png")
BEGIN, END = "<!-- results:begin (written by benchmarks/contrastive_report.py) -->", "<!-- results:end -->"
LOSSES = ("sigmoid", "softmax")
COLORS = {"sigmoid": (31, 119, 180), "softmax": (214, 39, 40)}


def run_config(loss: str, batch: int, examples: int, args):
    """The siglip_scenes recipe at 32 px with tiny towers; steps = examples // batch, warmup 10% of them. The
    towers are spelled out in full so that the report does not move when siglip_scenes' model changes."""
    from vlmjax.core.config import load_experiment

    c = load_experiment(os.path.join(ROOT, "experiments", "siglip_scenes.py") + (":baseline,softmax"
                                                                                 if loss == "softmax" else ":baseline"))
    size = 32
    resize = dict(op="resize", size=size, key="image", method="area")
    with c.unlocked():
        for pp in [c.data.preprocess] + [e.data.preprocess for e in c.evals.values()]:
            pp.insert(1, resize)
        c.data.data_dir = args.data_dir
        c.tokenizer = os.path.join(args.data_dir, "scenes_spm.model")
        c.image_size = size
        c.batch_size = batch
        c.total_steps = max(examples // batch, 1)
        c.log_every_steps = max(c.total_steps // 4, 1)
        c.schedule.warmup_steps = max(c.total_steps // 10, 1)
        c.eval.every_steps = c.total_steps
        for ev in c.evals.values():
            ev.data.max_examples = args.eval_examples
        # 32 px -> 4x4 conv stem (8x8x32) -> 2x2 patches: 16 tokens.
        c.model.image = dict(patch_size=(2, 2), stem_channels=32, stem_patch=4, width=48, depth=2, num_heads=2,
                             mlp_dim=192, pool_type="map")
        c.model.text = dict(width=48, depth=1, num_heads=2, mlp_dim=192, pool_type="eos")
        c.model.out_dim = 48
        c.mesh = dict(data=1)
        c.checkpoint.every_steps = c.total_steps
        c.checkpoint.async_save = False
    return c


def sweep(args) -> list:
    import jax

    from vlmjax.core.loop import train

    rows = []
    for batch in args.batches:
        for loss in LOSSES:
            cfg = run_config(loss, batch, args.examples, args)
            with tempfile.TemporaryDirectory() as wd:
                t0 = time.time()
                final = train(cfg, wd, devices=jax.devices()[:1])
                secs = time.time() - t0
            row = {"loss": loss, "batch": batch, "steps": cfg.total_steps, "examples": cfg.total_steps * batch,
                   "seconds": round(secs, 1), "train_loss": final.get("train/loss"),
                   "temperature": final.get("train/temperature"), "bias": final.get("train/bias"),
                   "zeroshot": final["eval/zeroshot/accuracy"],
                   "img2txt_r1": final["eval/retrieval/img2txt_r@1"], "txt2img_r1": final["eval/retrieval/txt2img_r@1"]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


# ---- plot (PIL only: no plotting dependency) -------------------------------------------------------------------
def plot(rows, path: str, metrics=(("zeroshot", "zero-shot accuracy"), ("img2txt_r1", "image->text R@1"),
                                   ("txt2img_r1", "text->image R@1"))):
    """One panel per metric: metric vs batch size (log scale), a line per loss."""
    pw, ph, m = 300, 240, 44
    img = Image.new("RGB", (pw * len(metrics), ph + 30), "white")
    d = ImageDraw.Draw(img)
    batches = sorted({r["batch"] for r in rows})
    xs = {b: i / max(len(batches) - 1, 1) for i, b in enumerate(batches)}
    for p, (key, title) in enumerate(metrics):
        x0, y0, w, h = p * pw + m, 20, pw - m - 14, ph - 50
        d.text((x0, 4), title, fill="black")
        d.rectangle([x0, y0, x0 + w, y0 + h], outline="black")
        for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
            y = y0 + h - frac * h
            d.line([x0 - 3, y, x0, y], fill="black")
            d.text((x0 - 30, y - 5), f"{frac:.2f}", fill="black")
        for b in batches:
            x = x0 + xs[b] * w
            d.line([x, y0 + h, x, y0 + h + 3], fill="black")
            d.text((x - 8, y0 + h + 6), str(b), fill="black")
        d.text((x0 + w // 2 - 25, y0 + h + 20), "batch size", fill="black")
        for loss in LOSSES:
            pts = [(x0 + xs[r["batch"]] * w, y0 + h - r[key] * h) for r in sorted(rows, key=lambda r: r["batch"])
                   if r["loss"] == loss]
            if len(pts) > 1:
                d.line(pts, fill=COLORS[loss], width=2)
            for x, y in pts:
                d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=COLORS[loss])
    for i, loss in enumerate(LOSSES):
        d.rectangle([10 + i * 110, ph + 12, 22 + i * 110, ph + 24], fill=COLORS[loss])
        d.text((26 + i * 110, ph + 12), loss, fill="black")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path)


# ---- markdown ------------------------------------------------------------------------------------------------
def summary(rows) -> list:
    """Sentences comparing the losses at each batch size (computed, so they match the table)."""
    by = {(r["loss"], r["batch"]): r for r in rows}
    out = []
    for b in sorted({r["batch"] for r in rows}):
        s, x = by.get(("sigmoid", b)), by.get(("softmax", b))
        if s and x:
            dz = round(100 * (s["zeroshot"] - x["zeroshot"]), 1) + 0.0  # + 0.0: no '-0.0'
            dr = round(100 * (s["img2txt_r1"] + s["txt2img_r1"] - x["img2txt_r1"] - x["txt2img_r1"]) / 2, 1) + 0.0
            out.append(f"- batch {b}: sigmoid {dz:+.1f} points zero-shot and {dr:+.1f} points mean R@1 vs softmax.")
    return out


def markdown(rows, args) -> str:
    lines = [BEGIN, "",
             f"Same {args.examples} training examples for every run (`scenes/default` train images downscaled "
             f"to 32 px, one pass); zero-shot (24 classes, chance 0.042) and retrieval on the first "
             f"{args.eval_examples} test images; one seed (0) per cell; wall seconds on a shared 2-core machine. "
             "Regenerate with `.venv/bin/python benchmarks/contrastive_report.py`.", "",
             "| loss | batch | steps | zero-shot acc | img→txt R@1 | txt→img R@1 | final t | final b | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["batch"], r["loss"])):
        bias = "—" if r["bias"] is None else f"{r['bias']:.2f}"
        lines.append(f"| {r['loss']} | {r['batch']} | {r['steps']} | {r['zeroshot']:.3f} | {r['img2txt_r1']:.3f} | "
                     f"{r['txt2img_r1']:.3f} | {r['temperature']:.1f} | {bias} | {r['seconds']:.0f} |")
    lines += ["", "![zero-shot accuracy and R@1 vs batch size](contrastive_batch_size.png)", ""]
    lines += summary(rows) + ["", END]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", default=os.path.join(ROOT, "data", "tfds"))
    p.add_argument("--examples", type=int, default=0, help="examples seen per run (default 32768; --quick 2048)")
    p.add_argument("--batches", type=int, nargs="+", default=[32, 128, 512])
    p.add_argument("--eval_examples", type=int, default=1000)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    args.examples = args.examples or (2048 if args.quick else 32768)
    if args.quick:
        args.eval_examples = min(args.eval_examples, 256)
    t0 = time.time()
    rows = sweep(args)
    result = {"examples_per_run": args.examples, "eval_examples": args.eval_examples, "runs": rows,
              "total_seconds": round(time.time() - t0, 1)}
    if args.quick:
        print(json.dumps(result, indent=2))
        return
    write_result("contrastive_report", result)
    plot(rows, PLOT)
    update_doc(DOC, "Contrastive", BEGIN, END, markdown(rows, args))
    print(f"wrote {PLOT} and the results of {DOC}")


if __name__ == "__main__":
    main()
