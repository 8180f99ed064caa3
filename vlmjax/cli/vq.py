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

import numpy as np
from absl import logging as absl_logging
from PIL import Image

from vlmjax.api import ImageTokenizer, load_task
from vlmjax.image_input import read_image_file


def load_tokenizer(workdir: str, step: int = None) -> ImageTokenizer:
    """A trained VQ-VAE workdir's tokenizer (checkpoint `step`, default: latest)."""
    return ImageTokenizer(*load_task(workdir, ("vqvae",), step=step), workdir=workdir)


def _out_paths(out: str, n: int):
    if n == 1:
        return [out]
    stem, ext = os.path.splitext(out)
    return [f"{stem}_{i}{ext or '.png'}" for i in range(n)]


def encode_cmd(args) -> int:
    images = [read_image_file(p, "image") for p in args.images]
    model = load_tokenizer(args.workdir, args.step)
    codes, step = model.encode(images), model.step
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
    model = load_tokenizer(args.workdir, args.step)
    try:
        images = model.decode(np.load(args.codes))
    except ValueError as e:
        raise ValueError(f"{args.codes}: {e}") from None
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
