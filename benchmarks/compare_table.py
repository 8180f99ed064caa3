r"""A markdown table comparing seeds-runner results side by side: one column per JSON file, one row per metric.

    python benchmarks/compare_table.py benchmarks/results/seeds_siglip_scenes_validation.json \
        benchmarks/results/seeds_siglip_presence_validation.json --metrics eval/multilabel/mAP,eval/zeroshot_1obj/accuracy

Each cell is `mean ± std (n)` from the file's summary (`benchmarks/seeds.py` writes them), '--' when the file lacks
the metric; the header names each file's run (the seeds runner's `--name`), config, split and commit, so a table in
docs/ says where it came from, and two recipes of one config (differing by an override or the commit) are told apart.
`--paired` (two files) adds each seed's difference B - A with their mean ± std and paired t.
"""
import argparse
import json
import os


def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def column(path: str) -> dict:
    result = _load(path)
    data = f" of {result['eval_data']}" if result.get("eval_data") else ""
    name = result.get("name") or os.path.basename(path)
    return {"title": f"`{name}` (`{result.get('config', '?')}`, {result['split']}{data}, "
                     f"{str(result.get('commit', '?'))[:7]})", "summary": result["summary"]}


def fmt(s, spec: str = "{:.3f}") -> str:
    """'mean ± std (n)' of one summary entry ('mean (1)' for one seed), '--' for None; numbers by `spec`."""
    if s is None:
        return "--"
    std = f" ± {spec.format(s['std'])}" if s["n"] > 1 else ""
    return f"{spec.format(s['mean'])}{std} ({s['n']})"


def table(paths, metrics=None) -> str:
    cols = [column(p) for p in paths]
    metrics = metrics or sorted({m for c in cols for m in c["summary"]})
    rows = ["| metric | " + " | ".join(c["title"] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    rows += [f"| `{m}` | " + " | ".join(fmt(c["summary"].get(m)) for c in cols) + " |" for m in metrics]
    return "\n".join(rows)


def paired(path_a: str, path_b: str, metrics=None) -> str:
    """A markdown table of B - A seed by seed (the seeds both files have): per-seed differences, their mean ± std
    and the paired t (mean / (std / sqrt(n))); for two arms that share their seeds' upstream runs."""
    a, b = _load(path_a), _load(path_b)
    seeds = sorted(set(a["per_seed"]) & set(b["per_seed"]), key=int)
    metrics = metrics or sorted(set(a["summary"]) & set(b["summary"]))
    rows = [f"| metric | {' | '.join(f'seed {s}' for s in seeds)} | mean ± std | paired t |",
            "|---|" + "---|" * (len(seeds) + 2)]
    for m in metrics:
        d = [b["per_seed"][s][m] - a["per_seed"][s][m] for s in seeds
             if m in a["per_seed"][s] and m in b["per_seed"][s]]
        if len(d) < 2:
            continue
        mean = sum(d) / len(d)
        std = (sum((x - mean) ** 2 for x in d) / (len(d) - 1)) ** 0.5
        t = mean / (std / len(d) ** 0.5) if std > 0 else float("inf")
        rows.append(f"| `{m}` | " + " | ".join(f"{x:+.3f}" for x in d) + f" | {mean:+.3f} ± {std:.3f} | {t:.2f} |")
    return (f"B - A, B = `{b.get('name')}`, A = `{a.get('name')}` ({a['split']}; seeds {', '.join(seeds)})\n\n"
            + "\n".join(rows))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--metrics", default="", help="comma-separated; default: every metric of any file")
    ap.add_argument("--paired", action="store_true", help="two files: also the seed-by-seed differences")
    args = ap.parse_args()
    metrics = [m for m in args.metrics.split(",") if m] or None
    print(table(args.files, metrics))
    if args.paired:
        if len(args.files) != 2:
            raise SystemExit("--paired compares two files")
        print("\n" + paired(*args.files, metrics))


if __name__ == "__main__":
    main()
