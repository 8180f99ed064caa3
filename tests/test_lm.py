"""Prefix-LM masks, DecoderLM (vs a numpy reference, KV cache, sharding) and the next-token loss."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from vlmjax.losses.lm import check_supervised, next_token_batch, next_token_loss
from vlmjax.models.lm import DecoderLM, apply_rope
from vlmjax.models.masks import make_attn_mask, positions_from_mask
from vlmjax.core.mesh import DEFAULT_RULES, make_mesh

CFG = dict(vocab_size=64, width=32, depth=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64)


# -- masks ---------------------------------------------------------------------------------------------------------
MASK_CASES = {
    # prefix of 3 (bidirectional) then a causal answer of 2
    "prefix": ([1, 1, 1, 1, 1], [0, 0, 0, 1, 1],
               ["11100", "11100", "11100", "11110", "11111"]),
    "causal": ([1, 1, 1, 1], [1, 1, 1, 1],
               ["1000", "1100", "1110", "1111"]),
    # interleaved blocks [0,1] [2,3,4] [5]: bidirectional inside a block, causal between blocks
    "block_causal": ([1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 0, 1],
                     ["110000", "110000", "111110", "111110", "111110", "111111"]),
    # prefix 2, answer 2, two padding tokens: padding neither attends nor is attended to
    "padding": ([1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1],
                ["110000", "110000", "111000", "111100", "000000", "000000"]),
}


@pytest.mark.parametrize("case", sorted(MASK_CASES))
def test_make_attn_mask_truth_tables(case):
    input_mask, mask_ar, rows = MASK_CASES[case]
    want = np.array([[c == "1" for c in r] for r in rows])
    got = make_attn_mask(np.array([input_mask]), np.array([mask_ar]))
    assert got.dtype == jnp.bool_ and got.shape == (1, len(rows), len(rows))
    np.testing.assert_array_equal(np.asarray(got[0]), want)


def test_positions_skip_padding_holes():
    got = positions_from_mask(np.array([[1, 1, 0, 1, 1, 0]]))
    np.testing.assert_array_equal(np.asarray(got)[0, [0, 1, 3, 4]], [0, 1, 2, 3])


def test_rope_scores_depend_only_on_relative_position():
    q, k = jax.random.normal(jax.random.PRNGKey(0), (2, 1, 1, 2, 16))
    def score(m, n):
        return jnp.sum(apply_rope(q, jnp.array([[m]]), 1e4) * apply_rope(k, jnp.array([[n]]), 1e4))
    np.testing.assert_allclose(score(3, 7), score(13, 17), rtol=1e-5)
    np.testing.assert_allclose(score(0, 5), score(20, 25), rtol=1e-5)
    assert abs(float(score(3, 7)) - float(score(3, 8))) > 1e-3  # positions do matter


# -- model vs an independent numpy forward --------------------------------------------------------------------------
def _init(model, seed=1):
    """(abstract boxed variables, numpy-filled variables). Filling on the host skips compiling `init`; kernels
    are 3x the usual fan-in scale so outputs depend on context (not just the current token), norm scales != 1."""
    boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 4, model.width)))
    rng = np.random.default_rng(seed)

    def fill(path, x):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            return (1 + 0.2 * rng.normal(size=x.shape)).astype(np.float32)
        fan_in = model.mlp_dim if "down_kernel" in name else model.width
        std = 1 / np.sqrt(model.width) if "embedding" in name else 3 / np.sqrt(fan_in)
        return (std * rng.normal(size=x.shape)).astype(np.float32)
    return boxed, jax.tree_util.tree_map_with_path(fill, nn.meta.unbox(boxed))


@pytest.fixture(scope="module")
def gqa():
    model = DecoderLM(**CFG, qk_norm=True, mlp_activation="gelu")
    boxed, variables = _init(model)
    return model, boxed, variables


def _forward(variables, tokens, input_mask, mask_ar):
    model = DecoderLM(**CFG, qk_norm=True, mlp_activation="gelu")
    x = model.apply(variables, tokens, method="embed")
    return model.apply(variables, x, make_attn_mask(input_mask, mask_ar), positions_from_mask(input_mask))[0]


@pytest.fixture(scope="module")
def forward():
    return jax.jit(_forward)


def _np_rms(x, scale, eps=1e-6):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def _np_rope(x, pos, theta=1e4):
    half = x.shape[-1] // 2
    ang = pos[..., None] * theta ** (-np.arange(half) / half)
    c, s = np.cos(ang)[:, :, None], np.sin(ang)[:, :, None]
    return np.concatenate([x[..., :half] * c - x[..., half:] * s, x[..., half:] * c + x[..., :half] * s], -1)


def _np_forward(p, tokens, mask, pos):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    emb = p["embedding"]
    x = emb[tokens] * np.sqrt(CFG["width"])
    group = CFG["num_heads"] // CFG["num_kv_heads"]
    for i in range(CFG["depth"]):
        blk = p[f"blocks_{i}"]
        a = blk["attn"]
        h = _np_rms(x, blk["pre_attn_norm"]["scale"])
        q = _np_rms(np.einsum("bld,dhk->blhk", h, a["q_kernel"]), a["q_norm"]["scale"])
        k = _np_rms(np.einsum("bld,dhk->blhk", h, a["k_kernel"]), a["k_norm"]["scale"])
        v = np.einsum("bld,dhk->blhk", h, a["v_kernel"])
        q, k = _np_rope(q, pos), _np_rope(k, pos)
        k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)  # GQA = MHA with shared kv heads
        s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(CFG["head_dim"])
        s = np.where(mask[:, None], s, -1e30)
        w = np.exp(s - s.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        x = x + np.einsum("bqhd,hdo->bqo", np.einsum("bhqk,bkhd->bqhd", w, v), a["out_kernel"])
        h = _np_rms(x, blk["pre_mlp_norm"]["scale"])
        g = h @ blk["mlp"]["gate_kernel"]
        gelu = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g ** 3)))
        x = x + (gelu * (h @ blk["mlp"]["up_kernel"])) @ blk["mlp"]["down_kernel"]
    return _np_rms(x, p["final_norm"]["scale"]) @ emb.T


def _batch(seed=0):
    tokens = np.asarray(jax.random.randint(jax.random.PRNGKey(seed), (2, 8), 0, CFG["vocab_size"]))
    input_mask = np.array([[1] * 8, [1] * 6 + [0] * 2])
    mask_ar = np.array([[0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1, 1]])
    return tokens, input_mask, mask_ar


def test_forward_matches_numpy_reference(gqa, forward):
    _, _, variables = gqa
    tokens, input_mask, mask_ar = _batch()
    got = np.asarray(forward(variables, tokens, input_mask, mask_ar))
    want = _np_forward(variables["params"], tokens, np.asarray(make_attn_mask(input_mask, mask_ar)),
                       np.asarray(positions_from_mask(input_mask)).astype(np.float64))
    real = input_mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=2e-4, rtol=2e-4)


def test_prefix_is_bidirectional_and_blind_to_the_answer(gqa, forward):
    _, _, variables = gqa
    tokens, input_mask, mask_ar = _batch()
    base = np.asarray(forward(variables, tokens, input_mask, mask_ar))
    answer_changed = tokens.copy()
    answer_changed[0, 5] = (answer_changed[0, 5] + 1) % CFG["vocab_size"]
    out = np.asarray(forward(variables, answer_changed, input_mask, mask_ar))
    np.testing.assert_array_equal(out[0, :5], base[0, :5])  # earlier tokens never see a later answer token
    assert np.abs(out[0, 5:] - base[0, 5:]).max() > 1e-3
    prefix_changed = tokens.copy()
    prefix_changed[0, 2] = (prefix_changed[0, 2] + 1) % CFG["vocab_size"]
    out = np.asarray(forward(variables, prefix_changed, input_mask, mask_ar))
    assert np.abs(out[0, 0] - base[0, 0]).max() > 1e-3  # the first prefix token sees the last one


def test_param_logical_names(gqa):
    _, boxed, _ = gqa
    specs = nn.get_partition_spec(boxed)["params"]
    assert specs["embedding"] == P("vocab", "embed")
    assert specs["blocks_0"]["attn"]["q_kernel"] == P("embed", "heads", "kv")
    assert specs["blocks_0"]["attn"]["k_kernel"] == P("embed", "heads", "kv")
    assert specs["blocks_0"]["mlp"]["down_kernel"] == P("mlp", "embed")
    mqa = DecoderLM(**{**CFG, "num_kv_heads": 1})
    mqa_specs = nn.get_partition_spec(jax.eval_shape(mqa.init, jax.random.PRNGKey(0), jnp.zeros((1, 4, 32))))
    assert mqa_specs["params"]["blocks_0"]["attn"]["v_kernel"] == P("embed", None, "kv")


def test_mqa_remat_cache_matches_full_forward():
    """Prefill 5 tokens (prefix + two answer tokens), then feed 3 tokens one at a time: every step's logits
    equal the full forward's."""
    model = DecoderLM(**{**CFG, "num_kv_heads": 1}, mlp_activation="silu", remat_policy="full")
    _, variables = _init(model, seed=2)
    tokens, input_mask, mask_ar = _batch(seed=3)
    mask = make_attn_mask(input_mask, mask_ar)
    pos = positions_from_mask(input_mask)

    @jax.jit
    def run(variables, tokens):
        x = model.apply(variables, tokens, method="embed")
        full, _ = model.apply(variables, x, mask, pos)
        cache = model.init_cache(2, 10)
        pre, cache = model.apply(variables, x[:, :5], mask[:, :5, :5], pos[:, :5], cache=cache)
        steps = [pre]
        for t in range(5, 8):
            out, cache = model.apply(variables, x[:, t:t + 1], mask[:, t:t + 1, t:t + 1], pos[:, t:t + 1], cache=cache)
            steps.append(out)
        return full, jnp.concatenate(steps, axis=1), cache

    full, inc, cache = run(variables, tokens)
    real = input_mask.astype(bool)
    # float32 sums in another order (prefill chunks vs one pass; XLA's CPU thread split moves with load): a few
    # ulp, 1.4e-5 seen on a busy machine; a cache or mask bug moves logits by 1e-2 or more
    np.testing.assert_allclose(np.asarray(inc)[real], np.asarray(full)[real], atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(cache["end"]), [8, 8])
    np.testing.assert_array_equal(np.asarray(cache["mask"]), np.pad(input_mask, ((0, 0), (0, 2))).astype(bool))


