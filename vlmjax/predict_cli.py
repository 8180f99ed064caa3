"""`vlmjax-predict`: ask a trained prefix-LM VLM about images, or (VQ variant) generate an image from a caption.

    vlmjax-predict --workdir W --image a.png --prompt "what color is the circle?"     # prints the answer
    vlmjax-predict --workdir W --image a.png --image b.png --prompt "caption" --max_new_tokens 32
    vlmjax-predict --workdir W --generate "a red circle" --out x.png [--cfg_scale 3 --top_k 0 --seed 0]

The model comes from W's `config.json` and its latest checkpoint (params and model state, never the optimizer
state). Images are resized to the run's `image_size` and mapped to [-1, 1] like training's `value_range` op; the
prompt is wrapped in the chat template the run was trained with. Decoding is greedy and stops at `<|end|>`.
"""
import argparse
import json
import os
import sys

import ml_collections
import numpy as np
from PIL import Image


def load_run(workdir: str):
    """(task, variables) of a prefix-LM workdir."""
    from vlmjax.tasks import get_task_class
    from vlmjax.tasks.prefixlm import PrefixLMTask, load_checkpoint_variables
    from vlmjax.train import config as config_lib

    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--workdir {workdir!r}: no config.json (is it a vlmjax-train workdir?)")
    with open(path) as f:
        raw = ml_collections.ConfigDict(json.load(f))
    task_cls = get_task_class(raw.get("task", ""))
    if not issubclass(task_cls, PrefixLMTask):
        raise ValueError(f"--workdir {workdir!r}: config.task={raw.task!r} is not a prefix-LM run")
    task = task_cls(config_lib.resolve(raw, task_cls.config_defaults()))
    try:
        variables = load_checkpoint_variables(workdir)
    except FileNotFoundError as e:
        raise FileNotFoundError(str(e).replace("config.vq_workdir", "--workdir")) from None
    return task, variables


def read_images(paths, size: int) -> np.ndarray:
    """Image files -> float32[B, size, size, 3] in [-1, 1]."""
    out = []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            out.append(np.asarray(im, np.float32) / 127.5 - 1.0)
    return np.stack(out)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlmjax-predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="a vlmjax-train workdir of a prefix-LM experiment")
    p.add_argument("--image", action="append", default=[], help="image file (repeat for several)")
    p.add_argument("--prompt", default="", help="question or instruction, e.g. 'caption'")
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--generate", default="", help="VQ variant: caption of an image to generate")
    p.add_argument("--out", default="generated.png", help="with --generate: output PNG")
    p.add_argument("--cfg_scale", type=float, default=3.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top_k", type=int, default=0, help="0 = sample from the whole image vocabulary")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if bool(args.generate) == bool(args.image):
        print("error: give --image (with --prompt) to ask about images, or --generate to draw one", file=sys.stderr)
        return 2
    if args.image and not args.prompt:
        print("error: --image needs --prompt", file=sys.stderr)
        return 2
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax logs every restore step
    try:
        task, variables = load_run(args.workdir)
        if args.generate:
            images = task.generate_images(variables, [args.generate], seed=args.seed, cfg_scale=args.cfg_scale,
                                          temperature=args.temperature, top_k=args.top_k or None)
            Image.fromarray(images[0]).save(args.out)
            print(f"wrote {args.out} ({images.shape[2]}x{images.shape[1]})")
            return 0
        images = read_images(args.image, int(task.config.image_size))
        answers = task.answer_texts(variables, images, [args.prompt] * len(images), args.max_new_tokens)
    except (ValueError, FileNotFoundError, OSError) as e:
        if os.environ.get("VLMJAX_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, answer in zip(args.image, answers):
        print(answer if len(answers) == 1 else f"{path}: {answer}")
    return 0


def run():
    sys.exit(main())


if __name__ == "__main__":
    run()
