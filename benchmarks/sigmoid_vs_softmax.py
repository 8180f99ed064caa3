"""Sigmoid (SigLIP) vs softmax (CLIP) loss at batch 32, 128 and 512: equal steps, learnable t and b, 3 seeds.

The SigLIP paper's claim: the sigmoid loss is at least as good as softmax at small batch, and the gap closes as the
batch grows. Each arm trains tiny two towers on `scenes` (stored as arrays: `scenes/raw`) downscaled to 32 px (the
siglip_scenes baseline recipe shrunk: same captions, templates, optimizer and schedule; a conv-stem ViT of width 48
and a 1-layer text tower) for the same number of steps, so a larger batch sees more examples, as in the paper. t
(and b) learn at 100x the learning rate (`optimizer.lr_mults`; at 10x they barely moved from their init in a
first try, and the sigmoid arms stayed near chance), from the papers' inits (sigmoid t=10, b=-10; softmax
t=1/0.07, capped at 100). Validation R@1 is logged `--val_evals` times per run (the plateau check: the gain
over the last quarter of the steps); zero-shot and R@1 on the test split are read once, at the end. Regenerates:

    .venv/bin/python benchmarks/sigmoid_vs_softmax.py             # 18 arms, ~5.5 h on 2 cores (scenes/raw: `make bench`)
    .venv/bin/python benchmarks/sigmoid_vs_softmax.py --batches 32 128 --no_report   # one sitting's share
    .venv/bin/python benchmarks/sigmoid_vs_softmax.py --long 128:38400 --seeds 1 --losses sigmoid --no_report
    .venv/bin/python benchmarks/sigmoid_vs_softmax.py --quick     # a smoke run, nothing written
    .venv/bin/python benchmarks/sigmoid_vs_softmax.py --val_summary   # the runs so far, validation numbers only
    .venv/bin/python benchmarks/sigmoid_vs_softmax.py --long 32:38400 128:19200  # + those batches trained longer
    .venv/bin/python benchmarks/sigmoid_vs_softmax.py --long 32:76800 --pilot 32:38400  # + a one-seed pilot, read only

Each finished arm is appended to `--runs_file` (one JSON line with its settings and the commit it ran at;
benchmarks/results/runs/sigmoid_vs_softmax.jsonl, committed after each sitting so a fresh checkout resumes), and an
arm already there with the same settings is not trained again: a study longer than one sitting is run by starting
the same command again (an arm cut off midway is trained from its start; `--no_report` trains without writing the
result). The result lists every commit its arms ran at.

Writes benchmarks/results/sigmoid_vs_softmax.json (command, commit, seeds, splits, every run), the plot
docs/sigmoid_vs_softmax.png (matplotlib: the equal-steps arms, and each batch at its final budget, the longest one
every seed of both losses ran) and the results block of docs/contrastive.md (its `seeds` column counts each row's).
"""
import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
from common import append_run, cpu_description, last_run, publish_study, read_runs  # noqa: E402
from seeds import provenance  # noqa: E402

DOC = os.path.join(ROOT, "docs", "contrastive.md")
PLOT = os.path.join(ROOT, "docs", "sigmoid_vs_softmax.png")
BEGIN, END = "<!-- sigmoid_vs_softmax:begin (benchmarks/sigmoid_vs_softmax.py) -->", "<!-- sigmoid_vs_softmax:end -->"
LOSSES = ("sigmoid", "softmax")
METRICS = (("zeroshot", "zero-shot accuracy"), ("img2txt_r1", "image->text R@1"), ("txt2img_r1", "text->image R@1"))


