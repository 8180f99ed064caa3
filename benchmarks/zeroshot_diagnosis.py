"""Why a contrastive run's zero-shot accuracy on `scenes` is what it is: per object count, whether the predicted class
has the right colour and the right shape, for several prompt-template sets; how close the text tower puts
captions that differ only in one word (colour, shape, size); and `binding`: for each kind of hard-negative edit
(a colour / shape / size / side word replaced or swapped between two objects, or two "colour shape" names swapped, which
keeps the sizes and moves the objects), the fraction of captions the image scores above their edited copy
(0.5 = chance), per object count, name swaps split by whether the two objects have one size (then only their
places tell the captions apart; the main-object label needs this once two objects tie in size); `side` edits
flip a left/right word ("on the left" -> "on the right", "A to the left of B" -> "A to the right of B").

    .venv/bin/python benchmarks/zeroshot_diagnosis.py --workdir workdirs/siglip_scenes [--data_dir data/tfds]
        [--examples 1000] [--split validation] [--evals_from experiments/siglip_scenes.py]   # another file's prompts
        [--dataset scenes/default] [--out_dir benchmarks/results]

Writes benchmarks/results/zeroshot_diagnosis.json: the command, commit, split, the run's workdir and its seed.
A diagnosis reads `validation` (the default): it is not a final recipe's one test read.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import scenes_images, write_result  # noqa: E402
from seeds import provenance  # noqa: E402

TEMPLATE_SETS = {
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
    p.add_argument("--split", default="validation", choices=("validation", "test"))
    p.add_argument("--dataset", default="scenes/default", help="a `scenes` config")
    p.add_argument("--out_dir", default=common.RESULTS)
    p.add_argument("--evals_from", default=None,
                   help="experiment file[:arg] whose zero-shot evals to use instead of the run's own")
    args = p.parse_args(argv)
    import jax

    from vlmjax.data import scenes
    from vlmjax.evaluators.zeroshot import class_embeddings, embed_texts, zeroshot_prompts
    from vlmjax.evaluators.retrieval_metrics import class_scores, l2_normalize
    from vlmjax.core.config import load_experiment
    from vlmjax.core.mesh import make_mesh
    from vlmjax.core.runtime import Runtime
    from vlmjax.api import load_run

    task, variables, _ = load_run(args.workdir, ("contrastive",), keys=("params",))
    size = task.config.image_size
    runtime = Runtime(make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1]))
    exs, images = scenes_images(args.data_dir, args.split, args.examples, size, args.dataset)
    labels = np.array([e["label"] for e in exs])
    n_obj = np.array([e["num_objects"] for e in exs])
    embed_images = jax.jit(lambda x: task.model.apply(variables, images=x)[0])
    zimg = l2_normalize(np.concatenate([np.asarray(embed_images(images[i:i + 250]))
                                        for i in range(0, len(images), 250)]))

    # The run's own zero-shot evals (their prompts and aggregation), then the fixed sets (CLIP's mean ensemble).
    evals = load_experiment(args.evals_from).evals if args.evals_from else task.config.evals
    names = list(scenes.CLASS_NAMES)
    sets = {name: zeroshot_prompts(ev, names, name) for name, ev in evals.items() if ev.type == "zeroshot"}
    sets.update({name: ([[t.format(c) for t in ts] for c in names], "mean") for name, ts in TEMPLATE_SETS.items()})
    result = {**provenance(__file__, argv), "workdir": os.path.abspath(args.workdir), "seed": int(task.config.seed),
              "dataset": args.dataset, "split": args.split, "examples": args.examples, "template_sets": {}}
    n_shapes = len(scenes.SHAPES)
    for name, (prompts, aggregate) in sets.items():
        scores = class_scores(zimg, class_embeddings(task, variables, prompts, runtime, aggregate))
        pred = np.argmax(scores, axis=1)
        row = {"prompts_per_class": sum(map(len, prompts)) / len(prompts), "aggregate": aggregate,
               "accuracy": float(np.mean(pred == labels))}
        if len(prompts[0]) <= 8:
            row["prompts_of_first_class"] = prompts[0]
        for k in (1, 2, 3):
            m = n_obj == k
            row[f"{k}_objects"] = {"n": int(m.sum()), "accuracy": float(np.mean(pred[m] == labels[m])),
                                   "colour_right": float(np.mean(pred[m] // n_shapes == labels[m] // n_shapes)),
                                   "shape_right": float(np.mean(pred[m] % n_shapes == labels[m] % n_shapes))}
        result["template_sets"][name] = row
    ztxt = l2_normalize(embed_texts(task, variables, [t for pair in WORD_PAIRS.values() for t in pair], runtime))
    result["text_cosine"] = {k: float(ztxt[2 * i] @ ztxt[2 * i + 1]) for i, k in enumerate(WORD_PAIRS)}
    result["binding"] = binding(task, variables, exs, zimg, runtime)
    common.RESULTS = args.out_dir
    write_result("zeroshot_diagnosis", result)


def _swap_kind(caption, edit, kind_of) -> str:
    """'<group>_swap', or for two swapped names 'name_swap_same_size' / 'name_swap_other_size' (the size word
    before each name): with one size the swap only moves the objects, with two it also breaks size binding."""
    if " " not in edit[0][2]:
        return kind_of[edit[0][2]] + "_swap"
    sizes = {caption[:start].split()[-1] for start, _, _ in edit}
    return "name_swap_same_size" if len(sizes) == 1 else "name_swap_other_size"


def binding(task, variables, examples, zimg, runtime) -> dict:
    """{edit kind: {'<k>_objects': fraction of (image, caption, edit) with sim(true) > sim(edited)}}."""
    from vlmjax.data.negatives import apply_edit, caption_edits
    from vlmjax.data.scenes import COLORS, OBJECT_NAME, SHAPES, SIZES
    from vlmjax.data.op_registry import as_text
    from vlmjax.evaluators.zeroshot import embed_texts

    groups = {"colour": COLORS, "shape": SHAPES, "size": SIZES, "side": ("left", "right")}
    kind_of = {w: k for k, g in groups.items() for w in g}
    texts, rows = [], []  # rows: (example, index in texts of its true caption, of the edited one, edit kind)
    for i, ex in enumerate(examples):
        for cap in ex["captions"]:
            cap = as_text(cap)
            true = len(texts)
            texts.append(cap)
            swaps, replaces = caption_edits(cap, list(groups.values()), OBJECT_NAME)
            edits = [(e, _swap_kind(cap, e, kind_of)) for e in swaps]
            edits += [(e, kind_of[e[0][2]] + "_replace") for es in replaces.values() for e in es]
            for edit, kind in edits:
                rows.append((i, true, len(texts), kind))
                texts.append(apply_edit(cap, edit))
    ztxt = embed_texts(task, variables, texts, runtime)
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
