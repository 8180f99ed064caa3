"""Per-batch ops run in the train step (vlmjax.data.device_ops) against the host ops they stand in for."""
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import fake_data
from test_core import PP, tiny_config
from vlmjax.data import device_ops, ops
from vlmjax.core.loop import Trainer

VR = dict(op="value_range", key="image", vmin=-1, vmax=1)


@pytest.mark.parametrize("vmin,vmax", [(-1, 1), (0, 1), (-0.37, 2.9)])
def test_value_range_equals_host_op_bit_for_bit(vmin, vmax):
    rng = np.random.default_rng(0)
    images = np.concatenate([(np.arange(768) % 256).astype(np.uint8).reshape(1, 16, 16, 3),  # every value
                             rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)])
    fn = jax.jit(device_ops.get_device_preprocess_fn([dict(op="value_range", vmin=vmin, vmax=vmax)]))
    got = np.asarray(fn({"image": images}, jax.random.key(0))["image"])
    host = ops.value_range(vmin, vmax)
    want = np.stack([host({"image": im}, None)["image"] for im in images])
    assert got.dtype == want.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_crop_and_flip_on_a_sharded_batch_match_host_slicing_and_follow_the_rng():
    images = np.random.default_rng(1).integers(0, 256, (16, 12, 10, 3), dtype=np.uint8)
    mesh = jax.make_mesh((8,), ("data",))
    batch = {"image": jax.device_put(images, NamedSharding(mesh, P("data")))}
    fn = jax.jit(device_ops.get_device_preprocess_fn([dict(op="random_crop", size=[8, 6]), dict(op="flip_lr")]))
    key = jax.random.key(3)
    got = np.asarray(fn(batch, key)["image"])
    # The draws the ops make (op i gets fold_in(key, i)), applied with numpy slicing and the host flip op.
    tops, lefts = map(np.asarray, device_ops.sample_crop_offsets(jax.random.fold_in(key, 0), 16, (12, 10), (8, 6)))
    flips = np.asarray(jax.random.uniform(jax.random.fold_in(key, 1), (16,)) < 0.5)
    mirror = ops.flip_lr(p=1.0)
    want = np.stack([mirror({"image": c}, np.random.default_rng(0))["image"] if f else c
                     for c, f in ((im[t:t + 8, l:l + 6], f) for im, t, l, f in zip(images, tops, lefts, flips))])
    np.testing.assert_array_equal(got, want)
    assert 0 < flips.sum() < 16 and len(set(zip(tops.tolist(), lefts.tolist()))) > 4  # drawn per example
    np.testing.assert_array_equal(np.asarray(fn(batch, key)["image"]), got)  # deterministic given the key
    assert not np.array_equal(np.asarray(fn(batch, jax.random.key(4))["image"]), got)


def test_train_step_with_value_range_on_device_equals_host_value_range(tmp_path):
    """uint8 batches + device value_range give the float32 pipeline's step exactly (same loss, same params)."""
    device_pp = [s for s in PP if s["op"] != "value_range"]
    configs = {"host": tiny_config(**{"mesh.data": 1}),
               "device": tiny_config(**{"mesh.data": 1, "data.preprocess": device_pp, "data.device_preprocess": [VR]})}
    examples = fake_data.make_examples(16, seed=0)
    out = {}
    for name, cfg in configs.items():
        trainer = Trainer(cfg, str(tmp_path / name), devices=jax.devices()[:1], open_data=False)
        pre = trainer.task.preprocess_fn(trainer.config.data, train=True)
        rows = [pre(ex, np.random.default_rng(i)) for i, ex in enumerate(examples)]
        batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        assert batch["image"].dtype == (np.float32 if name == "host" else np.uint8)
        with jax.set_mesh(trainer.mesh):
            state, metrics = trainer.train_step_fn()(trainer.init_state(), trainer._global_batch(batch))
        out[name] = jax.device_get((state["params"], metrics))
    assert out["host"][1]["train/loss"] == out["device"][1]["train/loss"]
    jax.tree.map(np.testing.assert_array_equal, out["host"][0], out["device"][0])


def test_bad_device_spec_is_reported_with_its_key_before_compiling(tmp_path):
    with pytest.raises(ValueError, match=r"config.data.device_preprocess\[1\]: unknown op 'flip' \(did you mean "
                                         r"'flip_lr'\?\)"):
        Trainer(tiny_config(**{"data.device_preprocess": [VR, dict(op="flip")]}), str(tmp_path), open_data=False)
    with pytest.raises(ValueError, match=r"config.data.device_preprocess\[0\] \('random_crop'\): missing argument "
                                         r"'size'"):
        Trainer(tiny_config(**{"data.device_preprocess": [dict(op="random_crop")]}), str(tmp_path), open_data=False)
