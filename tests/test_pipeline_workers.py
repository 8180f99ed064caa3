"""The train input pipeline with worker processes: bit-exact resume, drops, host sharding, the auto worker count."""
import json
import os

import numpy as np
import pytest

import fake_data
from vlmjax.data import pipeline
from vlmjax.data.ops import DropExample
from vlmjax.data.pipeline import TrainIterator, auto_worker_count


def _pre(ex, rng):
    if ex["id"] in (fake_data.BAD_IMAGE_INDEX, fake_data.EMPTY_CAPTION_INDEX):
        raise DropExample("bad_record")
    return {"id": ex["id"], "r": rng.random()}  # per-example randomness must resume too


def _assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g["id"], w["id"])
        np.testing.assert_array_equal(g["r"], w["r"])


def test_workers_resume_bit_exact_with_drops_and_any_constructed_worker_count():
    src = fake_data.make_examples(40, seed=3)
    it = TrainIterator(src, _pre, batch_size=5, seed=7, worker_count=2)
    head = [next(it) for _ in range(9)]  # 45 kept examples: past an epoch (38 kept) on the two workers together
    state = json.loads(json.dumps(it.get_state()))  # as the checkpoint stores it
    assert state["worker_count"] == 2
    tail = [next(it) for _ in range(6)]  # the uninterrupted stream
    assert all(b["id"].shape == (5,) for b in head + tail)  # exactly batch_size kept examples per batch
    ids = np.concatenate([b["id"] for b in head + tail])
    assert not {fake_data.BAD_IMAGE_INDEX, fake_data.EMPTY_CAPTION_INDEX} & set(ids.tolist())
    assert len(set(ids.tolist())) == 38
    assert it.dropped["bad_record"] >= 2  # each worker met its share of the two bad records
    it.close()

    resumed = TrainIterator(src, _pre, batch_size=5, seed=7, worker_count=2)
    resumed.set_state(state)
    _assert_same([next(resumed) for _ in range(6)], tail)
    assert resumed.drop_metrics() == it.drop_metrics()  # the counters resume with the stream
    resumed.close()

    # A state saved with 2 workers, restored into an iterator built with none: it rebuilds with 2, same stream.
    other = TrainIterator(src, _pre, batch_size=5, seed=7, worker_count=0)
    with pytest.warns(UserWarning, match="worker_count=2"):
        other.set_state(state)
    assert other.worker_count == 2
    _assert_same([next(other) for _ in range(6)], tail)
    assert other.get_state()["worker_count"] == 2
    other.close()


def test_workers_keep_each_hosts_share(monkeypatch):
    """Workers split a host's share, never the hosts' split: over a whole number of rounds (each of W workers one
    batch) a host reads the same examples as without workers (W=1: the same stream). Also where /dev/shm has no
    room (batches then cross the workers' pipes)."""
    src = fake_data.make_examples(40, seed=3)
    pre = lambda ex, rng: {"id": ex["id"]}  # noqa: E731

    def ids(process_index, workers, n=10):
        it = TrainIterator(src, pre, batch_size=4, seed=7, process_index=process_index, process_count=2,
                           worker_count=workers)
        batches = [next(it) for _ in range(n)]
        it.close()
        kinds.update(type(b["id"]).__name__ for b in batches)
        return np.concatenate([b["id"] for b in batches])

    kinds = set()

    a0, b0 = ids(0, 0), ids(1, 0)
    assert not set(a0[:20].tolist()) & set(b0[:20].tolist())  # one epoch: the hosts' halves are disjoint
    np.testing.assert_array_equal(ids(1, 1), b0)
    monkeypatch.setattr(pipeline, "shared_memory_room", lambda: False)  # (the other test runs with it)
    kinds.clear()
    np.testing.assert_array_equal(np.sort(ids(0, 2)), np.sort(a0))
    assert kinds == {"ndarray"}  # pickled, not grain's SharedMemoryArray


def test_auto_worker_count():
    assert auto_worker_count(-1, "cpu", cpu_count=64) == 0  # the cores run the step: threads
    assert auto_worker_count(-1, "gpu", cpu_count=16) == 14
    assert auto_worker_count(-1, "tpu", cpu_count=240) == 32
    assert auto_worker_count(-1, "gpu", cpu_count=2) == 1
    assert auto_worker_count(3, "gpu", cpu_count=16) == 3
    with pytest.raises(ValueError, match=r"config.data.worker_count=-2"):
        auto_worker_count(-2, "gpu")


def test_auto_worker_count_shares_the_host_between_a_launchers_processes(monkeypatch):
    machine = os.cpu_count()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(machine)), raising=False)
    for var in ("SLURM_NTASKS_PER_NODE", "LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert auto_worker_count(-1, "gpu") == max(1, min(machine - 2, 32))
    monkeypatch.setattr(os, "cpu_count", lambda: 192)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(192)))
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "8(x2)")  # one process per GPU, 8 on each of 2 nodes
    assert auto_worker_count(-1, "gpu") == 22  # 192 / 8 - 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)))  # the launcher bound 12 CPUs to us
    assert auto_worker_count(-1, "gpu") == 10


def test_trainer_resumes_bit_exact_with_workers(tmp_path, capsys):
    """A run with 2 worker processes, its last checkpoint removed and re-run, ends where the uninterrupted run ended
    (train state and input position both come back from step 3's checkpoint)."""
    import shutil

    import jax

    from test_core import tiny_config
    from vlmjax.core.loop import train

    cfg = tiny_config(**{"mesh.data": 1, "data.worker_count": 2, "total_steps": 6, "checkpoint.every_steps": 3})
    wd = str(tmp_path / "run")
    first = train(cfg, wd, devices=jax.devices()[:1])
    capsys.readouterr()
    shutil.rmtree(os.path.join(wd, "checkpoints", "6"))
    again = train(cfg, wd, devices=jax.devices()[:1])
    assert again["train/loss"] == first["train/loss"] and again["train/grad_norm"] == first["train/grad_norm"]
    assert again["train/param_norm"] == first["train/param_norm"]
    assert "checkpoints/3 (step 3 done" in capsys.readouterr().out  # resumed, not trained again from scratch


_UNGUARDED_SCRIPT = """
import multiprocessing, os, sys
from vlmjax.core.loop import train

if os.environ.get("ROLE") != "worker":  # the launching process starts one worker the way grain does: spawn
    os.environ["ROLE"] = "worker"
    p = multiprocessing.get_context("spawn").Process(target=print)
    p.start()
    p.join()
    sys.exit(p.exitcode)
train(None, sys.argv[1])  # no `if __name__ == "__main__":` guard: the worker reaches this while importing the script
"""


def test_an_unguarded_script_stops_its_worker_before_it_trains(tmp_path):
    import subprocess
    import sys
    script, workdir = tmp_path / "unguarded.py", tmp_path / "wd"
    script.write_text(_UNGUARDED_SCRIPT)
    env = {**os.environ, "ROLE": "", "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, str(script), str(workdir)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode != 0
    assert 'put the call under `if __name__ == "__main__":`' in r.stderr and str(script) in r.stderr
    assert not workdir.exists()  # the worker stopped before it wrote anything
