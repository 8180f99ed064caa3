"""Resume after SIGKILL: bit-exact losses and parameters, and no example repeated or skipped."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from vlmjax.core.checkpoint import load_params_numpy
from vlmjax.core.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cmd(workdir, data_dir, sleep):
    return [sys.executable, "-m", "vlmjax.cli", "--config", "experiments/vit_scenes.py:runlocal",
            f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", "--config.total_steps=20",
            "--config.checkpoint.every_steps=5", "--config.log_every_steps=1", "--config.eval.every_steps=0",
            f"--config.debug.sleep_per_step={sleep}"]


def _run(cmd):
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _rows(workdir):
    """metrics.jsonl as written, repeats included (read_metrics keeps the last row per step)."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _committed_steps(workdir):
    return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


@pytest.fixture(scope="module")
def uninterrupted(scenes_tiny_dir, tmp_path_factory):
    ref = str(tmp_path_factory.mktemp("ref"))
    _run(_cmd(ref, scenes_tiny_dir, 0))
    return ref


def _resume_and_compare(killed, ref, data_dir, latest, rows_before):
    """Re-run; it must say it resumed from `latest`, log only later steps, and end bitwise like `ref`."""
    out = _run(_cmd(killed, data_dir, 0))
    assert f"resumed from {os.path.join(killed, 'checkpoints')}/{latest} (step {latest} done" in out.stdout
    resumed_rows = _rows(killed)[rows_before:]
    assert [r["step"] for r in resumed_rows if "train/loss" in r] == list(range(latest + 1, 21))
    assert not os.path.exists(os.path.join(killed, "checkpoints_corrupt"))
    want = [r["train/loss"] for r in read_metrics(ref)]
    got = [r["train/loss"] for r in read_metrics(killed)]
    assert len(want) == len(got) == 20
    np.testing.assert_array_equal(got, want)  # bitwise: same data, same order, same arithmetic
    p_ref, p_got = load_params_numpy(ref), load_params_numpy(killed)
    for a, b in zip(jax_leaves(p_ref), jax_leaves(p_got)):
        np.testing.assert_array_equal(a, b)


def test_sigkill_mid_run_then_resume_is_bit_exact(uninterrupted, scenes_tiny_dir, tmp_path):
    """Checkpoints every 5 steps, killed after the step-10 one (not the first): the re-run says it resumed from the
    latest committed step k, writes only steps k+1..20, and ends bitwise where an uninterrupted run ends."""
    ref, killed = uninterrupted, str(tmp_path / "killed")

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
    latest = _committed_steps(killed)[-1]
    assert latest in (10, 15)  # 5 and 10 were written before the kill; 15 only if the kill came late
    rows_before = len(_rows(killed))
    assert 10 <= max(r["step"] for r in _rows(killed)) < 20  # killed between the step-10 checkpoint and the end

    _resume_and_compare(killed, ref, scenes_tiny_dir, latest, rows_before)


def test_sigkill_while_an_async_checkpoint_commits(uninterrupted, scenes_tiny_dir, tmp_path):
    """Killed while a checkpoint is still being written (its `<step>.orbax-checkpoint-tmp` folder exists): that
    half-written step is never used; the re-run resumes from the last committed one, bitwise."""
    killed = str(tmp_path / "killed")
    proc = subprocess.Popen(_cmd(killed, scenes_tiny_dir, 0.3), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    directory = os.path.join(killed, "checkpoints")
    deadline, caught = time.time() + 240, None
    while proc.poll() is None and time.time() < deadline:  # orbax writes <step>.orbax-checkpoint-tmp, then renames
        tmp = [d for d in (os.listdir(directory) if os.path.isdir(directory) else []) if d.endswith("-tmp")]
        if tmp and int(tmp[0].split(".")[0]) >= 10:
            proc.send_signal(signal.SIGKILL)
            caught = int(tmp[0].split(".")[0])
            break
        time.sleep(0.005)
    proc.wait()
    assert caught is not None, "never saw a checkpoint in flight: " + proc.stderr.read()[-2000:]
    latest = _committed_steps(killed)[-1]
    assert latest < caught  # the one in flight did not commit
    _resume_and_compare(killed, uninterrupted, scenes_tiny_dir, latest, len(_rows(killed)))


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def test_eval_cli_reproduces_final_metrics(scenes_tiny_dir, tmp_path):
    wd = str(tmp_path / "run")
    _run(_cmd(wd, scenes_tiny_dir, 0)[:-1] + ["--config.total_steps=5"])
    out = subprocess.run([sys.executable, "-m", "vlmjax.cli.evaluate", f"--workdir={wd}", "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    want = [r for r in read_metrics(wd) if "eval/classification/accuracy" in r][-1]["eval/classification/accuracy"]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("eval/classification/accuracy=")][0]
    assert float(line.split("=")[1]) == pytest.approx(want, abs=1e-6)
    assert os.path.exists(os.path.join(wd, "eval_5.json"))
    # --split test: the one test read (the run's own evaluations read validation); its own json file
    out = subprocess.run([sys.executable, "-m", "vlmjax.cli.evaluate", f"--workdir={wd}", "--json", "--split=test"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    with open(os.path.join(wd, "eval_5.json")) as f, open(os.path.join(wd, "eval_5_test.json")) as g:
        val, test = json.load(f), json.load(g)
    assert test["eval/classification/loss"] != pytest.approx(val["eval/classification/loss"], rel=1e-6)


def test_with_split_sets_every_evaluator_and_leaves_the_config_alone():
    from vlmjax.cli.evaluate import with_split
    from vlmjax.core.config import load_experiment

    config = load_experiment("siglip_scenes:runlocal")
    assert {e.data.split for e in config.evals.values()} == {"validation"}  # EVAL_SPLIT: training never reads test
    tested = with_split(config, "test")
    assert set(tested.evals) == set(config.evals) and {e.data.split for e in tested.evals.values()} == {"test"}
    assert {e.data.split for e in config.evals.values()} == {"validation"}


@pytest.mark.parametrize("override,message", [
    ("--config.optimizer.lrr=1e-3", "error: unknown key config.optimizer.lrr (did you mean 'lr'?)"),
    ("--config.batch_size=abc", "error: --config.batch_size=abc: cannot parse 'abc' as int"),
    ("--config.mesh.data=3", "error: config.mesh (data=3, fsdp=1, tensor=1): axis sizes multiply to 3, but there are 8"),
])
def test_cli_reports_bad_overrides_in_one_line(tmp_path, override, message):
    out = subprocess.run([sys.executable, "-m", "vlmjax.cli", "--config", "experiments/vit_scenes.py:runlocal",
                          f"--workdir={tmp_path}", override], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr
