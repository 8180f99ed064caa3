r"""A markdown table comparing seeds-runner results side by side: one column per JSON file, one row per metric.

    python benchmarks/compare_table.py benchmarks/results/seeds_siglip_scenes_validation.json \
        benchmarks/results/seeds_siglip_presence_validation.json --metrics eval/multilabel/mAP,eval/zeroshot_1obj/accuracy

Each cell is `mean ± std (n)` from the file's summary (`benchmarks/seeds.py` writes them), '--' when the file lacks
the metric; the header names each file's run (the seeds runner's `--name`), config, split and commit, so a table in
docs/ says where it came from, and two recipes of one config (differing by an override or the commit) are told apart.
"""
import argparse
import json
import os


def column(path: str) -> dict:
    with open(path) as f:
        result = json.load(f)
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--metrics", default="", help="comma-separated; default: every metric of any file")
    args = ap.parse_args()
    print(table(args.files, [m for m in args.metrics.split(",") if m] or None))


if __name__ == "__main__":
    main()
