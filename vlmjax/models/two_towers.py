"""Two-tower image-text model (CLIP / SigLIP / LiT): an image tower and a text tower mapped into one embedding space.

Parameters: `img/...` (the ViT; its `head` is the image projection), `txt/...` (the TextTransformer; its `head` is
the text projection), `t` = log(temperature) float[1] and, when `bias_init` is set, `b` float[1] (big_vision
layout, so checkpoints of either side map name for name).

Temperature is learned in log space: gradient steps act on log t, so t stays positive and moves by ratios, which
is what matters for a logit scale. Inits: SigLIP t=10, b=-10 (a strongly negative bias matches the prior that
almost every pair in a B x B batch is negative); CLIP t=1/0.07, no bias, usually clamped at t <= 100
(`temperature_max`) because a runaway scale destabilises training.
"""
import math
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

SIGLIP_INIT = {"temperature_init": 10.0, "bias_init": -10.0}
CLIP_INIT = {"temperature_init": 1 / 0.07, "bias_init": None, "temperature_max": 100.0}


def l2_normalize(x, eps: float = 1e-8):
    """float[B, D] -> float32[B, D] with unit rows (big_vision adds eps to the norm, so a zero row stays zero)."""
    x = x.astype(jnp.float32)
    return x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + eps)


def clamp_log_temperature(log_t, temperature_max: float):
    """log t float[] -> min(log t, log temperature_max); no clamp when temperature_max <= 0.

    Above the cap the gradient to log t is zero (as CLIP's clamp of its logit scale)."""
    if temperature_max and temperature_max > 0:
        return jnp.minimum(log_t, math.log(temperature_max))
    return log_t


class TwoTowers(nn.Module):
    """(images float[B, H, W, 3] | None, text int[B, L] | None, text_mask int[B, L] | None) ->
    (zimg float32[B, D] | None, ztxt float32[B, D] | None, out).

    Embeddings are L2-normalised. `out` holds `log_temperature` float[] (clamped), `temperature` float[] and
    `bias` float[] (absent without a bias), plus the towers' features as `img/<name>` and `txt/<name>`.
    """

    img: Optional[nn.Module] = None  # image tower: vlmjax.models.vit.ViT with num_classes = joint dim (or None)
    txt: Optional[nn.Module] = None  # text tower: vlmjax.models.text.TextTransformer, same convention
    temperature_init: float = 10.0
    bias_init: Optional[float] = -10.0  # None: no bias parameter (CLIP)
    temperature_max: float = 0.0  # 0: no clamp

    @nn.compact
    def __call__(self, images=None, text=None, text_mask=None, train: bool = False):
        if self.temperature_init <= 0:
            raise ValueError(f"temperature_init={self.temperature_init}: must be > 0 (it is stored as its log)")
        out = {}
        zimg = ztxt = None
        if images is not None:
            zimg, feats = self.img(images, train=train)
            out.update({f"img/{k}": v for k, v in feats.items() if k != "hidden"})
            zimg = l2_normalize(zimg)
        if text is not None:
            ztxt, feats = self.txt(text, text_mask, train=train)
            out.update({f"txt/{k}": v for k, v in feats.items()})
            ztxt = l2_normalize(ztxt)
        if zimg is not None and ztxt is not None and zimg.shape[-1] != ztxt.shape[-1]:
            raise ValueError(f"image embeddings have dim {zimg.shape[-1]} but text embeddings {ztxt.shape[-1]}: "
                             f"set out_dim (a projection head on both towers) or equal widths")
        log_t0 = math.log(self.temperature_init)
        t = self.param("t", nn.with_logical_partitioning(lambda *_: jnp.full((1,), log_t0, jnp.float32), (None,)))
        out["log_temperature"] = clamp_log_temperature(t[0], self.temperature_max)
        out["temperature"] = jnp.exp(out["log_temperature"])
        if self.bias_init is not None:
            b0 = float(self.bias_init)
            out["bias"] = self.param("b", nn.with_logical_partitioning(
                lambda *_: jnp.full((1,), b0, jnp.float32), (None,)))[0]
        return zimg, ztxt, out
