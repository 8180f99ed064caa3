r"""The rendering-style robustness table of docs/robustness.md, generated from the seeds runner's JSON files.

    python benchmarks/style_table.py [--split validation|test]

Each family's model is trained on `scenes/default` (dark backgrounds only) and, where a `<family>_styles` run
exists, on `scenes/styles` (dark, light and noisy backgrounds); both are evaluated on dark, light and the held-out
`texture` style, which no training split shows (`scenes/texture`; docs/data.md). Every cell is read from
`benchmarks/results/seeds_<run>_<split>[_<eval data>].json` (written by `benchmarks/seeds.py --eval_data ...`) and
printed as mean ± std over its seeds; a missing file prints as "--". The commands that produce the files:

    python benchmarks/seeds.py --name vit_dark --config vit_scenes --seeds 0 --split validation
    python benchmarks/seeds.py --name vit_dark --config vit_scenes --seeds 0 --split validation \
        --eval_data scenes/texture
    python benchmarks/seeds.py --name vit_styles --config vit_scenes --seeds 0 --split validation \
        --eval_data scenes/texture -- --config.data.name=scenes/styles
    (the same with scenes/light, and scenes/default for vit_styles; vit_dark1800 / vit_styles1800 are
    vit_dark / vit_styles with `--config.total_steps=1800` added after `--`; vqvae_dark / vqvae_styles with
    vqvae_scenes; siglip_dark / siglip_styles with --config siglip_scenes, the default recipe; prefixlm64_chat2400
    and prefixlm64_chat with the chain of docs/prefixlm.md, its overrides after `--`; prefixlm64_styles_chat1200
    with that chain on scenes/styles, started from vit_styles1800, and prefixlm64_dark1800_chat1200 with the dark
    chain started from vit_dark1800: docs/robustness.md)
"""
import argparse
import json
import os

import compare_table
from seeds import RESULTS, result_path

# (row label, seeds-runner name, the data its training split came from, metric, format)
ROWS = [
    ("ViT classification accuracy (`vit_scenes`)", "vit_dark", "scenes/default", "eval/classification/accuracy",
     "{:.3f}"),
    ("", "vit_styles", "scenes/styles", "eval/classification/accuracy", "{:.3f}"),
    ("ViT, the same recipe at 3x the steps (1800)", "vit_dark1800", "scenes/default", "eval/classification/accuracy",
     "{:.3f}"),
    ("", "vit_styles1800", "scenes/styles", "eval/classification/accuracy", "{:.3f}"),
    ("VQ-VAE reconstruction PSNR, dB (`vqvae_scenes`)", "vqvae_dark", "scenes/default", "eval/recon/psnr", "{:.1f}"),
    ("", "vqvae_styles", "scenes/styles", "eval/recon/psnr", "{:.1f}"),
    ("SigLIP zero-shot, one-object images (`siglip_scenes`)", "siglip_dark", "scenes/default",
     "eval/zeroshot_1obj/accuracy", "{:.3f}"),
    ("", "siglip_styles", "scenes/styles", "eval/zeroshot_1obj/accuracy", "{:.3f}"),
    ("SigLIP multi-label mAP", "siglip_dark", "scenes/default", "eval/multilabel/mAP", "{:.3f}"),
    ("", "siglip_styles", "scenes/styles", "eval/multilabel/mAP", "{:.3f}"),
    ("SigLIP image -> text R@1", "siglip_dark", "scenes/default", "eval/retrieval/img2txt_r@1", "{:.3f}"),
    ("", "siglip_styles", "scenes/styles", "eval/retrieval/img2txt_r@1", "{:.3f}"),
    ("Prefix-LM VQA accuracy, 64 px (`prefixlm_scenes:chat`, 2400 chat steps)", "prefixlm64_chat2400",
     "scenes/default", "eval/vqa/accuracy", "{:.3f}"),
    ("Prefix-LM, 1200 chat steps, ViT stage `vit_dark` (600 steps)", "prefixlm64_chat",
     "scenes/default", "eval/vqa/accuracy", "{:.3f}"),
    ("Prefix-LM, 1200 chat steps, ViT stage at 1800 steps (`vit_dark1800` / `vit_styles1800`)",
     "prefixlm64_dark1800_chat1200", "scenes/default", "eval/vqa/accuracy", "{:.3f}"),
    ("", "prefixlm64_styles_chat1200", "scenes/styles", "eval/vqa/accuracy", "{:.3f}"),
]
# Metric names of files written before an evaluator was renamed: vit_scenes' `classification` was `test` until
# 2026-12-06 (in the seeds runner's files it read the split the file names, as now).
FORMER_NAMES = {"eval/classification/accuracy": "eval/test/accuracy"}
COLUMNS = [("dark", "scenes/default"), ("light", "scenes/light"), ("texture (held out)", "scenes/texture")]


def cell(run: str, trained_on: str, eval_data: str, metric: str, fmt: str, split: str, out_dir: str) -> str:
    """'mean ± std (n)' of `metric` for `run` evaluated on `eval_data`; the run's own evaluation file when
    eval_data is the data it trained on (its evaluators read that dataset), '--' when the file is missing."""
    path = result_path(out_dir, run, split, None if eval_data == trained_on else eval_data)
    if not os.path.exists(path):
        return "--"
    with open(path) as f:
        summary = json.load(f)["summary"]
    return compare_table.fmt(summary.get(metric, summary.get(FORMER_NAMES.get(metric))), fmt)


def table(split: str = "validation", out_dir: str = RESULTS) -> str:
    head = ["| metric | trained on | " + " | ".join(c for c, _ in COLUMNS) + " |",
            "|---|---|" + "---|" * len(COLUMNS)]
    rows = []
    for label, run, trained_on, metric, fmt in ROWS:
        cells = [cell(run, trained_on, data, metric, fmt, split, out_dir) for _, data in COLUMNS]
        if all(c == "--" for c in cells):
            continue
        rows.append(f"| {label} | `{trained_on}` | " + " | ".join(cells) + " |")
    return "\n".join([f"Split `{split}`; mean ± std (seeds) per cell.", ""] + head + rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="validation", choices=("validation", "test"))
    ap.add_argument("--out_dir", default=RESULTS)
    args = ap.parse_args()
    print(table(args.split, args.out_dir))


if __name__ == "__main__":
    main()
