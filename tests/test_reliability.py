"""Restore onto other meshes, corrupt-checkpoint fallback, NaN guard (in-process, tiny ViT on fake data)."""
import glob
import os

import jax
import numpy as np
import pytest

from test_core import losses, tiny_config
from vlmjax.train.loop import Trainer, train

CONST = {"schedule.name": "constant", "schedule.warmup_steps": 0, "checkpoint.every_steps": 10}


def mesh_keys(d, f, t):
    return {"mesh.data": d, "mesh.fsdp": f, "mesh.tensor": t}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("ref"))
    train(tiny_config(**CONST, **mesh_keys(2, 2, 2)), wd)
    return losses(wd)


@pytest.mark.parametrize("target", ["8x1x1", "4 devices"])
def test_restore_onto_another_mesh_continues_exactly(uninterrupted, tmp_path, target):
    wd = str(tmp_path)
    train(tiny_config(**CONST, **mesh_keys(2, 2, 2), total_steps=10), wd)  # checkpoint at 10 on (2,2,2)
    if target == "8x1x1":
        train(tiny_config(**CONST, **mesh_keys(8, 1, 1)), wd)
    else:
        train(tiny_config(**CONST, **mesh_keys(4, 1, 1)), wd, devices=jax.devices()[:4])
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
    capsys.readouterr()
    t = Trainer(tiny_config(**CONST, **mesh_keys(2, 2, 2), total_steps=25), wd)
    t.run()
    out = capsys.readouterr().out
    assert f"WARNING: checkpoint {os.path.join(wd, 'checkpoints', '20')} could not be restored" in out
    assert "resumed from" in out and out.split("resumed from")[1].split()[0].endswith("/10")
    assert glob.glob(os.path.join(wd, "checkpoints_corrupt", "20-*"))  # kept aside, not deleted
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
