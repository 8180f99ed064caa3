"""The CLIs' console: --help lists each CLI's own flags, library INFO logs only with -v, an ETA without compile time."""
import os
import re
import subprocess
import sys
import time

import jax
import pytest

from test_core import tiny_config
from vlmjax.core.loop import Trainer, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


@pytest.mark.parametrize("cli,own", [
    ("vlmjax-train", ["--config:", "--workdir:", "--[no]dry_run:", "--num_devices:", "--[no]allow_config_change:"]),
    ("vlmjax-eval", ["--workdir:", "--step:", "--[no]json:"]),
    ("vlmjax-zeroshot", ["--workdir:", "--image:", "--labels:", "--eval:"]),
])
def test_help_lists_own_flags(cli, own):
    out = subprocess.run([os.path.join(BIN, cli), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    for flag in own + ["-v,--verbosity:"]:
        assert flag in text, (flag, text)
    assert f"\n    {cli} --" in text  # the module docstring's examples
    assert "--jax_" not in text  # library flags stay behind --helpfull


def _workdir_without_checkpoint(tmp_path, data_dir):
    from vlmjax.core import config as config_lib

    config = config_lib.load_with_overrides(os.path.join(ROOT, "experiments/vit_scenes.py:runlocal"),
                                            [("data.data_dir", data_dir)])
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(config_lib.to_json(config))
    return str(workdir)


def test_library_info_logs_only_with_verbosity(scenes_tiny_dir, tmp_path):
    # vlmjax-eval opens the eval split (tfds logs "Load dataset info" at INFO), then finds no checkpoint: exit 2.
    workdir = _workdir_without_checkpoint(tmp_path, scenes_tiny_dir)
    runs = {}
    for name, extra in [("quiet", []), ("verbose", ["-v"])]:
        out = subprocess.run([os.path.join(BIN, "vlmjax-eval"), "--workdir", workdir] + extra, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 2, out.stderr[-2000:]
        assert "no checkpoint to evaluate" in out.stderr
        runs[name] = out.stdout + out.stderr
    assert "Load dataset info" in runs["verbose"]
    assert "Load dataset info" not in runs["quiet"]
    assert not [line for line in runs["quiet"].splitlines() if re.match(r"[IW]\d{4} ", line)], runs["quiet"]


def test_eta_excludes_compilation(tmp_path, capsys, monkeypatch):
    compile_step = Trainer.compile_step

    def slow_compile(self, *args):
        out = compile_step(self, *args)
        time.sleep(6)
        return out

    monkeypatch.setattr(Trainer, "compile_step", slow_compile)
    config = tiny_config(total_steps=6, log_every_steps=3, evals={}, **{"debug.sleep_per_step": 0.3})
    train(config, str(tmp_path), devices=jax.devices()[:1])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("step 3/6"))
    minutes, seconds = map(int, re.search(r"ETA (\d+)m(\d+)s", line).groups())
    # 3 steps left at ~0.3 s each: about 1 s; counting the 6 s of compilation it would say about 7 s.
    assert 60 * minutes + seconds <= 3, line


def test_a_quiet_evaluation_is_written_not_printed(tmp_path, capsys):
    """`config.evals.<name>.quiet`: a study's test evaluation lands in metrics.jsonl while the console, which a
    sitting reads, shows only that it ran."""
    from vlmjax.core.metrics import read_metrics

    ev = dict(type="classification", data=dict(split="test", preprocess=tiny_config().data.preprocess))
    config = tiny_config(total_steps=2, log_every_steps=2, evals={"val": ev, "held": {**ev, "quiet": True}})
    train(config, str(tmp_path), devices=jax.devices()[:1])
    out = capsys.readouterr().out
    assert re.search(r"eval val @ 2 \(.*\): accuracy=", out)
    assert re.search(r"eval held @ 2 \(.*\): in metrics.jsonl \(quiet\)", out) and "held @ 2 (" in out
    assert not re.search(r"eval held @ 2 \(.*\): accuracy=", out)
    final = [r for r in read_metrics(str(tmp_path)) if "eval/held/accuracy" in r]
    assert final and final[-1]["eval/held/accuracy"] == final[-1]["eval/val/accuracy"]  # same split, same params
