"""launch/tpu_pod.sh and launch/slurm.sbatch, run against fake gcloud / srun / scontrol, and the SLURM settings
that vlmjax/core/distributed.py reads.

The fakes execute what the real tools would run on each worker (a shell command for `gcloud ... ssh`, an argv for
`srun`) in a per-worker home directory whose python is a stub recording its argv, so the tests check the exact
command every worker's python receives, after all quoting.
"""
import json
import os
import stat
import subprocess
import sys
import time

import pytest

from vlmjax.core.distributed import explicit_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_POD = os.path.join(ROOT, "launch", "tpu_pod.sh")
SLURM = os.path.join(ROOT, "launch", "slurm.sbatch")
# Values with a space and a glob: they must reach every worker's python as one unexpanded argument each.
TRAIN_ARGS = ["--config", "experiments/siglip_b16.py", "--workdir", "gs://bucket/run 1",
              "--config.data.name=webdataset:/d/{000..009}.tar", "--config.optimizer.lr=3e-4"]

# Python stub for a worker: `python3 -m venv DIR` makes DIR/bin/python a copy of itself; any other call appends
# its argv (\x1f-separated, one call per line) and the distributed environment to $HOME/calls.
PYTHON_STUB = r"""#!/usr/bin/env bash
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && exit 0; fi
{ printf '%s\x1f' "$@"; printf 'ENV\x1fSLURM_PROCID=%s\x1fSLURM_NTASKS=%s\n' "${SLURM_PROCID:-}" "${SLURM_NTASKS:-}"; } \
  >> "$HOME/calls"
"""


def write_exe(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def calls(home):
    """[(argv, env)] of every stub-python call made with HOME=home."""
    out = []
    for line in (home / "calls").read_text().splitlines():
        argv, env = line.split("ENV\x1f")
        out.append((argv.split("\x1f")[:-1], dict(kv.split("=", 1) for kv in env.split("\x1f"))))
    return out


@pytest.mark.parametrize("script", [TPU_POD, SLURM])
def test_scripts_parse(script):
    r = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("args", [[], ["my-tpu"], ["my-tpu", "us-east5-a"], ["my-tpu", "us-east5-a", "proj"],
                                  ["my-tpu", "us-east5-a", "--"], ["my-tpu", "us-east5-a", "proj", "--config"]])
def test_tpu_pod_usage_on_missing_args(args):
    r = subprocess.run(["bash", TPU_POD, *args], capture_output=True, text=True)
    assert r.returncode == 2 and "usage:" in r.stderr, (r.returncode, r.stderr)


FAKE_GCLOUD = """#!{python}
# gcloud compute tpus tpu-vm scp|ssh ...: records argv; scp copies into every fake worker's home; ssh runs
# --command in bash in every worker's home, with the stubs first on PATH and `hostname` answering worker-<i>.
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
assert args[:3] == ["compute", "tpus", "tpu-vm"], args
homes = sorted(os.path.join(os.environ["FAKE_WORKERS"], w) for w in os.listdir(os.environ["FAKE_WORKERS"]))
assert "--worker=all" in args, args
positional = [a for a in args[4:] if not a.startswith("--")]
if args[3] == "scp":
    src, dest = positional
    for home in homes:
        shutil.copy(src, os.path.join(home, dest.split(":", 1)[1]))
    sys.exit(0)
cmd = [a.split("=", 1)[1] for a in args if a.startswith("--command=")][0]
code = 0
for i, home in enumerate(homes):
    env = dict(os.environ, HOME=home, FAKE_HOSTNAME=f"worker-{{i}}",
               PATH=os.environ["FAKE_STUBS"] + os.pathsep + os.environ["PATH"])
    code = max(code, subprocess.run(["bash", "-c", cmd], cwd=home, env=env).returncode)
sys.exit(code)
"""


def fake_tpu_tools(tmp_path, workers=2):
    bin_dir, stubs, homes = tmp_path / "bin", tmp_path / "stubs", tmp_path / "workers"
    for d in (bin_dir, stubs, homes):
        d.mkdir()
    for i in range(workers):
        (homes / f"w{i}").mkdir()
    write_exe(bin_dir / "gcloud", FAKE_GCLOUD.format(python=sys.executable))
    write_exe(stubs / "python3", PYTHON_STUB)
    write_exe(stubs / "hostname", '#!/bin/sh\necho "$FAKE_HOSTNAME"\n')
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_LOG=str(tmp_path / "gcloud.log"),
               FAKE_WORKERS=str(homes), FAKE_STUBS=str(stubs), TMPDIR=str(tmp_path),
               VLMJAX_LOG_DIR=str(tmp_path / "logs"))
    return env, [homes / f"w{i}" for i in range(workers)]


