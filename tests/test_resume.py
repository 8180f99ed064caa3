"""Resume after SIGKILL: bit-exact losses and parameters, and no example repeated or skipped."""
import os
import signal
import subprocess
import sys
import time

import numpy as np

from vlmjax.train.checkpoint import load_params_numpy
from vlmjax.train.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cmd(workdir, data_dir, sleep):
    return [sys.executable, "-m", "vlmjax.train", "--config", "experiments/vit_scenes.py:runlocal",
            f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", "--config.total_steps=20",
            "--config.checkpoint.every_steps=10", "--config.log_every_steps=1", "--config.eval.every_steps=0",
            f"--config.debug.sleep_per_step={sleep}"]


def _run(cmd):
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


def test_sigkill_after_checkpoint_then_resume_is_bit_exact(scenes_tiny_dir, tmp_path):
    ref, killed = str(tmp_path / "ref"), str(tmp_path / "killed")
    _run(_cmd(ref, scenes_tiny_dir, 0))

    proc = subprocess.Popen(_cmd(killed, scenes_tiny_dir, 0.5), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    ckpt10 = os.path.join(killed, "checkpoints", "10")
    deadline = time.time() + 240
    while not os.path.isdir(ckpt10) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read()[-2000:]
    assert os.path.isdir(ckpt10)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    logged = [r["step"] for r in read_metrics(killed)]
    assert 10 <= max(logged) < 20  # killed between the step-10 checkpoint and the end

    _run(_cmd(killed, scenes_tiny_dir, 0))
    want = [r["train/loss"] for r in read_metrics(ref)]
    got = [r["train/loss"] for r in read_metrics(killed)]
    assert len(want) == len(got) == 20
    np.testing.assert_array_equal(got, want)  # bitwise: same data, same order, same arithmetic
    p_ref, p_got = load_params_numpy(ref), load_params_numpy(killed)
    for a, b in zip(jax_leaves(p_ref), jax_leaves(p_got)):
        np.testing.assert_array_equal(a, b)


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)
