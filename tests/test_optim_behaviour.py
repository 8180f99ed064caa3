"""Optimizer features checked where a bug would show: plain SGD without clipping, whose update is -lr x gradient, so
a wrong scale (a missing 1/accum, a multiplier not applied) changes the numbers; AdamW would normalise it away."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from test_core import tiny_config
from vlmjax.core.loop import Trainer
from vlmjax.core.metrics import read_metrics
from vlmjax.core.optim import make_optimizer, param_path

SGD = {"optimizer.name": "sgd", "optimizer.lr": 0.5, "optimizer.clip_norm": 0.0, "optimizer.momentum": 0.0,
       "optimizer.weight_decay": 0.0, "schedule.name": "constant", "schedule.warmup_steps": 0, "evals": {},
       "mesh.data": 1, "total_steps": 4}


def _sgd_run(workdir, accum):
    t = Trainer(tiny_config(**SGD, **{"optimizer.grad_accum_steps": accum}), workdir, devices=jax.devices()[:1])
    t.run()
    rows = [r for r in read_metrics(workdir) if "train/loss" in r]
    return t, np.array([r["train/loss"] for r in rows]), np.array([r["train/grad_norm"] for r in rows])


def test_grad_accumulation_matches_full_batch_under_sgd(tmp_path):
    """4 microbatches of 4 == one batch of 16: same gradient norm at every step, same losses, same weights. With
    SGD a gradient summed but not divided by 4 (or one microbatch counted 4 times) moves the weights differently."""
    full, loss_full, gn_full = _sgd_run(str(tmp_path / "full"), 1)
    accum, loss_acc, gn_acc = _sgd_run(str(tmp_path / "accum"), 4)
    assert len(loss_full) == 4 and gn_full.min() > 0
    np.testing.assert_allclose(gn_acc, gn_full, rtol=1e-5)
    np.testing.assert_allclose(loss_acc, loss_full, rtol=1e-5)
    assert np.abs(loss_full[1:] - loss_full[0]).min() > 1e-3  # the steps did move the weights (lr 0.5)
    for a, b in zip(jax.tree.leaves(jax.device_get(accum.state["params"])),
                    jax.tree.leaves(jax.device_get(full.state["params"]))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def _opt(name="sgd", **over):
    cfg = ml_collections.ConfigDict(dict(name=name, lr=0.1, b1=0.9, b2=0.999, eps=1e-8, momentum=0.0,
                                         weight_decay=0.0, wd_mask=".*kernel", clip_norm=0.0, freeze="",
                                         lr_mults=(), grad_accum_steps=1))
    cfg.update(over)
    sched = ml_collections.ConfigDict(dict(name="constant", warmup_steps=0, end_lr_frac=0.0, timescale=10))
    return make_optimizer(cfg, sched, 100)[0]


PARAMS = {"enc": {"block00": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones((4,))},
                  "block01": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones((2,))}},
          "head": {"kernel": jnp.ones((2, 5))}}
GRADS = jax.tree.map(lambda p: jnp.arange(1, p.size + 1, dtype=jnp.float32).reshape(p.shape) / p.size, PARAMS)
MULTS = ((r"enc/block01/.*", 0.5), (r"head/.*", 2.0))


def _expected_mult(path):
    return 0.5 if path.startswith("enc/block01/") else 2.0 if path.startswith("head/") else 1.0


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_lr_mults_scale_each_group_update(name):
    """SGD: update == -lr x mult x grad, by the formula. AdamW: the multiplied update is mult x the plain one."""
    plain, scaled = _opt(name), _opt(name, lr_mults=MULTS)
    u_plain = plain.update(GRADS, plain.init(PARAMS), PARAMS)[0]
    u_scaled = scaled.update(GRADS, scaled.init(PARAMS), PARAMS)[0]
    flat_g = {param_path(p): g for p, g in jax.tree_util.tree_flatten_with_path(GRADS)[0]}
    flat_p = {param_path(p): u for p, u in jax.tree_util.tree_flatten_with_path(u_plain)[0]}
    for path, u in jax.tree_util.tree_flatten_with_path(u_scaled)[0]:
        key = param_path(path)
        if name == "sgd":
            np.testing.assert_allclose(u, -0.1 * _expected_mult(key) * flat_g[key], rtol=1e-6, err_msg=key)
        np.testing.assert_allclose(u, _expected_mult(key) * flat_p[key], rtol=1e-6, err_msg=key)


def _sched(name, warmup=10, end_frac=0.1, timescale=20):
    from vlmjax.core.optim import make_schedule

    cfg = ml_collections.ConfigDict(dict(name=name, warmup_steps=warmup, end_lr_frac=end_frac, timescale=timescale))
    return lambda step: float(make_schedule(cfg, 110, 2.0)(step))


def test_schedule_landmarks():
    """lr 2.0, 10 warmup steps, 110 total, end 0.1 x lr: values at the points the definitions fix."""
    near = lambda x: pytest.approx(x, rel=1e-5)  # noqa: E731  float32 schedule
    for name in ("cosine", "linear", "rsqrt", "constant"):
        s = _sched(name)
        assert s(0) == near(2.0 / 10) and s(4) == near(2.0 * 5 / 10), name  # linear from 0
        assert s(10) == near(2.0), name  # the peak right after warmup
    cos, lin = _sched("cosine"), _sched("linear")
    assert cos(60) == near((2.0 + 0.2) / 2) and cos(110) == near(0.2)  # half-way, end
    assert cos(35) == near(0.2 + 1.8 * (1 + np.cos(np.pi / 4)) / 2)
    assert lin(35) == near(2.0 - 0.25 * 1.8) and lin(110) == near(0.2) and lin(500) == near(0.2)
    rs = _sched("rsqrt")
    assert rs(10 + 3 * 20) == near(1.0) and rs(10 + 8 * 20) == near(2.0 / 3)  # sqrt(20/80), /180
    assert _sched("constant")(100) == near(2.0)
    assert _sched("cosine", warmup=0)(0) == near(2.0)  # no warmup: the peak at once


def test_weight_decay_follows_its_mask_and_clipping_rescales_by_the_global_norm():
    zero = jax.tree.map(jnp.zeros_like, PARAMS)
    params = jax.tree.map(lambda p: 3.0 * p, PARAMS)
    tx = _opt(weight_decay=0.1, wd_mask=".*kernel")
    u = tx.update(zero, tx.init(params), params)[0]
    for path, v in jax.tree_util.tree_flatten_with_path(u)[0]:
        decayed = param_path(path).endswith("kernel")
        np.testing.assert_allclose(v, -0.1 * 0.1 * 3.0 * decayed * np.ones(v.shape), rtol=1e-6, err_msg=str(path))

    norm = float(np.sqrt(sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(GRADS))))
    for clip, scale in [(norm / 4, 1 / 4), (norm * 2, 1.0)]:  # above the threshold: scaled onto it; below: as is
        tx = _opt(clip_norm=clip)
        u = tx.update(GRADS, tx.init(PARAMS), PARAMS)[0]
        for v, g in zip(jax.tree.leaves(u), jax.tree.leaves(GRADS)):
            np.testing.assert_allclose(v, -0.1 * scale * g, rtol=1e-5)


def test_sgd_momentum_and_adafactor_first_steps():
    g2 = jax.tree.map(lambda g: -0.5 * g + 0.01, GRADS)
    tx = _opt(momentum=0.9)
    state = tx.init(PARAMS)
    u1, state = tx.update(GRADS, state, PARAMS)
    u2, _ = tx.update(g2, state, PARAMS)
    for a, b, x, y in zip(jax.tree.leaves(u1), jax.tree.leaves(u2), jax.tree.leaves(GRADS), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, -0.1 * x, rtol=1e-6)
        np.testing.assert_allclose(b, -0.1 * (y + 0.9 * x), rtol=1e-5)  # heavy ball: m = g2 + 0.9 g1
    # Adafactor's first second-moment estimate is g^2 itself (rank one here), so its first step is -lr sign(g).
    tx = _opt("adafactor", b1=0.0)
    u = tx.update(GRADS, tx.init(PARAMS), PARAMS)[0]
    for v, g in zip(jax.tree.leaves(u), jax.tree.leaves(GRADS)):
        np.testing.assert_allclose(v, -0.1 * np.sign(g), rtol=1e-3)
