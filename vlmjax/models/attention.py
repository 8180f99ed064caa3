"""The attention core every model calls: `jax.nn.dot_product_attention`, cuDNN flash attention where it applies.

`attend(q, k, v, mask)` covers what the families need: padding masks, the prefix-LM mask built from
`input_mask`/`mask_ar`, causal masks, grouped-query attention (fewer kv heads than query heads) and the KV-cache
decode step (queries against a longer cache, the mask saying which slots are filled).

Implementations (`impl`):
  'xla'   - jax's reference formula (f32 logits and softmax), on every backend.
  'cudnn' - cuDNN's fused flash attention (GPU, bf16/f16): no float[B, H, Lq, Lk] logits are ever stored, so
            neither memory nor the backward pass scale with them. A boolean mask reaches it as an additive bias.
  'auto'  - 'cudnn' when `cudnn_supported` says the call qualifies, else 'xla'.

A query row that may attend to nothing gets the mean of the values (every logit is the same large negative), as
the earlier einsum implementation did; such rows are padding and carry no loss.
"""
from typing import Optional

import jax
import jax.numpy as jnp

IMPLS = ("auto", "xla", "cudnn")


def cudnn_supported(q, k, mask) -> bool:
    """Whether cuDNN flash attention takes this call: a GPU backend, half-precision inputs, head dim a multiple of 8
    and at most 256 (Hopper; 128 before it), more than one query, and even lengths when a mask (an additive bias)
    is trained through."""
    if jax.default_backend() != "gpu" or q.dtype not in (jnp.bfloat16, jnp.float16) or k.dtype != q.dtype:
        return False
    dh = q.shape[-1]
    if dh % 8 or dh > 256 or q.shape[1] == 1:  # one query (MAP head, decode step): nothing for flash to tile
        return False
    if mask is not None and (q.shape[1] % 2 or k.shape[1] % 2):
        return False
    return True


def attend(q, k, v, mask=None, *, scale: Optional[float] = None, impl: str = "auto"):
    """Softmax attention.

    q float[B, Lq, H, Dh], k and v float[B, Lk, Hkv, Dh] (H a multiple of Hkv), mask bool[B | 1, Lq | 1, Lk]
    (True = may attend) or None -> float[B, Lq, H, Dh] in q's dtype. `scale` defaults to Dh ** -0.5.
    """
    if impl not in IMPLS:
        raise ValueError(f"attention_impl {impl!r}: expected one of {', '.join(IMPLS)}")
    if impl == "auto":
        impl = "cudnn" if cudnn_supported(q, k, mask) else "xla"
    if mask is not None:
        b, lq, lk = q.shape[0], q.shape[1], k.shape[1]
        mask = jnp.broadcast_to(jnp.asarray(mask, bool), (b, lq, lk))[:, None]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation=impl)
