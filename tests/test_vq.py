"""VQ-VAE pieces: straight-through gradients, which term beta weights, nearest-code search, EMA, dead-code restart,
SPMD consistency and the tokenizer's encode/decode contract."""
import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from vlmjax.losses.vq import reconstruction_loss, vqvae_loss
from vlmjax.models.quantizer import (VectorQuantizer, codebook_usage, nearest_code, nearest_code_naive, perplexity,
                                     quantize)
from vlmjax.models.vqvae import VQVAE
from vlmjax.core.mesh import DEFAULT_RULES, batch_sharding, logical_shardings, make_mesh

N, D, K = 48, 4, 16


def np_codes(z, cb):
    d = ((np.asarray(z, np.float64)[:, None] - np.asarray(cb, np.float64)[None]) ** 2).sum(-1)
    return d.argmin(-1)


@pytest.fixture(scope="module")
def zc():
    r = np.random.RandomState(0)
    return jnp.asarray(r.randn(N, D), jnp.float32), jnp.asarray(r.randn(K, D), jnp.float32)


# -- pure math ---------------------------------------------------------------------------------------------------------
def test_straight_through_is_identity_and_forward_is_nearest_code(zc):
    z, cb = zc
    out, vjp = jax.vjp(lambda z: quantize(z, cb)[0], z)
    ct = jax.random.normal(jax.random.key(1), z.shape)
    np.testing.assert_array_equal(vjp(ct)[0], ct)
    codes = np_codes(z, cb)
    np.testing.assert_allclose(out, np.asarray(cb)[codes], atol=1e-6)


