"""Prefix-LM vision-language model: an image prefix in front of (or, for generation, after) the text of a DecoderLM.

Three ways to turn an image into LM inputs (`image_input`):
  'continuous'  ViT patch tokens (the final normalised ones, or an earlier block's output: `feature_layer=-2` is
                LLaVA's second-to-last layer) through a projector into the LM width: 'linear' (PaliGemma) or
                'mlp2x_gelu' (LLaVA-1.5). No loss on them: they are not tokens.
  'vq'          VQ-VAE codes as tokens of their own vocabulary range [text_vocab, text_vocab + K), embedded by a
                separate table and predicted by it (logits = hidden @ [text table; image table]^T), so the model
                can generate images. The task frames them with the tokenizer's `<|boi|>` / `<|eoi|>`.
  'vq_features' the same frozen VQ-VAE's vectors before they are rounded to codes (`VQVAE.encode_features`, given
                by the caller) through a projector, like 'continuous': the control that separates what the
                rounding costs from what a frozen reconstruction encoder costs.

The module presents the DecoderLM interface (`embed`, `__call__(x, attn_mask, positions, cache=...)`, `logits`,
`init_cache`, `vocab_size`), so `vlmjax.tasks.decode.decode` drives it unchanged: constrained sampling of image
tokens is a `logits_mask` over the combined vocabulary.
"""
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from vlmjax.models.lm import ACT_BLD, DecoderLM
from vlmjax.models.vit import ViT

Dtype = Any
IMAGE_INPUTS = ("continuous", "vq", "vq_features")
PROJECTORS = ("linear", "mlp2x_gelu")


class Projector(nn.Module):
    """ViT features float[B, N, Dv] -> LM inputs float[B, N, width]."""

    kind: str
    width: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        def dense(name, names):
            return nn.Dense(self.width, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
                            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), names),
                            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (names[1],)))
        if self.kind == "linear":
            return dense("linear", ("mlp", "embed"))(x)
        if self.kind == "mlp2x_gelu":
            h = nn.gelu(dense("fc1", ("embed", "mlp"))(x), approximate=False)
            return dense("fc2", ("mlp", "embed"))(h)
        raise ValueError(f"projector {self.kind!r}: expected one of {PROJECTORS}")


