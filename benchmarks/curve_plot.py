r"""Validation curves of seeds-runner results: one panel per metric, one colour per JSON file, a thin line per seed
and the seed mean as a thick one (matplotlib).

    python benchmarks/curve_plot.py benchmarks/results/seeds_prefixlm64_chat_validation.json \
        benchmarks/results/seeds_prefixlm64_chat2400_validation.json \
        --metrics eval/vqa/accuracy,eval/vqa/accuracy_relation --out docs/prefixlm64_chat_curves.png

The curves are the `validation_curves` that `benchmarks/seeds.py` stores: every evaluation a seed's training
logged (validation only, so a curve may be read to choose a step count). The legend names each file's run, split,
commit and number of seeds, as compare_table.py's header does.
"""
import argparse
import json
import os

import numpy as np


def seed_curves(result: dict, metric: str) -> dict:
    """{seed: (int[T] steps, float[T] values)} of `metric` in a seeds result's validation curves (seeds without it
    are left out)."""
    out = {}
    for seed, curve in sorted(result.get("validation_curves", {}).items()):
        points = [(c["step"], c[metric]) for c in curve if metric in c]
        if points:
            steps, values = zip(*points)
            out[seed] = (np.asarray(steps), np.asarray(values, np.float64))
    return out


def mean_curve(curves: dict) -> tuple:
    """(int[T] steps, float[T] mean, float[T] std) over seeds at the steps every seed evaluated; std is the sample
    std (ddof=1, as seeds.py's summaries), 0 for one seed."""
    steps = sorted(set.intersection(*[set(s.tolist()) for s, _ in curves.values()])) if curves else []
    rows = np.array([[dict(zip(s.tolist(), v))[t] for t in steps] for s, v in curves.values()]).reshape(-1, len(steps))
    std = rows.std(0, ddof=1) if len(rows) > 1 else np.zeros(len(steps))
    return np.asarray(steps), rows.mean(0), std


def label(result: dict, path: str) -> str:
    return f"{result.get('name', os.path.basename(path))} ({result.get('split', '?')}, " \
           f"{str(result.get('commit', '?'))[:7]}, {len(result.get('validation_curves', {}))} seeds)"


def plot(paths, metrics, out: str) -> dict:
    """Writes the figure to `out`; returns {path: {metric: [steps, mean, std] as lists}} (what it drew)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = {}
    for p in paths:
        with open(p) as f:
            results[p] = json.load(f)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.8), squeeze=False)
    drawn = {p: {} for p in paths}
    for ax, metric in zip(axes[0], metrics):
        for i, (path, result) in enumerate(results.items()):
            colour = f"C{i}"
            curves = seed_curves(result, metric)
            for steps, values in curves.values():
                ax.plot(steps, values, color=colour, alpha=0.3, lw=1)
            if curves:
                steps, mean, std = mean_curve(curves)
                ax.plot(steps, mean, color=colour, lw=2.5, marker="o", label=label(result, path))
                drawn[path][metric] = [steps.tolist(), mean.tolist(), std.tolist()]
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return drawn


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--metrics", required=True, help="comma-separated metric names, one panel each")
    ap.add_argument("--out", required=True, help="the PNG to write (docs/...)")
    args = ap.parse_args(argv)
    drawn = plot(args.files, [m for m in args.metrics.split(",") if m], args.out)
    for path, metrics in drawn.items():
        for metric, (steps, mean, std) in metrics.items():
            print(f"{path} {metric}: " + ", ".join(f"{s}: {m:.3f} ± {d:.3f}" for s, m, d in zip(steps, mean, std)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
