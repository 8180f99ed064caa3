"""Chooses the prompt templates of a run's zero-shot evaluator on the validation split: the evaluator is built once
per candidate template set (and aggregation), all evaluated on the same checkpoint; the JSON records every
candidate's metrics so the choice (the best by `--metric`) can be checked. Test is not read.

    python benchmarks/prompt_sweep.py --workdir workdirs/seeds/siglip_heldout/seed0 --config siglip_scenes:heldout \
        --eval multilabel --metric mAP --name multilabel_prompts

`--config` defaults to the run's own (its workdir's config.json). Writes
benchmarks/results/prompt_sweep_<name>.json (command, commit, workdir, split, candidates, best; `--out_dir`).
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
from seeds import provenance  # noqa: E402

SIZES = ("large", "small")
# Candidate template sets for the `scenes` caption grammar (vlmjax/data/scenes.py: captions name each object as
# "a <size> <colour> <shape>", the main one first, the others after "with", "and", "left of", "to its left/right").
CANDIDATES = {
    "main_object": (["a large {} with", "a small {} with", "one large {}", "one small {}"], "mean"),
    "name_only": (["{}"], "mean"),
    "object_phrase_mean": ([f"a {s} {{}}" for s in SIZES], "mean"),
    "object_phrase_max": ([f"a {s} {{}}" for s in SIZES], "max"),
    "any_position_max": ([f"a {s} {{}}" for s in SIZES] + [f"with a {s} {{}} to its {side}" for s in SIZES
                                                          for side in ("left", "right")]
                         + [f"and a {s} {{}}" for s in SIZES], "max"),
    "photo": (["a photo of a {}", "a {}"], "mean"),
    "unsized": (["a {}"], "mean"),  # the class name as siglip_scenes:unsized's size-free mentions say it
    "unsized_and_sized_mean": (["a {}"] + [f"a {s} {{}}" for s in SIZES], "mean"),
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--config", default=None, help="experiment NAME[:variant] whose evaluator is swept "
                                                   "(default: the config the run was trained with)")
    ap.add_argument("--eval", required=True, help="the evaluator (config.evals.<name>) whose templates are swept")
    ap.add_argument("--metric", required=True, help="its metric to maximise, e.g. mAP or accuracy")
    ap.add_argument("--name", required=True)
    ap.add_argument("--split", default="validation")
    ap.add_argument("--out_dir", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    from vlmjax.cli.evaluate import evaluate_workdir, run_config
    from vlmjax.core.config import load_with_overrides

    config = load_with_overrides(args.config, []) if args.config else run_config(args.workdir)
    base = config.evals[args.eval].to_dict()
    base["data"]["split"] = args.split
    with config.unlocked():
        config.evals = {f"{args.eval}__{k}": dict(base, templates=t, aggregate=agg) for k, (t, agg) in
                        CANDIDATES.items()}
    step, metrics = evaluate_workdir(args.workdir, config)
    scores = {k: metrics[f"eval/{args.eval}__{k}/{args.metric}"] for k in CANDIDATES}
    best = max(scores, key=scores.get)
    result = {**provenance(__file__, argv),
              "workdir": os.path.abspath(args.workdir), "step": step, "split": args.split, "evaluator": args.eval,
              "metric": args.metric, "candidates": {k: {"templates": t, "aggregate": a, args.metric: scores[k]}
                                                    for k, (t, a) in CANDIDATES.items()}, "best": best}
    os.makedirs(args.out_dir, exist_ok=True)
    out = os.path.join(args.out_dir, f"prompt_sweep_{args.name}.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
    for k in sorted(scores, key=scores.get, reverse=True):
        print(f"{k:22s} {args.metric}={scores[k]:.4f}")
    print(f"best: {best}; wrote {out}")


if __name__ == "__main__":
    main()