class VLM(nn.Module):
    """Image prefix + DecoderLM. Param tree: `lm/...`, `vit/...` + `proj/...` (continuous), `proj/...`
    (vq_features) or `image_embedding` float[K, width] (vq).

    Methods (via `model.apply(variables, ..., method=...)`):
      embed_image(images float[B, H, W, 3]) -> float[B, N, width]      (continuous)
      embed_features(features float[B, N, D]) -> float[B, N / k^2, width]  (vq_features)
      embed(tokens int[B, L]) -> float[B, L, width]   ids >= lm.vocab_size are image tokens (vq)
      __call__(x, attn_mask, positions, *, cache, return_hidden) -> (float32[B, L, vocab_size] logits, cache)
      logits(hidden float[..., width]) -> float32[..., vocab_size]
      init_all(image, tokens) -> logits   (touches every parameter; used by `init`; `image` as embed_image or
                                           embed_features take it, unused for vq)
    """

    lm: DecoderLM
    vit: Optional[ViT] = None
    image_input: str = "continuous"
    projector: str = "linear"
    feature_layer: int = -1
    token_merge: int = 1  # k: each k x k window of patch tokens is concatenated into one LM token (pixel shuffle)
    image_vocab_size: int = 0

    @property
    def text_vocab_size(self) -> int:
        return self.lm.vocab_size

    @property
    def vocab_size(self) -> int:
        return self.lm.vocab_size + (self.image_vocab_size if self.image_input == "vq" else 0)

    def setup(self):
        if self.image_input not in IMAGE_INPUTS:
            raise ValueError(f"image_input {self.image_input!r}: expected one of {IMAGE_INPUTS}")
        if self.image_input == "continuous":
            if self.vit is None:
                raise ValueError("image_input 'continuous' needs a ViT (config.model.vit)")
            if self.feature_layer >= 0 or -self.feature_layer > self.vit.depth:
                raise ValueError(f"feature_layer {self.feature_layer}: expected -1 (final) .. -{self.vit.depth}")
        if self.image_input != "vq":  # projected vectors: the ViT's patches or the VQ-VAE's features
            if self.projector not in PROJECTORS:
                raise ValueError(f"projector {self.projector!r}: expected one of {PROJECTORS}")
            self.proj = Projector(self.projector, self.lm.width, self.lm.dtype, self.lm.param_dtype)
        else:
            if self.image_vocab_size <= 0:
                raise ValueError("image_input 'vq' needs image_vocab_size > 0 (the VQ-VAE's number of codes)")
            self.image_embedding = self.param(
                "image_embedding", nn.with_logical_partitioning(
                    nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=1, out_axis=0),
                    ("vocab", "embed")), (self.image_vocab_size, self.lm.width), self.lm.param_dtype)

    def embed_image(self, images):
        _, out = self.vit(images, train=False)
        if self.feature_layer == -1:
            feats = out["patches"]
        else:
            if not out["hidden"]:
                raise ValueError("feature_layer != -1 needs per-block outputs: set the ViT's scan_layers=False")
            feats = out["hidden"][self.feature_layer]
        return self.embed_features(feats)

    def embed_features(self, feats):
        feats = merge_tokens(feats, self.token_merge)
        return nn.with_logical_constraint(self.proj(feats).astype(self.lm.dtype), ACT_BLD)

    def embed(self, tokens):
        v = self.lm.vocab_size
        text = self.lm.embed(jnp.minimum(tokens, v - 1))
        if self.image_input != "vq":
            return text
        img = jnp.take(self.image_embedding, jnp.clip(tokens - v, 0, self.image_vocab_size - 1), axis=0)
        if self.lm.scale_embeddings:  # same scale as the text table's rows
            img = img * jnp.sqrt(jnp.float32(self.lm.width))
        return jnp.where((tokens >= v)[..., None], img.astype(text.dtype), text)

    def logits(self, hidden):
        text = self.lm.logits(hidden)
        if self.image_input != "vq":
            return text
        img = jnp.einsum("...d,vd->...v", hidden.astype(self.lm.dtype), self.image_embedding.astype(self.lm.dtype))
        return jnp.concatenate([text, img.astype(jnp.float32)], axis=-1)

    def __call__(self, x, attn_mask=None, positions=None, *, cache=None, return_hidden=False):
        hidden, cache = self.lm(x, attn_mask, positions, cache=cache, return_hidden=True)
        return (hidden if return_hidden else self.logits(hidden)), cache

    def init_all(self, image, tokens):
        x = self.embed(tokens)
        if self.image_input != "vq":
            img = self.embed_image(image) if self.image_input == "continuous" else self.embed_features(image)
            x = jnp.concatenate([img, x], axis=1)
        return self(x)[0]

    def init_cache(self, batch: int, max_len: int, dtype=None):
        """Empty KV cache (call on the unbound module), see `vlmjax.models.lm`."""
        return self.lm.init_cache(batch, max_len, dtype)


def merge_tokens(x, k: int):
    """Square grid float[B, N, D] -> float[B, N / k^2, k^2 D]: each k x k window of tokens concatenated (in row-major
    order), so the LM reads k^2 times fewer image tokens without any feature being dropped."""
    if k == 1:
        return x
    b, n, d = x.shape
    side = int(round(n ** 0.5))
    if side * side != n or side % k:
        raise ValueError(f"token_merge={k}: {n} image tokens are not a square grid divisible by {k}")
    x = x.reshape(b, side // k, k, side // k, k, d).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (side // k) ** 2, k * k * d)


def join_segments(first: dict, second: dict, swap=None) -> dict:
    """Concatenate per-token fields of two segments along the length axis.

    first/second: {name: [B, L1, ...]} / {name: [B, L2, ...]} with the same names; swap bool[B] or None: rows
    where it is True get `second` then `first` (image after the text, for image generation). Both orders have
    length L1 + L2, so a batch may mix them. -> {name: [B, L1 + L2, ...]}.
    """
    out = {}
    for k in first:
        a, b = first[k], second[k]
        ab = jnp.concatenate([a, b], axis=1)
        if swap is None:
            out[k] = ab
        else:
            ba = jnp.concatenate([b, a], axis=1)
            out[k] = jnp.where(jnp.reshape(swap.astype(bool), (-1,) + (1,) * (ab.ndim - 1)), ba, ab)
    return out
