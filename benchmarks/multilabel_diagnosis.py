"""Where a contrastive run's zero-shot multi-label mAP on `scenes` is lost: in the image embedding, or in how the
class-name prompts rank it.

On the run's own `scenes` dataset (`--data` for another), for its final checkpoint, on `--split` (validation unless
told); `--classes` also reports the mean AP over those classes and over the rest (e.g. the compositions a
`:heldout` run never saw, each scored on the multi-object validation scenes that hold it).

Reported:
- `zeroshot`: mAP with the run's `multilabel` prompts (as `eval/multilabel/mAP`), per-class AP, and for each
  (image, object present) pair the fraction of the images WITHOUT that object that score above it, split by
  whether the object is the main one, by its size and by the scene's object count (0 = perfectly ranked);
- `probe`: linear multi-label probes (sigmoid cross-entropy, Adam) fitted on `--probe_examples` train images and
  scored by mAP on `--split`: on the 64-d contrastive embedding and on the image tower's pre-projection features. A
  probe reads object labels, so it is not zero-shot: it bounds what a linear read-out of those features can reach,
  which tells whether the text side or the image side holds zero-shot mAP back.

    .venv/bin/python benchmarks/multilabel_diagnosis.py --workdir workdirs/seeds/siglip_presence/seed0 \
        --name siglip_presence

Writes benchmarks/results/multilabel_diagnosis_<name>.json (command, commit, workdir, split).
"""
import argparse
import collections
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import scenes_images, write_result  # noqa: E402
from seeds import provenance  # noqa: E402


def load_split(data_dir: str, split: str, n: int, size: int, name: str = "scenes/default") -> tuple:
    """(records, images float32[n, size, size, 3] in [-1, 1], multi-hot int[n, C]) of the first n records of the
    `scenes` dataset `name`."""
    exs, images = scenes_images(data_dir, split, n, size, name)
    return exs, images, np.stack([e["multi_labels"] for e in exs])


def negatives_above(scores, labels, exs, n_shapes: int) -> dict:
    """Mean over (image, object present) pairs of the fraction of images without that object scoring above it,
    keyed 'all', 'main'/'minor', 'size_<word>', 'objects_<n>'."""
    from vlmjax.data.scenes import SIZES

    out = collections.defaultdict(list)
    for i, e in enumerate(exs):
        o = e["objects"]
        for j in range(len(o["color"])):
            c = int(o["color"][j]) * n_shapes + int(o["shape"][j])
            f = float(np.mean(scores[labels[:, c] == 0, c] > scores[i, c]))
            for key in ("all", "main" if c == int(e["label"]) else "minor", f"size_{SIZES[int(o['size'][j])]}",
                        f"objects_{int(e['num_objects'])}"):
                out[key].append(f)
    return {k: {"mean": float(np.mean(v)), "n": len(v)} for k, v in sorted(out.items())}


