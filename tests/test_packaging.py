"""Packaging: pyproject.toml's ranges, the constraints file that pins them for CI, and training without TensorFlow
(a [data] extra only: tfds reads ArrayRecord datasets, and tensorboard writes events, without it)."""
import os
import re
import subprocess
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~;\s]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_ranges_and_pins():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    deps = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    for r in deps:
        assert ">=" in r and "<" in r and "==" not in r, r  # compatible ranges, no exact pins
    assert not any(_name(r).startswith("tensorflow-cpu") for r in project["dependencies"])
    assert set(project["optional-dependencies"]) >= {"tpu", "cuda", "hf", "test", "data"}
    pins = {}
    for line in open(os.path.join(ROOT, "constraints.txt")):
        if line.strip() and not line.startswith("#"):
            name, _, version = line.strip().partition("==")
            pins[name.lower().replace("_", "-")] = version
    for r in deps:  # every dependency (extras included) is pinned for CI
        assert _name(r) in pins, r
    assert pins["jax"] == pins["jaxlib"]


def test_training_never_imports_tensorflow(scenes_tiny_dir, tmp_path):
    code = f"""
import sys
from importlib.machinery import PathFinder

class NoTensorFlow(PathFinder):  # as if tensorflow were not installed
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.split(".")[0] == "tensorflow" else PathFinder.find_spec(name, path, target)

sys.meta_path[sys.meta_path.index(PathFinder)] = NoTensorFlow
sys.argv = ["vlmjax-train", "--config", "vit_scenes:runlocal", "--workdir", {str(tmp_path / "w")!r},
            "--config.data.data_dir={scenes_tiny_dir}", "--config.total_steps=2", "--config.log_every_steps=1",
            "--config.evals={{}}"]
from vlmjax.cli import train
rc = train.main()
assert "tensorflow" not in sys.modules, "tensorflow was imported"
sys.exit(rc)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert os.path.isdir(tmp_path / "w" / "tb") and "step 2/2" in out.stdout
