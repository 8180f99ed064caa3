r"""Runs one recipe with several seeds and writes its final eval metrics as mean ± std: the runner every comparison in
docs/ goes through.

    python benchmarks/seeds.py --name vit_scenes --config experiments/vit_scenes.py --seeds 0,1,2 --split validation
    python benchmarks/seeds.py --name vit_scenes --config experiments/vit_scenes.py --seeds 0,1,2 --split test
    python benchmarks/seeds.py ... -- --config.total_steps=1200     # anything after `--` goes to vlmjax-train
    python benchmarks/seeds.py --name vit_scenes --config experiments/vit_scenes.py --eval_data scenes/texture
    python benchmarks/seeds.py --name prefixlm_pretrain --config prefixlm_scenes:pretrain --seeds 0,1,2 \
        -- --config.init_from.workdir=workdirs/seeds/vit_scenes/seed{seed}          # a chain: each seed's own stage 1

Each seed is one `vlmjax-train` process (`--config.seed=<s>`, workdir `<workdir_root>/<name>/seed<s>`; not started
for a workdir that holds its final checkpoint) whose own periodic evaluations read `validation` only, then one
`vlmjax-eval` process that evaluates the final checkpoint with every evaluator's split set to `--split`. So the test
split is never read while training, and the `test` run of a recipe reuses the models its `validation` run trained.
Choices (steps, recipe, prompts) are made on `validation`; `test` is read once per final recipe: a `test` result for
the same recipe is never overwritten (exit 2) unless `--force`. `--eval_data NAME` (e.g. `scenes/texture`) sets
every evaluator's `data.name` in that final evaluation only: training is unchanged, so it reuses the workdirs of a
run without it (a shift test of the same models). Writes `benchmarks/results/seeds_<name>_<split>.json` (with
`--eval_data`: `seeds_<name>_<split>_<eval_data, / as _>.json`, its own file, so the test rule holds per file): the
command, git commit (and whether the tree was dirty), seeds, split, eval_data (null without it), each seed's final
`eval/*` metrics and wall seconds, each seed's validation curve (the evaluations its training logged), and per
metric mean, std (ddof=1) and n, the experiment file the config resolved to with its sha256, and the commit each
seed was evaluated at (each runs-file row also lists `trained_at`: the commit every training segment of its workdir
started from, with the step it resumed at); prints the markdown table `table()` makes from it. Each finished seed is
also appended to `--runs_file` (`<out_dir>/runs/seeds.jsonl`, committed with the results), and a seed of the same
recipe (name, config, overrides, split, eval_data, experiment sha256, and the sha256 of the config it resolves to,
which sees changes in the files the experiment imports; rows from before that field match without it) found there is
not trained again: a recipe's seeds accumulate over sittings, and a fresh checkout, which has no workdirs, keeps
them. An experiment that resolves outside this checkout (a git worktree whose editable install points at another
tree) is refused: its runs would train that tree's config.

A recipe that starts from another recipe's runs (a multi-stage chain: a `vit_scenes` tower, then prefix-LM
pretraining, then chat) writes `{seed}` in an override, e.g. `--config.init_from.workdir=workdirs/seeds/A/seed{seed}`:
seed s trains from seed s of stage A, so the stages' seeds pair up. The runs file keeps the override as written.
A seed whose `init_from.workdir` does not exist stops before training, naming it (a fresh checkout has the upstream
stage's runs-file rows but not its workdirs), and so does a seed workdir holding checkpoints without their
config.json (`check_resumable`).
"""
import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import append_run, last_run, read_runs  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def git_commit(root: str = ROOT) -> tuple:
    """(commit hash, dirty) of the tree the runs come from; ('unknown', True) outside a git checkout. Changes under
    benchmarks/results/ and docs/ (the studies' outputs and runs files, which no training reads) do not count as
    dirty, so a study that commits its runs file between sittings still runs from a clean tree."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":!benchmarks/results", ":!docs"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip() != ""
        return head.stdout.strip(), dirty
    except (OSError, subprocess.CalledProcessError):
        return "unknown", True


def provenance(script: str, argv=None) -> dict:
    """{'command', 'commit', 'dirty'} for a benchmark's JSON: `python <script relative to the cwd> <argv>` (argv
    defaults to sys.argv[1:]) and the tree it ran from."""
    commit, dirty = git_commit()
    return {"command": "python " + shlex.join([os.path.relpath(script, os.getcwd())] + (argv or sys.argv[1:])),
            "commit": commit, "dirty": dirty}


def summarize(per_seed: dict) -> dict:
    """{metric: {'mean', 'std', 'n'}} over the seeds' `{seed: {metric: value}}`; std is the sample std (ddof=1),
    0 for a single seed. A metric missing from some seed is summarised over the seeds that have it."""
    names = sorted({k for m in per_seed.values() for k in m})
    out = {}
    for k in names:
        v = np.array([m[k] for m in per_seed.values() if k in m], np.float64)
        out[k] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}
    return out


def table(result: dict, metrics=None) -> str:
    """Markdown: one row per metric, `mean ± std (n seeds)`, under a line naming split (and eval_data), commit and
    command."""
    summary = result["summary"]
    data = f" of `{result['eval_data']}`" if result.get("eval_data") else ""
    dirty = " (dirty tree)" if result["dirty"] else ""
    rows = [f"Split `{result['split']}`{data}, commit `{result['commit'][:10]}`{dirty}, "
            f"seeds {', '.join(map(str, result['seeds']))}: `{result['command']}`", "",
            "| metric | mean ± std | seeds |", "|---|---|---|"]
    for k in metrics or sorted(summary):
        s = summary[k]
        rows.append(f"| `{k}` | {s['mean']:.4f} ± {s['std']:.4f} | {s['n']} |")
    return "\n".join(rows)


def parse_eval_lines(stdout: str) -> dict:
    """`vlmjax-eval`'s `eval/<evaluator>/<metric>=value` lines -> {name: float}."""
    out = {}
    for line in stdout.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.startswith("eval/"):
            out[key] = float(value)
    return out