def test_sharded_forward_matches_single_device(gqa, forward):
    model, boxed, variables = gqa
    tokens, input_mask, mask_ar = _batch()
    tokens, input_mask, mask_ar = (np.concatenate([a, a[::-1]]) for a in (tokens, input_mask, mask_ar))  # batch 4
    want = np.asarray(forward(variables, tokens, input_mask, mask_ar))

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, DEFAULT_RULES)
    placed = jax.device_put(variables, shardings)
    assert placed["params"]["blocks_0"]["attn"]["q_kernel"].sharding.spec == P("fsdp", "tensor", None)
    assert placed["params"]["embedding"].sharding.spec == P("tensor", "fsdp")
    batch_sharding = NamedSharding(mesh, P(("data", "fsdp")))
    args = [jax.device_put(a, batch_sharding) for a in (tokens, input_mask, mask_ar)]
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        got = jax.jit(_forward)(placed, *args)  # a fresh jit: traced under the rules, so constraints apply
    assert len(got.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


# -- loss ----------------------------------------------------------------------------------------------------------
def _np_ce(logits, targets):
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    return lse - np.take_along_axis(logits, targets[..., None], -1)[..., 0], lse


@pytest.fixture(scope="module")
def loss_case():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 6, 11)).astype(np.float32) * 3
    targets = rng.integers(0, 11, size=(3, 6))
    mask = np.array([[0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0]])
    return logits, targets, mask


