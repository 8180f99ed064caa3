"""A checkpoint directory that fills up during a run: one clear error naming the step that failed and the last
complete checkpoint, exit 2, and that checkpoint resumes."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from test_restore_guard import ROOT

from vlmjax.core.restore_check import checkpoint_steps


@pytest.fixture
def small_disk(tmp_path):
    """tmp_path/w/checkpoints on a 3 MiB tmpfs (the first checkpoint of the runlocal ViT fits, all kept do not): needs root."""
    ckpt = tmp_path / "w" / "checkpoints"
    ckpt.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(ckpt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a small tmpfs to fill up (needs root): {r.stderr.strip()}")
    try:
        yield str(tmp_path / "w")
    finally:
        subprocess.run(["umount", "-l", str(ckpt)], check=False)


def _cmd(workdir, data_dir):
    return [sys.executable, "-m", "vlmjax.cli", "--config", "experiments/vit_scenes.py:runlocal",
            f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", "--config.total_steps=20",
            "--config.checkpoint.every_steps=2", "--config.checkpoint.keep=100", "--config.checkpoint.async_save=false",
            "--config.eval.every_steps=0"]


def test_disk_full_during_a_save_is_one_clear_error_and_the_last_checkpoint_resumes(small_disk, scenes_tiny_dir,
                                                                                   tmp_path):
    out = subprocess.run(_cmd(small_disk, scenes_tiny_dir), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    last = checkpoint_steps(small_disk)[-1]
    directory = os.path.join(small_disk, "checkpoints")
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, out.stderr[-3000:]
    m = re.fullmatch(r"error: \[Errno 28\] checkpoint step (\d+) could not be written to (\S+) \(No space left on "
                     r"device\); the last complete checkpoint is step (\d+) in (\S+), intact\. Free space or fix the "
                     r"permissions, then re-run the same command to resume from it", errors[0])
    assert m and m.group(2) == m.group(4) == directory, errors[0]
    assert int(m.group(3)) == last < int(m.group(1))  # named the failed step and the one left to resume from
    assert "Event loop is closed" not in out.stderr

    # "Free space": the same workdir on a normal disk resumes from that checkpoint and finishes.
    roomy = str(tmp_path / "roomy")
    shutil.copytree(small_disk, roomy, ignore=shutil.ignore_patterns("*.orbax-checkpoint-tmp"))
    out = subprocess.run(_cmd(roomy, scenes_tiny_dir), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from {os.path.join(roomy, 'checkpoints')}/{last} (step {last} done" in out.stdout
    assert checkpoint_steps(roomy)[-1] == 20