def validation_curve(workdir: str) -> list:
    """The periodic evaluations a seed's training logged (its evaluators read validation only): one
    {'step', 'eval/...': value} per evaluation step of the workdir's metrics.jsonl."""
    sys.path.insert(0, ROOT)
    from vlmjax.core.metrics import read_metrics

    return [{"step": r["step"], **{k: v for k, v in r.items() if k.startswith("eval/")}}
            for r in read_metrics(workdir) if any(k.startswith("eval/") for k in r)]


def eval_names(config_spec: str) -> list:
    """The names of the experiment's evaluators (config.evals)."""
    sys.path.insert(0, ROOT)
    from vlmjax.core.config import load_experiment

    return list(load_experiment(config_spec).get("evals", {}) or {})


def experiment_file(config_spec: str) -> str:
    """The real path of the file the experiment of `config_spec` is loaded from: a name resolves through the
    installed package, which for an editable install is the checkout it was installed from."""
    sys.path.insert(0, ROOT)
    from vlmjax.core.config import experiment_module

    return os.path.realpath(experiment_module(config_spec.partition(":")[0]).__file__)


def resolved_config_sha256(config_spec: str) -> str:
    """sha256 of the config `config_spec` resolves to (before command-line overrides), as config.json writes it:
    it changes when a file the experiment imports (experiments/common.py, another experiment) changes, which the
    experiment file's own sha256 does not see."""
    sys.path.insert(0, ROOT)
    from vlmjax.core import config as config_lib

    return hashlib.sha256(config_lib.to_json(config_lib.load_experiment(config_spec)).encode()).hexdigest()


def finished_row(done: list, recipe: dict, seed: int, resolved_sha: str):
    """The runs-file row of `recipe`'s `seed` to reuse, or None to train it. A row that records the resolved config's
    sha256 is reused only if it equals `resolved_sha`; rows written before that field existed match on the recipe
    (experiment file sha256 included) alone."""
    row = last_run(done, {**recipe, "seed": seed})
    if row and row.get("resolved_config_sha256", resolved_sha) != resolved_sha:
        print(f"seed {seed}: the runs-file row (commit {row['commit'][:10]}) was trained with another resolved config "
              f"(a file the experiment imports changed): training again")
        return None
    return row


def split_overrides(names, split: str) -> list:
    """`--config.evals.<name>.data.split=<split>` for every evaluator name."""
    return [f"--config.evals.{name}.data.split={split}" for name in names]


def data_overrides(names, eval_data) -> list:
    """`--config.evals.<name>.data.name=<eval_data>` for every evaluator name; none without eval_data."""
    return [f"--config.evals.{name}.data.name={eval_data}" for name in names] if eval_data else []


def result_path(out_dir: str, name: str, split: str, eval_data=None) -> str:
    """`<out_dir>/seeds_<name>_<split>.json`, or with eval_data `..._<split>_<eval_data, / as _>.json`."""
    tail = f"_{eval_data.replace('/', '_')}" if eval_data else ""
    return os.path.join(out_dir, f"seeds_{name}_{split}{tail}.json")


def seed_workdir(args, seed: int) -> str:
    """`<workdir_root>/<name>/seed<seed>`: where one seed trains."""
    return os.path.join(args.workdir_root, args.name, f"seed{seed}")