def test_loss_value_per_token_and_per_example(loss_case):
    logits, targets, mask = loss_case
    ce, lse = _np_ce(logits.astype(np.float64), targets)
    loss, m = next_token_loss(logits, targets, mask, normalize="per_token")
    np.testing.assert_allclose(float(loss), (ce * mask).sum() / mask.sum(), rtol=1e-5)
    # per example: mean over the two rows with a supervised token of each row's token mean
    want = ((ce[0] * mask[0]).sum() / 4 + ce[1, 5]) / 2
    loss, _ = next_token_loss(logits, targets, mask, normalize="per_example")
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert abs(want - (ce * mask).sum() / mask.sum()) > 1e-3  # the two normalisations really differ here
    np.testing.assert_allclose(float(m["num_supervised"]), 5)
    acc = ((logits.argmax(-1) == targets) * mask).sum() / 5
    np.testing.assert_allclose(float(m["accuracy"]), acc, rtol=1e-6)


def test_z_loss_term(loss_case):
    logits, targets, mask = loss_case
    ce, lse = _np_ce(logits.astype(np.float64), targets)
    loss, m = next_token_loss(logits, targets, mask, z_loss=1e-2)
    z = 1e-2 * (lse ** 2 * mask).sum() / mask.sum()
    np.testing.assert_allclose(float(m["z_loss"]), z, rtol=1e-5)
    np.testing.assert_allclose(float(loss), (ce * mask).sum() / mask.sum() + z, rtol=1e-5)


