"""SigLIP / CLIP losses: dense against a float64 loop formula; all-gather and ring against dense on 8 devices."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vlmjax.losses.contrastive import (hard_negative_loss, make_loss_fn, presence_loss, sigmoid_loss,
                                      softmax_loss)

B, D = 32, 8
LOG_T, BIAS = math.log(10.0), -3.0
MESH_SHAPES = [(8, 1, 1), (2, 2, 2)]
SCALE = 2.5  # differentiate SCALE * loss so the ring's custom backward must honour the incoming cotangent


def _embeddings(seed=0, b=B, d=D):
    r = np.random.RandomState(seed)
    zimg = r.randn(b, d)
    ztxt = zimg + 0.8 * r.randn(b, d)  # correlated pairs: some, not all, in-batch argmaxes hit the diagonal
    return [(z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32) for z in (zimg, ztxt)]


ZIMG, ZTXT = _embeddings()


def _log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _logsumexp(values):
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def reference(kind, zimg, ztxt, log_t, bias):
    """Loop formula in float64: (loss, metrics)."""
    zimg, ztxt = zimg.astype(np.float64), ztxt.astype(np.float64)
    n, t = zimg.shape[0], math.exp(log_t)
    logit = [[t * float(np.dot(zimg[i], ztxt[j])) + bias for j in range(n)] for i in range(n)]
    if kind == "sigmoid":
        loss = -sum(_log_sigmoid((1.0 if i == j else -1.0) * logit[i][j]) for i in range(n) for j in range(n)) / n
    else:
        i2t = sum(_logsumexp(logit[i]) - logit[i][i] for i in range(n)) / n
        t2i = sum(_logsumexp([logit[i][j] for i in range(n)]) - logit[j][j] for j in range(n)) / n
        loss = (i2t + t2i) / 2
    pos = sum(logit[i][i] for i in range(n)) / n
    neg = sum(logit[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    acc = sum(max(range(n), key=lambda j: logit[i][j]) == i for i in range(n)) / n
    return loss, {"pos_logit": pos, "neg_logit": neg, "batch_accuracy": acc}


@pytest.mark.parametrize("kind", ["sigmoid", "softmax"])
def test_dense_matches_loop_formula(kind):
    fn = jax.jit(sigmoid_loss if kind == "sigmoid" else softmax_loss)
    loss, metrics = fn(ZIMG, ZTXT, jnp.float32(LOG_T), jnp.float32(BIAS))
    ref_loss, ref_metrics = reference(kind, ZIMG, ZTXT, LOG_T, BIAS)
    assert float(loss) == pytest.approx(ref_loss, rel=1e-5)
    for name, value in ref_metrics.items():
        assert float(metrics[name]) == pytest.approx(value, rel=1e-5, abs=1e-6), name
    assert 0.0 < ref_metrics["batch_accuracy"] < 1.0  # the data exercises both hits and misses


@pytest.mark.parametrize("kind", ["sigmoid", "softmax"])
def test_dense_scalar_gradients_match_finite_differences(kind):
    # d loss / d log_t and d loss / d bias against central differences of the float64 loop formula.
    fn = sigmoid_loss if kind == "sigmoid" else softmax_loss
    grads = jax.jit(jax.grad(lambda lt, b: fn(ZIMG, ZTXT, lt, b)[0], argnums=(0, 1)))(jnp.float32(LOG_T),
                                                                                      jnp.float32(BIAS))
    eps = 1e-4
    fd_t = (reference(kind, ZIMG, ZTXT, LOG_T + eps, BIAS)[0] - reference(kind, ZIMG, ZTXT, LOG_T - eps, BIAS)[0])
    fd_b = (reference(kind, ZIMG, ZTXT, LOG_T, BIAS + eps)[0] - reference(kind, ZIMG, ZTXT, LOG_T, BIAS - eps)[0])
    assert float(grads[0]) == pytest.approx(fd_t / (2 * eps), rel=1e-3, abs=1e-5)
    assert float(grads[1]) == pytest.approx(fd_b / (2 * eps), rel=1e-3, abs=1e-5)


def _mesh(shape):
    return Mesh(np.array(jax.devices()).reshape(shape), ("data", "fsdp", "tensor"))


def _step(kind, impl, mesh, with_bias=True):
    fn = make_loss_fn(kind, impl, mesh)
    argnums = (0, 1, 2, 3) if with_bias else (0, 1, 2)

    def objective(zimg, ztxt, log_t, bias=None):
        loss, metrics = fn(zimg, ztxt, log_t, bias)
        return SCALE * loss, metrics

    return jax.jit(jax.value_and_grad(objective, argnums=argnums, has_aux=True))


def _sharded_args(mesh):
    sharding = NamedSharding(mesh, P(("data", "fsdp")))
    return (jax.device_put(ZIMG, sharding), jax.device_put(ZTXT, sharding), jnp.float32(LOG_T), jnp.float32(BIAS))


@pytest.fixture(scope="module")
def dense_results():
    args = (ZIMG, ZTXT, jnp.float32(LOG_T), jnp.float32(BIAS))
    return {kind: _step(kind, "dense", None)(*args) for kind in ("sigmoid", "softmax")}


def _assert_close(got, want):
    (loss, metrics), grads = got
    (loss_d, metrics_d), grads_d = want
    np.testing.assert_allclose(float(loss), float(loss_d), rtol=1e-5)
    for name in metrics_d:
        np.testing.assert_allclose(float(metrics[name]), float(metrics_d[name]), rtol=1e-5, atol=1e-6, err_msg=name)
    for g, g_d, name in zip(grads, grads_d, ("zimg", "ztxt", "log_t", "bias")):
        assert g.shape == g_d.shape, name
        # Absolute floor: the softmax bias gradient is zero up to float32 round-off.
        atol = max(1e-5 * float(np.max(np.abs(np.asarray(g_d)))), 1e-6)
        np.testing.assert_allclose(np.asarray(g), np.asarray(g_d), rtol=1e-5, atol=atol, err_msg=name)


@pytest.mark.parametrize("shape", MESH_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", ["all_gather", "ring"])
@pytest.mark.parametrize("kind", ["sigmoid", "softmax"])
def test_sharded_matches_dense(dense_results, kind, impl, shape):
    mesh = _mesh(shape)
    args = _sharded_args(mesh)
    got = _step(kind, impl, mesh)(*args)
    _assert_close(got, dense_results[kind])
    # Gradients come back sharded like the embeddings.
    assert got[1][0].sharding.is_equivalent_to(args[0].sharding, 2)


def test_ring_softmax_without_bias_matches_dense():
    mesh = _mesh((8, 1, 1))
    zimg, ztxt, log_t, _ = _sharded_args(mesh)
    want = _step("softmax", "dense", None, with_bias=False)(ZIMG, ZTXT, log_t)
    got = _step("softmax", "ring", mesh, with_bias=False)(zimg, ztxt, log_t)
    _assert_close(got, want)


def _shard_map_intermediate_shapes(jaxpr, inside=False, out=None):
    """Shapes of every value produced inside shard_map bodies (per-device shapes), through all nested jaxprs."""
    out = [] if out is None else out
    for eqn in jaxpr.eqns:
        if inside:
            out.extend(tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))
        nested_inside = inside or eqn.primitive.name == "shard_map"
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    _shard_map_intermediate_shapes(sub, nested_inside, out)
    return out


@pytest.mark.parametrize("shape", MESH_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_ring_never_holds_more_than_a_local_block(shape):
    mesh = _mesh(shape)
    batch, dim = 128, 4  # dim < local batch, so a [b, D] array never masks a bigger logit block in the check
    n = shape[0] * shape[1]
    b = batch // n
    zimg = jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=NamedSharding(mesh, P(("data", "fsdp"))))
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    largest = {}
    for impl in ("all_gather", "ring"):
        fn = make_loss_fn("softmax", impl, mesh)
        jaxpr = jax.make_jaxpr(jax.value_and_grad(lambda *a: fn(*a)[0], argnums=(0, 1, 2, 3)))(zimg, zimg, scalar,
                                                                                               scalar)
        shapes = [s for s in _shard_map_intermediate_shapes(jaxpr.jaxpr) if len(s) >= 2]
        assert shapes, impl
        largest[impl] = max(math.prod(s) for s in shapes)
    assert largest["ring"] == b * b
    assert largest["all_gather"] == b * batch  # the check does see a local x global block when there is one


def test_ring_uses_less_compiled_temp_memory_than_all_gather():
    mesh = _mesh((8, 1, 1))
    batch, dim = 1024, 16
    spec = jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=NamedSharding(mesh, P(("data", "fsdp"))))
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    temp = {}
    for impl in ("all_gather", "ring"):
        fn = make_loss_fn("sigmoid", impl, mesh)
        step = jax.jit(jax.value_and_grad(lambda *a: fn(*a)[0], argnums=(0, 1, 2, 3)))
        temp[impl] = step.lower(spec, spec, scalar, scalar).compile().memory_analysis().temp_size_in_bytes
    # all_gather holds [128, 1024] float32 logits (512 KiB) and their gradient; ring holds [128, 128] blocks.
    assert temp["ring"] * 4 <= temp["all_gather"], temp  # the benchmark target, at a smaller size


def test_rejects_bad_arguments():
    mesh = _mesh((8, 1, 1))
    with pytest.raises(ValueError, match="kind"):
        make_loss_fn("triplet", "dense")
    with pytest.raises(ValueError, match="impl"):
        make_loss_fn("sigmoid", "allgather", mesh)
    with pytest.raises(ValueError, match="divisible"):
        make_loss_fn("sigmoid", "ring", mesh)(jnp.zeros((12, 4)), jnp.zeros((12, 4)), 0.0, 0.0)
    with pytest.raises(ValueError, match="batch_axes"):
        make_loss_fn("sigmoid", "ring", mesh, batch_axes=("batch",))


@pytest.mark.parametrize("kind", ["sigmoid", "pairwise"])
def test_hard_negative_loss_matches_loop_formula(kind):
    _, zneg = _embeddings(seed=1)
    zneg = zneg + ZIMG  # as close to the images as the captions are, so some negatives win
    zneg = zneg / np.linalg.norm(zneg, axis=1, keepdims=True)
    valid = (np.arange(B) % 3 != 0).astype(np.int32)  # every third example has no negative
    bias = BIAS if kind == "sigmoid" else None
    loss, metrics = jax.jit(hard_negative_loss, static_argnums=0)(kind, ZIMG, ZTXT, zneg, jnp.float32(LOG_T),
                                                                  None if bias is None else jnp.float32(bias), valid)
    t, b = math.exp(LOG_T), bias or 0.0
    pos = [t * float(np.dot(ZIMG[i].astype(np.float64), ZTXT[i])) + b for i in range(B)]
    neg = [t * float(np.dot(ZIMG[i].astype(np.float64), zneg[i])) + b for i in range(B)]
    rows = [i for i in range(B) if valid[i]]
    if kind == "sigmoid":
        ref = -sum(_log_sigmoid(-neg[i]) for i in rows) / B
    else:
        ref = sum(_logsumexp([pos[i], neg[i]]) - pos[i] for i in rows) / B
    assert float(loss) == pytest.approx(ref, rel=1e-5)
    assert float(metrics["hard_neg_logit"]) == pytest.approx(sum(neg[i] for i in rows) / len(rows), rel=1e-5)
    acc = sum(pos[i] > neg[i] for i in rows) / len(rows)
    assert float(metrics["hard_neg_accuracy"]) == pytest.approx(acc)
    assert 0 < acc < 1


@pytest.mark.parametrize("kind", ["sigmoid", "pairwise"])
def test_k_hard_negatives_match_loop_formula(kind):
    # K=3 negatives per image, some missing: the (K+1)-way softmax / K extra sigmoid columns, by loops.
    k = 3
    zneg = np.stack([_embeddings(seed=10 + j)[1] + ZIMG for j in range(k)], axis=1)  # [B, K, D]
    zneg = zneg / np.linalg.norm(zneg, axis=-1, keepdims=True)
    valid = (np.arange(B * k).reshape(B, k) % 4 != 1).astype(np.int32)
    valid[0] = 0  # an image with no negative at all adds nothing
    loss, metrics = jax.jit(hard_negative_loss, static_argnums=0)(kind, ZIMG, ZTXT, zneg, jnp.float32(LOG_T),
                                                                  jnp.float32(BIAS), valid)
    t = math.exp(LOG_T)
    ref, negs, wins = 0.0, [], []
    for i in range(B):
        pos = t * float(np.dot(ZIMG[i].astype(np.float64), ZTXT[i])) + BIAS
        neg = [t * float(np.dot(ZIMG[i].astype(np.float64), zneg[i, j])) + BIAS for j in range(k) if valid[i, j]]
        negs += neg
        wins += [pos > x for x in neg]
        if kind == "sigmoid":
            ref -= sum(_log_sigmoid(-x) for x in neg) / B
        elif neg:
            ref += (_logsumexp([pos] + neg) - pos) / B
    assert float(loss) == pytest.approx(ref, rel=1e-5)
    assert float(metrics["hard_neg_logit"]) == pytest.approx(sum(negs) / len(negs), rel=1e-5)
    assert float(metrics["hard_neg_accuracy"]) == pytest.approx(sum(wins) / len(wins))
    # K=1 given as [B, 1, D] is the [B, D] form
    one = [hard_negative_loss(kind, ZIMG, ZTXT, z, jnp.float32(LOG_T), jnp.float32(BIAS), v)[0]
           for z, v in [(zneg[:, 0], valid[:, 0]), (zneg[:, :1], valid[:, :1])]]
    assert float(one[0]) == pytest.approx(float(one[1]), rel=1e-6)


def test_sigmoid_hard_negative_is_one_more_negative_column():
    # SigLIP + the hard-negative term == the sigmoid loss over [B, B + B] logits whose extra block holds each
    # image's own negative on the diagonal (label -1) and nothing elsewhere.
    zneg, _ = _embeddings(seed=2)
    valid = np.ones(B, np.int32)
    lt, b = jnp.float32(LOG_T), jnp.float32(BIAS)
    total = sigmoid_loss(ZIMG, ZTXT, lt, b)[0] + hard_negative_loss("sigmoid", ZIMG, ZTXT, zneg, lt, b, valid)[0]
    logits = math.exp(LOG_T) * ZIMG.astype(np.float64) @ np.concatenate([ZTXT, zneg]).astype(np.float64).T + BIAS
    labels = np.concatenate([2 * np.eye(B) - 1, -np.eye(B)], axis=1)  # zero weight off the extra diagonal
    ls = -np.logaddexp(0, -labels * logits) * (labels != 0)
    assert float(total) == pytest.approx(-ls.sum() / B, rel=1e-5)


def test_presence_loss_matches_loop_formula():
    # one true text and K=3 false ones per image, some false ones missing: independent sigmoid terms, by loops
    k = 3
    zneg = np.stack([_embeddings(seed=20 + j)[1] + ZIMG for j in range(k)], axis=1)
    zneg = zneg / np.linalg.norm(zneg, axis=-1, keepdims=True)
    valid = (np.arange(B * k).reshape(B, k) % 3 != 2).astype(np.int32)
    loss, metrics = jax.jit(presence_loss)(ZIMG, ZTXT, zneg, jnp.float32(LOG_T), jnp.float32(BIAS), valid)
    t = math.exp(LOG_T)
    pos = [t * float(np.dot(ZIMG[i].astype(np.float64), ZTXT[i])) + BIAS for i in range(B)]
    neg = [[t * float(np.dot(ZIMG[i].astype(np.float64), zneg[i, j])) + BIAS for j in range(k)] for i in range(B)]
    ref = sum(-_log_sigmoid(pos[i]) - sum(_log_sigmoid(-neg[i][j]) for j in range(k) if valid[i, j])
              for i in range(B)) / B
    assert float(loss) == pytest.approx(ref, rel=1e-5)
    n = int(valid.sum())
    right = sum(p > 0 for p in pos) + sum(neg[i][j] < 0 for i in range(B) for j in range(k) if valid[i, j])
    assert float(metrics["presence_accuracy"]) == pytest.approx(right / (B + n))
    assert float(metrics["presence_neg_logit"]) == pytest.approx(
        sum(neg[i][j] for i in range(B) for j in range(k) if valid[i, j]) / n, rel=1e-5)


def test_presence_loss_across_the_batch_matches_loop_formula():
    # every image against every image's true text, labelled by whether that text's id is among the image's ids
    k = 2
    zneg = np.stack([_embeddings(seed=30 + j)[1] for j in range(k)], axis=1)
    valid = np.ones((B, k), np.int32)
    rng = np.random.default_rng(0)
    pos_id = rng.integers(0, 5, B).astype(np.int32)  # few ids, so several images share one
    present = np.full((B, 3), -1, np.int32)
    present[:, 0] = pos_id  # its own text is true for each image...
    present[:, 1] = rng.integers(0, 5, B)  # ...and sometimes another image's
    loss, metrics = jax.jit(presence_loss)(ZIMG, ZTXT, zneg, jnp.float32(LOG_T), jnp.float32(BIAS), valid, pos_id,
                                           present)
    t = math.exp(LOG_T)
    ref, n_pos = 0.0, 0
    for i in range(B):
        for j in range(B):
            label = pos_id[j] in set(present[i][present[i] >= 0])
            n_pos += label
            logit = t * float(np.dot(ZIMG[i].astype(np.float64), ZTXT[j])) + BIAS
            ref -= _log_sigmoid(logit if label else -logit)
        for j in range(k):
            ref -= _log_sigmoid(-(t * float(np.dot(ZIMG[i].astype(np.float64), zneg[i, j])) + BIAS))
    assert n_pos > B  # the batch term has positives off the diagonal
    assert float(loss) == pytest.approx(ref / B, rel=1e-5)
    assert float(metrics["presence_batch_positives"]) == pytest.approx(n_pos / B)
    with pytest.raises(ValueError, match="present"):
        presence_loss(ZIMG, ZTXT, zneg, LOG_T, BIAS, valid, pos_id)