def for_seed(extra: list, seed: int) -> list:
    """`extra` with every `{seed}` replaced by `seed` (a chain's per-seed upstream workdir)."""
    return [a.replace("{seed}", str(seed)) for a in extra]


def missing_init_from(extra: list) -> list:
    """The `--config.init_from.workdir=` values of `extra` (after `for_seed`) that are not directories."""
    flag = "--config.init_from.workdir="
    paths = [a[len(flag):] for a in extra if a.startswith(flag)]
    return [p for p in paths if p and not os.path.isdir(os.path.join(ROOT, p))]


def commands(args, seed: int, extra: list, names: list) -> tuple:
    """(train, evaluate) command lines of one seed (`{seed}` in `extra` replaced). Training is the same with or
    without `args.eval_data` (`run_seed` skips it for a workdir that holds its final checkpoint); only the
    evaluation reads eval_data."""
    workdir, extra = seed_workdir(args, seed), for_seed(extra, seed)
    train = [sys.executable, "-m", "vlmjax.cli", "--config", args.config, "--workdir", workdir,
             f"--config.seed={seed}", *split_overrides(names, "validation"), *extra]
    evaluate = [sys.executable, "-m", "vlmjax.cli.evaluate", "--workdir", workdir, "--config", args.config,
                f"--config.seed={seed}", *split_overrides(names, args.split),
                *data_overrides(names, args.eval_data),
                *[a for a in extra if a.startswith("--config.")]]
    return train, evaluate


def trained_to_the_end(config_spec: str, train: list, workdir: str) -> bool:
    """Whether `workdir` holds the final checkpoint of the run the `train` command line describes (its config's
    total_steps, the command's overrides applied). Such a run is not started again: a finished trainer would only
    repeat its last evaluation, on the data it trained on (minutes for SigLIP's caption-space evaluator), before an
    `--eval_data` run evaluates the same checkpoint on other data."""
    sys.path.insert(0, ROOT)
    from vlmjax.core import config as config_lib
    from vlmjax.core.restore_check import checkpoint_steps

    _, overrides = config_lib.split_overrides(train)
    return config_lib.load_with_overrides(config_spec, overrides).total_steps in checkpoint_steps(workdir)


TRAINED_AT = "trained_at.jsonl"


def record_training_start(workdir: str, root: str = ROOT) -> None:
    """Appends {'commit', 'dirty', 'from_step'} to `<workdir>/trained_at.jsonl` before a trainer starts there: a
    seed resumed across sittings trained its segments at different commits, and its row should name them all."""
    sys.path.insert(0, ROOT)
    from vlmjax.core.restore_check import checkpoint_steps

    commit, dirty = git_commit(root)
    os.makedirs(workdir, exist_ok=True)
    append_run(os.path.join(workdir, TRAINED_AT),
               {"commit": commit, "dirty": dirty, "from_step": max(checkpoint_steps(workdir), default=0)})


def check_resumable(workdir: str) -> None:
    """Exit naming `workdir` when it holds checkpoints but no config.json. The trainer would resume them with only a
    warning (their structure checked, not their recipe), and a seed's row would then mix runs: the way this arises
    is a workdir deleted while its trainer, stopped by SIGTERM, was still saving (the save lands after the delete)."""
    sys.path.insert(0, ROOT)
    from vlmjax.core.restore_check import checkpoint_steps

    steps = checkpoint_steps(workdir)
    if steps and not os.path.exists(os.path.join(workdir, "config.json")):
        raise SystemExit(f"error: {workdir} holds checkpoints (steps {steps}) but no config.json, so nothing says "
                         f"which recipe wrote them; delete the workdir (once no trainer runs there) and run again")


def trained_at(workdir: str) -> list:
    """The training segments `record_training_start` logged in `workdir`, oldest first (none for a workdir trained
    before the log existed)."""
    return read_runs(os.path.join(workdir, TRAINED_AT))


