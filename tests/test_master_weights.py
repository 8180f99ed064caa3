"""bfloat16 parameters with float32 master weights (`config.optimizer.param_dtype`): the master copy is what the
optimizer updates, the stored parameters are its rounding, and updates too small for bfloat16 are not lost."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from test_core import losses, tiny_config
from vlmjax.core.loop import Trainer, train
from vlmjax.core.optim import MasterWeightsState, apply_updates, store_params, with_master_weights

BF16 = {"optimizer.param_dtype": "bfloat16"}
CONSTANT = {"schedule.name": "constant", "schedule.warmup_steps": 0, "evals": {}, "mesh.data": 1,
            "checkpoint.every_steps": 2}


def _step(tx, params, state, grads):
    updates, state = tx.update(grads, state, params)
    return apply_updates(params, updates, state), state


def test_master_follows_the_float32_optimizer_and_params_are_its_rounding():
    """Three AdamW steps: the master equals plain optax AdamW run in float32 on the float32-cast gradients, and the
    bfloat16 parameters equal the master rounded once."""
    rng = np.random.default_rng(0)
    params32 = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32), "b": jnp.asarray(rng.normal(size=3))}
    params = {"w": params32["w"].astype(jnp.bfloat16), "b": params32["b"]}
    inner, ref = optax.adamw(1e-2, weight_decay=1e-3), optax.adamw(1e-2, weight_decay=1e-3)
    tx = with_master_weights(inner)
    state, ref_state, ref_params = tx.init(params32), ref.init(params32), params32
    for i in range(3):
        grads = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.bfloat16), "b": jnp.asarray(rng.normal(size=3))}
        params, state = _step(tx, params, state, grads)
        u, ref_state = ref.update(jax.tree.map(lambda g: g.astype(jnp.float32), grads), ref_state, ref_params)
        ref_params = optax.apply_updates(ref_params, u)
        np.testing.assert_array_equal(state.master["w"], ref_params["w"])
        np.testing.assert_array_equal(state.master["b"], ref_params["b"])
        assert params["w"].dtype == jnp.bfloat16 and params["b"].dtype == jnp.float32
        np.testing.assert_array_equal(params["w"], ref_params["w"].astype(jnp.bfloat16))


def test_updates_below_bfloat16_resolution_accumulate_in_the_master():
    """SGD steps of 1e-3 on a weight of 1.0 (bfloat16 spacing there: 2^-7): kept in bfloat16 alone the weight never
    moves; with a master copy it reaches 1.0 - n x 1e-3, rounded."""
    sgd = optax.sgd(1e-3)
    grads = {"w": jnp.ones((2,), jnp.bfloat16)}
    plain = {"w": jnp.ones((2,), jnp.bfloat16)}
    plain_state = sgd.init(plain)
    tx = with_master_weights(optax.sgd(1e-3))
    params, state = plain, tx.init(plain)
    for _ in range(20):
        u, plain_state = sgd.update(grads, plain_state, plain)
        plain = optax.apply_updates(plain, u)
        params, state = _step(tx, params, state, grads)
    np.testing.assert_array_equal(plain["w"], 1.0)  # every update rounded away
    np.testing.assert_allclose(state.master["w"], 0.98, rtol=1e-6)
    np.testing.assert_array_equal(params["w"], jnp.asarray(0.98, jnp.float32).astype(jnp.bfloat16))
    assert float(params["w"][0]) < 1.0


def test_store_params_casts_only_the_masked_floating_leaves():
    cfg = ml_collections.ConfigDict(dict(param_dtype="bfloat16", param_dtype_mask=r".*(kernel|embedding)$"))
    params = {"enc": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2), "scale": jnp.ones(2)},
              "embedding": jnp.ones((5, 2)), "ids": jnp.arange(3)}
    out = store_params(params, cfg)
    assert out["enc"]["kernel"].dtype == jnp.bfloat16 and out["embedding"].dtype == jnp.bfloat16
    assert out["enc"]["bias"].dtype == jnp.float32 and out["enc"]["scale"].dtype == jnp.float32
    assert out["ids"].dtype == params["ids"].dtype
    assert store_params(params, ml_collections.ConfigDict(dict(param_dtype=""))) is params


@pytest.mark.parametrize("over, message", [
    ({"optimizer.param_dtype": "fp16"}, r"config.optimizer.param_dtype='fp16'.*bfloat16"),
    ({"optimizer.param_dtype_mask": "(kernel"}, r"config.optimizer.param_dtype_mask='\(kernel': not a regular"),
    ({"optimizer.wd_mask": "*"}, r"config.optimizer.wd_mask='\*': not a regular expression"),
    ({"optimizer.lr_mults": ((".*", 1.0), ("[", 2.0))}, r"config.optimizer.lr_mults\[1\]='\['")])
def test_bad_optimizer_keys_are_named_before_anything_compiles(tmp_path, over, message):
    with pytest.raises(ValueError, match=message):
        Trainer(tiny_config(**over), str(tmp_path), devices=jax.devices()[:1])


def test_sharded_state_keeps_master_beside_its_parameter():
    """On a (2, 2, 2) mesh every master leaf has its parameter's sharding; kernels are bfloat16, biases float32."""
    t = Trainer(tiny_config(**BF16, **{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}), "/tmp/unused",
                devices=jax.devices()[:8], open_data=False)
    state = t.init_state()
    opt = state["opt_state"]
    assert isinstance(opt, MasterWeightsState)
    flat_p = jax.tree_util.tree_flatten_with_path(state["params"])[0]
    flat_m = jax.tree.leaves(opt.master)
    assert len(flat_p) == len(flat_m)
    kinds = set()
    for (path, p), m in zip(flat_p, flat_m):
        assert m.dtype == jnp.float32 and m.sharding == p.sharding, path
        np.testing.assert_array_equal(np.asarray(m).astype(p.dtype), np.asarray(p))
        kinds.add((str(path[-1]), str(p.dtype)))
    assert ("['kernel']", "bfloat16") in kinds and ("['bias']", "float32") in kinds
    assert any(len(p.sharding.spec) and any(p.sharding.spec) for _, p in flat_p)  # something is actually sharded


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("bf16"))
    train(tiny_config(**BF16, **CONSTANT, **{"total_steps": 6}), wd, devices=jax.devices()[:1])
    return wd


