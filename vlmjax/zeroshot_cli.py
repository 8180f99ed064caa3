"""`vlmjax-zeroshot`: label probabilities of an image under a trained contrastive run (SigLIP / CLIP / LiT).

    vlmjax-zeroshot --workdir workdirs/siglip_scenes --image a.png --labels "red circle,blue square"
    vlmjax-zeroshot ... --eval zeroshot_grammar   # that evaluator's prompts and aggregation

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

IMAGE_OPS = ("decode", "resize", "center_crop", "value_range")


def _define_flags():
    """Defined when the CLI runs, not on import: tests and other CLIs import this module's functions, and absl
    refuses a flag name (`workdir`, `json`) defined twice in one process."""
    flags.DEFINE_string("workdir", None, "A trained contrastive run's workdir.")
    flags.DEFINE_multi_string("image", None, "Image file (PNG/JPEG); may be repeated.")
    flags.DEFINE_string("labels", None, 'Comma-separated labels, e.g. "red circle,blue square".')
    flags.DEFINE_bool("json", False, "Print one JSON object per image instead of a table.")
    flags.DEFINE_string("eval", "", "Name of the run's zero-shot evaluator whose prompts and aggregation to use "
                        "(default: the first one).")


def zeroshot_eval(config, name: str = ""):
    """The run's zero-shot evaluator config called `name` (default: the first one; None if the run has none)."""
    evals = {k: ev for k, ev in config.evals.items() if ev.type == "zeroshot"}
    if name and name not in evals:
        raise ValueError(f"--eval {name!r}: the run's zero-shot evaluators are {sorted(evals) or 'none'}")
    return evals[name] if name else next(iter(evals.values()), None)


def image_preprocess(config, name: str = "") -> list:
    """Deterministic image ops (key 'image') of the zero-shot evaluator `name`, else of the training data."""
    ev = zeroshot_eval(config, name)
    specs = [s.to_dict() if hasattr(s, "to_dict") else dict(s)
             for s in (ev.data.preprocess if ev is not None else config.data.preprocess)]
    return [s for s in specs if s["op"] in IMAGE_OPS and s.get("key", "image") == "image"]


def prompts_of(config, labels, name: str = "") -> tuple:
    """([C] prompt lists, aggregation 'mean' | 'max') for `labels` under the zero-shot evaluator `name` (its
    templates, or its `class_prompts` table, which must hold every label)."""
    import ml_collections

    from vlmjax.tasks.contrastive import zeroshot_prompts

    ev = zeroshot_eval(config, name)
    return zeroshot_prompts(ev if ev is not None else ml_collections.ConfigDict(), labels,
                            f"--eval {name or 'default'}")


def label_probabilities(task, params, images, prompts, aggregate: str = "mean") -> np.ndarray:
    """images float[N, H, W, 3], prompts: C lists of prompts (one per label) -> float[N, C] probabilities (see the
    module docstring)."""
    import jax

    from vlmjax.tasks.retrieval_metrics import class_scores
    from vlmjax.train.mesh import make_mesh

    variables = {"params": params}
    zimg, _, out = jax.jit(lambda v, x: task.model.apply(v, images=x))(variables, images)
    mesh = make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    classes = task.class_embeddings(variables, prompts, mesh, aggregate)
    logits = float(out["temperature"]) * class_scores(np.asarray(zimg), classes)
    if task.config.loss == "sigmoid":
        return 1 / (1 + np.exp(-(logits + float(out.get("bias", 0.0)))))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def load_run(workdir: str):
    """(task, host params) of a contrastive run's latest checkpoint."""
    from vlmjax.tasks import get_task_class
    from vlmjax.train import config as config_lib
    from vlmjax.train.checkpoint import load_params_numpy
    from vlmjax.train.evaluate import load_run_config

    config = load_run_config(workdir)
    task_cls = get_task_class(config.get("task", ""))
    if config.get("task") != "contrastive":
        raise ValueError(f"--workdir {workdir!r}: config.task={config.get('task')!r}, not a contrastive run")
    config = config_lib.resolve(config, task_cls.config_defaults())
    return task_cls(config), load_params_numpy(workdir)


def run_cli(workdir: str, image_paths, labels, eval_name: str = "") -> list:
    """[(image path, {label: probability})] for each image."""
    from vlmjax.data.ops import get_preprocess_fn

    task, params = load_run(workdir)
    prompts, aggregate = prompts_of(task.config, labels, eval_name)  # a wrong --eval fails before an image is read
    pre = get_preprocess_fn(image_preprocess(task.config, eval_name))
    images = []
    for path in image_paths:
        with open(path, "rb") as f:
            images.append(np.asarray(pre({"image": f.read()}, np.random.default_rng(0))["image"], np.float32))
    probs = label_probabilities(task, params, np.stack(images), prompts, aggregate)
    return [(p, dict(zip(labels, map(float, row)))) for p, row in zip(image_paths, probs)]


def _main(argv):
    del argv
    from vlmjax.data.ops import DropExample

    F = flags.FLAGS
    labels = [s.strip() for s in (F.labels or "").split(",") if s.strip()]
    if not labels:
        print('error: --labels needs at least one label, e.g. --labels "red circle,blue square"', file=sys.stderr)
        sys.exit(2)
    try:
        results = run_cli(F.workdir, F.image, labels, F.eval)
    except DropExample as e:
        print(f"error: --image: cannot decode ({e.reason})", file=sys.stderr)
        sys.exit(2)
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
    flags.mark_flags_as_required(["workdir", "image", "labels"])
    app.run(_main)


if __name__ == "__main__":
    run()
