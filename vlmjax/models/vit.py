"""Vision Transformer: the image tower every family reuses (classifier, SigLIP/CLIP tower, VLM encoder, VQ option)."""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vlmjax.models.layers import conv, layer_norm, token_dot
from vlmjax.models.transformer import Encoder, MAPHead, pool

Dtype = Any


def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
    """Fixed 2-D sin-cos position embedding: float[1, h*w, width] (MoCo v3 / big_vision)."""
    if width % 4:
        raise ValueError(f"width {width} must be divisible by 4 for sincos2d position embeddings")
    y, x = np.mgrid[:h, :w]
    omega = 1.0 / temperature ** (np.arange(width // 4) / (width // 4 - 1 or 1))
    y = y.reshape(-1)[:, None] * omega[None]
    x = x.reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)[None].astype(np.float32)


def position_embedding(module: nn.Module, kind: str, h: int, w: int, d: int, param_dtype):
    """float[1, h*w, d]: `module`'s learned `pos_embedding` parameter ('learn') or the fixed 'sincos2d' one."""
    if kind == "learn":
        return module.param("pos_embedding", nn.with_logical_partitioning(
            nn.initializers.normal(stddev=1 / np.sqrt(d)), (None, None, "embed")), (1, h * w, d), param_dtype)
    if kind == "sincos2d":
        return jnp.asarray(posemb_sincos_2d(h, w, d))
    raise ValueError(f"posemb {kind!r}: expected 'learn' or 'sincos2d'")


def with_coord_channels(images):
    """float[B, H, W, C] -> float[B, H, W, C + 2]: each pixel's (x, y) in [-1, 1] appended as two channels.

    Why (CoordConv, Liu et al. 2018): convolutions are translation-equivariant, so a conv stem alone cannot make
    features that join *what* is at a pixel with *where* it is; with the coordinates as inputs its first layers can
    ("a red shape on the left"), which captions that say which object is left of which need. A position
    embedding added after the stem only adds position to content; the conjunction then has to be learnt later.
    """
    b, h, w, _ = images.shape
    x = jnp.broadcast_to(jnp.linspace(-1.0, 1.0, w, dtype=images.dtype)[None, None, :], (b, h, w))
    y = jnp.broadcast_to(jnp.linspace(-1.0, 1.0, h, dtype=images.dtype)[None, :, None], (b, h, w))
    return jnp.concatenate([images, x[..., None], y[..., None]], axis=-1)


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: float[B, H, W, C] -> float[B, H/ph, W/pw, D].

    The same parameters as `nn.Conv(D, (ph, pw), strides=(ph, pw), padding="VALID")` (kernel float[ph, pw, C, D],
    bias float[D]), computed as patchify + one matmul (`token_dot`): with kernel = stride the convolution IS that
    matmul, and its gradients are GEMMs instead of strided / rhs-dilated convolutions (docs/contrastive.md).
    """

    features: int
    patch: Sequence[int]
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images):
        (ph, pw), c = self.patch, images.shape[-1]
        kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                                   (None, None, None, "embed")),
                            (ph, pw, c, self.features), self.param_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                          (self.features,), self.param_dtype)
        b, h, w = images.shape[0], images.shape[1] // ph, images.shape[2] // pw
        x = images[:, :h * ph, :w * pw].reshape(b, h, ph, w, pw, c).transpose(0, 1, 3, 2, 4, 5)
        x = token_dot(x.reshape(b, h, w, ph * pw * c).astype(self.dtype),
                      kernel.reshape(ph * pw * c, self.features).astype(self.dtype))
        return x + bias.astype(self.dtype)


class ConvStem(nn.Module):
    """Hybrid-ViT stem: a patchify conv (kernel = stride = `patch`) then `blocks` residual LayerNorm-GELU-3x3-conv
    blocks. float[B, H, W, 3] -> float[B, H/patch, W/patch, channels]; the ViT then patchifies its output.

    Why: a plain ViT trained from scratch on small data learns shapes slowly; local 3x3 mixing on a finer grid gives
    the inductive bias early convolutions bring ("Early Convolutions Help Transformers See Better", Xiao et al. 2021).
    """

    channels: int
    patch: int = 4
    blocks: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, in_axis=None)
        x = conv(self.channels, self.patch, name="patchify", strides=self.patch, padding="VALID", **kw)(
            x.astype(self.dtype))
        for i in range(self.blocks):
            ln = layer_norm(f"norm{i}", self.dtype, self.param_dtype, axis="conv_out")
            x = x + conv(self.channels, 3, name=f"conv{i}", **kw)(nn.gelu(ln(x)))
        return x


class ViT(nn.Module):
    """ViT: float[B, H, W, 3] -> (float[B, num_classes] or float[B, D] if num_classes is None, dict of features).

    The features dict holds `patches` (float[B, N, D], after the final norm), `hidden` (per-block outputs, for VLM
    projectors that take an earlier layer) and `pre_logits` (pooled, float[B, D]).
    """

    patch_size: Sequence[int] = (8, 8)
    width: int = 192
    depth: int = 6
    num_heads: int = 3
    mlp_dim: Optional[int] = None  # default 4 * width
    posemb: str = "learn"  # 'learn' | 'sincos2d'
    pool_type: str = "gap"  # 'gap' | 'tok' | 'map' | 'none'
    num_classes: Optional[int] = None
    stem_channels: int = 0
    stem_patch: int = 4
    stem_blocks: int = 1
    coord_channels: bool = False  # append (x, y) input channels (CoordConv, `with_coord_channels`)
    head_zeroinit: bool = True
    dropout: float = 0.0
    remat_policy: str = "none"
    scan_layers: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: str = "auto"  # one of vlmjax.models.attention.IMPLS
    scan_unroll: int = 1  # layers per scan iteration (with scan_layers)

    @nn.compact
    def __call__(self, images, train: bool = False):
        mlp_dim = self.mlp_dim or 4 * self.width
        ph, pw = self.patch_size
        if self.coord_channels:
            images = with_coord_channels(images)
        if self.stem_channels:
            images = ConvStem(self.stem_channels, self.stem_patch, self.stem_blocks, self.dtype, self.param_dtype,
                              name="stem")(images)
        x = PatchEmbed(self.width, (ph, pw), self.dtype, self.param_dtype, name="embedding")(images)
        b, h, w, d = x.shape
        x = x.reshape(b, h * w, d)
        x = x + position_embedding(self, self.posemb, h, w, d, self.param_dtype).astype(self.dtype)
        if self.pool_type == "tok":
            cls = self.param("cls", nn.with_logical_partitioning(nn.initializers.zeros, (None, None, "embed")),
                             (1, 1, d), self.param_dtype)
            x = jnp.concatenate([jnp.tile(cls.astype(self.dtype), (b, 1, 1)), x], axis=1)
        x = nn.Dropout(self.dropout)(x, not train)
        x, hidden = Encoder(self.depth, self.num_heads, mlp_dim, self.dropout, self.remat_policy, self.scan_layers,
                            self.dtype, self.param_dtype, self.attention_impl, self.scan_unroll,
                            name="encoder")(x, None, not train)
        out = {"patches": x[:, 1:] if self.pool_type == "tok" else x, "hidden": hidden}
        if self.pool_type == "none":
            return x, out
        map_head = MAPHead(self.num_heads, mlp_dim, self.dtype, self.param_dtype, self.attention_impl,
                           name="map_head") if self.pool_type == "map" else None
        x = pool(self.pool_type, x, map_head=map_head)
        out["pre_logits"] = x
        if self.num_classes is None:
            return x, out
        init = nn.initializers.zeros if self.head_zeroinit else nn.initializers.xavier_uniform()
        logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head",
                          kernel_init=nn.with_logical_partitioning(init, ("embed", "vocab")),
                          bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)))(x)
        return logits, out
