"""The README's quickstart, run as written: every command of its ```bash blocks and its ```python blocks, in order,
with /tmp/vlmjax replaced by a temporary folder and `data/tfds` holding `scenes/tiny` and a tokenizer trained on
it (what `make data` builds for the `:runlocal` variants)."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quickstart_blocks():
    """[(language, text)] of the fenced blocks of the README's '## Quickstart' section."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    section = readme.split("\n## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(bash|python)\n(.*?)```", section, flags=re.S)


def test_quickstart_has_commands():
    blocks = quickstart_blocks()
    assert [lang for lang, _ in blocks] == ["bash", "python"]
    assert "vlmjax-train" in blocks[0][1] and "vlmjax.load" in blocks[1][1]


@pytest.fixture(scope="module")
def quick_home(tmp_path_factory, scenes_tiny_dir):
    """A working directory whose data/tfds has scenes/tiny and data/tfds/scenes_spm.model."""
    from vlmjax.data.tokenizer import dataset_texts, train_from_texts

    home = tmp_path_factory.mktemp("quick")
    data = home / "data" / "tfds"
    data.mkdir(parents=True)
    (data / "scenes").symlink_to(os.path.join(scenes_tiny_dir, "scenes"))
    train_from_texts(dataset_texts(scenes_tiny_dir, "scenes/tiny", max_examples=2000), str(data / "scenes_spm.model"))
    return home


def test_quickstart_runs_as_written(quick_home):
    out_root = str(quick_home / "out")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    for lang, text in quickstart_blocks():
        text = text.replace("/tmp/vlmjax", out_root)
        if lang == "python":
            r = subprocess.run([sys.executable, "-c", text], cwd=quick_home, env=env, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr[-3000:]
            assert "(1, 2)" in r.stdout and "[(" in r.stdout
            continue
        for line in text.splitlines():
            cmd = line.split("  #", 1)[0].strip()
            if not cmd:
                continue
            if cmd.startswith("python "):
                cmd = sys.executable + cmd[len("python"):]
            r = subprocess.run(cmd, shell=True, cwd=quick_home, env=env, capture_output=True, text=True)
            assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    assert os.path.exists(os.path.join(out_root, "vit", "checkpoints"))
    assert os.path.exists(os.path.join(out_root, "siglip", "metrics.jsonl"))
