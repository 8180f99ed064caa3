"""Restore onto other meshes, corrupt-checkpoint fallback, NaN guard (in-process, tiny ViT on fake data)."""
import glob
import json
import os

import jax
import numpy as np
import pytest

from test_core import losses, tiny_config
from vlmjax.core.loop import Trainer, train

CONST = {"schedule.name": "constant", "schedule.warmup_steps": 0, "checkpoint.every_steps": 10}


def mesh_keys(d, f, t):
    return {"mesh.data": d, "mesh.fsdp": f, "mesh.tensor": t}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("ref"))
    train(tiny_config(**CONST, **mesh_keys(2, 2, 2)), wd)
    return losses(wd)


def _rows(workdir):
    """metrics.jsonl as written, repeats included (read_metrics keeps the last row per step)."""
    path = os.path.join(workdir, "metrics.jsonl")
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def resume(run, workdir, capsys, step):
    """Run `run()`; check it said it resumed from checkpoint `step` and logged only later steps. Returns stdout."""
    rows_before = len(_rows(workdir))
    capsys.readouterr()
    run()
    out = capsys.readouterr().out
    assert f"resumed from {os.path.join(workdir, 'checkpoints')}/{step} (step {step} done" in out, out[-2000:]
    assert min(r["step"] for r in _rows(workdir)[rows_before:]) == step + 1
    return out


@pytest.mark.parametrize("target", ["8x1x1", "4 devices"])
def test_restore_onto_another_mesh_continues_exactly(uninterrupted, tmp_path, target, capsys):
    wd = str(tmp_path)
    train(tiny_config(**CONST, **mesh_keys(2, 2, 2), total_steps=10), wd)  # checkpoint at 10 on (2,2,2)
    # total_steps 10 -> 20 takes the flag; the mesh change alone would not (same computation, other layout)
    if target == "8x1x1":
        resume(lambda: train(tiny_config(**CONST, **mesh_keys(8, 1, 1), total_steps=20), wd, allow_config_change=True),
               wd, capsys, 10)
    else:
        resume(lambda: train(tiny_config(**CONST, **mesh_keys(4, 1, 1), total_steps=20), wd,
                             devices=jax.devices()[:4], allow_config_change=True), wd, capsys, 10)
    steps = [r["step"] for r in _rows(wd) if "train/loss" in r]
    assert steps == list(range(1, 21))  # 1-10 from the first run, 11-20 from the resumed one, none twice
    assert not os.path.exists(os.path.join(wd, "checkpoints_corrupt"))
    np.testing.assert_allclose(losses(wd), uninterrupted, rtol=1e-5)


def test_corrupt_latest_checkpoint_falls_back_to_previous(uninterrupted, tmp_path, capsys):
    wd = str(tmp_path)
    train(tiny_config(**CONST, **mesh_keys(2, 2, 2)), wd)  # checkpoints 10 and 20
    files = sorted(f for f in glob.glob(os.path.join(wd, "checkpoints", "20", "state", "**", "*"), recursive=True)
                   if os.path.isfile(f) and os.path.getsize(f) > 64)
    assert files
    for f in files:  # truncate every data file of the latest checkpoint
        with open(f, "r+b") as fh:
            fh.truncate(7)
    t = Trainer(tiny_config(**CONST, **mesh_keys(2, 2, 2), total_steps=25), wd)
    t.allow_config_change = True  # total_steps 20 -> 25
    out = resume(t.run, wd, capsys, 10)
    assert f"WARNING: checkpoint {os.path.join(wd, 'checkpoints', '20')} is unreadable" in out
    assert [d.split("-")[0] for d in os.listdir(os.path.join(wd, "checkpoints_corrupt"))] == ["20"]  # kept aside
    assert 10 in [int(d) for d in os.listdir(os.path.join(wd, "checkpoints")) if d.isdigit()]  # the good one stays
    np.testing.assert_allclose(losses(wd)[:20], uninterrupted, rtol=1e-5)  # steps 11-20 recomputed identically
    assert int(t.state["step"]) == 25


NAN = {"data.name": "fake:nan", "data.preprocess": [], "data.shuffle": False, "evals": {},
       "checkpoint.every_steps": 2, "total_steps": 5}


def test_nan_guard_stop_keeps_last_good_checkpoint(tmp_path):
    wd = str(tmp_path)
    # unshuffled, batch 16: example NAN_INDEX=40 is in step 3's batch
    with pytest.raises(FloatingPointError, match="non-finite loss or gradients at or before step 3") as e:
        train(tiny_config(**NAN), wd)
    assert "the last good one is step 2" in str(e.value)
    steps = sorted(int(d) for d in os.listdir(os.path.join(wd, "checkpoints")) if d.isdigit())
    assert steps[-1] == 2  # nothing written after the bad step


def test_nan_guard_skip_drops_and_counts(tmp_path):
    t = Trainer(tiny_config(**NAN, nan_policy="skip"), str(tmp_path))
    final = t.run()
    assert final["train/nonfinite_steps"] == 1.0
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(t.state["params"])))
    assert int(t.state["step"]) == 5
