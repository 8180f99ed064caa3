r"""Few-shot linear probes (`type='fewshot'`, vlmjax/evaluators/fewshot.py) of trained runs' frozen image features,
on datasets of your choice: whether a representation still separates the classes where the run's own head fails.

    python benchmarks/fewshot_probe.py --name vit_dark1800 --workdirs 'workdirs/seeds/vit_dark1800/seed{0,1,2}' \
        --eval_data scenes/default,scenes/light,scenes/texture --split validation

For each workdir (one per seed) and each dataset: the run's own config with its evaluators replaced by one
`fewshot` evaluator whose shots come from that dataset's train split (its first `--pool` examples) and whose probe
is scored on `--split` of the same dataset, with the preprocessing of the run's first evaluator that keeps `label`;
the latest checkpoint on the run's mesh (cli/evaluate.py's evaluate_workdir). Writes
`benchmarks/results/fewshot_<name>_<split>.json`: the command, commit, each seed's metrics per dataset, and per
dataset and metric the mean, std (ddof=1) and n over the seeds.
"""
import argparse
import copy
import json
import os
import sys
import time

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from seeds import RESULTS, ROOT, git_commit, summarize  # noqa: E402


def expand(pattern: str) -> list:
    """'a/seed{0,1,2}' -> ['a/seed0', 'a/seed1', 'a/seed2'] (one brace group; a plain path stays as it is)."""
    if "{" not in pattern:
        return [pattern]
    head, rest = pattern.split("{", 1)
    choices, tail = rest.split("}", 1)
    return [head + c + tail for c in choices.split(",")]


def probe_config(config, eval_data: str, split: str, shots: tuple, pool: int, l2_reg: float):
    """The run's `config` with one `fewshot` evaluator on `eval_data` (shots from its train split) instead of its
    own evaluators; the preprocessing is that of the run's first evaluator whose ops keep `label`."""
    keeps = [ev.data.preprocess for ev in config.evals.values()
             if any("label" in (op.get("keys") or []) for op in ev.data.preprocess)]
    if not keeps:
        raise ValueError(f"none of the run's evaluators ({', '.join(config.evals)}) keeps `label`")
    cfg = copy.deepcopy(config)
    cfg.evals = ml_collections.ConfigDict({"fewshot": dict(
        type="fewshot", shots=tuple(shots), l2_reg=l2_reg, train_data=dict(max_examples=pool),
        data=dict(name=eval_data, split=split, data_dir=config.data.data_dir, preprocess=list(keeps[0])))})
    return cfg


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True)
    ap.add_argument("--workdirs", required=True, help="one per seed; 'dir/seed{0,1,2}' expands")
    ap.add_argument("--eval_data", required=True, help="comma-separated dataset names")
    ap.add_argument("--split", default="validation", choices=("validation", "test"))
    ap.add_argument("--shots", default="1,5,10")
    ap.add_argument("--pool", type=int, default=5000, help="train examples read for the shots")
    ap.add_argument("--l2_reg", type=float, default=1024.0)
    ap.add_argument("--out_dir", default=RESULTS)
    args = ap.parse_args(argv)
    sys.path.insert(0, ROOT)
    from vlmjax.cli.evaluate import evaluate_workdir, run_config

    shots = tuple(int(k) for k in args.shots.split(","))
    commit, dirty = git_commit()
    out = {"command": " ".join(["python benchmarks/fewshot_probe.py", *(argv or sys.argv[1:])]), "commit": commit,
           "dirty": dirty, "split": args.split, "shots": shots, "pool": args.pool, "l2_reg": args.l2_reg,
           "per_seed": {}, "summary": {}, "wall_s": {}}
    workdirs = expand(args.workdirs)
    for data in args.eval_data.split(","):
        per_seed = {}
        for wd in workdirs:
            t = time.time()
            cfg = probe_config(run_config(wd), data, args.split, shots, args.pool, args.l2_reg)
            step, metrics = evaluate_workdir(wd, cfg)
            per_seed[wd] = {"step": step, **{k.removeprefix("eval/fewshot/"): v for k, v in metrics.items()}}
            out["wall_s"][f"{wd}|{data}"] = time.time() - t
            print(f"{wd} on {data}:{args.split}: " + ", ".join(f"{k}={v:.4f}" for k, v in per_seed[wd].items()),
                  flush=True)
        out["per_seed"][data] = per_seed
        out["summary"][data] = summarize({wd: {k: v for k, v in m.items() if k != "step"}
                                          for wd, m in per_seed.items()})
    path = os.path.join(args.out_dir, f"fewshot_{args.name}_{args.split}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
    for data, summ in out["summary"].items():
        print(data + ": " + ", ".join(f"{k} {s['mean']:.3f} ± {s['std']:.3f}" for k, s in summ.items()))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
