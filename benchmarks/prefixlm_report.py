"""Prefix-LM comparisons over seeds: (1) the image input -- continuous ViT features trained end to end, a frozen
VQ-VAE's vectors before rounding (`vq_features`), its codes (`vq`) -- and (2) a bidirectional prefix vs fully causal
attention. Regenerates docs/prefixlm_report.png (matplotlib) and the results block of docs/prefixlm.md.

    .venv/bin/python benchmarks/prefixlm_report.py                  # 4 arms x 3 seeds, ~1 h on 2 idle CPU cores
    .venv/bin/python benchmarks/prefixlm_report.py --seeds 0 --no_report   # one sitting's share
    .venv/bin/python benchmarks/prefixlm_report.py --quick          # a smoke run, nothing written

Every arm runs the two-stage recipe of experiments/prefixlm_scenes.py (caption pretraining, then multi-turn QA chat
chained by init_from), shrunk to scenes/default at 32 px with a small LM, with the seed's data order and init:
  continuous   hybrid ViT (conv stem 4x4 + 1x1 patches -> 64 tokens) + linear projector, bidirectional prefix
  causal       the same, every token causal (mask_ar all 1)
  vq_features  the seed's VQ-VAE (trained here first, f4: 8x8 = 64 vectors), frozen, its code-space vectors before
               rounding + linear projector: the control that splits the VQ arm's gap into what a frozen
               reconstruction encoder costs (continuous vs vq_features) and what the rounding costs (vq_features
               vs vq)
  vq           the same VQ-VAE's codes as `<|boi|> codes <|eoi|>` tokens with their own embedding table
Metrics: caption CIDEr-D and exact match after stage 1, VQA exact match (overall and per question type) after
stage 2, on the first `--eval_images` images of `validation` and, read once at the end of each stage, of `test`.
The step counts are those of the earlier one-seed report, not tuned here; the tables report test, validation beside.
Differences between arms are paired by seed (same seed: same data order) and given as mean ± std over seeds.

Each finished (arm, seed) is appended to `--runs_file` with its settings and commit (benchmarks/results/runs/
prefixlm_report.jsonl, committed after each sitting so a fresh checkout resumes); an arm already there with the same
settings is not trained again, so a study longer than one sitting resumes by running the same command again.
"""
import argparse
import os
import shutil
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
from common import append_run, last_run, publish_study, read_runs  # noqa: E402
from seeds import provenance  # noqa: E402

SIZE, PRE_LEN, CHAT_LEN, TURNS = 32, 32, 60, 4
ARMS = {"continuous": "continuous ViT features, bidirectional prefix", "causal": "continuous, fully causal",
        "vq_features": "frozen VQ-VAE vectors before rounding", "vq": "frozen VQ-VAE codes as tokens"}
FROZEN_VQ = ("vq_features", "vq")
TYPES = ("color", "shape", "count", "relation")
METRICS = ["vqa/accuracy"] + [f"vqa/accuracy_{t}" for t in TYPES] + ["caption/cider", "caption/exact"]
DOC = os.path.join(ROOT, "docs", "prefixlm.md")
PLOT = os.path.join(ROOT, "docs", "prefixlm_report.png")
BEGIN, END = "<!-- results:begin (written by benchmarks/prefixlm_report.py) -->", "<!-- results:end -->"


def _experiments():
    from vlmjax.experiments import prefixlm_scenes, prefixlm_vq_scenes

    return prefixlm_scenes, prefixlm_vq_scenes


