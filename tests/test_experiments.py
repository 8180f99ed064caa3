"""Experiments are a package (vlmjax.experiments): reachable by name or by path, one variant parser."""
import os

import pytest

from vlmjax.core import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_by_name_and_by_path_are_the_same_experiment(monkeypatch, tmp_path):
    by_name = config_lib.load_experiment("siglip_b16:runlocal")
    monkeypatch.chdir(tmp_path)  # a name needs no working directory
    assert config_lib.load_experiment("clip_scenes").loss == "softmax"
    by_path = config_lib.load_experiment(os.path.join(ROOT, "experiments", "siglip_b16.py:runlocal"))
    assert by_name.to_dict() == by_path.to_dict()
    assert "common" not in config_lib.experiment_names() and "vit_scenes" in config_lib.experiment_names()


def test_unknown_name_lists_the_experiments():
    with pytest.raises(ValueError, match=r"^--config 'siglip_b61': unknown experiment 'siglip_b61' \(did you mean "
                                         r"'siglip_b16'\?\); known experiments: clip_b32, .*vit_scenes"):
        config_lib.load_experiment("siglip_b61:runlocal")
    with pytest.raises(FileNotFoundError, match="no experiment file"):
        config_lib.load_experiment("experiments/nope.py")


def test_own_experiment_file_outside_the_package(tmp_path):
    mine = tmp_path / "mine.py"
    mine.write_text("from vlmjax.experiments import vit_scenes\nfrom vlmjax.experiments.common import parse_arg\n\n"
                    "def get_config(arg=None):\n    parse_arg(arg, ('small',), __file__)\n"
                    "    c = vit_scenes.get_config('runlocal')\n    c.total_steps = 3\n    return c\n")
    assert config_lib.load_experiment(f"{mine}:small").total_steps == 3
    with pytest.raises(ValueError, match=r"^experiments/mine.py:smal: unknown variant 'smal' \(did you mean 'small'"):
        config_lib.load_experiment(f"{mine}:smal")


def test_parse_arg_combined_variants():
    from vlmjax.experiments.common import parse_arg

    assert parse_arg("a,b", ("a", "b", "c"), "x.py", combine=True) == {"a", "b"}
    assert parse_arg("", ("a",), "x.py") is None
    with pytest.raises(ValueError, match="known variants: a comma-separated subset of a, b"):
        parse_arg("a,d", ("a", "b"), "x.py", combine=True)


def test_a_checkout_without_install_finds_the_experiments(tmp_path):
    """PYTHONPATH=<checkout> and no `pip install` (a device machine): experiments/ is still vlmjax.experiments."""
    import subprocess
    import sys

    code = ("import sys; sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
            f"sys.path.insert(0, {ROOT!r}); "
            "from vlmjax.core.config import experiment_module, load_experiment; "
            "assert load_experiment('clip_scenes:runlocal').loss == 'softmax'; "
            "print(experiment_module('paligemma_like').__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "vlmjax.experiments.paligemma_like", out.stderr[-2000:]