def run_seed(args, seed: int, extra: list, names: list) -> tuple:
    """(final eval metrics on `args.split` of `args.eval_data`, wall seconds, validation curve) of one seed: train
    (validation evals), then evaluate. `names`: the experiment's evaluators."""
    t = time.time()
    missing = missing_init_from(for_seed(extra, seed))
    if missing:
        raise SystemExit(f"error: seed {seed} starts from --config.init_from.workdir={missing[0]}, which does not "
                         f"exist: train that stage's seed {seed} first (its runs-file row does not bring back its "
                         f"workdir; `seeds.py --force` on validation retrains it)")
    train, evaluate = commands(args, seed, extra, names)
    if trained_to_the_end(args.config, train, seed_workdir(args, seed)):
        print(f"seed {seed}: {seed_workdir(args, seed)} holds its final checkpoint: not trained again")
    else:
        check_resumable(seed_workdir(args, seed))
        record_training_start(seed_workdir(args, seed))
        r = subprocess.run(train, cwd=ROOT)
        if r.returncode != 0:
            raise SystemExit(f"error: seed {seed} failed (exit {r.returncode}): {' '.join(train)}")
    r = subprocess.run(evaluate, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"error: evaluating seed {seed} failed (exit {r.returncode}): {' '.join(evaluate)}\n"
                         f"{r.stderr[-2000:]}")
    return parse_eval_lines(r.stdout), time.time() - t, validation_curve(seed_workdir(args, seed))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True, help="recipe name: results go to seeds_<name>_<split>.json")
    ap.add_argument("--config", required=True, help="experiment file[:variant] (as vlmjax-train --config)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--split", default="validation", choices=("validation", "test", "train"))
    ap.add_argument("--workdir_root", default=os.path.join(ROOT, "workdirs", "seeds"))
    ap.add_argument("--out_dir", default=RESULTS)
    ap.add_argument("--eval_data", default=None, metavar="NAME",
                    help="dataset of the final evaluation (every evaluator's data.name), e.g. scenes/texture; "
                         "training is unchanged. Results go to seeds_<name>_<split>_<NAME, / as _>.json")
    ap.add_argument("--force", action="store_true", help="overwrite an existing test-split result (and train every "
                    "seed again, whatever the runs file holds)")
    ap.add_argument("--runs_file", default=None, help="finished seeds, one JSON line each (default "
                    "<out_dir>/runs/seeds.jsonl, committed with the results): a seed of the same recipe found there "
                    "is not trained again, so seeds accumulate across sittings and fresh checkouts ('' for none)")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    out = result_path(args.out_dir, args.name, args.split, args.eval_data)
    command = " ".join(["python benchmarks/seeds.py", *argv, *(["--", *extra] if extra else [])])
    if args.split == "test" and os.path.exists(out) and not args.force:
        with open(out) as f:
            old = json.load(f)
        print(f"error: {out} already holds the test result of recipe {args.name!r} (commit {old['commit'][:10]}): "
              f"test is read once per final recipe; choose on validation, or pass --force", file=sys.stderr)
        return 2
    exp_file, root = experiment_file(args.config), os.path.realpath(ROOT)
    if not exp_file.startswith(root + os.sep):
        print(f"error: --config {args.config!r} loads {exp_file}, outside this checkout ({root}): the installed "
              f"package maps vlmjax.experiments to another tree, whose configs (not this commit's) would train; run "
              f"from that checkout, or `pip install -e .` here", file=sys.stderr)
        return 2
    with open(exp_file, "rb") as f:
        exp_sha = hashlib.sha256(f.read()).hexdigest()
    commit, dirty = git_commit()
    runs_file = os.path.join(args.out_dir, "runs", "seeds.jsonl") if args.runs_file is None else args.runs_file
    recipe = {"name": args.name, "config": args.config, "overrides": extra, "split": args.split,
              "eval_data": args.eval_data, "config_sha256": exp_sha}
    resolved_sha = resolved_config_sha256(args.config)
    done = [] if args.force else read_runs(runs_file)
    per_seed, wall, curves, seed_commits, names = {}, {}, {}, {}, eval_names(args.config)
    for s in seeds:
        row = finished_row(done, recipe, s, resolved_sha)
        if row:  # finished in an earlier sitting (its workdir may be gone): not trained again
            print(f"seed {s}: from {runs_file} (commit {row['commit'][:10]})")
        else:
            metrics, secs, curve = run_seed(args, s, extra, names)
            seed_commit, seed_dirty = git_commit()  # the tree this seed's evaluation (and last segment) ran from
            row = {**recipe, "seed": s, "metrics": metrics, "wall_s": secs, "validation_curve": curve,
                   "commit": seed_commit, "dirty": seed_dirty, "resolved_config_sha256": resolved_sha,
                   "trained_at": trained_at(seed_workdir(args, s))}
            if runs_file:
                append_run(runs_file, row)
        per_seed[str(s)], wall[str(s)], curves[str(s)] = row["metrics"], row["wall_s"], row["validation_curve"]
        seed_commits[str(s)] = row["commit"]
    result = {"name": args.name, "command": command, "config": args.config, "overrides": extra, "split": args.split,
              "eval_data": args.eval_data, "config_file": os.path.relpath(exp_file, root),
              "config_sha256": exp_sha, "resolved_config_sha256": resolved_sha, "commit": commit, "dirty": dirty,
              "seeds": seeds, "per_seed": per_seed,
              "validation_curves": curves, "wall_s": wall, "seed_commits": seed_commits,
              "summary": summarize(per_seed)}
    os.makedirs(args.out_dir, exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
    print(table(result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