def test_training_with_bfloat16_params_tracks_float32_and_resumes_bit_exactly(bf16_run, tmp_path):
    """The losses follow the float32-parameter run closely (the model computes in float32 either way; only the
    stored weights are rounded), and a run stopped at step 2 and resumed ends bitwise like the uninterrupted one:
    the master weights are in the checkpoint."""
    f32 = str(tmp_path / "f32")
    train(tiny_config(**CONSTANT, **{"total_steps": 6}), f32, devices=jax.devices()[:1])
    got, ref = losses(bf16_run), losses(f32)
    assert len(got) == 6 and ref[-1] < ref[0] - 0.05 and got[-1] < got[0] - 0.05
    np.testing.assert_allclose(got, ref, rtol=2e-2)
    assert np.abs(got - ref).max() > 0  # the rounding is there

    resumed = str(tmp_path / "resumed")
    train(tiny_config(**BF16, **CONSTANT, **{"total_steps": 2}), resumed, devices=jax.devices()[:1])
    t = Trainer(tiny_config(**BF16, **CONSTANT, **{"total_steps": 6}), resumed, devices=jax.devices()[:1])
    t.allow_config_change = True  # total_steps 2 -> 6; a constant schedule does not depend on it
    t.run()
    np.testing.assert_array_equal(losses(resumed), got)
    ref_t = Trainer(tiny_config(**BF16, **CONSTANT, **{"total_steps": 6}), bf16_run, devices=jax.devices()[:1])
    ref_t.run()  # already done: restores the final checkpoint and stops
    for a, b in zip(jax.tree.leaves(jax.device_get(t.state)), jax.tree.leaves(jax.device_get(ref_t.state))):
        np.testing.assert_array_equal(a, b)
    params, master = t.state["params"], t.state["opt_state"].master
    for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(master)):
        np.testing.assert_array_equal(np.asarray(m).astype(p.dtype), np.asarray(p))


def test_resume_refuses_a_change_of_param_dtype():
    """The optimizer state's structure changes (a master copy appears): a resume cannot continue that run."""
    from vlmjax.core.restore_check import classify

    assert classify("optimizer.param_dtype", "", "bfloat16") == "refused"
    assert classify("optimizer.param_dtype_mask", ".*kernel$", ".*") == "refused"


def test_init_from_a_bfloat16_run_takes_its_master_weights(bf16_run, tmp_path):
    """A float32 run started from a bfloat16-parameter run gets the float32 master weights (what the optimizer
    updated), not their bfloat16 rounding."""
    from vlmjax.core.checkpoint import read_variables

    master = read_variables(bf16_run, ("opt_state/master",))[1]["opt_state"]["master"]
    stored = read_variables(bf16_run, ("params",))[1]["params"]
    t = Trainer(tiny_config(**CONSTANT, **{"init_from.workdir": bf16_run}), str(tmp_path), devices=jax.devices()[:1])
    params = jax.device_get(t.init_state()["params"])
    rounded = 0
    for p, m, s in zip(jax.tree.leaves(params), jax.tree.leaves(master), jax.tree.leaves(stored)):
        assert p.dtype == np.float32
        np.testing.assert_array_equal(p, m)
        rounded += int(np.any(np.asarray(s, np.float32) != m))
    assert rounded > 0  # the stored bfloat16 kernels differ from the master: the test tells them apart
