"""Multi-process runs on one machine (launch/local.py, gloo CPU collectives; a profiled window traced per process)
and SIGTERM preemption."""
import os
import signal
import subprocess
import sys
import time

import numpy as np

from vlmjax.core.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def trainer_args(workdir, data_dir, *extra):
    return ["--config", "experiments/vit_scenes.py:runlocal", f"--workdir={workdir}",
            f"--config.data.data_dir={data_dir}", "--config.total_steps=20", "--config.log_every_steps=1",
            "--config.checkpoint.every_steps=10", *extra]


def test_two_processes_match_one_process(scenes_tiny_dir, tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    r = subprocess.run([sys.executable, "-m", "vlmjax.cli", *trainer_args(one, scenes_tiny_dir)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([sys.executable, "launch/local.py", "--num_processes", "2", "--devices_per_process", "4",
                        "--", *trainer_args(two, scenes_tiny_dir, "--config.profile.start_step=5",
                                            "--config.profile.steps=2")],
                       cwd=ROOT, capture_output=True, text=True, timeout=400)
    logs = "".join(open(os.path.join(two, "logs", f)).read()[-1500:] for f in sorted(os.listdir(os.path.join(two, "logs"))))
    assert r.returncode == 0, logs
    want = [m["train/loss"] for m in read_metrics(one)]
    got = [m["train/loss"] for m in read_metrics(two)]
    assert len(want) == len(got) == 20
    # Same global batches (each process reads every other example of the same shuffled stream), so only the
    # order of float additions differs.
    np.testing.assert_allclose(got, want, rtol=1e-6)
    ev = [m for m in read_metrics(two) if "eval/classification/accuracy" in m][-1]["eval/classification/accuracy"]
    ev1 = [m for m in read_metrics(one) if "eval/classification/accuracy" in m][-1]["eval/classification/accuracy"]
    assert ev == ev1
    # the profiled window (steps 5-6) left one trace per process, each in its own folder
    for i in range(2):
        traces = [f for _, _, fs in os.walk(os.path.join(two, "profile", f"process_{i}")) for f in fs]
        assert any(f.endswith(".xplane.pb") for f in traces), (i, traces)


def test_sigterm_saves_exits_zero_and_resumes_bit_exact(scenes_tiny_dir, tmp_path):
    ref, pre = str(tmp_path / "ref"), str(tmp_path / "pre")
    cmd = [sys.executable, "-m", "vlmjax.cli"]
    r = subprocess.run(cmd + trainer_args(ref, scenes_tiny_dir), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    proc = subprocess.Popen(cmd + trainer_args(pre, scenes_tiny_dir, "--config.debug.sleep_per_step=0.3"), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = os.path.join(pre, "metrics.jsonl")
    deadline = time.time() + 200
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(metrics) and len(open(metrics).read().splitlines()) >= 4:
            break
        time.sleep(0.1)
    assert proc.poll() is None
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-3000:]
    assert time.time() - t0 < 60
    assert "preempted (SIGTERM): saved step" in out
    saved = int(out.split("preempted (SIGTERM): saved step")[1].split(";")[0])
    assert 4 <= saved < 20 and os.path.isdir(os.path.join(pre, "checkpoints", str(saved)))
    r = subprocess.run(cmd + trainer_args(pre, scenes_tiny_dir), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout
    np.testing.assert_array_equal([m["train/loss"] for m in read_metrics(pre)],
                                  [m["train/loss"] for m in read_metrics(ref)])
