"""A resume never silently restarts: a changed config is refused before anything is written, only unreadable
checkpoint data counts as damage, and any other restore failure stops the run with every checkpoint in place."""
import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vlmjax.core import config as config_lib
from vlmjax.core import restore_check
from vlmjax.core.checkpoint import Checkpointer
from vlmjax.core.metrics import read_metrics
from vlmjax.core.optim import make_optimizer
from vlmjax.core.restore_check import StateMismatchError, leaf_shapes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# -- the Checkpointer on a small tree (no model, nothing compiled) -------------------------------------------------

# Arrays above orbax's 1 KiB inline limit, so that they live in data files that can be damaged.
SHAPES = {"w": (64, 32), "b": (32,)}


def _state(step):
    return {"step": jnp.int32(step), "params": {k: jnp.full(s, float(step)) for k, s in SHAPES.items()}}


def _abstract(shapes=SHAPES):
    sh = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return {"step": jax.ShapeDtypeStruct((), jnp.int32, sharding=sh),
            "params": {k: jax.ShapeDtypeStruct(s, jnp.float32, sharding=sh) for k, s in shapes.items()}}


def _two_checkpoints(workdir):
    c = Checkpointer(workdir, every_steps=1, keep=5, async_save=False)
    for step in (1, 2):
        c.save(step, _state(step), {"position": step})
    c.close()
    return os.path.join(workdir, "checkpoints")


def _files(path, pattern):
    return [f for f in glob.glob(os.path.join(path, pattern), recursive=True) if os.path.isfile(f)]


def _truncate(f):
    with open(f, "r+b") as fh:
        fh.truncate(7)


