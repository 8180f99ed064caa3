"""`config.profile`: a jax.profiler trace of a window of train steps, written where TensorBoard's profile plugin
reads it; bad settings stop before compiling."""
import glob
import os

import jax
import pytest

from test_core import tiny_config
from vlmjax.core.loop import train


def test_profile_window_writes_one_trace(tmp_path, capsys):
    wd = str(tmp_path / "w")
    train(tiny_config(**{"total_steps": 4, "mesh.data": 1, "profile.start_step": 2, "profile.steps": 2}), wd,
          devices=jax.devices()[:1])
    traces = glob.glob(os.path.join(wd, "profile", "plugins", "profile", "*", "*.xplane.pb"))
    assert len(traces) == 1 and os.path.getsize(traces[0]) > 0
    assert "profile of steps 2-3 written to" in capsys.readouterr().out
    with open(traces[0], "rb") as f:  # the steps are annotated (StepTraceAnnotation) for the plugin's step view
        assert b"step_num" in f.read()


def test_no_trace_by_default_and_bad_settings_name_the_key(tmp_path):
    wd = str(tmp_path / "w")
    train(tiny_config(**{"total_steps": 2, "mesh.data": 1}), wd, devices=jax.devices()[:1])
    assert not os.path.exists(os.path.join(wd, "profile"))
    with pytest.raises(ValueError, match=r"config.profile: start_step=-1"):
        train(tiny_config(**{"profile.start_step": -1}), str(tmp_path / "bad"), devices=jax.devices()[:1])
    assert not os.path.exists(tmp_path / "bad" / "checkpoints")