def arm_config(stage: str, arm: str, seed: int, args, vq_workdir: str, pretrain_workdir: str):
    """One stage of one arm: the experiment's config shrunk to the report's budget, with validation evaluations
    (`caption` / `vqa`) and their test twins (`caption_test` / `vqa_test`), all at the stage's last step."""
    from vlmjax.core.config import set_dotted

    exp, vq_exp = _experiments()
    steps = args.pretrain_steps if stage == "pretrain" else args.chat_steps
    c = (vq_exp if arm == "vq" else exp).get_config(stage)
    over = {"data.data_dir": args.data_dir, "total_steps": int(steps * args.scale), "batch_size": 32,
            "log_every_steps": 50, "schedule.warmup_steps": 50, "optimizer.lr": 2e-3, "image_size": SIZE,
            "mesh.data": 1, "checkpoint.async_save": False, "eval.batch_size": 64, "seed": seed}
    lm = exp.model(64, 3, 96, 3)["lm"]
    if arm == "vq":
        over.update(model=dict(lm=lm), vq_workdir=vq_workdir)
    elif arm == "vq_features":
        over.update(model=dict(lm=lm, projector="linear"), vq_workdir=vq_workdir, image_input="vq_features")
    else:
        over["model"] = exp.model(64, 3, 96, 3, token_merge=1, stem=32, stem_blocks=1)
        over["model"]["vit"]["patch_size"] = (1, 1)  # stem /4 then 1x1 patches: 64 image tokens, as the VQ grid
    if arm == "causal":
        over["attention"] = "causal"
    n = args.eval_images
    if stage == "pretrain":
        over.update({"text_len": PRE_LEN, "data.preprocess": exp.pretrain_pp(PRE_LEN, SIZE, 0.3 if arm == "vq" else 0.0),
                     "init_from.workdir": ""})  # every arm's encoder from scratch
        ev = dict(type="caption", max_new_tokens=28, data=dict(preprocess=exp.caption_pp(SIZE), max_examples=n))
        if arm == "vq":
            ev.update(gen_captions=vq_exp.GEN_CAPTIONS, cfg_scale=3.0, top_k=32)
        name = "caption"
    else:
        over.update({"text_len": CHAT_LEN, "data.preprocess": exp.chat_pp(CHAT_LEN, TURNS, SIZE),
                     "init_from.workdir": pretrain_workdir, "optimizer.lr": 1e-3})
        ev = dict(type="vqa", max_new_tokens=4, question_types=TYPES, data=dict(preprocess=exp.vqa_pp(SIZE),
                                                                                max_examples=n))
        name = "vqa"
    over["evals"] = {name: {**ev, "data": {**ev["data"], "split": "validation"}},
                     f"{name}_test": {**ev, "data": {**ev["data"], "split": "test"}, "quiet": True}}
    return set_dotted(c, over)


def vqvae_config(seed: int, args):
    from vlmjax.core.config import set_dotted

    c = _experiments()[1].vqvae_config(steps=int(args.vqvae_steps * args.scale), batch=32)
    set_dotted(c, {"data.data_dir": args.data_dir, "mesh.data": 1, "checkpoint.async_save": False,
                   "model.ch": 16, "schedule.warmup_steps": 50, "seed": seed})
    for ev in c.evals.values():
        ev.data.max_examples, ev.data.split = 256, "validation"
    return c


def _evals(final: dict) -> dict:
    """{'<eval>/<metric>': value} of a run's final metrics, `_test` evals as `test/...`, the others `validation/...`."""
    out = {}
    for k, v in final.items():
        if k.startswith("eval/"):
            name, metric = k.split("/", 2)[1:]
            split = "test" if name.endswith("_test") else "validation"
            out[f"{split}/{name.removesuffix('_test')}/{metric}"] = round(float(v), 4)
    return out


def train_arm(arm: str, seed: int, args) -> dict:
    """Both stages of `arm` for `seed` in fresh workdirs under args.workdir (a VQ arm first trains the seed's
    VQ-VAE unless a finished one is there) -> {arm, seed, seconds, final losses, validation/..., test/...}."""
    import jax

    from vlmjax.core.loop import train

    root = os.path.join(args.workdir, f"seed{seed}")
    row = {"arm": arm, "seed": seed}
    vq_wd = os.path.join(root, "vqvae")
    if arm in FROZEN_VQ and not os.path.exists(os.path.join(vq_wd, "done")):
        shutil.rmtree(vq_wd, ignore_errors=True)
        t0 = time.time()
        final = train(vqvae_config(seed, args), vq_wd, jax.devices()[:1])
        with open(os.path.join(vq_wd, "done"), "w") as f:
            f.write(f"{time.time() - t0:.1f}\n")
        row["vqvae_trained_now"] = {k: v for k, v in _evals(final).items() if k.startswith("validation/")}
    pre_wd = os.path.join(root, f"{arm}_pretrain")
    for stage in ("pretrain", "chat"):
        wd = os.path.join(root, f"{arm}_{stage}")
        shutil.rmtree(wd, ignore_errors=True)  # an arm cut off midway trains from its start
        t0 = time.time()
        final = train(arm_config(stage, arm, seed, args, vq_wd, pre_wd), wd, jax.devices()[:1])
        row[f"{stage}_seconds"] = round(time.time() - t0, 1)
        row[f"{stage}_final_loss"] = round(float(final.get("train/loss", float("nan"))), 4)
        row.update(_evals(final))
    return row


