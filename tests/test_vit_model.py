"""ViT and transformer pieces: patch embedding and attention against independent formulas; the CoordConv input
channels experiments switch on."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlmjax.models.layers import token_dot
from vlmjax.models.transformer import Attention
from vlmjax.models.vit import ConvStem, PatchEmbed, with_coord_channels


@pytest.mark.parametrize("size", [(16, 24), (19, 21)])  # the second is cropped, as a VALID convolution does
def test_patch_embed_is_the_strided_convolution(size):
    images = jax.random.normal(jax.random.key(0), (2, *size, 3))
    embed = PatchEmbed(5, (4, 8))
    params = nn.unbox(embed.init(jax.random.key(1), images))
    params = jax.tree.map(lambda p: p + 0.1, params)  # a nonzero bias too
    conv = jax.lax.conv_general_dilated(images, params["params"]["kernel"], (4, 8), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")) + params["params"]["bias"]
    out = embed.apply(params, images)
    assert out.shape == conv.shape == (2, size[0] // 4, size[1] // 8, 5)
    np.testing.assert_allclose(out, conv, atol=1e-5)


def test_token_dot_is_the_contraction_over_the_last_axis():
    x, w = jax.random.normal(jax.random.key(0), (2, 3, 4)), jax.random.normal(jax.random.key(1), (4, 5, 6))
    np.testing.assert_allclose(token_dot(x, w), np.einsum("bld,dhk->blhk", x, w), atol=1e-5)


def test_attention_matches_a_numpy_softmax_reference_in_value_and_gradients():
    """Masked multi-head attention (with one query row that may attend to nothing, which gives the mean of the
    values) against softmax(q k^T / sqrt(hd)) v written out in numpy; gradients against the same formula in jnp."""
    b, lq, lk, d, h = 2, 3, 5, 8, 2
    xq, xkv = jax.random.normal(jax.random.key(0), (b, lq, d)), jax.random.normal(jax.random.key(1), (b, lk, d))
    mask = jax.random.bernoulli(jax.random.key(2), 0.6, (b, lq, lk)).at[0, 1].set(False)
    attn = Attention(h)
    params = jax.tree.map(lambda p: p + 0.05, nn.unbox(attn.init(jax.random.key(3), xq, xkv, mask)))["params"]

    def reference(p, xp=np):
        proj = lambda x, n: xp.einsum("bld,dhk->blhk", x, p[f"{n}_kernel"]) + p[f"{n}_bias"]  # noqa: E731
        q, k, v = proj(xq, "query"), proj(xkv, "key"), proj(xkv, "value")
        logits = xp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d // h)
        logits = xp.where(mask[:, None], logits, -1e30)
        e = xp.exp(logits - logits.max(-1, keepdims=True))
        probs = e / e.sum(-1, keepdims=True)
        return xp.einsum("bqhk,hkd->bqd", xp.einsum("bhqk,bkhd->bqhd", probs, v), p["out_kernel"]) + p["out_bias"]

    out, want_out = attn.apply({"params": params}, xq, xkv, mask), reference(jax.tree.map(np.asarray, params))
    np.testing.assert_allclose(out, want_out, atol=1e-5)
    # The row that attends to nothing: the mean of the values.
    values = np.einsum("ld,dhk->lhk", np.asarray(xkv[0]), params["value_kernel"]) + params["value_bias"]
    np.testing.assert_allclose(out[0, 1], np.einsum("hk,hkd->d", values.mean(0), params["out_kernel"])
                               + params["out_bias"], atol=1e-5)
    loss = lambda f: lambda p: jnp.sum(jnp.sin(f(p)))  # noqa: E731
    got = jax.grad(loss(lambda p: attn.apply({"params": p}, xq, xkv, mask)))(params)
    want = jax.grad(loss(lambda p: reference(p, jnp)))(params)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, atol=1e-5)


def test_coord_channels_values():
    out = np.asarray(with_coord_channels(jnp.zeros((2, 3, 5, 3))))
    assert out.shape == (2, 3, 5, 5)
    np.testing.assert_allclose(out[0, 1, :, 3], np.linspace(-1, 1, 5), atol=1e-6)  # x runs along the width
    np.testing.assert_allclose(out[1, :, 4, 4], np.linspace(-1, 1, 3), atol=1e-6)  # y along the height
    assert not out[..., :3].any()


def test_coord_channels_let_a_conv_stem_see_where_a_shape_is():
    """Mean-pooled conv-stem features cannot tell a blob on the left from the same blob on the right (the stem is
    translation-equivariant and the blob is away from the borders); with the coordinate channels they can."""
    img = np.zeros((2, 48, 48, 3), np.float32)
    # One 8x8 blob, then shifted right by 16 px (4 stem cells); with 2 blocks of 3x3 convs its features reach 2
    # cells around it, never the zero padding at the borders.
    img[0, 20:28, 12:20] = img[1, 20:28, 28:36] = 1.0
    stem = ConvStem(channels=8, patch=4, blocks=2)
    pooled = {}
    for coords in (False, True):
        x = with_coord_channels(jnp.asarray(img)) if coords else jnp.asarray(img)
        params = nn.unbox(stem.init(jax.random.key(0), x))
        pooled[coords] = np.asarray(stem.apply(params, x)).mean(axis=(1, 2))  # [2, 8]
    np.testing.assert_allclose(pooled[False][0], pooled[False][1], atol=1e-5)
    assert np.abs(pooled[True][0] - pooled[True][1]).max() > 1e-2
