"""`vlmjax-vq`: a trained VQ-VAE's tokenizer on image files.

    vlmjax-vq encode --workdir W a.png [b.png ...] [--out codes.npy]   # prints the codes, or saves int32[B, h, w]
    vlmjax-vq decode --workdir W codes.npy --out b.png                  # int[h, w] or int[B, h, w] -> PNG(s)

The model comes from W's `config.json` and its latest checkpoint, of which only the variables the tokenizer needs
are read (params and the 'vq_stats' model state, which holds the codebook when it is EMA-updated), never the
optimizer state. Images are mapped to [-1, 1] by the same `value_range` op training uses; their sides must be
divisible by the model's downsampling factor f.
"""
import os
import sys

import numpy as np
from absl import flags

from vlmjax.cli import app
from vlmjax.image_input import read_image_file
from vlmjax.names import unknown

PROG = "vlmjax-vq"
COMMANDS = {"encode": app.new_flags(), "decode": app.new_flags()}
flags.DEFINE_string("out", "", "Save codes int32[B, h, w] to this .npy instead of printing them.",
                    flag_values=COMMANDS["encode"])
flags.DEFINE_string("out", None, "PNG path (name_<i>.png for each image of a batch of codes).",
                    flag_values=COMMANDS["decode"])
for _fv in COMMANDS.values():
    flags.DEFINE_string("workdir", None, "A vlmjax-train workdir of a VQ-VAE experiment.", flag_values=_fv)
    flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).", flag_values=_fv)


def load_tokenizer(workdir: str, step: int = None):
    """A trained VQ-VAE workdir's tokenizer (checkpoint `step`, default: latest)."""
    from vlmjax.api import ImageTokenizer, load_run

    return ImageTokenizer(*load_run(workdir, ("vqvae",), step=step), workdir=workdir)


def _out_paths(out: str, n: int):
    if n == 1:
        return [out]
    stem, ext = os.path.splitext(out)
    return [f"{stem}_{i}{ext or '.png'}" for i in range(n)]


def encode_cmd(paths) -> int:
    """image file(s) -> codes (printed, or saved with --out)."""
    F = COMMANDS["encode"]
    if not paths:
        raise ValueError("encode needs at least one image file")
    images = [read_image_file(p, "image") for p in paths]
    model = load_tokenizer(F.workdir, F.step)
    codes, step = model.encode(images), model.step
    if F.out:
        np.save(F.out, codes)
        print(f"saved codes int32{list(codes.shape)} of {len(paths)} image(s) to {F.out} (checkpoint step {step})")
    else:
        with np.printoptions(threshold=sys.maxsize, linewidth=200):
            for path, c in zip(paths, codes):
                print(f"# {path}: codes {c.shape[0]}x{c.shape[1]}")
                print(c)
    return 0


def decode_cmd(args) -> int:
    """codes .npy -> PNG."""
    from PIL import Image

    F = COMMANDS["decode"]
    if len(args) != 1:
        raise ValueError(f"decode takes one codes .npy file, got {len(args)} arguments")
    model = load_tokenizer(F.workdir, F.step)
    try:
        images = model.decode(np.load(args[0]))
    except ValueError as e:
        raise ValueError(f"{args[0]}: {e}") from None
    for path, im in zip(_out_paths(F.out, len(images)), images):
        Image.fromarray(im).save(path)
        print(f"wrote {path} ({im.shape[1]}x{im.shape[0]})")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else ""
    if command not in COMMANDS:
        if not argv or argv[0] in app.HELP:
            print(app.help_text(__doc__, **{f"{PROG} {name}": fv for name, fv in COMMANDS.items()}))
            return 0
        print(f"error: {unknown('command', command, COMMANDS)} (see {PROG} --help)", file=sys.stderr)
        return 2
    body = {"encode": encode_cmd, "decode": decode_cmd}[command]
    required = ("workdir", "out") if command == "decode" else ("workdir",)
    # orbax logs every restore step (INFO, WARNING)
    return app.run(f"{PROG} {command}", __doc__, COMMANDS[command], body, argv[1:], required=required,
                   positional=True, log_level="error")


def run():
    sys.exit(main())


if __name__ == "__main__":
    run()
