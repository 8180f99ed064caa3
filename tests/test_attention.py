"""`vlmjax.models.attention.attend` (jax.nn.dot_product_attention) against the einsum implementation it replaced,
in value and gradients, on every mask the families use: padding, the prefix-LM mask from input_mask/mask_ar, causal,
grouped-query heads, the KV-cache decode step, and a query row that may attend to nothing."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlmjax.models.attention import attend, cudnn_supported, pad_to_even
from vlmjax.models.masks import make_attn_mask


def einsum_attention(q, k, v, mask):
    """The implementation `attend` replaced (vlmjax before the switch): q scaled, float32 softmax with the
    dtype's min on masked logits, GQA by grouping query heads. q float[B, Lq, H, Dh], k/v float[B, Lk, Hkv, Dh]."""
    b, lq, h, dh = q.shape
    hkv = k.shape[2]
    q = (q * dh ** -0.5).reshape(b, lq, hkv, h // hkv, dh)
    logits = jnp.einsum("blkgd,bskd->bkgls", q, k).astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask[:, None, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(q.dtype)
    return jnp.einsum("bkgls,bskd->blkgd", probs, v).reshape(b, lq, h, dh)


def _qkv(key, b, lq, lk, h, hkv, dh):
    kq, kk, kv = jax.random.split(jax.random.key(key), 3)
    return (jax.random.normal(kq, (b, lq, h, dh)), jax.random.normal(kk, (b, lk, hkv, dh)),
            jax.random.normal(kv, (b, lk, hkv, dh)))


def _masks():
    """name -> (Lq, Lk, mask bool[B, Lq, Lk] or None), B = 2."""
    input_mask = np.array([[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    mask_ar = np.array([[0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1, 1]])
    padding = np.broadcast_to(np.array([[1, 1, 1, 1, 1, 0, 0, 0], [1] * 8], bool)[:, None], (2, 8, 8))
    # Decode: 1 new query against a 10-slot cache of which rows have 6 and 9 filled (and the new one, slot 6 / 9).
    cache = np.zeros((2, 1, 10), bool)
    cache[0, 0, :7], cache[1, 0, :10] = True, True
    return {"none": (8, 8, None), "padding": (8, 8, padding), "prefix_lm": (8, 8, make_attn_mask(input_mask, mask_ar)),
            "causal": (8, 8, np.tril(np.ones((8, 8), bool))[None]), "decode": (1, 10, cache)}


HEADS = {"mha": (4, 4), "gqa": (4, 2), "mqa": (4, 1)}


@pytest.mark.parametrize("mask_name,heads", [("none", "mha"), ("padding", "gqa"), ("prefix_lm", "mqa"),
                                             ("prefix_lm", "gqa"), ("causal", "mha"), ("decode", "gqa"),
                                             ("decode", "mqa")])
def test_attend_matches_the_einsum_implementation_in_value_and_gradients(mask_name, heads):
    lq, lk, mask = _masks()[mask_name]
    q, k, v = _qkv(0, 2, lq, lk, *HEADS[heads], 8)
    mask = None if mask is None else jnp.asarray(mask)
    w = jax.random.normal(jax.random.key(1), q.shape)  # a loss that weights every output element differently
    grad = lambda f: jax.grad(lambda q, k, v: jnp.sum(w * f(q, k, v)), argnums=(0, 1, 2))(q, k, v)  # noqa: E731
    want = grad(lambda q, k, v: einsum_attention(q, k, v, mask))
    for impl in ("xla", "einsum"):  # jax.nn's formula (GPU/TPU) and the CPU one ('auto' on CPU)
        np.testing.assert_allclose(attend(q, k, v, mask, impl=impl), einsum_attention(q, k, v, mask),
                                   atol=1e-5, rtol=1e-5)
        for got, w_ in zip(grad(lambda q, k, v: attend(q, k, v, mask, impl=impl)), want):
            np.testing.assert_allclose(got, w_, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["xla", "einsum"])
def test_a_row_that_may_attend_to_nothing_gets_the_mean_of_the_values(impl):
    q, k, v = _qkv(2, 1, 3, 5, 2, 2, 4)
    mask = jnp.ones((1, 3, 5), bool).at[0, 1].set(False)
    out = attend(q, k, v, mask, impl=impl)
    np.testing.assert_allclose(out[0, 1], v[0].mean(0), atol=1e-6)
    np.testing.assert_allclose(out, einsum_attention(q, k, v, mask), atol=1e-6)
    g = jax.grad(lambda q: attend(q, k, v, mask, impl=impl).sum())(q)
    assert np.all(np.isfinite(g)) and np.allclose(g[0, 1], 0.0, atol=1e-7)  # no gradient through a uniform row


def test_bfloat16_inputs_keep_their_dtype_and_a_float32_softmax():
    q, k, v = (x.astype(jnp.bfloat16) for x in _qkv(3, 2, 8, 8, 4, 2, 8))
    out = attend(q, k, v, jnp.asarray(_masks()["prefix_lm"][2]))
    assert out.dtype == jnp.bfloat16
    want = einsum_attention(*(x.astype(jnp.float32) for x in (q, k, v)), jnp.asarray(_masks()["prefix_lm"][2]))
    np.testing.assert_allclose(out.astype(jnp.float32), want, atol=3e-2)


def test_implementation_choice():
    q, k, v = _qkv(4, 2, 8, 8, 4, 4, 8)
    assert not cudnn_supported(q, k)  # CPU and float32: never cuDNN
    with pytest.raises(ValueError, match="attention_impl 'flash'"):
        attend(q, k, v, impl="flash")


def test_padding_odd_lengths_for_cudnn_changes_nothing():
    """What the cuDNN path does to a masked call of odd lengths (prefix-LM: image + text - 1 tokens), run through
    XLA: pad query and key to even with the padded key masked out, attend, drop the padded query row."""
    q, k, v = _qkv(5, 2, 7, 7, 4, 1, 8)
    mask = make_attn_mask(np.ones((2, 7)), np.array([[0, 0, 0, 1, 1, 1, 1]] * 2))
    want = attend(q, k, v, mask, impl="xla")
    pq, pk, pv, pmask = pad_to_even(q, k, v, mask[:, None])
    assert pq.shape[1] == pk.shape[1] == 8 and not pmask[:, :, :, 7].any()
    got = jax.nn.dot_product_attention(pq, pk, pv, mask=pmask, scale=8 ** -0.5, implementation="xla")[:, :7]
    np.testing.assert_allclose(got, want, atol=1e-6)