@pytest.mark.parametrize("beta", [0.25, 1.0])
def test_beta_weights_commitment_term_only(zc, beta):
    z, cb = zc
    zn, cbn = np.asarray(z, np.float64), np.asarray(cb, np.float64)
    codes = np_codes(z, cb)
    diff = zn - cbn[codes]
    loss = lambda term: (lambda z, cb: quantize(z, cb, beta)[2][term])  # noqa: E731

    # Codebook term: mean (sg[z] - z_q)^2, independent of beta, gradient only to the codebook.
    val, (gz, gcb) = jax.value_and_grad(loss("codebook"), argnums=(0, 1))(z, cb)
    np.testing.assert_allclose(val, (diff ** 2).mean(), rtol=1e-5)
    np.testing.assert_array_equal(gz, np.zeros_like(gz))
    want = np.zeros_like(cbn)
    np.add.at(want, codes, -2 * diff / (N * D))
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(gcb, want, rtol=1e-5, atol=1e-8)

    # Commitment term: beta * mean (z - sg[z_q])^2, gradient only to the encoder output.
    val, (gz, gcb) = jax.value_and_grad(loss("commitment"), argnums=(0, 1))(z, cb)
    np.testing.assert_allclose(val, beta * (diff ** 2).mean(), rtol=1e-5)
    np.testing.assert_array_equal(gcb, np.zeros_like(gcb))
    np.testing.assert_allclose(gz, beta * 2 * diff / (N * D), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_nearest_code_matmul_equals_naive(dtype):
    r = np.random.RandomState(1)
    z, cb = jnp.asarray(r.randn(256, 8), dtype), jnp.asarray(r.randn(64, 8), dtype)
    fast, naive = nearest_code(z, cb), nearest_code_naive(z, cb)
    assert fast.dtype == jnp.int32
    np.testing.assert_array_equal(fast, naive)
    np.testing.assert_array_equal(fast, np_codes(np.asarray(z, np.float32), np.asarray(cb, np.float32)))
    z_q, _, losses = quantize(z, cb)
    assert z_q.dtype == jnp.float32 and losses["commitment"].dtype == jnp.float32


def test_usage_and_perplexity():
    counts = np.array([4, 4, 0, 0, 8, 0])
    p = counts[counts > 0] / counts.sum()
    np.testing.assert_allclose(perplexity(jnp.asarray(counts)), np.exp(-(p * np.log(p)).sum()), rtol=1e-6)
    np.testing.assert_allclose(codebook_usage(jnp.asarray(counts)), 0.5)
    np.testing.assert_allclose(perplexity(jnp.ones(7)), 7.0, rtol=1e-6)


def test_reconstruction_loss():
    r = np.random.RandomState(2)
    x, y = r.randn(2, 4, 4, 3), r.randn(2, 4, 4, 3)
    np.testing.assert_allclose(reconstruction_loss(jnp.asarray(x), jnp.asarray(y), "l1"), np.abs(x - y).mean(),
                               rtol=1e-5)
    np.testing.assert_allclose(reconstruction_loss(jnp.asarray(x), jnp.asarray(y), "l2"), ((x - y) ** 2).mean(),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="l3"):
        reconstruction_loss(x, y, "l3")


# -- quantizer module --------------------------------------------------------------------------------------------------
def _train_apply(vq, variables, x, seed=0):
    return vq.apply(variables, x, train=True, rngs={"vq": jax.random.key(seed)}, mutable=["vq_stats"])


def test_ema_update_matches_numpy(zc):
    z, _ = zc
    decay, eps = 0.9, 1e-5
    vq = VectorQuantizer(num_codes=K, code_dim=D, ema=True, ema_decay=decay, ema_eps=eps)
    variables = nn.meta.unbox(vq.init(jax.random.key(0), z))
    assert "params" not in variables  # the EMA codebook is state, not a parameter
    cb0 = np.asarray(variables["vq_stats"]["codebook"], np.float64)
    (_, codes, aux), new = jax.jit(lambda v, x: _train_apply(vq, v, x))(variables, z)
    codes_np = np_codes(z, cb0)
    np.testing.assert_array_equal(codes, codes_np)
    n = np.bincount(codes_np, minlength=K)
    s = np.zeros((K, D))
    np.add.at(s, codes_np, np.asarray(z, np.float64))
    counts = decay * 1.0 + (1 - decay) * n
    sums = decay * cb0 + (1 - decay) * s
    smoothed = (counts + eps) / (counts.sum() + K * eps) * counts.sum()
    st = new["vq_stats"]
    np.testing.assert_allclose(st["ema_counts"], counts, rtol=1e-5)
    np.testing.assert_allclose(st["ema_sums"], sums, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(st["codebook"], sums / smoothed[:, None], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(st["window_counts"], n)
    assert float(aux["losses"]["codebook"]) == 0.0
    # Without train=True, or without the collection being mutable, nothing changes.
    _, frozen = vq.apply(variables, z, train=False, mutable=["vq_stats"])
    np.testing.assert_array_equal(frozen["vq_stats"]["codebook"], variables["vq_stats"]["codebook"])
    vq.apply(variables, z, train=True)  # must not raise


@pytest.mark.parametrize("kind", ["param", "ema", "l2_project"])
def test_restart_revives_dead_codes(kind):
    kw = {"param": {}, "ema": {"ema": True}, "l2_project": {"l2_normalize": True, "project": True, "input_dim": 6}}[kind]
    width = kw.get("input_dim", D)
    vq = VectorQuantizer(num_codes=K, code_dim=D, restart_unused=True, restart_window=2, **kw)
    r = np.random.RandomState(3)
    # All data in one far corner: it lands on a handful of codes, the rest are dead.
    data = [jnp.asarray(3.0 + 0.5 * r.randn(64, width), jnp.float32) for _ in range(4)]
    variables = nn.meta.unbox(vq.init(jax.random.key(0), data[0]))
    step = jax.jit(lambda v, x, s: _train_apply(vq, v, x, s))
    usage, restarted, history = [], [], []
    for i, x in enumerate(data):
        (_, _, aux), new = step(variables, x, i)
        variables = {**variables, **new}
        history.append(variables)
        usage.append(float(aux["usage"]))
        restarted.append(int(aux["restarted"]))
    assert restarted[0] == restarted[2] == 0  # restarts only at window ends
    assert restarted[1] == round(K * (1 - usage[1])) > K // 2  # every dead code of the first window came back
    assert usage[3] >= usage[1] + 0.2, usage  # at least 3 more of the 16 codes in use
    if kind == "param":
        after = history[1]  # right after the first window's restart
        cb = np.asarray(after["params"]["codebook"] + after["vq_stats"]["codebook_offset"])
        pool = np.asarray(data[1])
        revived = np.asarray(after["vq_stats"]["codebook_offset"]).any(-1)
        assert revived.sum() == restarted[1]
        for row in cb[revived]:  # revived codes are encoder outputs from the batch
            assert np.isclose(pool, row, atol=1e-6).all(-1).any()


def _assert_same_on_every_device(tree):
    for leaf in jax.tree.leaves(tree):
        full = np.asarray(leaf)
        for shard in leaf.addressable_shards:
            assert shard.data.shape == leaf.shape  # every device holds the whole statistic
            np.testing.assert_array_equal(np.asarray(shard.data), full)


def test_ema_and_restart_identical_on_all_devices():
    mesh = make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
    vq = VectorQuantizer(num_codes=K, code_dim=D, ema=True, restart_unused=True, restart_window=1)
    x = jnp.asarray(3.0 + 0.5 * np.random.RandomState(4).randn(64, D), jnp.float32)
    variables = nn.meta.unbox(vq.init(jax.random.key(0), x))
    fn = lambda v, x: _train_apply(vq, v, x, 7)  # noqa: E731
    (_, _, aux1), ref = jax.jit(fn)(variables, x)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        xs = jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"))))
        (_, _, aux8), new = jax.jit(fn)(jax.device_put(variables, NamedSharding(mesh, P())), xs)
    assert int(aux8["restarted"]) == int(aux1["restarted"]) > 0
    _assert_same_on_every_device(new)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new, ref)


# -- VQVAE -------------------------------------------------------------------------------------------------------------
TINY = dict(ch=4, num_res_blocks=1, z_channels=4, norm_groups=2, num_codes=K, code_dim=D)


@pytest.mark.parametrize("ch_mult,f", [((1, 2, 2), 4), ((1, 1, 2, 2), 8), ((1, 1, 1, 2, 2), 16)])
def test_encode_decode_shapes(ch_mult, f):
    model = VQVAE(ch_mult=ch_mult, **TINY)
    assert model.downsample_factor == f
    x = jax.ShapeDtypeStruct((2, 32, 64, 3), jnp.float32)
    v = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    codes = jax.eval_shape(lambda v, x: model.apply(v, x, method=VQVAE.encode), v, x)
    assert codes.shape == (2, 32 // f, 64 // f) and codes.dtype == jnp.int32
    img = jax.eval_shape(lambda v, c: model.apply(v, c, method=VQVAE.decode), v, codes)
    assert img.shape == (2, 32, 64, 3)
    with pytest.raises(ValueError, match="divisible"):
        jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 30, 30, 3))), v)


