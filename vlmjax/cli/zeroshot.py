"""`vlmjax-zeroshot`: label probabilities of an image under a trained contrastive run (SigLIP / CLIP / LiT).

    vlmjax-zeroshot --workdir workdirs/siglip_scenes --image a.png --labels "red circle,blue square"
    vlmjax-zeroshot ... --eval caption_retrieval   # that evaluator's prompts and aggregation

Loads `<workdir>/config.json` and the latest checkpoint's params. Each label is embedded through the prompts of one
of the run's zero-shot evaluators (`--eval NAME`; default: the first one; the CLIP-style ensemble if there is
none): its templates filled with the label, or the label's list in its `class_prompts` table. A label scores the
way that evaluator aggregates: `mean` (CLIP's ensemble: cos with the mean prompt embedding) or `max` (cos with
the best-matching prompt). The image goes through that evaluator's image preprocessing (decode /
resize / crop / value_range; an image of any other size is resized to the run's `image_size`). Probabilities: sigmoid(t * cos + b) per label for a sigmoid-loss run (independent:
they need not sum to 1, as in SigLIP's own demo), softmax over the labels of t * cos for a softmax-loss run.
"""
import json
import sys

from absl import flags

from vlmjax import image_input
from vlmjax.cli import app

PROG = "vlmjax-zeroshot"
FLAGS = app.new_flags()
flags.DEFINE_string("workdir", None, "A trained contrastive run's workdir.", flag_values=FLAGS)
flags.DEFINE_multi_string("image", None, "Image file (PNG/JPEG, any size); may be repeated.", flag_values=FLAGS)
flags.DEFINE_string("labels", None, 'Comma-separated labels, e.g. "red circle,blue square".', flag_values=FLAGS)
flags.DEFINE_bool("json", False, "Print one JSON object per image instead of a table.", flag_values=FLAGS)
flags.DEFINE_string("eval", "", "Name of the run's zero-shot evaluator whose prompts and aggregation to use "
                    "(default: the first one).", flag_values=FLAGS)


def run_cli(workdir: str, image_paths, labels, eval_name: str = "") -> list:
    """[(image path, {label: probability})] for each image."""
    from vlmjax.api import TwoTowerModel, load_run

    images = [image_input.read_image_file(p, "--image") for p in image_paths]  # before the model loads
    model = TwoTowerModel(*load_run(workdir, ("contrastive",), keys=("params",)), workdir=workdir)
    model.prompts(labels, eval_name)  # a wrong --eval fails before anything compiles
    probs = model.zeroshot(images, labels, eval_name)
    return [(p, dict(zip(labels, map(float, row)))) for p, row in zip(image_paths, probs)]


def zeroshot_main(_) -> int:
    F = FLAGS
    labels = [s.strip() for s in (F.labels or "").split(",") if s.strip()]
    if not labels:
        raise ValueError('--labels needs at least one label, e.g. --labels "red circle,blue square"')
    for path, probs in run_cli(F.workdir, F.image, labels, F.eval):
        if F.json:
            print(json.dumps({"image": path, "probabilities": probs}))
            continue
        print(path)
        for label, p in sorted(probs.items(), key=lambda kv: -kv[1]):
            print(f"  {p:7.4f}  {label}")
    return 0


def main(argv=None) -> int:
    # orbax logs every restore step, some at WARNING
    return app.run(PROG, __doc__, FLAGS, zeroshot_main, argv, required=("workdir", "image", "labels"),
                   log_level="error")


def run():
    sys.exit(main())


if __name__ == "__main__":
    run()
