"""Why a contrastive run's zero-shot accuracy on `scenes` is what it is: per object count, whether the predicted class
has the right colour and the right shape, for several prompt-template sets; and how close the text tower puts
captions that differ only in one word (colour, shape, size).

    .venv/bin/python benchmarks/zeroshot_diagnosis.py --workdir workdirs/siglip_scenes [--data_dir data/tfds]

Writes benchmarks/results/zeroshot_diagnosis.json (the run's workdir is recorded in it).
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_result  # noqa: E402

TEMPLATE_SETS = {
    "config": None,  # the run's own zero-shot templates
    "photo": ["a {}", "a photo of a {}"],
    "single_object": ["one shape: a large {}", "one shape: a small {}", "a single large {} on a plain background",
                      "a single small {} on a plain background"],
}
# Pairs of captions differing in one word: a text tower that tells them apart gives a cosine well below 1.
WORD_PAIRS = {
    "colour": ("one shape: a large red circle", "one shape: a large blue circle"),
    "shape": ("one shape: a large red circle", "one shape: a large red square"),
    "shape_2": ("one shape: a large red triangle", "one shape: a large red cross"),
    "size": ("one shape: a large red circle", "one shape: a small red circle"),
    "swapped_shapes": ("two shapes: a large red circle left of a small blue square",
                       "two shapes: a large red square left of a small blue circle"),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--data_dir", default="data/tfds")
    p.add_argument("--examples", type=int, default=600)
    args = p.parse_args(argv)
    import jax
    import jax.numpy as jnp
    import tensorflow_datasets as tfds

    from vlmjax.data import scenes
    from vlmjax.tasks.contrastive import tokenize_texts
    from vlmjax.tasks.retrieval_metrics import zeroshot_classifier
    from vlmjax.zeroshot_cli import load_run, templates_of

    task, params = load_run(args.workdir)
    size = task.config.image_size
    src = tfds.data_source("scenes/default", split="test", data_dir=args.data_dir)
    exs = [src[i] for i in range(args.examples)]
    images = np.stack([e["image"] for e in exs]).astype(np.float32)
    if images.shape[1] != size:
        images = np.asarray(jax.image.resize(images, (len(images), size, size, 3), "linear"))
    images = images / 127.5 - 1
    labels = np.array([e["label"] for e in exs])
    n_obj = np.array([e["num_objects"] for e in exs])
    apply = jax.jit(lambda x, i, m: task.model.apply({"params": params}, x, i, m))
    tok = task._tokenize_fn()

    def embed(texts, imgs):
        ids, mask = tokenize_texts(tok, texts)
        zi, zt, _ = apply(jnp.asarray(imgs), jnp.asarray(ids), jnp.asarray(mask))
        return np.asarray(zi), np.asarray(zt)

    chunk = 100
    zimg = np.concatenate([embed(["x"] * len(images[i:i + chunk]), images[i:i + chunk])[0]
                           for i in range(0, len(images), chunk)])
    result = {"workdir": os.path.abspath(args.workdir), "examples": args.examples, "template_sets": {}}
    n_shapes = len(scenes.SHAPES)
    for name, templates in TEMPLATE_SETS.items():
        templates = templates or templates_of(task.config)
        texts = [t.format(c) for c in scenes.CLASS_NAMES for t in templates]
        ztxt = np.concatenate([embed(texts[i:i + chunk], images[:len(texts[i:i + chunk])])[1]
                               for i in range(0, len(texts), chunk)])
        classes = zeroshot_classifier(ztxt.reshape(len(scenes.CLASS_NAMES), len(templates), -1))
        pred = np.argmax(zimg @ classes.T, axis=1)
        row = {"templates": list(templates), "accuracy": float(np.mean(pred == labels))}
        for k in (1, 2, 3):
            m = n_obj == k
            row[f"{k}_objects"] = {"n": int(m.sum()), "accuracy": float(np.mean(pred[m] == labels[m])),
                                   "colour_right": float(np.mean(pred[m] // n_shapes == labels[m] // n_shapes)),
                                   "shape_right": float(np.mean(pred[m] % n_shapes == labels[m] % n_shapes))}
        result["template_sets"][name] = row
    pairs = [t for pair in WORD_PAIRS.values() for t in pair]
    ztxt = embed(pairs, images[:len(pairs)])[1]
    result["text_cosine"] = {k: float(ztxt[2 * i] @ ztxt[2 * i + 1]) for i, k in enumerate(WORD_PAIRS)}
    write_result("zeroshot_diagnosis", result)


if __name__ == "__main__":
    main()
