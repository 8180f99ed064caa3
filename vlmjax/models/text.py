"""Text tower for image-text models: token embedding + learned positions, the shared Encoder, pooling, projection.

big_vision's SigLIP text tower is this module with `pool_type='last'`, `mask_padding=False` (a bidirectional
encoder over a fixed-length padded sequence; the last position sees every token) and a linear head; CLIP's is
`causal=True`, `pool_type='eos'` (the last real token, where the causal mask has let it see the whole text).
"""
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vlmjax.models.transformer import Encoder, MAPHead, pool

Dtype = Any
POOL_TYPES = ("last", "eos", "map", "gap")


def attention_mask(mask, length: int, causal: bool, mask_padding: bool):
    """mask int[B, L] (1 = real token) or None -> bool[B or 1, L or 1, L] of allowed (query, key) pairs, or None."""
    out = (mask > 0)[:, None, :] if mask_padding and mask is not None else None
    if causal:
        tril = jnp.tril(jnp.ones((length, length), bool))[None]
        out = tril if out is None else out & tril
    return out


def eos_index(mask):
    """mask int[B, L] -> int32[B] index of the last real token (the EOS when the text was not cut)."""
    return jnp.maximum(jnp.sum(mask > 0, axis=1) - 1, 0).astype(jnp.int32)


class TextTransformer(nn.Module):
    """ids int[B, L], mask int[B, L] (1 = token) -> (float[B, num_classes] or float[B, width], dict of features).

    Features: `tokens` float[B, L, D] (after the final norm) and `pre_logits` float[B, D] (pooled, before the head).
    `num_classes` is the projection width (the joint embedding dim of a two-tower model); None: no projection.
    """

    vocab_size: int = 32_000
    width: int = 512
    depth: int = 12
    num_heads: int = 8
    mlp_dim: Optional[int] = None  # default 4 * width
    pool_type: str = "last"  # 'last' | 'eos' | 'map' | 'gap'
    causal: bool = False
    mask_padding: bool = True  # padded keys are not attended to (big_vision SigLIP: False)
    num_classes: Optional[int] = None
    head_zeroinit: bool = False  # a zero head would give zero embeddings, which cannot be L2-normalised
    dropout: float = 0.0
    remat_policy: str = "none"
    scan_layers: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: str = "auto"  # one of vlmjax.models.attention.IMPLS
    scan_unroll: int = 1  # layers per scan iteration (with scan_layers)

    @nn.compact
    def __call__(self, ids, mask=None, train: bool = False):
        if self.pool_type not in POOL_TYPES:
            raise ValueError(f"text pool_type {self.pool_type!r}: expected one of {', '.join(POOL_TYPES)}")
        length = ids.shape[1]
        mlp_dim = self.mlp_dim or 4 * self.width
        x = nn.Embed(self.vocab_size, self.width, dtype=self.dtype, param_dtype=self.param_dtype, name="embedding",
                     embedding_init=nn.with_logical_partitioning(nn.linear.default_embed_init,
                                                                 ("vocab", "embed")))(ids)
        pe = self.param("pos_embedding", nn.with_logical_partitioning(
            nn.initializers.normal(stddev=1 / np.sqrt(self.width)), (None, None, "embed")),
            (1, length, self.width), self.param_dtype)
        x = x + pe.astype(self.dtype)
        x = nn.Dropout(self.dropout)(x, not train)
        attn = attention_mask(mask, length, self.causal, self.mask_padding)
        x, _ = Encoder(self.depth, self.num_heads, mlp_dim, self.dropout, self.remat_policy, self.scan_layers,
                       self.dtype, self.param_dtype, self.attention_impl, self.scan_unroll,
                       name="encoder")(x, attn, not train)
        out = {"tokens": x}
        real = None if mask is None else (mask > 0)
        if self.pool_type == "last" or (self.pool_type == "eos" and mask is None):
            x = x[:, -1]
        elif self.pool_type == "eos":
            x = pool("last", x, last_index=eos_index(mask))
        elif self.pool_type == "map":
            head = MAPHead(self.num_heads, mlp_dim, self.dtype, self.param_dtype, self.attention_impl, name="map_head")
            x = pool("map", x, map_head=head, mask=real)
        else:
            x = pool("gap", x, mask=real)
        out["pre_logits"] = x
        if self.num_classes:
            init = nn.initializers.zeros if self.head_zeroinit else nn.initializers.xavier_uniform()
            x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head",
                         kernel_init=nn.with_logical_partitioning(init, ("embed", "vocab")),
                         bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)))(x)
        return x, out
