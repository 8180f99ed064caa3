"""Where a prefix-LM run's VQA answers go wrong: exact-match accuracy per question type and object count, with the
relation questions split into "what is to the left/right of X?" (name an object) and "is X to the left/right of
Y?" (yes/no, chance 0.5), on a `scenes` split's own questions (`--split`, test by default: a final recipe's
test read; validation for anything chosen on it).

    .venv/bin/python benchmarks/vqa_breakdown.py --workdir workdirs/prefixlm_scenes_chat [--data_dir data/tfds]
    .venv/bin/python benchmarks/vqa_breakdown.py --workdir W --split validation --out_name vqa_breakdown_W_validation

Writes benchmarks/results/<out_name>.json (default vqa_breakdown.json): command, commit, split and the run's workdir.
Greedy decoding, as the VQA evaluator.
"""
import argparse
import collections
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import scenes_images, write_result  # noqa: E402
from seeds import provenance  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--data_dir", default="data/tfds")
    p.add_argument("--data", default="scenes/default", help="the tfds dataset (a scenes config)")
    p.add_argument("--split", default="test", choices=("test", "validation"))
    p.add_argument("--examples", type=int, default=500, help="images of the split (all their questions)")
    p.add_argument("--out_name", default="vqa_breakdown", help="benchmarks/results/<out_name>.json")
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args(argv)
    from vlmjax.data.op_registry import as_text as _text
    from vlmjax.api import load_run
    from vlmjax.tasks.chat_prompts import answer_texts

    task, variables, _ = load_run(args.workdir, ("prefixlm",))
    size = int(task.config.image_size)
    exs, pixels = scenes_images(args.data_dir, args.split, args.examples, size, args.data)
    images, prompts, keys, answers = [], [], [], []
    for ex, img in zip(exs, pixels):
        for qtype, q, a in zip(ex["question_types"], ex["questions"], ex["answers"]):
            qtype, q = _text(qtype), _text(q)
            if qtype == "relation":
                qtype = "relation_yesno" if q.startswith("is ") else "relation_which"
            images.append(img)
            prompts.append(q)
            answers.append(_text(a))
            keys.append((qtype, int(ex["num_objects"])))
    preds = []
    for s in range(0, len(prompts), args.batch):
        preds += answer_texts(task, variables, np.stack(images[s:s + args.batch]), prompts[s:s + args.batch], 6)
    hits = collections.defaultdict(list)
    for (qtype, n), pred, ans in zip(keys, preds, answers):
        ok = pred.strip() == ans
        for k in ("all", qtype, f"{qtype}/{n}_objects"):
            hits[k].append(ok)
    yesno = [pred.strip() for (qtype, _), pred in zip(keys, preds) if qtype == "relation_yesno"]
    result = {**provenance(__file__, argv), "data": args.data, "split": args.split,
              "workdir": os.path.abspath(args.workdir), "examples": args.examples,
              "accuracy": {k: {"n": len(v), "accuracy": float(np.mean(v))} for k, v in sorted(hits.items())},
              "relation_yesno_answered_yes": float(np.mean([p == "yes" for p in yesno])) if yesno else None}
    for k, v in sorted(result["accuracy"].items()):
        print(f"{k:32s} n={v['n']:5d}  accuracy {v['accuracy']:.3f}")
    print(f"yes/no relation questions answered 'yes': {result['relation_yesno_answered_yes']}")
    write_result(args.out_name, result)


if __name__ == "__main__":
    main()
