"""Bad input from a user: one line naming the key or file, exit code 2, nothing compiled first."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from test_core import tiny_config
from vlmjax import image_input
from vlmjax.core.config import experiment_module, experiment_names
from vlmjax.core.loop import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = [os.path.join(ROOT, "experiments", f"{name}.py") for name in experiment_names()]
# The variants each experiment documents: every one must still load, a typo of any must not.
VARIANTS = {"vit_scenes": ["runlocal"], "siglip_b16": ["runlocal"], "clip_b32": ["runlocal"],
            "vqvae_imagenet": ["runlocal"], "vqvae_scenes": ["vit", "runlocal", "vit,runlocal"],
            "paligemma_like": ["pretrain", "chat", "runlocal"], "prefixlm_scenes": ["pretrain", "chat", "runlocal"],
            "prefixlm_scenes_mix": ["runlocal"],
            "prefixlm_vq_scenes": ["vqvae", "pretrain", "chat", "runlocal"],
            "siglip_scenes": ["runlocal", "baseline", "softmax", "runlocal,hardneg", "no_order", "phrases", "heldout",
                              "presence", "presence_batch", "mentions", "no_mentions", "runlocal,unsized"],
            "siglip_hf": ["finetune", "runlocal", "finetune,runlocal"],
            "clip_scenes": ["runlocal", "baseline"], "lit_scenes": ["runlocal"], "siglip_webdataset": ["runlocal"]}


def _experiment(path):
    return experiment_module(path)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: os.path.basename(p)[:-3])
def test_every_experiment_rejects_an_unknown_variant(path):
    name = os.path.basename(path)[:-3]
    assert name in VARIANTS, f"add {name}'s variants to VARIANTS"
    mod = _experiment(path)
    base = mod.get_config(None)
    for v in VARIANTS[name]:
        assert mod.get_config(v).to_dict() != base.to_dict() or v == "pretrain", v  # the variant changes something
    with pytest.raises(ValueError) as e:
        mod.get_config("runlocl")
    msg = str(e.value)
    assert msg.startswith(f"experiments/{name}.py:runlocl: unknown variant 'runlocl' (did you mean 'runlocal'?); "
                          "known variants:"), msg
    assert "runlocal" in msg.split("known variants:")[1] and "\n" not in msg


def _cli(*args):
    env = dict(os.environ, JAX_LOG_COMPILES="1")  # a compile would log a line to stderr
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


@pytest.mark.parametrize("args,message", [
    (["--config", "experiments/vit_scenes.py:runlocl"],
     "error: experiments/vit_scenes.py:runlocl: unknown variant 'runlocl' (did you mean 'runlocal'?); known variants: "
     "one of runlocal"),
    (["--config", "experiments/vit_scenes.py:runlocal", "--config.batch_size=0"],
     "error: config.batch_size=0: must be >= 1"),
    (["--config", "experiments/vit_scenes.py:runlocal", "--config.optimizer.lr=-1"],
     "error: config.optimizer.lr=-1.0: must be >= 0 (a negative lr ascends the loss)"),
])
def test_train_cli_bad_input_one_line_exit_2(tmp_path, args, message):
    out = _cli("-m", "vlmjax.cli", "--workdir", str(tmp_path / "w"), *args)
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.strip().splitlines() == [message]  # one line; no compile was logged before it
    assert not os.path.exists(tmp_path / "w" / "checkpoints")


@pytest.mark.parametrize("over,message", [
    ({"batch_size": 0}, "config.batch_size=0: must be >= 1"),
    ({"batch_size": -16}, "config.batch_size=-16: must be >= 1"),
    ({"optimizer.lr": -1e-3}, "config.optimizer.lr=-0.001: must be >= 0"),
    ({"wandb.project": "p"}, "config.wandb.project='p': the wandb package is not installed"),
])
def test_trainer_refuses_bad_batch_and_lr_before_building_state(tmp_path, over, message, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as where wandb is not installed
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        Trainer(tiny_config(**over), str(tmp_path))


def test_zero_lr_is_allowed(tmp_path):
    Trainer(tiny_config(**{"optimizer.lr": 0.0}), str(tmp_path), open_data=False)


def test_image_reader_names_missing_and_corrupt_files(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"^--image '.*missing\.png': no such file$"):
        image_input.read_image_file(str(tmp_path / "missing.png"), "--image")
    with pytest.raises(ValueError, match=r"^--image '.*bad\.png': cannot decode as an image \(UnidentifiedImage"):
        image_input.read_image_file(str(bad), "--image")


def test_image_reader_modes_and_resize():
    grey = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 7)])
    for im in (grey, Image.fromarray(grey), rgba, grey.astype(np.float32)):
        np.testing.assert_array_equal(image_input.to_uint8_rgb(im), np.dstack([grey] * 3))
    specs = [dict(op="decode", key="image"), dict(op="value_range", key="image", vmin=-1, vmax=1)]
    out = image_input.preprocess_fn(specs, 8)(np.dstack([grey] * 3))
    expect = np.asarray(Image.fromarray(np.dstack([grey] * 3)).resize((8, 8), Image.BILINEAR), np.float32)
    np.testing.assert_allclose(out, expect / 127.5 - 1, atol=1e-6)
    with pytest.raises(ValueError, match=r"image: expected an image .* shape \(2, 3, 5\)"):
        image_input.to_uint8_rgb(np.zeros((2, 3, 5)))