def probe_map(train_x, train_y, eval_x, eval_y, steps: int = 3000) -> float:
    """mAP on (eval_x, eval_y) of a linear sigmoid classifier per class fitted on standardised train_x."""
    import jax
    import jax.numpy as jnp
    import optax

    from vlmjax.evaluators.multilabel import average_precision

    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    xt = jnp.asarray(np.concatenate([(train_x - mu) / sd, np.ones((len(train_x), 1))], 1), jnp.float32)
    xe = np.concatenate([(eval_x - mu) / sd, np.ones((len(eval_x), 1))], 1)
    yt = jnp.asarray(train_y, jnp.float32)
    opt = optax.adam(1e-2)
    loss = lambda w: optax.sigmoid_binary_cross_entropy(xt @ w, yt).mean() + 1e-4 * jnp.sum(w ** 2)

    @jax.jit
    def fit(w):
        def step(carry, _):
            w, st = carry
            g = jax.grad(loss)(w)
            u, st = opt.update(g, st)
            return (optax.apply_updates(w, u), st), None
        (w, _), _ = jax.lax.scan(step, (w, opt.init(w)), None, length=steps)
        return w

    w = fit(jnp.zeros((xt.shape[1], yt.shape[1]), jnp.float32))
    return float(np.nanmean(average_precision(xe @ np.asarray(w), eval_y)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--name", required=True, help="results file: multilabel_diagnosis_<name>.json")
    p.add_argument("--data_dir", default="data/tfds")
    p.add_argument("--split", default="validation")
    p.add_argument("--examples", type=int, default=2000)
    p.add_argument("--probe_examples", type=int, default=8000)
    p.add_argument("--data", default="", help="scenes dataset (default: the run's own config.data.name)")
    p.add_argument("--classes", default="", help="comma-separated class names whose mean AP is also reported, "
                                                 "('heldout': the compositions siglip_scenes:heldout never shows)")
    args = p.parse_args(argv)
    if args.split == "test":
        p.error("--split test: the diagnosis informs choices, so it reads validation (or train), never test")
    import jax

    from vlmjax.api import load_run
    from vlmjax.core.mesh import make_mesh
    from vlmjax.core.runtime import Runtime
    from vlmjax.data import scenes
    from vlmjax.evaluators.multilabel import average_precision
    from vlmjax.evaluators.retrieval_metrics import class_scores, l2_normalize
    from vlmjax.evaluators.zeroshot import class_embeddings, zeroshot_prompts

    task, variables, _ = load_run(args.workdir, ("contrastive",), keys=("params",))
    size = int(task.config.image_size)
    runtime = Runtime(make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1]))
    apply = jax.jit(lambda x: task.model.apply(variables, images=x))

    def features(images):
        """(L2-normalised embedding float[N, D], pre-projection features float[N, W])."""
        outs = [apply(images[i:i + 250]) for i in range(0, len(images), 250)]
        return (l2_normalize(np.concatenate([np.asarray(o[0]) for o in outs])),
                np.concatenate([np.asarray(o[2]["img/pre_logits"]) for o in outs]))

    names = list(scenes.CLASS_NAMES)
    subset = (list(scenes.HELDOUT_CLASSES) if args.classes == "heldout"
              else [c.strip() for c in args.classes.split(",") if c.strip()])
    if set(subset) - set(names):
        p.error(f"--classes: {sorted(set(subset) - set(names))} are not scenes classes ({', '.join(names)})")
    data = args.data or task.config.data.name
    exs, images, labels = load_split(args.data_dir, args.split, args.examples, size, data)
    z, pre = features(images)
    prompts, aggregate = zeroshot_prompts(task.config.evals.multilabel, names, "multilabel")
    scores = class_scores(z, class_embeddings(task, variables, prompts, runtime, aggregate))
    ap = average_precision(scores, labels)
    _, train_images, train_labels = load_split(args.data_dir, "train", args.probe_examples, size, data)
    train_z, train_pre = features(train_images)
    write_result(f"multilabel_diagnosis_{args.name}", {
        **provenance(__file__, argv), "workdir": os.path.abspath(args.workdir), "split": args.split,
        "data": data, "examples": len(exs), "probe_train_examples": len(train_images),
        "zeroshot": {"mAP": float(np.nanmean(ap)), "per_class_ap": dict(zip(names, map(float, ap))),
                     "classes": subset, "classes_mAP": float(np.nanmean([ap[names.index(c)] for c in subset]))
                     if subset else None,
                     "other_classes_mAP": float(np.nanmean([a for n, a in zip(names, ap) if n not in subset]))
                     if subset else None,
                     "negatives_above": negatives_above(scores, labels, exs, len(scenes.SHAPES))},
        "probe": {"embedding_mAP": probe_map(train_z, train_labels, z, labels), "embedding_dim": int(z.shape[1]),
                  "pre_logits_mAP": probe_map(train_pre, train_labels, pre, labels),
                  "pre_logits_dim": int(pre.shape[1])}})


if __name__ == "__main__":
    main()
