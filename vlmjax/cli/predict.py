"""`vlmjax-predict`: ask a trained prefix-LM VLM about images, or (VQ variant) generate an image from a caption;
on a classification run, classify images.

    vlmjax-predict --workdir W --image a.png --prompt "what color is the circle?"     # prints the answer
    vlmjax-predict --workdir W --image a.png --image b.png --prompt "caption" --max_new_tokens 32
    vlmjax-predict --workdir W --generate "a red circle" --out x.png [--cfg_scale 3 --top_k 0 --seed 0]
    vlmjax-predict --workdir workdirs/vit_scenes --image a.png [--top_labels 3]         # "red circle 0.9731"

The model comes from W's `config.json` and its latest checkpoint (params and model state, never the optimizer
state). Images of any size go through the run's evaluation image ops (vlmjax/image_input.py: resized to its
`image_size`, mapped to [-1, 1]); a missing or undecodable file is named in a one-line error (exit 2). The
prompt is wrapped in the chat template the run was trained with. Decoding is greedy and stops at `<|end|>`.
"""
import argparse
import os
import sys

from PIL import Image

from vlmjax.image_input import read_image_file


def load_run(workdir: str):
    """(task, variables) of a prefix-LM workdir."""
    from vlmjax.api import load_task

    task, variables, _ = load_task(workdir, ("prefixlm",))
    return task, variables


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlmjax-predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="a vlmjax-train workdir of a prefix-LM or classification run")
    p.add_argument("--image", action="append", default=[], help="image file (repeat for several)")
    p.add_argument("--prompt", default="", help="question or instruction, e.g. 'caption'")
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--generate", default="", help="VQ variant: caption of an image to generate")
    p.add_argument("--out", default="generated.png", help="with --generate: output PNG")
    p.add_argument("--cfg_scale", type=float, default=3.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top_k", type=int, default=0, help="0 = sample from the whole image vocabulary")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top_labels", type=int, default=1, help="classification runs: how many labels to print")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if bool(args.generate) == bool(args.image):
        print("error: give --image (with --prompt) to ask about images, or --generate to draw one", file=sys.stderr)
        return 2
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax logs every restore step
    import vlmjax
    from vlmjax.cli.evaluate import load_run_config

    try:
        family = load_run_config(args.workdir).get("task", "")
        if family not in ("prefixlm", "classification"):
            raise ValueError(f"--workdir {args.workdir!r}: config.task={family!r}; vlmjax-predict serves prefix-LM "
                             f"and classification runs (contrastive: vlmjax-zeroshot, VQ-VAE: vlmjax-vq)")
        if family == "classification" and (args.prompt or args.generate):
            raise ValueError(f"--workdir {args.workdir!r} is a classification run: give --image only")
        if family == "prefixlm" and args.image and not args.prompt:
            raise ValueError("--image needs --prompt")
        images = [read_image_file(p, "--image") for p in args.image]  # a bad file fails before the model loads
        model = vlmjax.load(args.workdir)
        if family == "classification":
            results = model.classify(images, top_k=args.top_labels)
        elif args.generate:
            images = model.generate([args.generate], seed=args.seed, cfg_scale=args.cfg_scale,
                                    temperature=args.temperature, top_k=args.top_k or None)
            Image.fromarray(images[0]).save(args.out)
            print(f"wrote {args.out} ({images.shape[2]}x{images.shape[1]})")
            return 0
        else:
            results = model.answer(images, args.prompt, args.max_new_tokens)
    except (ValueError, FileNotFoundError, OSError) as e:
        if os.environ.get("VLMJAX_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, result in zip(args.image, results):
        if family == "classification":
            result = ", ".join(f"{label} {p:.4f}" for label, p in result)
        print(result if len(results) == 1 else f"{path}: {result}")
    return 0


def run():
    sys.exit(main())


if __name__ == "__main__":
    run()
