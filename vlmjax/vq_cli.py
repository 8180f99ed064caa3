"""`vlmjax-vq`: a trained VQ-VAE's tokenizer on image files.

    vlmjax-vq encode --workdir W a.png [b.png ...] [--out codes.npy]   # prints the codes, or saves int32[B, h, w]
    vlmjax-vq decode --workdir W codes.npy --out b.png                  # int[h, w] or int[B, h, w] -> PNG(s)

The model comes from W's `config.json` and its latest checkpoint, of which only the variables the tokenizer needs
are read (params and the 'vq_stats' model state, which holds the codebook when it is EMA-updated), never the
optimizer state. Images are mapped to [-1, 1] by the same `value_range` op training uses; their sides must be
divisible by the model's downsampling factor f.
"""
import argparse
import os
import sys

import jax
import numpy as np
from absl import logging as absl_logging
from PIL import Image

from vlmjax.data import ops
from vlmjax.tasks import get_task_class
from vlmjax.tasks.image_metrics import to_uint8
from vlmjax.train import config as config_lib
from vlmjax.train.checkpoint import load_state_numpy
from vlmjax.train.evaluate import load_run_config

TOKENIZER_STATE = ("params", "model_state")


def load_variables(workdir: str, step: int = None):
    """(step, {'params': ..., **model_state}) as host numpy arrays, from `workdir/checkpoints` (latest by default)."""
    step, state = load_state_numpy(workdir, TOKENIZER_STATE, step, where="--workdir")
    return step, {"params": state["params"], **state.get("model_state", {})}


def load_tokenizer(workdir: str, step: int = None):
    """(task, variables, step) of a trained VQ-VAE workdir; task.encode / task.decode are the tokenizer."""
    raw = load_run_config(workdir)  # the resolved config.json saved by the run
    task_cls = get_task_class(raw.get("task", ""))
    if not hasattr(task_cls, "encode") or not hasattr(task_cls, "decode"):
        raise ValueError(f"--workdir {workdir!r}: config.task={raw.task!r} is not an image tokenizer")
    cfg = config_lib.resolve(raw, task_cls.config_defaults())
    task = task_cls(cfg)
    step, variables = load_variables(workdir, step)
    return task, variables, step


def read_images(paths) -> np.ndarray:
    """PNG/JPEG files of one size -> float32[B, H, W, 3] in [-1, 1]."""
    to_range = ops.value_range(-1.0, 1.0)
    images = []
    for p in paths:
        with Image.open(p) as im:
            images.append(to_range({"image": np.asarray(im.convert("RGB"))}, None)["image"])
    sizes = sorted({im.shape for im in images})
    if len(sizes) > 1:
        raise ValueError(f"images have different sizes {sizes}; encode them in separate calls")
    return np.stack(images)


def _out_paths(out: str, n: int):
    if n == 1:
        return [out]
    stem, ext = os.path.splitext(out)
    return [f"{stem}_{i}{ext or '.png'}" for i in range(n)]


def encode_cmd(args) -> int:
    task, variables, step = load_tokenizer(args.workdir, args.step)
    images = read_images(args.images)
    f = task.model.downsample_factor
    if images.shape[1] % f or images.shape[2] % f:
        raise ValueError(f"image size {images.shape[1:3]} is not divisible by the model's f={f}")
    codes = np.asarray(jax.jit(task.encode)(variables, images))
    if args.out:
        np.save(args.out, codes)
        print(f"saved codes int32{list(codes.shape)} of {len(args.images)} image(s) to {args.out} "
              f"(checkpoint step {step})")
    else:
        with np.printoptions(threshold=sys.maxsize, linewidth=200):
            for path, c in zip(args.images, codes):
                print(f"# {path}: codes {c.shape[0]}x{c.shape[1]}")
                print(c)
    return 0


def decode_cmd(args) -> int:
    task, variables, _ = load_tokenizer(args.workdir, args.step)
    codes = np.load(args.codes)
    if codes.ndim == 2:
        codes = codes[None]
    k = task.model.num_codes
    if codes.ndim != 3 or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"{args.codes}: expected integer codes [h, w] or [B, h, w], got {codes.dtype}{codes.shape}")
    if codes.min() < 0 or codes.max() >= k:
        raise ValueError(f"{args.codes}: codes must lie in [0, {k}), got [{codes.min()}, {codes.max()}]")
    images = np.asarray(to_uint8(jax.jit(task.decode)(variables, codes.astype(np.int32))))
    for path, im in zip(_out_paths(args.out, len(images)), images):
        Image.fromarray(im).save(path)
        print(f"wrote {path} ({im.shape[1]}x{im.shape[0]})")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlmjax-vq", description="Encode images to VQ codes and decode codes to PNG.")
    sub = p.add_subparsers(dest="command", required=True)
    enc = sub.add_parser("encode", help="image file(s) -> codes (printed, or saved with --out)")
    enc.add_argument("images", nargs="+")
    enc.add_argument("--out", default="", help="save codes int32[B, h, w] to this .npy instead of printing")
    dec = sub.add_parser("decode", help="codes .npy -> PNG")
    dec.add_argument("codes")
    dec.add_argument("--out", required=True, help="PNG path (name_<i>.png for each image of a batch of codes)")
    for s in (enc, dec):
        s.add_argument("--workdir", required=True, help="a vlmjax-train workdir of a VQ-VAE experiment")
        s.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax logs every restore step (INFO, WARNING)
    try:
        return {"encode": encode_cmd, "decode": decode_cmd}[args.command](args)
    except (ValueError, FileNotFoundError, OSError) as e:
        if os.environ.get("VLMJAX_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


def run():
    sys.exit(main())


if __name__ == "__main__":
    run()
