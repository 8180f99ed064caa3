"""A run's relative paths resolve from any working directory; vlmjax-eval opens only the eval splits; a missing
dataset's error names the command that builds it."""
import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import ml_collections
import pytest

from vlmjax.core.run_paths import absolute_paths, launch_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_absolute_paths(tmp_path):
    for d in ("data/tfds", "other", "runs/a", "shards"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "spm.model").write_text("x")
    c = ml_collections.ConfigDict(dict(
        tokenizer="spm.model", data=dict(name="scenes/default", data_dir="data/tfds"),
        evals=dict(a=dict(data=dict(name="webdataset:shards/{0..3}.tar,/abs/*.tar", data_dir="other")),
                   b=dict(data=dict(name="x", data_dir="gs://bucket/tfds"))),
        init_from=dict(workdir="runs/a", path="missing/weights.npz")))
    absolute_paths(c, str(tmp_path))
    assert c.tokenizer == str(tmp_path / "spm.model")
    assert c.data.data_dir == str(tmp_path / "data/tfds")
    assert c.data.name == "scenes/default"
    assert c.evals.a.data.data_dir == str(tmp_path / "other")
    assert c.evals.a.data.name == f"webdataset:{tmp_path}/shards/{{0..3}}.tar,/abs/*.tar"
    assert c.evals.b.data.data_dir == "gs://bucket/tfds"
    assert c.init_from.workdir == str(tmp_path / "runs/a")
    assert c.init_from.path == "missing/weights.npz"  # names nothing there: left as written


def test_eval_from_another_directory_reads_only_eval_splits(scenes_tiny_dir, tmp_path, monkeypatch):
    from vlmjax.core.config import load_with_overrides
    from vlmjax.core.loop import train

    launch = tmp_path / "project"
    shutil.copytree(os.path.join(scenes_tiny_dir, "scenes"), launch / "tfds" / "scenes")
    monkeypatch.chdir(launch)
    workdir = str(tmp_path / "run")
    config = load_with_overrides(os.path.join(ROOT, "experiments/vit_scenes.py:runlocal"), [
        ("data.data_dir", "tfds"), ("total_steps", "2"), ("mesh.data", "1"),
        ("evals.classification.data.max_examples", "64"),
        ("checkpoint.async_save", "false")])
    final = train(config, workdir, devices=jax.devices()[:1])
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["data"]["data_dir"] == "tfds"  # as written: a resume compares like with like
    assert launch_dir(workdir) == str(launch)

    (info_path,) = glob.glob(str(launch / "tfds/scenes/tiny/*/dataset_info.json"))
    with open(info_path) as f:
        info = json.load(f)
    info["splits"] = [s for s in info["splits"] if s["name"] != "train"]  # opening it now fails: eval must not
    with open(info_path, "w") as f:
        json.dump(info, f)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run([sys.executable, "-m", "vlmjax.cli.evaluate", "--workdir", workdir],
                         cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("eval/classification/accuracy=")]
    assert line, out.stdout
    assert float(line[0].split("=")[1]) == pytest.approx(final["eval/classification/accuracy"], abs=1e-6)


@pytest.mark.parametrize("name,command", [
    ("scenes/tiny", "`make data` or `python -m vlmjax.data.scenes --data_dir {d} --config tiny`"),
    ("scenes/tiny_raw", "Build it with `python -m vlmjax.data.scenes --data_dir {d} --config tiny_raw`"),
    ("scenes", "`python -m vlmjax.data.scenes --data_dir {d} --config default`"),
    ("my_dataset", "docs/data.md"),
])
def test_missing_dataset_names_the_command(tmp_path, name, command):
    from vlmjax.data.pipeline import make_source

    cfg = ml_collections.ConfigDict(dict(name=name, data_dir=str(tmp_path)))
    with pytest.raises(FileNotFoundError) as e:
        make_source(cfg, "train")
    assert command.format(d=tmp_path) in str(e.value)
    assert f"config.data.name={name!r}" in str(e.value)


def test_run_without_launch_record_found_above_its_workdir(tmp_path, monkeypatch):
    from vlmjax.api import load_run_config

    project = tmp_path / "project"
    (project / "data/tfds").mkdir(parents=True)
    (project / "data/tfds/spm.model").write_text("x")
    workdir = project / "workdirs/old_run"  # written before launch.json existed
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps(
        {"data": {"data_dir": "data/tfds"}, "tokenizer": "data/tfds/spm.model"}))
    monkeypatch.chdir(tmp_path)
    config = load_run_config(str(workdir.relative_to(tmp_path)))
    assert config.data.data_dir == str(project / "data/tfds")
    assert config.tokenizer == str(project / "data/tfds/spm.model")
    assert launch_dir(str(tmp_path / "nowhere"), config) is None  # an absolute data_dir needs no base
