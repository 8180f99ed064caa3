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
import sys

from absl import flags

from vlmjax.cli import app
from vlmjax.image_input import read_image_file

PROG = "vlmjax-predict"
FLAGS = app.new_flags()
flags.DEFINE_string("workdir", None, "A vlmjax-train workdir of a prefix-LM or classification run.",
                    flag_values=FLAGS)
flags.DEFINE_multi_string("image", [], "Image file (repeat for several).", flag_values=FLAGS)
flags.DEFINE_string("prompt", "", "Question or instruction, e.g. 'caption'.", flag_values=FLAGS)
flags.DEFINE_integer("max_new_tokens", 32, "Longest answer, in tokens.", flag_values=FLAGS)
flags.DEFINE_string("generate", "", "VQ variant: caption of an image to generate.", flag_values=FLAGS)
flags.DEFINE_string("out", "generated.png", "With --generate: output PNG.", flag_values=FLAGS)
flags.DEFINE_float("cfg_scale", 3.0, "Classifier-free guidance scale (1 = off).", flag_values=FLAGS)
flags.DEFINE_float("temperature", 1.0, "With --generate: sampling temperature.", flag_values=FLAGS)
flags.DEFINE_integer("top_k", 0, "With --generate: 0 = sample from the whole image vocabulary.", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "With --generate: sampling seed.", flag_values=FLAGS)
flags.DEFINE_integer("top_labels", 1, "Classification runs: how many labels to print.", flag_values=FLAGS)


def predict_main(_) -> int:
    import vlmjax
    from PIL import Image

    from vlmjax.api import load_run_config

    F = FLAGS
    if bool(F.generate) == bool(F.image):
        raise ValueError("give --image (with --prompt) to ask about images, or --generate to draw one")
    family = load_run_config(F.workdir).get("task", "")
    if family not in ("prefixlm", "classification"):
        raise ValueError(f"--workdir {F.workdir!r}: config.task={family!r}; vlmjax-predict serves prefix-LM "
                         f"and classification runs (contrastive: vlmjax-zeroshot, VQ-VAE: vlmjax-vq)")
    if family == "classification" and (F.prompt or F.generate):
        raise ValueError(f"--workdir {F.workdir!r} is a classification run: give --image only")
    if family == "prefixlm" and F.image and not F.prompt:
        raise ValueError("--image needs --prompt")
    images = [read_image_file(p, "--image") for p in F.image]  # a bad file fails before the model loads
    model = vlmjax.load(F.workdir)
    if family == "classification":
        results = model.classify(images, top_k=F.top_labels)
    elif F.generate:
        images = model.generate([F.generate], seed=F.seed, cfg_scale=F.cfg_scale, temperature=F.temperature,
                                top_k=F.top_k or None)
        Image.fromarray(images[0]).save(F.out)
        print(f"wrote {F.out} ({images.shape[2]}x{images.shape[1]})")
        return 0
    else:
        results = model.answer(images, F.prompt, F.max_new_tokens)
    for path, result in zip(F.image, results):
        if family == "classification":
            result = ", ".join(f"{label} {p:.4f}" for label, p in result)
        print(result if len(results) == 1 else f"{path}: {result}")
    return 0


def main(argv=None) -> int:
    # orbax logs every restore step
    return app.run(PROG, __doc__, FLAGS, predict_main, argv, required=("workdir",), log_level="error")


def run():
    sys.exit(main())


if __name__ == "__main__":
    run()