TRAIN_MODEL = VQVAE(ch_mult=(1, 2, 2), ema=True, restart_unused=True, restart_window=2, **TINY)
TX = optax.sgd(0.05, momentum=0.9)


def _train_step(params, stats, opt_state, images, rng):
    def loss_fn(p):
        (recon, aux), new = TRAIN_MODEL.apply({"params": p, **stats}, images, train=True, rngs={"vq": rng},
                                              mutable=["vq_stats"])
        loss, metrics = vqvae_loss(images, recon, aux, "l2")
        return loss, (new, metrics)

    (loss, (stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = TX.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, loss, metrics["codes_restarted"]


def _run(mesh, variables, images, steps=3):
    params, stats = variables["params"], {"vq_stats": variables["vq_stats"]}
    opt_state = TX.init(params)
    step = jax.jit(_train_step)
    if mesh is not None:
        boxed = jax.eval_shape(lambda: TRAIN_MODEL.init(jax.random.key(0), images))
        with nn.logical_axis_rules(DEFAULT_RULES):
            _, sh = logical_shardings(boxed, mesh, DEFAULT_RULES)
        params = jax.device_put(params, sh["params"])
        stats = jax.device_put(stats, {"vq_stats": sh["vq_stats"]})
        opt_state = jax.device_put(opt_state, NamedSharding(mesh, P()))
        images = jax.device_put(images, batch_sharding(mesh))
    losses, restarted = [], 0
    with (jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()), nn.logical_axis_rules(DEFAULT_RULES):
        for i in range(steps):
            params, stats, opt_state, loss, n = step(params, stats, opt_state, images, jax.random.key(i))
            losses.append(float(loss))
            restarted += int(n)
    return params, stats, losses, restarted


@pytest.fixture(scope="module")
def trained():
    images = jnp.asarray(np.random.RandomState(5).uniform(-1, 1, (8, 8, 8, 3)), jnp.float32)
    variables = nn.meta.unbox(TRAIN_MODEL.init(jax.random.key(0), images))
    return images, variables, _run(None, variables, images)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2)])
