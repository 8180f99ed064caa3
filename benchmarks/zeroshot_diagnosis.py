"""Why a contrastive run's zero-shot accuracy on `scenes` is what it is: per object count, whether the predicted class
has the right colour and the right shape, for several prompt-template sets; how close the text tower puts
captions that differ only in one word (colour, shape, size); and `binding`: for each kind of hard-negative edit
(a colour / shape / size word replaced or swapped between two objects, or two "colour shape" names swapped, which
keeps the sizes and moves the objects), the fraction of test captions the image scores above their edited copy
(0.5 = chance), per object count, name swaps split by whether the two objects have one size (then only their
places tell the captions apart; the main-object label needs this once two objects tie in size); and
`position_probe_r2`, how much of a lone object's horizontal position a linear fit reads off the image embedding.

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
    p.add_argument("--examples", type=int, default=1000)
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
    result["binding"] = binding(task, {"params": params}, exs, zimg)
    result["position_probe_r2"] = position_probe(zimg, exs)
    write_result("zeroshot_diagnosis", result)


def _swap_kind(caption, edit, kind_of) -> str:
    """'<group>_swap', or for two swapped names 'name_swap_same_size' / 'name_swap_other_size' (the size word
    before each name): with one size the swap only moves the objects, with two it also breaks size binding."""
    if " " not in edit[0][2]:
        return kind_of[edit[0][2]] + "_swap"
    sizes = {caption[:start].split()[-1] for start, _, _ in edit}
    return "name_swap_same_size" if len(sizes) == 1 else "name_swap_other_size"


def position_probe(zimg, examples) -> float:
    """Held-out R^2 of a ridge fit of the lone object's x from the image embedding (one-object images, first half
    fits, second half scores): <= 0 = the embedding holds no horizontal position a linear map can read."""
    sel = [i for i, ex in enumerate(examples) if int(ex["num_objects"]) == 1]
    x = np.c_[zimg[sel], np.ones(len(sel))]
    y = np.array([float(examples[i]["objects"]["x"][0]) for i in sel])
    h = len(y) // 2
    w = np.linalg.solve(x[:h].T @ x[:h] + 1e-2 * h * np.eye(x.shape[1]), x[:h].T @ y[:h])
    return float(1 - np.mean((x[h:] @ w - y[h:]) ** 2) / np.var(y[h:]))


def binding(task, variables, examples, zimg) -> dict:
    """{edit kind: {'<k>_objects': fraction of (image, caption, edit) with sim(true) > sim(edited)}}."""
    import jax

    from vlmjax.data.negatives import apply_edit, caption_edits
    from vlmjax.data.scenes import COLORS, SHAPES, SIZES
    from vlmjax.train.mesh import make_mesh

    groups = {"colour": COLORS, "shape": SHAPES, "size": SIZES}
    kind_of = {w: k for k, g in groups.items() for w in g}
    name = rf"(?:{'|'.join(COLORS)}) (?:{'|'.join(SHAPES)})"
    texts, rows = [], []  # rows: (example, index of its true caption in texts, kind or None)
    for i, ex in enumerate(examples):
        for cap in ex["captions"]:
            cap = cap.decode() if isinstance(cap, bytes) else str(cap)
            true = len(texts)
            texts.append(cap)
            swaps, replaces = caption_edits(cap, list(groups.values()), name)
            edits = [(e, _swap_kind(cap, e, kind_of)) for e in swaps]
            edits += [(e, kind_of[e[0][2]] + "_replace") for es in replaces.values() for e in es]
            for edit, kind in edits:
                rows.append((i, true, len(texts), kind))
                texts.append(apply_edit(cap, edit))
    ztxt = task.embed_texts(variables, texts, make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1]))
    n_obj = np.array([int(ex["num_objects"]) for ex in examples])
    out = {}
    for kind in sorted({r[3] for r in rows}):
        sel = np.array([r[:3] for r in rows if r[3] == kind])
        wins = np.einsum("nd,nd->n", zimg[sel[:, 0]], ztxt[sel[:, 1]] - ztxt[sel[:, 2]]) > 0
        out[kind] = {f"{k}_objects": float(np.mean(wins[n_obj[sel[:, 0]] == k]))
                     for k in (1, 2, 3) if np.any(n_obj[sel[:, 0]] == k)}
    return out


if __name__ == "__main__":
    main()