def test_loss_ignores_unsupervised_positions(loss_case):
    logits, targets, mask = loss_case
    base = next_token_loss(logits, targets, mask, normalize="per_example", z_loss=1e-3)[0]
    noisy = np.where(mask[..., None] == 0, np.random.default_rng(1).normal(size=logits.shape) * 50, logits)
    other_targets = np.where(mask == 0, (targets + 3) % 11, targets)
    np.testing.assert_allclose(float(next_token_loss(noisy, other_targets, mask, normalize="per_example",
                                                     z_loss=1e-3)[0]), float(base), rtol=1e-6)
    changed = logits.copy()
    changed[0, 3] += 5 * np.eye(11)[(targets[0, 3] + 1) % 11]
    assert abs(float(next_token_loss(changed, targets, mask, normalize="per_example", z_loss=1e-3)[0]) - base) > 1e-3


def test_next_token_batch_shift():
    tokens = np.array([[5, 6, 7, 8, 0]])
    b = next_token_batch(tokens, input_mask=[[1, 1, 1, 1, 0]], mask_ar=[[0, 0, 1, 1, 1]], mask_loss=[[0, 0, 1, 1, 1]])
    np.testing.assert_array_equal(b["inputs"], [[5, 6, 7, 8]])
    np.testing.assert_array_equal(b["targets"], [[6, 7, 8, 0]])
    np.testing.assert_array_equal(b["mask_loss"], [[0, 1, 1, 0]])  # the padded last token is never a target
    np.testing.assert_array_equal(b["input_mask"], [[1, 1, 1, 1]])
    np.testing.assert_array_equal(b["mask_ar"], [[0, 0, 1, 1]])


def test_check_supervised_fails_loudly():
    with pytest.raises(ValueError, match=r"^train batch: batch has no supervised token \(mask_loss is all zero\)"):
        check_supervised(np.zeros((4, 16), np.int32), "train batch")
    check_supervised(np.eye(4, 16, k=3), "train batch")  # one supervised token per row is enough
    with pytest.raises(ValueError, match="normalize"):
        next_token_loss(np.zeros((1, 2, 3)), np.zeros((1, 2), int), np.ones((1, 2)), normalize="mean")
