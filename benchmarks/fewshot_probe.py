r"""Few-shot linear probes (`type='fewshot'`, vlmjax/evaluators/fewshot.py) of trained runs' frozen image features,
on datasets of your choice: whether a representation still separates the classes where the run's own head fails.

    python benchmarks/fewshot_probe.py --name vit_dark1800 --workdir 'workdirs/seeds/vit_dark1800/seed{seed}' \
        --seeds 0,1,2 --eval_data scenes/default,scenes/light,scenes/texture --split validation

For each seed's workdir (`{seed}` filled in, as in benchmarks/seeds.py's chains) and each dataset: the run's own
config with its evaluators replaced by one `fewshot` evaluator whose shots come from that dataset's train split (its
first `--pool` examples) and whose probe is scored on `--split` of the same dataset, with the preprocessing of the
run's first evaluator that keeps `label`; the latest checkpoint on the run's mesh (cli/evaluate.py's evaluate_workdir). Writes
`benchmarks/results/fewshot_<name>_<split>.json`: the command, commit, each seed's workdir and metrics per dataset,
and per dataset and metric the mean, std (ddof=1) and n over the seeds.
"""
import argparse
import copy
import json
import os
import sys
import time

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from seeds import RESULTS, ROOT, for_seed, git_commit, summarize  # noqa: E402


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
    ap.add_argument("--workdir", required=True, help="a seed's workdir, with {seed} where the seed goes")
    ap.add_argument("--seeds", default="0,1,2")
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
           "workdirs": {}, "per_seed": {}, "summary": {}, "wall_s": {}}
    seeds = [int(x) for x in args.seeds.split(",") if x]
    out["workdirs"] = {s: for_seed([args.workdir], s)[0] for s in seeds}
    for data in args.eval_data.split(","):
        per_seed = {}
        for s, wd in out["workdirs"].items():
            t = time.time()
            cfg = probe_config(run_config(wd), data, args.split, shots, args.pool, args.l2_reg)
            step, metrics = evaluate_workdir(wd, cfg)
            per_seed[s] = {"step": step, **{k.removeprefix("eval/fewshot/"): v for k, v in metrics.items()}}
            out["wall_s"][f"{s}|{data}"] = time.time() - t
            print(f"seed {s} on {data}:{args.split}: " + ", ".join(f"{k}={v:.4f}" for k, v in per_seed[s].items()),
                  flush=True)
        out["per_seed"][data] = per_seed
        out["summary"][data] = summarize({s: {k: v for k, v in m.items() if k != "step"} for s, m in per_seed.items()})
    path = os.path.join(args.out_dir, f"fewshot_{args.name}_{args.split}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
    for data, summ in out["summary"].items():
        print(data + ": " + ", ".join(f"{k} {s['mean']:.3f} ± {s['std']:.3f}" for k, s in summ.items()))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