def run_config(loss: str, batch: int, steps: int, seed: int, args):
    """One arm: the siglip_scenes baseline at 32 px with tiny towers (spelled out, so the study does not move when
    siglip_scenes' model does); `args.val_evals` validation evals, test evals at the last step only."""
    from vlmjax.core.config import load_experiment

    c = load_experiment("siglip_scenes:baseline,softmax" if loss == "softmax" else "siglip_scenes:baseline")
    size = 32
    resize = dict(op="resize", size=size, key="image", method="area")
    with c.unlocked():
        evals = {k: v for k, v in c.evals.items() if k in ("zeroshot", "retrieval")}
        c.evals = {}
        for name, ev in evals.items():
            ev.data.preprocess.insert(1, resize)
            ev.data.max_examples = args.eval_examples
            c.evals[name] = ev.to_dict() | {"every_steps": max(steps // args.val_evals, 1)}
            c.evals[name]["data"]["split"] = "validation"
            c.evals[f"{name}_test"] = ev.to_dict() | {"every_steps": steps, "quiet": True}  # logged, not printed
            c.evals[f"{name}_test"]["data"]["split"] = "test"
        c.data.preprocess.insert(1, resize)
        c.data.name = args.dataset  # scenes/raw: the same scenes stored as arrays, no PNG decode per example
        c.data.read_features = ["image", "captions"]  # speed only: the records' other features are never read
        # speed only: W=0 and W=1 give the same batches (tests/test_pipeline_workers.py); -1 is the trainer's auto
        c.data.worker_count = args.workers
        c.data.data_dir = args.data_dir
        c.tokenizer = args.tokenizer or os.path.join(args.data_dir, "scenes_spm.model")
        c.seed = seed
        c.image_size = size
        c.batch_size, c.total_steps = batch, steps
        c.log_every_steps = max(steps // args.val_evals, 1)
        c.schedule.warmup_steps = max(steps // 10, 1)
        c.optimizer.lr_mults = (("t|b", float(args.tb_lr_mult)),)
        c.model.image = dict(patch_size=(2, 2), stem_channels=32, stem_patch=4, width=48, depth=2, num_heads=2,
                             mlp_dim=192, pool_type="map")
        c.model.text = dict(width=48, depth=1, num_heads=2, mlp_dim=192, pool_type="eos")
        c.model.out_dim = 48
        c.mesh = dict(data=1)
        c.checkpoint = dict(every_steps=steps, keep=1, async_save=False)
    return c


def train_arm(loss: str, batch: int, steps: int, seed: int, args) -> dict:
    import jax

    from vlmjax.core.loop import train
    from vlmjax.core.metrics import read_metrics

    cfg = run_config(loss, batch, steps, seed, args)
    with tempfile.TemporaryDirectory() as wd:
        t0 = time.time()
        final = train(cfg, wd, devices=jax.devices()[:1])
        secs = time.time() - t0
        curve = [{"step": r["step"], "img2txt_r1": r["eval/retrieval/img2txt_r@1"],
                  "txt2img_r1": r["eval/retrieval/txt2img_r@1"], "zeroshot": r["eval/zeroshot/accuracy"]}
                 for r in read_metrics(wd) if "eval/retrieval/img2txt_r@1" in r]
    return {"loss": loss, "batch": batch, "seed": seed, "steps": steps, "examples": steps * batch,
            "seconds": round(secs, 1), "temperature": final.get("train/temperature"), "bias": final.get("train/bias"),
            "validation_curve": curve,
            "zeroshot": final["eval/zeroshot_test/accuracy"], "img2txt_r1": final["eval/retrieval_test/img2txt_r@1"],
            "txt2img_r1": final["eval/retrieval_test/txt2img_r@1"]}


def mean_r1(point) -> float:
    """The mean of image->text and text->image R@1 at one validation evaluation."""
    return (point["img2txt_r1"] + point["txt2img_r1"]) / 2


def last_quarter_gain(curve, steps: int) -> float:
    """Mean validation R@1 (both directions) at the end minus at the last evaluation at or before 3/4 of `steps`."""
    return mean_r1(curve[-1]) - mean_r1(max((c for c in curve if c["step"] <= 0.75 * steps), key=lambda c: c["step"]))


def budget_gain(rows, loss: str, batch: int, steps: int):
    """(gain, shorter): the final validation R@1 of (loss, batch) at `steps` minus at the next-shorter budget
    `shorter` among `rows`, averaged over the seeds run at both (paired); None without a shorter budget or a
    common seed. Under a cosine schedule the last quarter always gains from the decay, so a run has stopped
    improving when more steps no longer buy R@1: this is that check."""
    mine = {r["seed"]: r for r in rows if (r["loss"], r["batch"], r["steps"]) == (loss, batch, steps)}
    shorter = [r["steps"] for r in rows if (r["loss"], r["batch"]) == (loss, batch) and r["steps"] < steps]
    if not shorter:
        return None
    prev = {r["seed"]: r for r in rows if (r["loss"], r["batch"], r["steps"]) == (loss, batch, max(shorter))}
    seeds = sorted(set(mine) & set(prev))
    if not seeds:
        return None
    return statistics.mean(mean_r1(mine[s]["validation_curve"][-1]) - mean_r1(prev[s]["validation_curve"][-1])
                           for s in seeds), max(shorter)


def _budget_cell(rows, loss: str, batch: int, steps: int) -> str:
    """`budget_gain` as a table cell: '+0.042 (vs 9600)', or '—'."""
    bg = budget_gain(rows, loss, batch, steps)
    return "—" if bg is None else f"{bg[0]:+.3f} (vs {bg[1]})"


def arm_settings(loss: str, batch: int, steps: int, seed: int, args) -> dict:
    """What makes two arms the same run (the key of `--runs_file`)."""
    return {"loss": loss, "batch": batch, "seed": seed, "steps": steps, "eval_examples": args.eval_examples,
            "val_evals": args.val_evals, "tb_lr_mult": args.tb_lr_mult, "dataset": args.dataset}


def arms(rows) -> dict:
    """{(loss, batch, steps): {metric: (mean, std)}} over seeds, test metrics, plus the last quarter's validation
    gain."""
    out = {}
    for key in sorted({(r["loss"], r["batch"], r["steps"]) for r in rows}):
        rs = [r for r in rows if (r["loss"], r["batch"], r["steps"]) == key]
        stats = {}
        for m, _ in METRICS:
            v = [r[m] for r in rs]
            stats[m] = (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0)
        gain = [last_quarter_gain(r["validation_curve"], r["steps"]) for r in rs if len(r["validation_curve"]) > 1]
        stats["last_quarter_gain"] = (statistics.mean(gain), 0.0) if gain else (float("nan"), 0.0)
        stats["temperature"] = (statistics.mean(r["temperature"] for r in rs), 0.0)
        stats["bias"] = (statistics.mean(r["bias"] for r in rs), 0.0) if rs[0]["bias"] is not None else None
        stats["n"] = len(rs)
        out[key] = stats
    return out


def equal_steps(rows, steps: int) -> list:
    """The rows of the equal-steps grid (the `--long` arms left out)."""
    return [r for r in rows if r["steps"] == steps]


def final_budgets(rows, seeds) -> dict:
    """{batch: steps}: per batch, the longest budget at which both losses ran every one of `seeds` (the budget a
    batch's plateau check chose, once its seeds are in)."""
    ran = collections.defaultdict(set)  # (loss, batch, steps) -> its seeds
    for r in rows:
        ran[(r["loss"], r["batch"], r["steps"])].add(r["seed"])
    out = {}
    for batch, steps in sorted({(b, n) for _, b, n in ran}):
        if all(ran[(loss, batch, steps)] >= set(seeds) for loss in LOSSES):
            out[batch] = steps
    return out


def plot(rows, path: str, steps: int, seeds=(0, 1, 2)) -> None:
    """Test metrics against batch size: the equal-steps arms, and (a second row, when some batch has one) each batch
    at its final budget (`final_budgets`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # (steps per batch, x label, tick labels carry the steps)
    panels = [({r["batch"]: steps for r in equal_steps(rows, steps)}, f"{steps} steps each", False)]
    final = final_budgets(rows, seeds)
    if any(n != steps for n in final.values()):
        panels.append((final, "each at its final budget, steps under it", True))
    stats = arms(rows)
    fig, axes = plt.subplots(len(panels), len(METRICS), figsize=(4 * len(METRICS), 3.2 * len(panels)),
                             squeeze=False)
    for row_axes, (budget, label, show_steps) in zip(axes, panels):
        batches = sorted(budget)
        for ax, (m, title) in zip(row_axes, METRICS):
            for loss in LOSSES:
                mean = [stats[(loss, b, budget[b])][m][0] for b in batches]
                std = [stats[(loss, b, budget[b])][m][1] for b in batches]
                ax.errorbar(batches, mean, yerr=std, marker="o", capsize=3, label=loss)
            ax.set_xscale("log", base=2)
            ax.set_xticks(batches, [f"{b}\n{budget[b]}" if show_steps else str(b) for b in batches])
            ax.set_xlabel(f"batch size ({label})", fontsize=8)
            ax.set_title(f"test {title}")
            ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(stats, f, rows) -> list:
    """`stats` (arms()) as a table; `rows`: every run, for the gain over a shorter budget."""
    lines = ["| loss | batch | steps | seeds | zero-shot | img→txt R@1 | txt→img R@1 | val gain (last quarter) | "
             "val gain (vs shorter run) | final t | final b |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (loss, batch, steps), s in sorted(stats.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
        bias = "—" if s["bias"] is None else f"{s['bias'][0]:.2f}"
        lines.append(f"| {loss} | {batch} | {steps} | {s['n']} | {f(s['zeroshot'])} | {f(s['img2txt_r1'])} | "
                     f"{f(s['txt2img_r1'])} | {s['last_quarter_gain'][0]:+.3f} | "
                     f"{_budget_cell(rows, loss, batch, steps)} | {s['temperature'][0]:.1f} | {bias} |")
    return lines


def _gaps(stats) -> list:
    """One line per (batch, steps) that has both losses: sigmoid minus softmax, zero-shot and mean R@1."""
    lines = []
    for b, n in sorted({(b, n) for _, b, n in stats}, key=lambda bn: (bn[1], bn[0])):
        s, x = stats.get(("sigmoid", b, n)), stats.get(("softmax", b, n))
        if s and x:
            dr = ((s["img2txt_r1"][0] + s["txt2img_r1"][0]) - (x["img2txt_r1"][0] + x["txt2img_r1"][0])) / 2
            lines.append(f"- batch {b}, {n} steps: sigmoid {100 * (s['zeroshot'][0] - x['zeroshot'][0]):+.1f} points "
                         f"zero-shot, {100 * dr:+.1f} points mean R@1 vs softmax.")
    return lines


def markdown(rows, result) -> str:
    steps = result["steps"]
    grid = arms(equal_steps(rows, steps))
    longer = arms([r for r in rows if r["steps"] != steps])
    lo, hi = min(b for _, b, _ in grid), max(b for _, b, _ in grid)
    f = lambda ms: f"{ms[0]:.3f} ± {ms[1]:.3f}"  # noqa: E731  (± 0.000 in a one-seed row: see its `seeds`)
    lines = [BEGIN, "",
             f"{steps} steps for every arm (batch {lo} sees {lo * steps} examples, {hi} sees "
             f"{hi * steps}); seeds {', '.join(map(str, result['seeds']))}; test metrics on the first "
             f"{result['eval_examples']} test images, read once at the end; `val gain (last quarter)` is the last "
             f"quarter's change of the mean validation R@1 (it includes what the cosine decay buys), `val gain (vs "
             f"shorter run)` the change of the final validation R@1 from the next-shorter budget of the same loss and "
             f"batch, paired by seed (near 0: more steps no longer help). Arms ran at commit "
             f"{', '.join('`' + c[:10] + '`' for c in result.get('arm_commits', [result['commit']]))}. "
             f"Regenerate: `{result['command']}`.", ""]
    lines += _table(grid, f, rows)
    lines += ["", "![sigmoid vs softmax: test metrics vs batch size](sigmoid_vs_softmax.png)", ""]
    lines += _gaps(grid)
    if longer:
        lines += ["", "The same arms trained longer (`--long`, outside the equal-steps grid: whether an arm's ranking "
                  "holds once it has stopped improving on validation):", ""]
        lines += _table(longer, f, rows) + [""] + _gaps(longer)
    return "\n".join(lines + ["", END])


def validation_summary(rows) -> str:
    """Markdown: per (loss, batch, steps) of `rows`, the seeds run and, over them, the final validation R@1 and
    zero-shot and both gains; no test number (what a sitting reads to choose the next budget)."""
    lines = ["| loss | batch | steps | seeds | val R@1 (end) | val zero-shot (end) | val gain (last quarter) | "
             "val gain (vs shorter run) |", "|---|---|---|---|---|---|---|---|"]
    for loss, batch, steps in sorted({(r["loss"], r["batch"], r["steps"]) for r in rows},
                                     key=lambda k: (k[1], k[2], k[0])):
        rs = [r for r in rows if (r["loss"], r["batch"], r["steps"]) == (loss, batch, steps)]
        lines.append(f"| {loss} | {batch} | {steps} | {','.join(str(r['seed']) for r in rs)} | "
                     f"{statistics.mean(mean_r1(r['validation_curve'][-1]) for r in rs):.3f} | "
                     f"{statistics.mean(r['validation_curve'][-1]['zeroshot'] for r in rs):.3f} | "
                     f"{statistics.mean(last_quarter_gain(r['validation_curve'], steps) for r in rs):+.3f} | "
                     f"{_budget_cell(rows, loss, batch, steps)} |")
    return "\n".join(lines)


def run_arms(args, source: dict, runs_file: str) -> list:
    """Every (batch, loss, seed) arm's row at `args.steps`, then every `--long` (batch, steps) arm's, in that order:
    read from `runs_file` when an arm with the same settings finished there before, else trained now and appended
    to it (with `source`'s commit); then every `--pilot` (batch, steps) arm `runs_file` holds, whatever its seeds
    (read only: a shorter budget that chose the final one, reported beside it)."""
    done = read_runs(runs_file)
    rows = []
    for batch, steps in [(b, args.steps) for b in args.batches] + args.long:
        for loss in args.losses:
            for seed in args.seeds:
                want = arm_settings(loss, batch, steps, seed, args)
                found = last_run(done, want)
                if found:
                    rows.append(found)
                    continue
                # cpus: XLA CPU's numerics follow the cores a process may use (docs/guide.md)
                rows.append({**train_arm(loss, batch, steps, seed, args), **want,
                             "workers": args.workers, "cpus": len(os.sched_getaffinity(0)),
                             "cpu": cpu_description(),
                             "commit": source["commit"], "dirty": source["dirty"]})
                # progress without the test metrics: a sitting reads no test number before the report
                hidden = {"validation_curve"} | {m for m, _ in METRICS}
                print(json.dumps({k: v for k, v in rows[-1].items() if k not in hidden}), flush=True)
                if runs_file:
                    append_run(runs_file, rows[-1])
    for batch, steps in args.pilot:
        found = [r for loss in LOSSES for seed in sorted({r["seed"] for r in done})
                 if (r := last_run(done, arm_settings(loss, batch, steps, seed, args)))]
        if {r["loss"] for r in found} != set(LOSSES):
            raise SystemExit(f"--pilot {batch}:{steps}: {runs_file or 'no runs file'} has no finished arm of "
                             f"{' and '.join(sorted(set(LOSSES) - {r['loss'] for r in found}))} at these settings; "
                             "a pilot is only read, never trained (train it with --long and --no_report)")
        rows += found
    return rows


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", default=os.path.join(ROOT, "data", "tfds"))
    p.add_argument("--dataset", default="scenes/raw", help="scenes/raw (`make bench` builds it) or scenes/default")
    p.add_argument("--steps", type=int, default=0, help="steps per arm (default 9600, from the validation pilots; "
                   "--quick 8)")
    p.add_argument("--batches", type=int, nargs="+", default=[32, 128, 512])
    p.add_argument("--long", nargs="*", default=[], metavar="BATCH:STEPS",
                   help="arms beyond the equal-steps grid, e.g. 32:38400: a batch trained longer (both losses, every "
                   "seed), reported in a table of their own")
    p.add_argument("--pilot", nargs="*", default=[], metavar="BATCH:STEPS",
                   help="budgets that chose a --long one (e.g. 32:38400, run with one seed): their arms in "
                   "--runs_file are reported beside it, never trained")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES),
                   help="train only these losses' arms (with --no_report: a sitting that fits one arm)")
    p.add_argument("--eval_examples", type=int, default=1000)
    p.add_argument("--tb_lr_mult", type=float, default=100.0, help="learning-rate multiplier of t and b")
    p.add_argument("--val_evals", type=int, default=24, help="validation evaluations per arm (evenly spaced)")
    p.add_argument("--runs_file", default=os.path.join(HERE, "results", "runs", "sigmoid_vs_softmax.jsonl"),
                   help="finished arms, one JSON line each; arms found here are not trained again ('' for none)")
    p.add_argument("--tokenizer", default="", help="SentencePiece model (default: <data_dir>/scenes_spm.model)")
    p.add_argument("--workers", type=int, default=-1, help="config.data.worker_count of every arm (speed only: "
                   "0 and 1 give the same batches; -1: the trainer's auto count, 0 on a CPU-only host)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--val_summary", action="store_true",
                   help="print the validation numbers of every arm in --runs_file (no test metric) and exit")
    p.add_argument("--no_report", action="store_true",
                   help="train (and store) the arms only: no JSON, plot, docs or table (a sitting of a longer "
                   "study; the test evaluations are `quiet`: in each arm's metrics, not on the console)")
    args = p.parse_args(argv)
    args.steps = args.steps or (8 if args.quick else 9600)
    for flag in ("long", "pilot"):
        entries = getattr(args, flag)
        try:
            setattr(args, flag, [tuple(int(x) for x in a.split(":")) for a in entries])
            if any(len(a) != 2 for a in getattr(args, flag)):
                raise ValueError
        except ValueError:
            p.error(f"--{flag} takes BATCH:STEPS entries, e.g. 32:38400; got {' '.join(map(str, entries))}")
    if set(args.long) & set(args.pilot):
        p.error(f"a budget is either trained (--long) or read (--pilot): {sorted(set(args.long) & set(args.pilot))}")
    if set(args.losses) != set(LOSSES) and not (args.no_report or args.val_summary):
        p.error("--losses " + " ".join(args.losses) + " needs --no_report: the report compares both losses")
    if args.quick:
        args.eval_examples, args.batches, args.seeds = min(args.eval_examples, 128), [16, 32], [0, 1]
        args.long = args.long and [(16, 16)]
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.val_summary:
        print(validation_summary(read_runs(args.runs_file)))
        return
    source = provenance(__file__, argv)  # the tree the runs come from, read before they start
    t0 = time.time()
    rows = run_arms(args, source, "" if args.quick else args.runs_file)
    result = {**source, "seeds": args.seeds, "steps": args.steps, "eval_examples": args.eval_examples,
              "tb_lr_mult": args.tb_lr_mult, "dataset": args.dataset, "val_evals": args.val_evals,
              "arm_commits": sorted({r.get("commit", "unknown") for r in rows}),
              "splits": {"choices": "validation", "reported": "test"}, "runs": rows,
              "arm_seconds": round(sum(r["seconds"] for r in rows), 1),
              "total_seconds": round(time.time() - t0, 1)}
    if args.quick:
        print(markdown(rows, result))
    if args.quick or args.no_report:
        return
    publish_study("sigmoid_vs_softmax", result, rows, lambda rs, path: plot(rs, path, args.steps, args.seeds), PLOT,
                  markdown, DOC, "Contrastive", BEGIN, END)


if __name__ == "__main__":
    main()