DAMAGE = {
    "truncated array files": lambda p: [_truncate(f) for f in _files(p, "state/**/d/*")],
    "missing array files": lambda p: [os.remove(f) for f in _files(p, "state/**/d/*")],
    "truncated ocdbt manifest": lambda p: [_truncate(f) for f in _files(p, "state/**/manifest.ocdbt")],
    "missing _METADATA": lambda p: os.remove(os.path.join(p, "state", "_METADATA")),
    "garbage _METADATA": lambda p: open(os.path.join(p, "state", "_METADATA"), "w").write("{not json"),
    "missing data item": lambda p: shutil.rmtree(os.path.join(p, "data")),
    "garbage iterator json": lambda p: open(os.path.join(p, "data", "metadata"), "w").write("{not json"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_unreadable_latest_falls_back_to_previous(tmp_path, damage):
    directory = _two_checkpoints(str(tmp_path))
    DAMAGE[damage](os.path.join(directory, "2"))
    warnings = []
    c = Checkpointer(str(tmp_path), every_steps=1, keep=5)
    try:
        step, state, data = c.restore_latest(_abstract(), warn=warnings.append)
    finally:
        c.close()
    assert step == 1 and data == {"position": 1}
    np.testing.assert_array_equal(state["params"]["w"], np.full(SHAPES["w"], 1.0))  # step 1's values, not 2's
    assert len(warnings) == 1 and f"checkpoint {os.path.join(directory, '2')} is unreadable" in warnings[0]
    assert sorted(os.listdir(directory)) == ["1"]
    assert [d.split("-")[0] for d in os.listdir(os.path.join(str(tmp_path), "checkpoints_corrupt"))] == ["2"]


def _snapshot(workdir):
    """Every file under workdir with its bytes: what a refused or failed resume must leave exactly as it was."""
    out = {}
    for f in _files(workdir, "**/*"):
        with open(f, "rb") as fh:
            out[os.path.relpath(f, workdir)] = fh.read()
    return out


def test_shape_change_is_not_damage(tmp_path):
    _two_checkpoints(str(tmp_path))
    before = _snapshot(str(tmp_path))
    c = Checkpointer(str(tmp_path), every_steps=1, keep=5)
    try:
        with pytest.raises(StateMismatchError, match=r"params/w: checkpoint \(64, 32\), this config \(64, 48\)"):
            c.restore_latest(_abstract({"w": (64, 48), "b": (32,)}))
    finally:
        c.close()
    assert _snapshot(str(tmp_path)) == before
    assert not os.path.exists(os.path.join(str(tmp_path), "checkpoints_corrupt"))


def test_other_restore_failure_stops_and_moves_nothing(tmp_path, monkeypatch):
    _two_checkpoints(str(tmp_path))
    before = _snapshot(str(tmp_path))

    def broken(self, step, abstract_state):  # a bug in restoring, with files that are fine
        raise TypeError("restore bug")

    monkeypatch.setattr(Checkpointer, "restore", broken)
    c = Checkpointer(str(tmp_path), every_steps=1, keep=5)
    try:
        with pytest.raises(RuntimeError, match="checkpoints/2 could not be restored.*TypeError: restore bug"):
            c.restore_latest(_abstract())
    finally:
        c.close()
    assert _snapshot(str(tmp_path)) == before


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    directory = _two_checkpoints(str(tmp_path))
    for step in ("1", "2"):
        DAMAGE["truncated array files"](os.path.join(directory, step))
    c = Checkpointer(str(tmp_path), every_steps=1, keep=5)
    try:
        with pytest.raises(FileNotFoundError, match="no checkpoint in .* is readable"):
            c.restore_latest(_abstract(), warn=lambda _: None)
    finally:
        c.close()
    assert len(os.listdir(os.path.join(str(tmp_path), "checkpoints_corrupt"))) == 2  # kept, not deleted


# -- which config keys may change: checked against the optimizer state they build ------------------------------------

BASE_OPTIMIZER = dict(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, momentum=0.5, weight_decay=1e-4, wd_mask=".*kernel",
                      clip_norm=1.0, freeze="", lr_mults=((".*bias", 0.5),), grad_accum_steps=1)


def _opt_states(**over):
    """{optimizer name: (leaf paths and shapes, tree structure)} of the optimizer state for a small model."""
    sched = ml_collections.ConfigDict(dict(name="cosine", warmup_steps=0, end_lr_frac=0.0, timescale=10))
    params = {"dense": {"kernel": jnp.zeros((3, 4)), "bias": jnp.zeros((4,))}}
    out = {}
    for name in ("adamw", "adafactor", "sgd"):
        cfg = ml_collections.ConfigDict({"name": name, **BASE_OPTIMIZER, **over})
        state = make_optimizer(cfg, sched, 100)[0].init(params)
        out[cfg.name] = (leaf_shapes(state), jax.tree.structure(state))
    return out


# A second value for every optimizer key the flag may allow (zero stays zero, non-zero stays non-zero).
FLAGGED_OPTIMIZER = {"lr": 3e-2, "b2": 0.95, "eps": 1e-6, "wd_mask": ".*", "grad_accum_steps": 2, "clip_norm": 2.0,
                     "weight_decay": 1e-2, "momentum": 0.9, "b1": 0.8, "lr_mults": ((".*kernel", 2.0),)}


def test_flag_keys_cover_every_optimizer_key_and_keep_the_state_structure():
    listed = {k.split(".", 1)[1] for k in restore_check.WITH_FLAG + restore_check.WITH_FLAG_IF_NONZERO
              if k.startswith("optimizer.")}
    assert listed == set(FLAGGED_OPTIMIZER)
    base = _opt_states()
    for key, value in FLAGGED_OPTIMIZER.items():
        assert restore_check.classify(f"optimizer.{key}", BASE_OPTIMIZER[key], value) == "flag", key
        assert _opt_states(**{key: value}) == base, key


@pytest.mark.parametrize("key,value", [("clip_norm", 0.0), ("weight_decay", 0.0), ("momentum", 0.0), ("b1", 0.0),
                                       ("lr_mults", ()), ("freeze", ".*bias"), ("name", "sgd")])
def test_refused_optimizer_changes_do_change_the_state(key, value):
    old = {"name": "adamw", **BASE_OPTIMIZER}[key]
    assert restore_check.classify(f"optimizer.{key}", old, value) == "refused"
    base = _opt_states()
    if key == "name":  # adamw's state against sgd's
        assert _opt_states(name="sgd")["sgd"] != base["adamw"]
    else:
        changed = _opt_states(**{key: value})
        assert any(changed[n] != base[n] for n in base), key  # some optimizer's state loses or gains a part


# -- the CLI: a changed config on a real run ---------------------------------------------------------------------

def _cmd(workdir, data_dir, *extra):
    return [sys.executable, "-m", "vlmjax.cli", "--config", "experiments/vit_scenes.py:runlocal",
            f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", "--config.total_steps=4",
            "--config.checkpoint.every_steps=2", "--config.eval.every_steps=0", *extra]


def _run(cmd):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(scenes_tiny_dir, tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("trained") / "w")
    out = _run(_cmd(wd, scenes_tiny_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    assert restore_check.checkpoint_steps(wd) == [2, 4]
    return wd


def _copy(trained, tmp_path):
    wd = str(tmp_path / "w")
    shutil.copytree(trained, wd)
    return wd


def _assert_refused_cleanly(out, before, wd):
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "Event loop is closed" not in out.stderr, out.stderr[-3000:]
    assert "Nothing was changed in the workdir" in out.stderr
    assert _snapshot(wd) == before  # checkpoints, config.json, metrics.jsonl: byte for byte
    assert not os.path.exists(os.path.join(wd, "checkpoints_corrupt"))


def test_cli_refuses_a_shape_change_even_with_the_flag(trained, scenes_tiny_dir, tmp_path):
    wd = _copy(trained, tmp_path)
    before = _snapshot(wd)
    out = _run(_cmd(wd, scenes_tiny_dir, "--config.model.width=48", "--config.optimizer.lr=0.01",
                    "--allow_config_change"))
    _assert_refused_cleanly(out, before, wd)
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, out.stderr[-3000:]
    assert f"{wd} has checkpoints up to step 4" in errors[0]
    assert "config.model.width (32 -> 48)" in errors[0] and "parameter shapes" in errors[0]
    assert "config.optimizer.lr (0.003 -> 0.01)" in errors[0]  # named too, as allowed with the flag


def test_cli_total_steps_needs_the_flag_then_resumes(trained, scenes_tiny_dir, tmp_path):
    wd = _copy(trained, tmp_path)
    before = _snapshot(wd)
    old_config = json.load(open(os.path.join(wd, "config.json")))
    out = _run(_cmd(wd, scenes_tiny_dir, "--config.total_steps=6"))
    _assert_refused_cleanly(out, before, wd)
    assert "config.total_steps (4 -> 6)" in out.stderr and "--allow_config_change" in out.stderr

    rows_before = len(open(os.path.join(wd, "metrics.jsonl")).readlines())
    out = _run(_cmd(wd, scenes_tiny_dir, "--config.total_steps=6", "--allow_config_change"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from {os.path.join(wd, 'checkpoints')}/4 (step 4 done; continuing at step 5)" in out.stdout
    new_rows = [json.loads(ln) for ln in open(os.path.join(wd, "metrics.jsonl")).readlines()[rows_before:]]
    assert sorted({r["step"] for r in new_rows}) == [5, 6]
    assert json.load(open(os.path.join(wd, "config.step4.json"))) == old_config  # the old record is kept
    assert json.load(open(os.path.join(wd, "config.json")))["total_steps"] == 6
    assert [r["step"] for r in read_metrics(wd) if "train/loss" in r][-1] == 6
    assert not os.path.exists(os.path.join(wd, "checkpoints_corrupt"))


def test_cli_structure_mismatch_without_config_json_stops_cleanly(trained, scenes_tiny_dir, tmp_path):
    """No config.json to compare with (an older workdir): the checkpoint's own shapes stop the run, exit 2."""
    wd = _copy(trained, tmp_path)
    os.remove(os.path.join(wd, "config.json"))
    before = _snapshot(wd)
    out = _run(_cmd(wd, scenes_tiny_dir, "--config.model.width=48"))
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "Event loop is closed" not in out.stderr, out.stderr[-3000:]
    assert "params/embedding/bias: checkpoint (32,), this config (48,)" in out.stderr
    assert {k: v for k, v in _snapshot(wd).items() if k.startswith("checkpoints")} == \
        {k: v for k, v in before.items() if k.startswith("checkpoints")}
    assert not os.path.exists(os.path.join(wd, "checkpoints_corrupt"))


# -- the config comparison alone (no checkpoint is read) ---------------------------------------------------------

def _workdir_with(tmp_path, config):
    """A workdir whose checkpoints (step 4) were written with `config` (resolved)."""
    os.makedirs(tmp_path / "checkpoints" / "4")
    with open(tmp_path / "config.json", "w") as f:
        f.write(config_lib.to_json(config))
    return str(tmp_path)


def _resolved(**over):
    from test_core import tiny_config

    from vlmjax.tasks import get_task_class

    defaults = get_task_class("classification").config_defaults()
    return config_lib.resolve(tiny_config(**over), defaults), defaults


@pytest.mark.parametrize("over,kind", [
    ({"mesh.data": 2, "mesh.fsdp": 4}, "free"), ({"checkpoint.keep": 1, "log_every_steps": 7}, "free"),
    ({"optimizer.lr": 0.1}, "flag"), ({"total_steps": 30}, "flag"), ({"evals": {}}, "flag"),
    ({"model.width": 48}, "refused"), ({"seed": 1}, "refused"), ({"batch_size": 32}, "refused"),
    ({"data.shuffle": False}, "refused"), ({"optimizer.name": "sgd"}, "refused")])
def test_config_check_sorts_changes(tmp_path, over, kind):
    old, defaults = _resolved()
    wd = _workdir_with(tmp_path, old)
    new, _ = _resolved(**over)
    if kind == "free":
        assert {k for k, _, _ in restore_check.check_resume_config(wd, new, False, task_defaults=defaults)} == set(over)
        return
    with pytest.raises(restore_check.ConfigChangeError) as e:
        restore_check.check_resume_config(wd, new, True if kind == "refused" else False, task_defaults=defaults)
    for key in over:
        assert f"config.{key}" in str(e.value)
    assert ("--allow_config_change" in str(e.value)) == (kind == "flag")
    assert not os.path.exists(os.path.join(wd, "config.step4.json"))
    if kind == "flag":  # and with the flag it passes, keeping the old config
        restore_check.check_resume_config(wd, new, True, log=lambda _: None, task_defaults=defaults)
        assert json.load(open(os.path.join(wd, "config.step4.json"))) == json.loads(config_lib.to_json(old))


def test_a_key_added_since_counts_as_unchanged_at_its_default(tmp_path):
    old, defaults = _resolved()
    wd = _workdir_with(tmp_path, old)
    recorded = json.load(open(os.path.join(wd, "config.json")))
    del recorded["optimizer"]["grad_accum_steps"]  # as written by code that predates the key
    json.dump(recorded, open(os.path.join(wd, "config.json"), "w"))
    assert restore_check.check_resume_config(wd, old, False, task_defaults=defaults) == []
    new, _ = _resolved(**{"optimizer.grad_accum_steps": 2})
    with pytest.raises(restore_check.ConfigChangeError, match=r"config.optimizer.grad_accum_steps \(<unset> -> 2\)"):
        restore_check.check_resume_config(wd, new, False, task_defaults=defaults)
