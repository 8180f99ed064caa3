"""VQ-VAE image tokenizer: encoder -> 1x1 pre-quant conv -> VectorQuantizer -> 1x1 post-quant conv -> decoder.

Two kinds of encoder and of decoder (`encoder` / `decoder` = 'conv' | 'vit', freely mixed):
  conv  taming-transformers' VQGAN stack (GroupNorm + swish ResNet blocks, strided-conv downsampling,
        nearest-neighbour upsampling, decoder mirroring the encoder with one extra block per level). Downsampling
        factor f = 2 ** (len(ch_mult) - 1): ch_mult (1, 2, 4) -> f4, (1, 1, 2, 4) -> f8, (1, 1, 2, 2, 4) -> f16.
  vit   ViT-VQGAN (Yu et al. 2022): the core's ViT with patch f = `patch_size` and no pooling as encoder; as decoder
        transformer blocks over the h x w tokens (+ position embedding) then a linear map of each token to its
        f x f x 3 pixels, un-patchified. The 1x1 pre/post-quant convs are the linear maps between the ViT width and
        the code space, so both kinds share the quantizer and the encode/decode API.
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from vlmjax.models.layers import conv, group_norm
from vlmjax.models.quantizer import VectorQuantizer
from vlmjax.models.transformer import Encoder as TransformerEncoder
from vlmjax.models.vit import ViT, position_embedding

Dtype = Any
ACT = ("batch", None, None, "act_embed")  # float[B, H, W, C] at block boundaries


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


def unpatchify(x, patch: int):
    """float[B, h, w, patch * patch * C] -> float[B, h * patch, w * patch, C].

    Channel (a * patch + b) * C + c of token (i, j) becomes pixel (i * patch + a, j * patch + b), channel c.
    """
    b, h, w, d = x.shape
    c = d // (patch * patch)
    x = x.reshape(b, h, w, patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * patch, w * patch, c)


class ViTDecoder(nn.Module):
    """float[B, h, w, D] tokens -> float[B, h * patch, w * patch, out_channels] (ViT-VQGAN decoder).

    D is the transformer width: the VQVAE's post-quant conv maps codes to it.
    """

    patch: int = 8
    depth: int = 4
    num_heads: int = 4
    mlp_dim: Optional[int] = None  # default 4 * D
    posemb: str = "learn"  # 'learn' | 'sincos2d'
    out_channels: int = 3
    dropout: float = 0.0
    remat_policy: str = "none"
    scan_layers: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z, train: bool = False):
        b, h, w, d = z.shape
        x = z.astype(self.dtype).reshape(b, h * w, d)
        pe = position_embedding(self, self.posemb, h, w, d, self.param_dtype)
        x = nn.Dropout(self.dropout)(x + pe.astype(self.dtype), not train)
        x, _ = TransformerEncoder(self.depth, self.num_heads, self.mlp_dim or 4 * d, self.dropout, self.remat_policy,
                                  self.scan_layers, self.dtype, self.param_dtype, name="decoder")(x, None, not train)
        x = nn.Dense(self.patch * self.patch * self.out_channels, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="to_pixels",
                     kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", None)),
                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)))(x)
        return unpatchify(x.reshape(b, h, w, -1), self.patch)


KINDS = ("conv", "vit")


class VQVAE(nn.Module):
    """Image tokenizer. images float[B, H, W, 3] in [-1, 1]; H and W divisible by f (`downsample_factor`).

    `__call__(images, train) -> (recon float[B, H, W, 3], aux)`: aux is the quantizer's aux plus 'codes'
    int32[B, H/f, W/f]. `encode(images) -> codes`, `decode(codes) -> images`; call them with
    `model.apply(variables, x, method=VQVAE.encode)`. Quantizer fields are described in `VectorQuantizer`; with
    `project`, the pre-quant conv keeps z_channels and the quantizer projects to code_dim (low-dim codes), without
    it the pre-quant conv maps straight to code_dim. ch/ch_mult/num_res_blocks/z_channels/norm_groups shape the
    conv side(s), patch_size and vit_* the ViT side(s); when one side is conv and the other ViT, patch_size must
    equal the conv f.
    """

    ch: int = 64
    ch_mult: Sequence[int] = (1, 1, 2, 4)  # f = 8
    num_res_blocks: int = 2
    z_channels: int = 64
    norm_groups: int = 32
    dropout: float = 0.0
    encoder: str = "conv"  # 'conv' | 'vit'
    decoder: str = "conv"  # 'conv' | 'vit'
    patch_size: int = 8  # f of a ViT encoder/decoder
    vit_width: int = 256
    vit_depth: int = 4
    vit_heads: int = 4
    vit_mlp_dim: Optional[int] = None  # default 4 * vit_width
    vit_posemb: str = "learn"  # 'learn' | 'sincos2d'
    vit_remat_policy: str = "none"
    vit_scan_layers: bool = False
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
        if "conv" in (self.encoder, self.decoder):
            return 2 ** (len(self.ch_mult) - 1)
        return int(self.patch_size)

    def check(self, where: str = "VQVAE") -> None:
        """Raise ValueError naming the field (as `where.field`) for bad encoder/decoder settings, before any trace."""
        for field in ("encoder", "decoder"):
            kind = getattr(self, field)
            if kind not in KINDS:
                raise ValueError(f"{where}.{field}={kind!r}: expected one of {', '.join(map(repr, KINDS))}")
        if "vit" in (self.encoder, self.decoder):
            if self.patch_size < 1:
                raise ValueError(f"{where}.patch_size={self.patch_size}: must be >= 1")
            if self.vit_width % self.vit_heads:
                raise ValueError(f"{where}.vit_width={self.vit_width} is not divisible by "
                                 f"{where}.vit_heads={self.vit_heads}")
            if self.vit_posemb not in ("learn", "sincos2d"):
                raise ValueError(f"{where}.vit_posemb={self.vit_posemb!r}: expected 'learn' or 'sincos2d'")
            conv_f = 2 ** (len(self.ch_mult) - 1)
            if "conv" in (self.encoder, self.decoder) and self.patch_size != conv_f:
                raise ValueError(f"{where}.patch_size={self.patch_size} differs from the conv side's f={conv_f} "
                                 f"({where}.ch_mult has {len(self.ch_mult)} levels): codes of one grid size needed")

    def setup(self):
        self.check()
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        arch = dict(ch=self.ch, ch_mult=tuple(self.ch_mult), num_res_blocks=self.num_res_blocks,
                    norm_groups=self.norm_groups, dropout=self.dropout, **kw)
        vit = dict(num_heads=self.vit_heads, mlp_dim=self.vit_mlp_dim, posemb=self.vit_posemb, dropout=self.dropout,
                   remat_policy=self.vit_remat_policy, scan_layers=self.vit_scan_layers, **kw)
        qdim = self.z_channels if self.project else self.code_dim
        if self.encoder == "vit":
            self.enc = ViT(patch_size=(self.patch_size, self.patch_size), width=self.vit_width, depth=self.vit_depth,
                           pool_type="none", num_classes=None, **vit)
        else:
            self.enc = Encoder(z_channels=self.z_channels, **arch)
        self.pre_quant = conv(qdim, 1, name="pre_quant", **kw)
        self.quantizer = VectorQuantizer(
            num_codes=self.num_codes, code_dim=self.code_dim, commitment_cost=self.commitment_cost, ema=self.ema,
            ema_decay=self.ema_decay, l2_normalize=self.l2_normalize, project=self.project, input_dim=qdim,
            restart_unused=self.restart_unused, restart_window=self.restart_window, **kw)
        if self.decoder == "vit":
            self.post_quant = conv(self.vit_width, 1, name="post_quant", **kw)
            self.dec = ViTDecoder(patch=self.patch_size, depth=self.vit_depth, out_channels=3, **vit)
        else:
            self.post_quant = conv(self.z_channels, 1, name="post_quant", **kw)
            self.dec = Decoder(out_channels=3, **arch)

    def _features(self, images, train: bool):
        """float[B, H, W, 3] -> float[B, H/f, W/f, C] encoder output before the pre-quant conv."""
        if self.encoder != "vit":
            return self.enc(images, train)
        tokens, _ = self.enc(images, train)  # float[B, h*w, vit_width], after the ViT's final LayerNorm
        f = self.downsample_factor
        return tokens.reshape(images.shape[0], images.shape[1] // f, images.shape[2] // f, tokens.shape[-1])

    def _check(self, images):
        f = self.downsample_factor
        if images.shape[1] % f or images.shape[2] % f:
            raise ValueError(f"VQVAE: image size {images.shape[1:3]} is not divisible by f={f}")

    def __call__(self, images, train: bool = False):
        self._check(images)
        z_e = self.pre_quant(self._features(images, train))
        z_q, codes, aux = self.quantizer(z_e, train)
        recon = self.dec(self.post_quant(z_q), train)
        return recon.astype(jnp.float32), {**aux, "codes": codes}

    def encode(self, images):
        """float[B, H, W, 3] -> int32[B, H/f, W/f]."""
        self._check(images)
        return self.quantizer.codes(self.pre_quant(self._features(images, False)))

    def encode_features(self, images):
        """float[B, H, W, 3] -> float32[B, H/f, W/f, D]: what `encode` rounds to codes (the quantizer's input in its
        code space), for a VLM reading the tokenizer without the rounding (image_input='vq_features')."""
        self._check(images)
        return self.quantizer.features(self.pre_quant(self._features(images, False)))

    def decode(self, codes):
        """int[B, h, w] -> float32[B, h*f, w*f, 3]."""
        z_q = self.quantizer.embed_codes(codes)
        return self.dec(self.post_quant(z_q), False).astype(jnp.float32)
