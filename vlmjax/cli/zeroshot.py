"""`vlmjax-zeroshot`: label probabilities of an image under a trained contrastive run (SigLIP / CLIP / LiT).

    vlmjax-zeroshot --workdir workdirs/siglip_scenes --image a.png --labels "red circle,blue square"
    vlmjax-zeroshot ... --eval caption_retrieval   # that evaluator's prompts and aggregation

Loads `<workdir>/config.json` and the latest checkpoint's params. Each label is embedded through the prompts of one
of the run's zero-shot evaluators (`--eval NAME`; default: the first one; the CLIP-style ensemble if there is
none): its templates filled with the label, or the label's list in its `class_prompts` table. A label scores the
way that evaluator aggregates: `mean` (CLIP's ensemble: cos with the mean prompt embedding) or `max` (cos with
the best-matching prompt). The image goes through that evaluator's image preprocessing (decode /
resize / crop / value_range). Probabilities: sigmoid(t * cos + b) per label for a sigmoid-loss run (independent:
they need not sum to 1, as in SigLIP's own demo), softmax over the labels of t * cos for a softmax-loss run.
"""
import json
import sys

import numpy as np
from absl import app, flags

from vlmjax import image_input
from vlmjax.cli import app as cli_setup


def _define_flags():
    """Defined when the CLI runs, not on import: tests and other CLIs import this module's functions, and absl
    refuses a flag name (`workdir`, `json`) defined twice in one process."""
    flags.DEFINE_string("workdir", None, "A trained contrastive run's workdir.")
    flags.DEFINE_multi_string("image", None, "Image file (PNG/JPEG, any size); may be repeated.")
    flags.DEFINE_string("labels", None, 'Comma-separated labels, e.g. "red circle,blue square".')
    flags.DEFINE_bool("json", False, "Print one JSON object per image instead of a table.")
    flags.DEFINE_string("eval", "", "Name of the run's zero-shot evaluator whose prompts and aggregation to use "
                        "(default: the first one).")


def load_run(workdir: str):
    """(task, host params) of a contrastive run's latest checkpoint."""
    from vlmjax.api import load_task

    task, variables, _ = load_task(workdir, ("contrastive",), keys=("params",))
    return task, variables["params"]


def prompts_of(config, labels, name: str = "") -> tuple:
    """([C] prompt lists, aggregation 'mean' | 'max') for `labels` under the run's zero-shot evaluator `name`."""
    from vlmjax.api import label_prompts

    return label_prompts(config, labels, name)


def label_probabilities(task, params, images, prompts, aggregate: str = "mean") -> np.ndarray:
    """Preprocessed images float[N, H, W, 3], prompts: C lists of prompts (one per label) -> float[N, C]
    probabilities (see the module docstring)."""
    from vlmjax.api import zeroshot_probabilities

    return zeroshot_probabilities(task, {"params": params}, images, prompts, aggregate)


def run_cli(workdir: str, image_paths, labels, eval_name: str = "") -> list:
    """[(image path, {label: probability})] for each image."""
    from vlmjax.api import TwoTowerModel, load_task

    images = [image_input.read_image_file(p, "--image") for p in image_paths]  # before the model loads
    model = TwoTowerModel(*load_task(workdir, ("contrastive",), keys=("params",)), workdir=workdir)
    model.prompts(labels, eval_name)  # a wrong --eval fails before anything compiles
    probs = model.zeroshot(images, labels, eval_name)
    return [(p, dict(zip(labels, map(float, row)))) for p, row in zip(image_paths, probs)]


def _main(argv):
    del argv
    cli_setup.quiet_logging("error")  # orbax logs every restore step, some at WARNING
    F = flags.FLAGS
    labels = [s.strip() for s in (F.labels or "").split(",") if s.strip()]
    if not labels:
        print('error: --labels needs at least one label, e.g. --labels "red circle,blue square"', file=sys.stderr)
        sys.exit(2)
    try:
        results = run_cli(F.workdir, F.image, labels, F.eval)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for path, probs in results:
        if F.json:
            print(json.dumps({"image": path, "probabilities": probs}))
            continue
        print(path)
        for label, p in sorted(probs.items(), key=lambda kv: -kv[1]):
            print(f"  {p:7.4f}  {label}")


def run():
    _define_flags()
    argv = cli_setup.prepare(sys.argv, __name__, __doc__)
    flags.mark_flags_as_required(["workdir", "image", "labels"])
    app.run(_main, argv=argv)


if __name__ == "__main__":
    run()
