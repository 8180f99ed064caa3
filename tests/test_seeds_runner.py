"""benchmarks/seeds.py: mean ± std against the textbook formula, the test-split guard, and a real two-seed run whose
evaluators read the split asked for."""
import json
import os
import statistics
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import seeds  # noqa: E402


def test_git_commit_dirty_ignores_study_outputs(tmp_path):
    """A runs file or docs block committed between sittings does not make the next sitting's tree dirty; code does."""
    import subprocess

    def git(*a):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=tmp_path, check=True,
                       capture_output=True)

    for path in ("vlmjax/x.py", "benchmarks/results/runs/s.jsonl", "docs/s.md"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("0\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "c")
    assert seeds.git_commit(str(tmp_path))[1] is False
    (tmp_path / "benchmarks/results/runs/s.jsonl").write_text("0\n1\n")
    (tmp_path / "docs/s.md").write_text("1\n")
    commit, dirty = seeds.git_commit(str(tmp_path))
    assert len(commit) == 40 and dirty is False
    (tmp_path / "vlmjax/x.py").write_text("1\n")
    assert seeds.git_commit(str(tmp_path))[1] is True


def test_summarize_matches_sample_statistics():
    per_seed = {"0": {"eval/a": 0.5, "eval/b": 1.0}, "1": {"eval/a": 0.7, "eval/b": 3.0}, "2": {"eval/a": 0.9}}
    s = seeds.summarize(per_seed)
    assert s["eval/a"]["mean"] == pytest.approx(statistics.mean([0.5, 0.7, 0.9]))
    assert s["eval/a"]["std"] == pytest.approx(statistics.stdev([0.5, 0.7, 0.9]))
    assert s["eval/b"] == {"mean": pytest.approx(2.0), "std": pytest.approx(statistics.stdev([1.0, 3.0])), "n": 2}
    assert seeds.summarize({"0": {"eval/a": 0.3}})["eval/a"]["std"] == 0.0
    result = {"split": "validation", "commit": "abc", "dirty": False, "seeds": [0, 1, 2], "command": "x",
              "summary": s}
    assert "| `eval/a` | 0.7000 ± 0.2000 | 3 |" in seeds.table(result)


def test_test_split_is_read_once(tmp_path, capsys):
    out = tmp_path / "seeds_r_test.json"
    out.write_text(json.dumps({"commit": "0123456789ab"}))
    rc = seeds.main(["--name", "r", "--config", "experiments/vit_scenes.py:runlocal", "--split", "test",
                     "--out_dir", str(tmp_path)])
    assert rc == 2
    assert "read once per final recipe" in capsys.readouterr().err
    assert json.loads(out.read_text()) == {"commit": "0123456789ab"}  # untouched


def test_an_experiment_from_another_checkout_is_refused(tmp_path, capsys, monkeypatch):
    # a git worktree whose editable install points at the main checkout would train that checkout's config
    monkeypatch.setattr(seeds, "experiment_file", lambda spec: "/elsewhere/experiments/vit_scenes.py")
    rc = seeds.main(["--name", "r", "--config", "vit_scenes:runlocal", "--out_dir", str(tmp_path)])
    assert rc == 2 and "outside this checkout" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    monkeypatch.undo()
    assert seeds.experiment_file("vit_scenes:runlocal").startswith(os.path.realpath(ROOT))


def test_two_seeds_on_validation(tmp_path, scenes_tiny_dir, monkeypatch):
    rc = seeds.main(["--name", "tiny", "--config", "experiments/vit_scenes.py:runlocal", "--seeds", "0,1",
                     "--workdir_root", str(tmp_path / "w"), "--out_dir", str(tmp_path),
                     "--", "--config.total_steps=3", f"--config.data.data_dir={scenes_tiny_dir}",
                     "--config.checkpoint.every_steps=3"])
    assert rc == 0
    result = json.loads((tmp_path / "seeds_tiny_validation.json").read_text())
    assert result["seeds"] == [0, 1] and result["split"] == "validation"
    assert result["config_file"] == os.path.join("experiments", "vit_scenes.py") and len(result["config_sha256"]) == 64
    assert result["resolved_config_sha256"] == seeds.resolved_config_sha256("experiments/vit_scenes.py:runlocal")
    for s in ("0", "1"):
        workdir = tmp_path / "w" / "tiny" / f"seed{s}"
        cfg = json.loads((workdir / "config.json").read_text())
        assert cfg["seed"] == int(s)
        assert all(e["data"]["split"] == "validation" for e in cfg["evals"].values())  # training never reads test
        loss = "eval/classification/loss"
        logged = [r for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
                  if loss in r][-1]  # the run's own last validation eval: the same checkpoint and data
        assert result["per_seed"][s][loss] == pytest.approx(logged[loss], rel=1e-5)
        curve = result["validation_curves"][s]  # every evaluation the training logged, as logged
        assert curve[-1]["step"] == logged["step"] and curve[-1][loss] == logged[loss]
        assert all(set(c) == {"step"} | {k for k in c if k.startswith("eval/")} for c in curve)
    losses = [result["per_seed"][s]["eval/classification/loss"] for s in ("0", "1")]
    assert losses[0] != losses[1]  # the seed reaches the run
    # a shift test of the same models (--eval_data): the finished workdir is only evaluated; no trainer starts (a
    # finished one would repeat its last evaluation on the training data)
    started, run = [], seeds.subprocess.run
    monkeypatch.setattr(seeds.subprocess, "run", lambda cmd, **kw: (cmd[1] == "-m" and started.append(cmd[2]))
                        or run(cmd, **kw))  # python -m <module>; git's calls pass through
    assert seeds.main(["--name", "tiny", "--config", "experiments/vit_scenes.py:runlocal", "--seeds", "0",
                       "--workdir_root", str(tmp_path / "w"), "--out_dir", str(tmp_path), "--eval_data",
                       "scenes/tiny", "--", "--config.total_steps=3", f"--config.data.data_dir={scenes_tiny_dir}",
                       "--config.checkpoint.every_steps=3"]) == 0
    assert started == ["vlmjax.cli.evaluate"]
    monkeypatch.undo()
    shifted = json.loads((tmp_path / "seeds_tiny_validation_scenes_tiny.json").read_text())
    assert shifted["per_seed"]["0"]["eval/classification/loss"] == pytest.approx(losses[0], rel=1e-5)
    assert result["summary"]["eval/classification/loss"]["mean"] == pytest.approx(sum(losses) / 2)
    # a later sitting in a fresh checkout (no workdirs): both seeds come from the runs file, nothing trains
    rc = seeds.main(["--name", "tiny", "--config", "experiments/vit_scenes.py:runlocal", "--seeds", "0,1",
                     "--workdir_root", str(tmp_path / "fresh"), "--out_dir", str(tmp_path),
                     "--", "--config.total_steps=3", f"--config.data.data_dir={scenes_tiny_dir}",
                     "--config.checkpoint.every_steps=3"])
    again = json.loads((tmp_path / "seeds_tiny_validation.json").read_text())
    assert rc == 0 and not (tmp_path / "fresh").exists()
    assert again["per_seed"] == result["per_seed"] and again["seed_commits"] == result["seed_commits"]
    rows = [json.loads(line) for line in (tmp_path / "runs" / "seeds.jsonl").read_text().splitlines()]
    assert [(r["seed"], r["eval_data"]) for r in rows] == [(0, None), (1, None), (0, "scenes/tiny")]
    # each row names the commit its training started from, read from the workdir: the shift row (no trainer) too
    head = seeds.git_commit()
    assert [r["trained_at"] for r in rows] == [[{"commit": head[0], "dirty": head[1], "from_step": 0}]] * 3
    # a second stage chained on the first: seed 1 starts from the first stage's seed 1, and no seed trains when
    # the stage it starts from has no workdir
    stage2 = ["--name", "tiny2", "--config", "experiments/vit_scenes.py:runlocal", "--workdir_root",
              str(tmp_path / "w"), "--out_dir", str(tmp_path), "--", "--config.total_steps=3",
              f"--config.data.data_dir={scenes_tiny_dir}", "--config.checkpoint.every_steps=3",
              f"--config.init_from.workdir={tmp_path / 'w' / 'tiny'}/seed{{seed}}", "--config.init_from.include=.*"]
    assert seeds.main(["--seeds", "1", *stage2]) == 0
    cfg = json.loads((tmp_path / "w" / "tiny2" / "seed1" / "config.json").read_text())
    assert cfg["init_from"]["workdir"] == str(tmp_path / "w" / "tiny" / "seed1")
    with pytest.raises(SystemExit, match="seed 7 starts from --config.init_from.workdir=.*/tiny/seed7, which does not"):
        seeds.main(["--seeds", "7", *stage2])
    assert not (tmp_path / "w" / "tiny2" / "seed7").exists()
    row = json.loads((tmp_path / "runs" / "seeds.jsonl").read_text().splitlines()[-1])
    assert row["seed"] == 1 and any(a.endswith("/seed{seed}") for a in row["overrides"])  # kept as written


def test_a_resumed_workdir_lists_each_training_segment(tmp_path, monkeypatch):
    """A seed stopped at a checkpoint and resumed in a later sitting, at another commit: both segments are listed."""
    commits = iter([("a" * 40, False), ("b" * 40, True)])
    monkeypatch.setattr(seeds, "git_commit", lambda root=None: next(commits))
    seeds.record_training_start(str(tmp_path / "w"))
    (tmp_path / "w" / "checkpoints" / "600").mkdir(parents=True)
    (tmp_path / "w" / "checkpoints" / "600.orbax-checkpoint-tmp-1").mkdir()  # an unfinished save: not a step
    seeds.record_training_start(str(tmp_path / "w"))
    assert seeds.trained_at(str(tmp_path / "w")) == [{"commit": "a" * 40, "dirty": False, "from_step": 0},
                                                     {"commit": "b" * 40, "dirty": True, "from_step": 600}]
    assert seeds.trained_at(str(tmp_path / "none")) == []


def test_checkpoints_without_their_config_are_not_resumed(tmp_path):
    """A workdir whose config.json is gone but whose checkpoints are there (deleted while a stopped trainer was
    still saving) stops the runner, naming it; with its config.json, or with no checkpoint, it goes on."""
    w = tmp_path / "w"
    seeds.check_resumable(str(w))  # nothing there yet
    (w / "checkpoints" / "600").mkdir(parents=True)
    with pytest.raises(SystemExit, match=f"{w} holds checkpoints \\(steps \\[600\\]\\) but no config.json"):
        seeds.check_resumable(str(w))
    (w / "config.json").write_text("{}")
    seeds.check_resumable(str(w))


def test_a_row_trained_with_another_resolved_config_is_trained_again(capsys):
    """The experiment file's sha256 misses a change in a file it imports; the resolved config's does not."""
    sha = seeds.resolved_config_sha256("vit_scenes:runlocal")
    assert len(sha) == 64 and sha == seeds.resolved_config_sha256("experiments/vit_scenes.py:runlocal")
    assert sha != seeds.resolved_config_sha256("vit_scenes")  # another variant resolves to another config
    recipe = {"name": "r", "config": "vit_scenes:runlocal", "split": "validation"}
    old = {**recipe, "seed": 0, "commit": "a" * 40}  # written before the field existed: matches on the recipe
    same = {**recipe, "seed": 1, "commit": "b" * 40, "resolved_config_sha256": sha}
    changed = {**recipe, "seed": 2, "commit": "c" * 40, "resolved_config_sha256": "0" * 64}
    done = [old, same, changed]
    assert seeds.finished_row(done, recipe, 0, sha) is old
    assert seeds.finished_row(done, recipe, 1, sha) is same
    assert seeds.finished_row(done, recipe, 2, sha) is None
    assert "seed 2: the runs-file row (commit cccccccccc) was trained with another resolved config" in \
        capsys.readouterr().out
    assert seeds.finished_row(done, {**recipe, "split": "test"}, 1, sha) is None


def test_parse_eval_lines():
    assert seeds.parse_eval_lines("resumed ...\neval/a/accuracy=0.5\neval/b/loss=1.25e-05\nfinal: x=1\n") == {
        "eval/a/accuracy": 0.5, "eval/b/loss": 1.25e-05}


def test_style_table_reads_each_cell_from_its_own_file(tmp_path):
    """benchmarks/style_table.py: a run's own file for the data it trained on, the --eval_data file otherwise, '--'
    for a missing one, mean ± std over the seeds."""
    import style_table

    def write(run, eval_data, values, metric="eval/classification/accuracy"):
        per_seed = {str(i): {metric: v} for i, v in enumerate(values)}
        path = seeds.result_path(str(tmp_path), run, "validation", eval_data)
        with open(path, "w") as f:
            json.dump({"summary": seeds.summarize(per_seed)}, f)

    write("vit_dark", None, [0.9, 0.8, 1.0])              # trained and evaluated on scenes/default
    write("vit_dark", "scenes/texture", [0.5])
    write("vit_styles", "scenes/default", [0.95])          # trained on scenes/styles, evaluated on dark
    write("vit_styles", None, [0.1])                        # its own (styles mix) file is no column of the table
    write("vit_styles", "scenes/light", [0.7], "eval/test/accuracy")  # the evaluator's former name
    rows = {line.split(" | ")[1]: line for line in style_table.table("validation", str(tmp_path)).splitlines()
            if line.startswith("| ") and "`scenes/" in line}
    assert rows["`scenes/default`"].endswith("| 0.900 ± 0.100 (3) | -- | 0.500 (1) |")
    assert rows["`scenes/styles`"].endswith("| 0.950 (1) | 0.700 (1) | -- |")
    assert len(rows) == 2  # rows of runs without any file are left out


def test_compare_table_puts_each_file_in_its_own_column(tmp_path):
    import compare_table

    paths = []
    for name, values in (("a", [0.5, 0.7, 0.9]), ("b", [0.25])):
        p = tmp_path / f"seeds_{name}_validation.json"
        p.write_text(json.dumps({"name": f"run_{name}", "config": name, "split": "validation", "commit": "0123456789",
                                 "summary": seeds.summarize({str(i): {"eval/m": v} for i, v in enumerate(values)})}))
        paths.append(str(p))
    lines = compare_table.table(paths, ["eval/m", "eval/absent"]).splitlines()
    assert lines[0] == "| metric | `run_a` (`a`, validation, 0123456) | `run_b` (`b`, validation, 0123456) |"
    assert lines[2] == "| `eval/m` | 0.700 ± 0.200 (3) | 0.250 (1) |"
    assert lines[3] == "| `eval/absent` | -- | -- |"


def test_curve_plot_means_the_seeds_at_their_shared_steps(tmp_path):
    """benchmarks/curve_plot.py: per-seed curves from a seeds result, the mean and sample std at the steps every
    seed evaluated, and a PNG of them."""
    import curve_plot

    curves = {"0": [{"step": 600, "eval/a": 0.5}, {"step": 1200, "eval/a": 0.7, "eval/b": 1.0}],
              "1": [{"step": 600, "eval/a": 0.3}, {"step": 900, "eval/a": 0.4}, {"step": 1200, "eval/a": 0.9}]}
    result = {"name": "r", "split": "validation", "commit": "abcdef0123", "validation_curves": curves}
    per_seed = curve_plot.seed_curves(result, "eval/a")
    assert list(per_seed["1"][0]) == [600, 900, 1200] and list(curve_plot.seed_curves(result, "eval/b")) == ["0"]
    steps, mean, std = curve_plot.mean_curve(per_seed)
    assert list(steps) == [600, 1200]  # 900: seed 1 only
    np.testing.assert_allclose(mean, [0.4, 0.8])
    np.testing.assert_allclose(std, [np.std([0.5, 0.3], ddof=1), np.std([0.7, 0.9], ddof=1)])
    pytest.importorskip("matplotlib")
    path = tmp_path / "seeds_r_validation.json"
    path.write_text(json.dumps(result))
    drawn = curve_plot.plot([str(path)], ["eval/a", "eval/b"], str(tmp_path / "c.png"))
    assert drawn[str(path)]["eval/b"] == [[1200], [1.0], [0.0]]
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
