"""`vlmjax-zeroshot`: label probabilities of an image under a trained contrastive run (SigLIP / CLIP / LiT).

    vlmjax-zeroshot --workdir workdirs/siglip_scenes --image a.png --labels "red circle,blue square"

Loads `<workdir>/config.json` and the latest checkpoint's params. Each label is embedded through the prompt templates
of the run's first zero-shot evaluator (default: the CLIP-style ensemble), and the image through the image
preprocessing of that evaluator (decode / resize / crop / value_range). Probabilities: sigmoid(t * cos + b) per
label for a sigmoid-loss run (independent: they need not sum to 1, as in SigLIP's own demo), softmax over the
labels of t * cos for a softmax-loss run.
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


def image_preprocess(config) -> list:
    """Deterministic image ops (key 'image') of the first zero-shot evaluator, else of the training data."""
    specs = next((ev.data.preprocess for ev in config.evals.values() if ev.type == "zeroshot"),
                 config.data.preprocess)
    specs = [s.to_dict() if hasattr(s, "to_dict") else dict(s) for s in specs]
    return [s for s in specs if s["op"] in IMAGE_OPS and s.get("key", "image") == "image"]


def templates_of(config) -> list:
    from vlmjax.tasks.retrieval_metrics import PROMPT_TEMPLATES

    ev = next((ev for ev in config.evals.values() if ev.type == "zeroshot"), None)
    return list((ev.get("templates", None) if ev is not None else None) or PROMPT_TEMPLATES)


def label_probabilities(task, params, images, labels, templates) -> np.ndarray:
    """images float[N, H, W, 3], labels list of C str -> float[N, C] probabilities (see the module docstring)."""
    import jax
    import jax.numpy as jnp

    from vlmjax.tasks.contrastive import tokenize_texts
    from vlmjax.tasks.retrieval_metrics import zeroshot_classifier

    ids, mask = tokenize_texts(task._tokenize_fn(), [t.format(c) for c in labels for t in templates])
    variables = {"params": params}
    zimg, ztxt, out = jax.jit(lambda v, x, i, m: task.model.apply(v, x, i, m))(
        variables, jnp.asarray(images), jnp.asarray(ids), jnp.asarray(mask))
    classes = zeroshot_classifier(np.asarray(ztxt).reshape(len(labels), len(templates), -1))
    logits = float(out["temperature"]) * np.asarray(zimg) @ classes.T
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


def run_cli(workdir: str, image_paths, labels) -> list:
    """[(image path, {label: probability})] for each image."""
    from vlmjax.data.ops import get_preprocess_fn

    task, params = load_run(workdir)
    pre = get_preprocess_fn(image_preprocess(task.config))
    images = []
    for path in image_paths:
        with open(path, "rb") as f:
            images.append(np.asarray(pre({"image": f.read()}, np.random.default_rng(0))["image"], np.float32))
    probs = label_probabilities(task, params, np.stack(images), labels, templates_of(task.config))
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
        results = run_cli(F.workdir, F.image, labels)
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
