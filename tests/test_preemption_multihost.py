"""SIGTERM to ONE of two processes: the other learns it through the all-gather at the step boundary, both save the
same step and exit 0, and the two-process re-run resumes from that step on both."""
import json
import os
import signal
import subprocess
import sys
import time

from test_multihost import ROOT, trainer_args
from vlmjax.core.metrics import read_metrics


def _child(parent: int, process_id: int) -> int:
    """pid of launch/local.py's trainer process `process_id` (a child of `parent`)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline") as f:
                cmd = f.read().split("\0")
        except OSError:
            continue
        if ppid == parent and f"--process_id={process_id}" in cmd:
            return int(pid)
    raise AssertionError(f"no child --process_id={process_id} of {parent}")


def test_sigterm_to_one_process_stops_both_at_the_same_step(scenes_tiny_dir, tmp_path):
    wd = str(tmp_path / "w")
    launch = [sys.executable, "launch/local.py", "--num_processes", "2", "--devices_per_process", "4", "--"]
    proc = subprocess.Popen(launch + trainer_args(wd, scenes_tiny_dir, "--config.debug.sleep_per_step=0.3"),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        metrics = os.path.join(wd, "metrics.jsonl")
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if os.path.exists(metrics) and len(open(metrics).read().splitlines()) >= 4:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        os.kill(_child(proc.pid, 1), signal.SIGTERM)  # process 1 only; process 0 prints the log lines
        out, _ = proc.communicate(timeout=120)  # a process left waiting in a collective fails here
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both trainers
            proc.wait()
    logs = {i: open(os.path.join(wd, "logs", f"process_{i}.log")).read() for i in (0, 1)}
    assert proc.returncode == 0, logs[0][-2000:] + logs[1][-2000:]  # both processes exited 0
    assert "preempted (SIGTERM): saved step" in out  # process 0, never signalled, stopped too
    saved = int(out.split("preempted (SIGTERM): saved step")[1].split(";")[0])
    assert 4 <= saved < 20 and os.path.isdir(os.path.join(wd, "checkpoints", str(saved)))
    assert max(r["step"] for r in read_metrics(wd)) == saved  # no step after the agreed one

    rows_before = len(open(metrics).read().splitlines())
    r = subprocess.run(launch + trainer_args(wd, scenes_tiny_dir), cwd=ROOT, capture_output=True, text=True,
                       timeout=400)
    assert r.returncode == 0, r.stdout[-3000:]
    assert f"resumed from {os.path.join(os.path.abspath(wd), 'checkpoints')}/{saved} (step {saved} done" in r.stdout
    new = [json.loads(line) for line in open(metrics).read().splitlines()[rows_before:]]
    assert [x["step"] for x in new if "train/loss" in x] == list(range(saved + 1, 21))
    assert not os.path.exists(os.path.join(wd, "checkpoints_corrupt"))
