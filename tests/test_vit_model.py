"""ViT pieces that experiments switch on: the CoordConv input channels."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlmjax.models.vit import ConvStem, with_coord_channels


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