def test_sharded_training_matches_one_device(trained, shape):
    images, variables, (p1, s1, l1, r1) = trained
    assert r1 > 0  # the restart path ran
    mesh = make_mesh(dict(zip(("data", "fsdp", "tensor"), shape)))
    pn, sn, ln, rn = _run(mesh, variables, images)
    assert rn == r1
    if shape[2] > 1:  # conv kernels really were split over 'tensor'
        assert not pn["enc"]["conv_in"]["kernel"].sharding.is_fully_replicated
    np.testing.assert_allclose(ln, l1, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), (pn, sn), (p1, s1))
    _assert_same_on_every_device(sn)


def test_decode_of_encode_equals_forward(trained):
    images, _, (params, stats, _, _) = trained
    v = {"params": params, **stats}
    recon, aux = TRAIN_MODEL.apply(v, images)
    codes = TRAIN_MODEL.apply(v, images, method=VQVAE.encode)
    np.testing.assert_array_equal(codes, aux["codes"])
    np.testing.assert_allclose(TRAIN_MODEL.apply(v, codes, method=VQVAE.decode), recon, atol=1e-5)


def test_reconstruction_gradient_reaches_the_encoder_straight_through():
    """d(recon loss)/d(encoder) through the VectorQuantizer equals the straight-through formula computed outside
    it: the decoder's gradient at z_q, pulled back through the encoder as if z_q were z_e. Non-zero: without the
    straight-through estimator only the commitment term would train the encoder."""
    model = VQVAE(ch_mult=(1, 2), **TINY)
    images = jnp.asarray(np.random.RandomState(3).uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
    variables = nn.meta.unbox(model.init(jax.random.key(0), images))
    params, stats = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    apply = lambda p, *a, **k: model.apply({"params": p, **stats}, *a, **k)  # noqa: E731
    z_e_of = lambda p: apply(p, images, method=lambda m, x: m.pre_quant(m._features(x, False)))  # noqa: E731
    decode = lambda p, z: apply(p, z, method=lambda m, z: m.dec(m.post_quant(z), False))  # noqa: E731
    recon_loss = lambda recon: jnp.mean((recon - images) ** 2)  # noqa: E731

    got = jax.grad(lambda p: recon_loss(apply(p, images)[0]))(params)

    z_e, pull_back = jax.vjp(z_e_of, params)
    cb = np.asarray(params["quantizer"]["codebook"])
    z_q = jnp.asarray(cb[np_codes(np.asarray(z_e).reshape(-1, D), cb)].reshape(z_e.shape))  # nearest codes, numpy
    g_zq = jax.grad(lambda z: recon_loss(decode(params, z)))(z_q)
    want = pull_back(g_zq)[0]
    for part in ("enc", "pre_quant"):
        flat_got, flat_want = jax.tree.leaves(got[part]), jax.tree.leaves(want[part])
        assert sum(float(jnp.abs(g).sum()) for g in flat_got) > 0, part
        for a, b in zip(flat_got, flat_want):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