def arm_settings(arm: str, seed: int, args) -> dict:
    """What makes two runs of an arm the same (the key of `--runs_file`)."""
    return {"arm": arm, "seed": seed, "scale": args.scale, "vqvae_steps": args.vqvae_steps,
            "pretrain_steps": args.pretrain_steps, "chat_steps": args.chat_steps, "eval_images": args.eval_images}


def run_arms(args, source: dict, runs_file: str) -> list:
    """Every (seed, arm) row in that order: from `runs_file` when finished there with the same settings, else
    trained now and appended (with `source`'s commit). Progress lines carry no test metric."""
    import json

    done = read_runs(runs_file)
    rows = []
    for seed in args.seeds:
        for arm in args.arms:
            want = arm_settings(arm, seed, args)
            found = last_run(done, want)
            if found:
                rows.append(found)
                continue
            rows.append({**train_arm(arm, seed, args), **want, "commit": source["commit"], "dirty": source["dirty"]})
            print(json.dumps({k: v for k, v in rows[-1].items() if not k.startswith("test/")}), flush=True)
            if runs_file:
                append_run(runs_file, rows[-1])
    return rows


def _mean_std(values) -> tuple:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def arm_stats(rows, split: str = "test") -> dict:
    """{arm: {metric: (mean, std), 'n': seeds}} over the rows of each arm."""
    out = {}
    for arm in [a for a in ARMS if any(r["arm"] == a for r in rows)]:
        rs = [r for r in rows if r["arm"] == arm]
        out[arm] = {m: _mean_std([r[f"{split}/{m}"] for r in rs]) for m in METRICS if f"{split}/{m}" in rs[0]}
        out[arm]["n"] = len(rs)
    return out


def paired(rows, arm: str, base: str, metric: str, split: str = "test"):
    """(mean, std, n) over seeds of `arm` minus `base` on `metric`, paired by seed; None without a shared seed."""
    by = {(r["arm"], r["seed"]): r for r in rows}
    d = [by[(arm, s)][f"{split}/{metric}"] - by[(base, s)][f"{split}/{metric}"]
         for s in sorted({r["seed"] for r in rows}) if (arm, s) in by and (base, s) in by]
    return (*_mean_std(d), len(d)) if d else None


