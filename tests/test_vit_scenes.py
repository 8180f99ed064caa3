"""The demo experiment (`experiments/vit_scenes.py`) learns `scenes`: a reduced run on scenes/tiny (32 px)."""
import os

import jax
import numpy as np

from vlmjax.core.config import load_experiment
from vlmjax.core.loop import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 600


def test_vit_scenes_learns_the_main_object(scenes_tiny_dir, tmp_path):
    c = load_experiment(os.path.join(ROOT, "experiments", "vit_scenes.py:runlocal"))
    with c.unlocked():
        c.data.data_dir = c.evals.classification.data.data_dir = scenes_tiny_dir
        c.total_steps, c.batch_size, c.log_every_steps = STEPS, 32, 50
        c.eval.every_steps = STEPS
        c.evals.classification.data.max_examples = 512
        c.schedule.warmup_steps = 20
        c.checkpoint.async_save = False
    final = train(c, str(tmp_path), devices=jax.devices()[:1])
    acc = final["eval/classification/accuracy"]
    print(f"vit_scenes:runlocal, {STEPS} steps on scenes/tiny: test accuracy {acc:.3f}")
    # The tiny :runlocal model on 32 px images is far from the demo's 97% (step 600 of the 64 px default, recorded
    # in the experiment's docstring); in 600 steps it reaches ~0.3. Threshold: 5x chance (1/24) and a test loss
    # below 0.6 ln 24 (it starts at ln 24 from the zero-initialised head) -- far outside what an untrained or
    # broken pipeline (labels shuffled against images) could give, with margin for run-to-run noise.
    assert acc >= 5 / 24, final
    assert final["eval/classification/loss"] < 0.6 * np.log(24), final
