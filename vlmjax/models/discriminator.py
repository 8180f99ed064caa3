"""PatchGAN discriminator for VQGAN-style adversarial training of the VQ-VAE decoder.

pix2pix / taming-transformers' `NLayerDiscriminator`: 4x4 convs, the first `num_layers` with stride 2, channel
width doubling per layer (capped at 8x), LeakyReLU(0.2), then a stride-1 conv and a 1-channel logit conv. Each
output logit judges one overlapping patch (70 px receptive field for 3 layers), so the loss rewards locally
realistic texture rather than a global judgement.

Two deliberate differences from taming: GroupNorm instead of BatchNorm, so the discriminator is a pure function of
its params and of each example (no batch statistics to carry as model state or to reduce over devices), and
'SAME' padding, so the logit grid is exactly H / 2**num_layers for any image size the tokenizer accepts.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vlmjax.models.layers import conv, group_norm

Dtype = Any


class PatchDiscriminator(nn.Module):
    """float[B, H, W, 3] in [-1, 1] -> float32[B, ceil(H / 2**num_layers), ceil(W / 2**num_layers)] logits
    (> 0: judged real)."""

    channels: int = 64
    num_layers: int = 3
    norm_groups: int = 8
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        # No norm on the first layer (pix2pix): normalising raw pixels' features would discard their colour level.
        x = nn.leaky_relu(conv(self.channels, 4, name="conv_in", strides=2, **kw)(x.astype(self.dtype)), 0.2)
        for i in range(1, self.num_layers + 1):
            stride = 2 if i < self.num_layers else 1
            x = conv(self.channels * min(2 ** i, 8), 4, name=f"conv{i}", strides=stride, **kw)(x)
            x = nn.leaky_relu(group_norm(self.norm_groups, name=f"norm{i}", **kw)(x), 0.2)
        return conv(1, 4, name="conv_out", **kw)(x)[..., 0].astype(jnp.float32)
