"""The numbers in README.md and docs/ against the result files they cite (issue 16: every quoted number has a
committed JSON, and docs/ tables are generated from those files).

- every `benchmarks/results/...json` path the docs name (with shell braces expanded) exists and parses;
- every table whose column headers are `benchmarks/compare_table.py` titles ("`config` (split, commit)") holds,
  in each `eval/...` row, exactly the cell compare_table prints from the matching seeds-runner JSON;
- the robustness table of docs/robustness.md is what `benchmarks/style_table.py` prints now.
No jax: these read text and JSON only.
"""
import glob
import itertools
import json
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import compare_table  # noqa: E402
import style_table  # noqa: E402

DOCS = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
RESULT_PREFIXES = ("seeds_", "multilabel_diagnosis_", "prompt_sweep_")
# a compare_table column title: `name` (`config`, split[ of data], commit7)
TITLE = re.compile(r"^`([^`]+)` \(`([^`]+)`, (validation|test|train)(?: of ([^,]+))?, ([0-9a-f]{7})\)$")


def expand_braces(text: str) -> list:
    """'a_{x,y}_b' -> ['a_x_b', 'a_y_b'] (any number of brace groups, no nesting), as a shell expands them."""
    parts = re.split(r"\{([^{}]*)\}", text)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def cited_result_files(text: str) -> set:
    """Result JSON file names cited in `text`, braces expanded: every `benchmarks/results/<name>.json`, and every
    bare file name in backticks that names a result (`seeds_*`, `multilabel_diagnosis_*`, `prompt_sweep_*`: docs cite
    those by name alone). Other bare names in backticks (`config.json`, `launch.json`) are workdir files."""
    out = set()
    for m in re.finditer(r"benchmarks/results/([\w{},.-]+?\.json)", text):
        out.update(expand_braces(m.group(1)))
    for m in re.finditer(r"`([\w{},-]+\.json)`", text):
        out.update(f for f in expand_braces(m.group(1)) if f.startswith(RESULT_PREFIXES))
    return out


def test_expand_braces():
    assert expand_braces("s_{a,b}_{v,t}.json") == ["s_a_v.json", "s_a_t.json", "s_b_v.json", "s_b_t.json"]
    assert expand_braces("plain.json") == ["plain.json"]


def test_cited_result_files_reads_both_forms():
    text = "see `benchmarks/results/x_{a,b}.json` and `seeds_y_test.json`, not `config.json`"
    assert cited_result_files(text) == {"x_a.json", "x_b.json", "seeds_y_test.json"}


@pytest.mark.parametrize("doc", DOCS, ids=[os.path.relpath(d, ROOT) for d in DOCS])
def test_cited_result_files_exist(doc):
    with open(doc) as f:
        names = cited_result_files(f.read())
    for name in sorted(names):
        path = os.path.join(RESULTS, name)
        assert os.path.exists(path), f"{os.path.relpath(doc, ROOT)} cites {name}, which is not in benchmarks/results"
        with open(path) as f:
            json.load(f)


def seeds_results() -> list:
    out = []
    for path in sorted(glob.glob(os.path.join(RESULTS, "seeds_*.json"))):
        with open(path) as f:
            out.append(json.load(f))
    return out


def tables(text: str):
    """Yields each markdown table as a list of rows, each a list of stripped cells."""
    block = []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif block:
            yield block
            block = []


def generated_tables(doc: str):
    """(table rows, [result per column]) for the tables of `doc` whose column headers are compare_table titles."""
    with open(doc) as f:
        text = f.read()
    results = seeds_results()
    for rows in tables(text):
        titles = [TITLE.match(h) for h in rows[0][1:]]
        if not titles or not all(titles):
            continue
        cols = []
        for m in titles:
            name, config, split, data, commit = m.groups()
            found = [r for r in results if r.get("name") == name and r.get("config") == config and r["split"] == split
                     and r["commit"].startswith(commit) and (r.get("eval_data") or None) == data]
            assert len(found) == 1, f"{os.path.relpath(doc, ROOT)}: column {m.group(0)} matches {len(found)} results"
            cols.append(found[0])
        yield rows, cols


@pytest.mark.parametrize("doc", DOCS, ids=[os.path.relpath(d, ROOT) for d in DOCS])
def test_generated_tables_match_their_json(doc):
    checked = 0
    for rows, cols in generated_tables(doc):
        for row in rows[2:]:
            metric = row[0].strip("`")
            if not metric.startswith("eval/"):
                continue
            for cell, result in zip(row[1:], cols):
                want = compare_table.fmt(result["summary"].get(metric))
                assert cell == want, (f"{os.path.relpath(doc, ROOT)}: `{metric}` of {result['name']} "
                                      f"({result['split']}) reads {cell!r}, its JSON gives {want!r}")
                checked += 1
    if doc.endswith("contrastive.md"):  # the doc with generated tables: the check must have found them
        assert checked >= 20


def test_robustness_table_is_style_tables_output():
    with open(os.path.join(ROOT, "docs", "robustness.md")) as f:
        text = f.read()
    assert style_table.table("validation") in text


@pytest.mark.parametrize("study,doc", [("prefixlm_report", "prefixlm.md"), ("sigmoid_vs_softmax", "contrastive.md")])
def test_study_blocks_are_their_runners_output(study, doc):
    """A study's results block in docs/ is what its runner's `markdown` prints from the committed JSON."""
    module = __import__(study)
    with open(os.path.join(RESULTS, f"{study}.json")) as f:
        result = json.load(f)
    with open(os.path.join(ROOT, "docs", doc)) as f:
        assert module.markdown(result["runs"], result) in f.read()


def test_paired_differences_against_numpy(tmp_path):
    """compare_table --paired: per-seed B - A over the seeds both files have, mean ± sample std, paired t."""
    import numpy as np

    a = {"name": "a", "split": "validation", "summary": {"m": {}},
         "per_seed": {"0": {"m": 0.5}, "1": {"m": 0.7}, "2": {"m": 0.6}, "3": {"m": 0.1}}}
    b = {"name": "b", "split": "validation", "summary": {"m": {}},
         "per_seed": {"0": {"m": 0.6}, "1": {"m": 0.75}, "2": {"m": 0.9}}}
    paths = []
    for name, r in (("a", a), ("b", b)):
        paths.append(str(tmp_path / f"{name}.json"))
        with open(paths[-1], "w") as f:
            json.dump(r, f)
    d = np.array([0.1, 0.05, 0.3])
    t = d.mean() / (d.std(ddof=1) / np.sqrt(3))
    row = [line for line in compare_table.paired(*paths).splitlines() if line.startswith("| `m`")][0]
    assert row == f"| `m` | +0.100 | +0.050 | +0.300 | +{d.mean():.3f} ± {d.std(ddof=1):.3f} | {t:.2f} |"
