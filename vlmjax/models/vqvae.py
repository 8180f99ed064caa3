"""VQ-VAE image tokenizer: conv ResNet encoder -> 1x1 pre-quant conv -> VectorQuantizer -> post-quant conv -> decoder.

The conv stack follows taming-transformers' VQGAN (GroupNorm + swish ResNet blocks, strided-conv downsampling,
nearest-neighbour upsampling, decoder mirroring the encoder with one extra block per level). Downsampling factor
f = 2 ** (len(ch_mult) - 1): ch_mult (1, 2, 4) -> f4, (1, 1, 2, 4) -> f8, (1, 1, 2, 2, 4) -> f16.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from vlmjax.models.quantizer import VectorQuantizer

Dtype = Any
ACT = ("batch", None, None, "act_embed")  # float[B, H, W, C] at block boundaries


def conv(features: int, kernel: int, dtype, param_dtype, name: str, strides: int = 1, padding="SAME"):
    return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding=padding, dtype=dtype,
                   param_dtype=param_dtype, name=name,
                   kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                            (None, None, "conv_in", "conv_out")),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)))


def group_norm(groups: int, dtype, param_dtype, name: str):
    return nn.GroupNorm(num_groups=groups, dtype=dtype, param_dtype=param_dtype, name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones, (None,)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)))


class ResBlock(nn.Module):
    """x + conv(swish(norm(conv(swish(norm(x)))))): float[B, H, W, Cin] -> float[B, H, W, features]."""

    features: int
    norm_groups: int = 32
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.with_logical_constraint(x, ACT)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = conv(self.features, 3, name="conv1", **kw)(nn.swish(group_norm(self.norm_groups, name="norm1", **kw)(x)))
        h = nn.swish(group_norm(self.norm_groups, name="norm2", **kw)(h))
        h = conv(self.features, 3, name="conv2", **kw)(nn.Dropout(self.dropout)(h, not train))
        if x.shape[-1] != self.features:
            x = conv(self.features, 1, name="shortcut", **kw)(x)
        return nn.with_logical_constraint(x + h, ACT)


class Encoder(nn.Module):
    """float[B, H, W, 3] -> float[B, H/f, W/f, z_channels], f = 2 ** (len(ch_mult) - 1)."""

    ch: int = 64
    ch_mult: Sequence[int] = (1, 1, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 64
    norm_groups: int = 32
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        blk = dict(norm_groups=self.norm_groups, dropout=self.dropout, **kw)
        x = conv(self.ch, 3, name="conv_in", **kw)(x.astype(self.dtype))
        for i, mult in enumerate(self.ch_mult):
            for j in range(self.num_res_blocks):
                x = ResBlock(self.ch * mult, name=f"down{i}_block{j}", **blk)(x, train)
            if i < len(self.ch_mult) - 1:
                # taming's asymmetric (0, 1) padding: a 3x3 stride-2 conv that exactly halves even sizes.
                x = conv(x.shape[-1], 3, name=f"down{i}_downsample", strides=2, padding=((0, 1), (0, 1)), **kw)(x)
        for j in range(2):
            x = ResBlock(x.shape[-1], name=f"mid_block{j}", **blk)(x, train)
        x = nn.swish(group_norm(self.norm_groups, name="norm_out", **kw)(x))
        return nn.with_logical_constraint(conv(self.z_channels, 3, name="conv_out", **kw)(x), ACT)


class Decoder(nn.Module):
    """float[B, h, w, z_channels] -> float[B, h*f, w*f, out_channels] (mirror of `Encoder`)."""

    ch: int = 64
    ch_mult: Sequence[int] = (1, 1, 2, 4)
    num_res_blocks: int = 2
    out_channels: int = 3
    norm_groups: int = 32
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z, train: bool = False):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        blk = dict(norm_groups=self.norm_groups, dropout=self.dropout, **kw)
        x = conv(self.ch * self.ch_mult[-1], 3, name="conv_in", **kw)(z.astype(self.dtype))
        for j in range(2):
            x = ResBlock(x.shape[-1], name=f"mid_block{j}", **blk)(x, train)
        for i in reversed(range(len(self.ch_mult))):
            for j in range(self.num_res_blocks + 1):
                x = ResBlock(self.ch * self.ch_mult[i], name=f"up{i}_block{j}", **blk)(x, train)
            if i > 0:
                x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest-neighbour 2x
                x = conv(x.shape[-1], 3, name=f"up{i}_upsample", **kw)(x)
        x = nn.swish(group_norm(self.norm_groups, name="norm_out", **kw)(x))
        return conv(self.out_channels, 3, name="conv_out", **kw)(x)


class VQVAE(nn.Module):
    """Image tokenizer. images float[B, H, W, 3] in [-1, 1]; H and W divisible by f = 2 ** (len(ch_mult) - 1).

    `__call__(images, train) -> (recon float[B, H, W, 3], aux)`: aux is the quantizer's aux plus 'codes'
    int32[B, H/f, W/f]. `encode(images) -> codes`, `decode(codes) -> images`; call them with
    `model.apply(variables, x, method=VQVAE.encode)`. Quantizer fields are described in `VectorQuantizer`; with
    `project`, the pre-quant conv keeps z_channels and the quantizer projects to code_dim (low-dim codes), without
    it the pre-quant conv maps straight to code_dim.
    """

    ch: int = 64
    ch_mult: Sequence[int] = (1, 1, 2, 4)  # f = 8
    num_res_blocks: int = 2
    z_channels: int = 64
    norm_groups: int = 32
    dropout: float = 0.0
    encoder: str = "conv"  # seam for a ViT encoder/decoder ('vit'), not implemented yet
    decoder: str = "conv"
    num_codes: int = 1024
    code_dim: int = 64
    commitment_cost: float = 0.25
    ema: bool = False
    ema_decay: float = 0.99
    l2_normalize: bool = False
    project: bool = False
    restart_unused: bool = False
    restart_window: int = 100
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def setup(self):
        for which, kind in (("encoder", self.encoder), ("decoder", self.decoder)):
            if kind != "conv":
                raise ValueError(f"VQVAE {which}={kind!r}: only 'conv' is implemented")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        arch = dict(ch=self.ch, ch_mult=tuple(self.ch_mult), num_res_blocks=self.num_res_blocks,
                    norm_groups=self.norm_groups, dropout=self.dropout, **kw)
        qdim = self.z_channels if self.project else self.code_dim
        self.enc = Encoder(z_channels=self.z_channels, **arch)
        self.pre_quant = conv(qdim, 1, name="pre_quant", **kw)
        self.quantizer = VectorQuantizer(
            num_codes=self.num_codes, code_dim=self.code_dim, commitment_cost=self.commitment_cost, ema=self.ema,
            ema_decay=self.ema_decay, l2_normalize=self.l2_normalize, project=self.project, input_dim=qdim,
            restart_unused=self.restart_unused, restart_window=self.restart_window, **kw)
        self.post_quant = conv(self.z_channels, 1, name="post_quant", **kw)
        self.dec = Decoder(out_channels=3, **arch)

    def _check(self, images):
        f = self.downsample_factor
        if images.shape[1] % f or images.shape[2] % f:
            raise ValueError(f"VQVAE: image size {images.shape[1:3]} is not divisible by f={f} "
                             f"(len(ch_mult)={len(self.ch_mult)})")

    def __call__(self, images, train: bool = False):
        self._check(images)
        z_e = self.pre_quant(self.enc(images, train))
        z_q, codes, aux = self.quantizer(z_e, train)
        recon = self.dec(self.post_quant(z_q), train)
        return recon.astype(jnp.float32), {**aux, "codes": codes}

    def encode(self, images):
        """float[B, H, W, 3] -> int32[B, H/f, W/f]."""
        self._check(images)
        return self.quantizer.codes(self.pre_quant(self.enc(images, False)))

    def decode(self, codes):
        """int[B, h, w] -> float32[B, h*f, w*f, 3]."""
        z_q = self.quantizer.embed_codes(codes)
        return self.dec(self.post_quant(z_q), False).astype(jnp.float32)