def test_tpu_pod_sets_up_and_runs_the_same_command_on_every_worker(tmp_path):
    env, homes = fake_tpu_tools(tmp_path)
    r = subprocess.run(["bash", TPU_POD, "my-tpu", "us-east5-a", "my-proj", "--", *TRAIN_ARGS], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    gcloud = [json.loads(line) for line in (tmp_path / "gcloud.log").read_text().splitlines()]
    assert [g[3] for g in gcloud] == ["scp", "ssh", "ssh"]  # copy the source, set up, run
    for g in gcloud:
        assert "my-tpu" in g[4:] or "my-tpu:vlmjax-src.tgz" in g[4:]
        assert "--zone=us-east5-a" in g and "--project=my-proj" in g and "--worker=all" in g
    jax_pin = [line for line in open(os.path.join(ROOT, "constraints.txt")) if line.startswith("jax==")][0].strip()
    for i, home in enumerate(homes):
        assert (home / "vlmjax" / "launch" / "tpu_pod.sh").is_file()  # the checkout arrived
        assert (home / "vlmjax" / ".venv" / "bin" / "python").is_file()
        (pip_up, _), (pip, _), (train, _) = calls(home)
        assert pip_up[:3] == ["-m", "pip", "install"] and "--upgrade" in pip_up
        assert pip[:3] == ["-m", "pip", "install"] and "-e" in pip and f"jax[tpu]=={jax_pin[5:]}" in pip
        assert train == ["-m", "vlmjax.cli", "--distributed=auto", *TRAIN_ARGS]
        assert (home / "vlmjax" / "logs" / f"worker-{i}.log").is_file()  # named by the worker's hostname
    assert len(list((tmp_path / "logs").glob("my-tpu-*.log"))) == 1  # everything, streamed here
    assert not (tmp_path / "vlmjax-src.tgz").exists() and not list(tmp_path.glob("vlmjax.*"))  # tarball removed


def test_tpu_pod_skip_setup_and_no_project(tmp_path):
    env, homes = fake_tpu_tools(tmp_path, workers=1)
    (homes[0] / "vlmjax" / ".venv" / "bin").mkdir(parents=True)
    write_exe(homes[0] / "vlmjax" / ".venv" / "bin" / "python", PYTHON_STUB)
    env["VLMJAX_SKIP_SETUP"] = "1"
    r = subprocess.run(["bash", TPU_POD, "my-tpu", "europe-west4-a", "--", *TRAIN_ARGS], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    gcloud = [json.loads(line) for line in (tmp_path / "gcloud.log").read_text().splitlines()]
    assert [g[3] for g in gcloud] == ["ssh"] and not any(a.startswith("--project") for a in gcloud[0])
    assert [argv for argv, _ in calls(homes[0])] == [["-m", "vlmjax.cli", "--distributed=auto", *TRAIN_ARGS]]


def test_tpu_pod_detach_starts_in_background_and_returns(tmp_path):
    env, homes = fake_tpu_tools(tmp_path, workers=2)
    env.update(VLMJAX_SKIP_SETUP="1", VLMJAX_DETACH="1")
    for home in homes:
        (home / "vlmjax" / ".venv" / "bin").mkdir(parents=True)
        write_exe(home / "vlmjax" / ".venv" / "bin" / "python", PYTHON_STUB)
    r = subprocess.run(["bash", TPU_POD, "my-tpu", "zone", "--", *TRAIN_ARGS], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "worker-0: started pid" in r.stdout and "worker-1: started pid" in r.stdout
    assert "--worker=0 --command='tail -f vlmjax/logs/*.log'" in r.stdout
    deadline = time.time() + 30
    while time.time() < deadline and not all((h / "calls").exists() for h in homes):
        time.sleep(0.1)
    for i, home in enumerate(homes):
        assert [argv for argv, _ in calls(home)] == [["-m", "vlmjax.cli", "--distributed=auto", *TRAIN_ARGS]]
        assert (home / "vlmjax" / "logs" / f"worker-{i}.log").exists()


def test_tpu_pod_fails_when_a_worker_fails(tmp_path):
    env, homes = fake_tpu_tools(tmp_path, workers=2)
    env["VLMJAX_SKIP_SETUP"] = "1"
    for home, code in zip(homes, (0, 3)):
        (home / "vlmjax" / ".venv" / "bin").mkdir(parents=True)
        write_exe(home / "vlmjax" / ".venv" / "bin" / "python", f"#!/bin/sh\nexit {code}\n")
    r = subprocess.run(["bash", TPU_POD, "my-tpu", "zone", "--", *TRAIN_ARGS], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0


FAKE_SRUN = """#!{python}
# srun [--opt=value ...] CMD ARGS...: runs CMD once per task with SLURM_PROCID/SLURM_LOCALID set, as srun would.
import os, subprocess, sys
args = sys.argv[1:]
k = next(i for i, a in enumerate(args) if not a.startswith("--"))  # srun's own options end at the command
opts, cmd = args[:k], args[k:]
assert all(o.startswith(("--ntasks=", "--kill-on-bad-exit", "--output=")) for o in opts), opts
n = int([o.split("=")[1] for o in opts if o.startswith("--ntasks=")][0])
code = 0
for i in range(n):
    env = dict(os.environ, SLURM_PROCID=str(i), SLURM_LOCALID=str(i % 2), SLURM_NTASKS=str(n))
    code = max(code, subprocess.run(cmd, env=env).returncode)
sys.exit(code)
"""


def test_slurm_runs_every_task_with_coordinator_and_process_ids(tmp_path):
    bin_dir, submit = tmp_path / "bin", tmp_path / "submit"
    bin_dir.mkdir()
    (submit / ".venv" / "bin").mkdir(parents=True)
    write_exe(submit / ".venv" / "bin" / "python", PYTHON_STUB)
    write_exe(bin_dir / "srun", FAKE_SRUN.format(python=sys.executable))
    # scontrol show hostnames expands the compressed node list, first host first.
    write_exe(bin_dir / "scontrol", '#!/bin/sh\n[ "$1 $2 $3" = "show hostnames gpu-[07-08]" ] || exit 9\n'
                                    'printf "gpu-07\\ngpu-08\\n"\n')
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", HOME=str(tmp_path),
               SLURM_JOB_ID="123456", SLURM_JOB_NODELIST="gpu-[07-08]", SLURM_NTASKS="4",
               SLURM_SUBMIT_DIR=str(submit))
    r = subprocess.run(["bash", SLURM, *TRAIN_ARGS], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    got = calls(tmp_path)
    assert len(got) == 4
    for i, (argv, task_env) in enumerate(got):
        assert argv == ["-m", "vlmjax.cli", *TRAIN_ARGS, "--coordinator_address=gpu-07:23456",
                        "--num_processes=4", f"--process_id={i}"]
        assert task_env == {"SLURM_PROCID": str(i), "SLURM_NTASKS": "4"}
    assert (submit / "logs" / "slurm").is_dir()


def test_slurm_outside_a_job_and_without_args(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    r = subprocess.run(["bash", SLURM, *TRAIN_ARGS], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "SLURM_JOB_ID is not set" in r.stderr
    r = subprocess.run(["bash", SLURM], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "usage:" in r.stderr


def test_explicit_settings_precedence_and_slurm_fallback():
    slurm = {"SLURM_NTASKS": "16", "SLURM_PROCID": "5"}
    # No coordinator: SLURM variables alone do not start a multi-process run (that is --distributed=auto's job).
    assert explicit_settings(env=slurm) == ("", 0, -1)
    # A coordinator from the environment: the count and index come from SLURM.
    assert explicit_settings(env={**slurm, "VLMJAX_COORDINATOR_ADDRESS": "n1:1234"}) == ("n1:1234", 16, 5)
    # Flags beat VLMJAX_* which beat SLURM_*.
    env = {**slurm, "VLMJAX_COORDINATOR_ADDRESS": "n1:1234", "VLMJAX_NUM_PROCESSES": "2", "VLMJAX_PROCESS_ID": "1"}
    assert explicit_settings(env=env) == ("n1:1234", 2, 1)
    assert explicit_settings("h:9", 8, 0, env=env) == ("h:9", 8, 0)