def plot(rows, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = arm_stats(rows)
    groups = [("VQA", "vqa/accuracy")] + [(t, f"vqa/accuracy_{t}") for t in TYPES] + [("CIDEr-D / 10", "caption/cider")]
    fig, ax = plt.subplots(figsize=(9, 3.4))
    width = 0.8 / len(stats)
    for i, (arm, s) in enumerate(stats.items()):
        scale = [10.0 if "cider" in m else 1.0 for _, m in groups]
        xs = [g + i * width for g in range(len(groups))]
        ax.bar(xs, [s[m][0] / k for (_, m), k in zip(groups, scale)], width,
               yerr=[s[m][1] / k for (_, m), k in zip(groups, scale)], capsize=2, label=f"{arm} (n={s['n']})")
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], [g for g, _ in groups])
    ax.set_ylabel("test, mean ± std over seeds")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(rows, result) -> str:
    stats, val = arm_stats(rows), arm_stats(rows, "validation")
    f = lambda ms: f"{ms[0]:.3f} ± {ms[1]:.3f}"  # noqa: E731
    s, blind = result["settings"], result["blind"]
    lines = [BEGIN, "",
             f"`scenes/default` at {SIZE} px, caption pretraining {int(s['pretrain_steps'] * s['scale'])} steps then "
             f"QA chat {int(s['chat_steps'] * s['scale'])} steps, batch 32; VQ-VAE {int(s['vqvae_steps'] * s['scale'])}"
             f" steps per seed; seeds {', '.join(map(str, result['seeds']))} (mean ± std). VQA exact match on the "
             f"questions of the first {s['eval_images']} test images (read once), captions after stage 1 on the same "
             f"images; validation VQA on the first {s['eval_images']} validation images. Blind prior (most common "
             f"train answer of the question): {blind['all']:.3f} (" + ", ".join(f"{t} {blind[t]:.3f}" for t in TYPES)
             + f"). Arms ran at commit {', '.join('`' + c[:10] + '`' for c in result['arm_commits'])}. Regenerate: "
             f"`{result['command']}`.", "",
             "| arm | VQA | " + " | ".join(TYPES) + " | caption CIDEr-D | caption exact | validation VQA |",
             "|" + "---|" * (len(TYPES) + 5)]
    for arm, st in stats.items():
        lines.append(f"| {ARMS[arm]} | {f(st['vqa/accuracy'])} | " +
                     " | ".join(f(st[f'vqa/accuracy_{t}']) for t in TYPES) +
                     f" | {f(st['caption/cider'])} | {f(st['caption/exact'])} | {f(val[arm]['vqa/accuracy'])} |")
    lines += ["", "![test VQA per question type and caption CIDEr-D per arm, mean ± std over seeds]"
              "(prefixlm_report.png)", "", "Differences paired by seed (test, mean ± std over seeds):", ""]
    for arm, base, what in (("vq", "continuous", "VQ codes vs continuous ViT"),
                            ("vq_features", "continuous", "frozen VQ-VAE vectors vs continuous ViT (the frozen "
                                                          "reconstruction encoder)"),
                            ("vq", "vq_features", "VQ codes vs the same VQ-VAE's vectors (the rounding)"),
                            ("causal", "continuous", "fully causal vs bidirectional prefix")):
        vqa, cider = paired(rows, arm, base, "vqa/accuracy"), paired(rows, arm, base, "caption/cider")
        if vqa and cider:
            lines.append(f"- {what}: VQA {100 * vqa[0]:+.1f} ± {100 * vqa[1]:.1f} points, CIDEr-D "
                         f"{cider[0]:+.3f} ± {cider[1]:.3f} (n={vqa[2]}).")
    return "\n".join(lines + ["", END])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", default=os.path.join(ROOT, "data", "tfds"))
    p.add_argument("--workdir", default=os.path.join(ROOT, "workdirs", "prefixlm_report"))
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every step count")
    p.add_argument("--vqvae_steps", type=int, default=300)
    p.add_argument("--pretrain_steps", type=int, default=250)
    p.add_argument("--chat_steps", type=int, default=350)
    p.add_argument("--eval_images", type=int, default=256)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--runs_file", default=os.path.join(HERE, "results", "runs", "prefixlm_report.jsonl"),
                   help="finished arms, one JSON line each; arms found here are not trained again ('' for none)")
    p.add_argument("--quick", action="store_true", help="toy sizes (scale 0.04, 16 images, seeds 0 1), no files")
    p.add_argument("--no_report", action="store_true", help="train (and store) the arms only")
    args = p.parse_args(argv)
    if args.quick:
        args.scale, args.eval_images, args.seeds = 0.04, 16, [0, 1]
        args.workdir = os.path.join(args.workdir, "quick")
    source = provenance(__file__, argv)  # the tree the runs come from, read before they start
    t0 = time.time()
    rows = run_arms(args, source, "" if args.quick else args.runs_file)
    from vlmjax.data.sources import scenes

    settings = {k: getattr(args, k) for k in ("scale", "vqvae_steps", "pretrain_steps", "chat_steps", "eval_images")}
    result = {**source, "seeds": args.seeds, "arms": args.arms, "settings": settings,
              "splits": {"choices": "validation", "reported": "test"},
              "arm_commits": sorted({r.get("commit", "unknown") for r in rows}), "runs": rows,
              "blind": scenes.blind_vqa_prior(args.data_dir, "default", args.eval_images)[0],
              "total_seconds": round(time.time() - t0, 1)}
    if args.quick:
        print(markdown(rows, result))
    if args.quick or args.no_report:
        return
    publish_study("prefixlm_report", result, rows, plot, PLOT, markdown, DOC, "Prefix-LM VLM", BEGIN, END)


if __name__ == "__main__":
    main()
