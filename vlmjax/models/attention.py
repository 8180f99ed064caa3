"""The attention core every model calls: `jax.nn.dot_product_attention`, cuDNN flash attention where it applies.

`attend(q, k, v, mask)` covers what the families need: padding masks, the prefix-LM mask built from
`input_mask`/`mask_ar`, causal masks, grouped-query attention (fewer kv heads than query heads) and the KV-cache
decode step (queries against a longer cache, the mask saying which slots are filled).

Implementations (`impl`):
  'xla'   - jax's reference formula (f32 logits and softmax), on every backend.
  'cudnn' - cuDNN's fused flash attention (GPU, bf16/f16): no float[B, H, Lq, Lk] logits are ever stored, so
            neither memory nor the backward pass scale with them. A boolean mask reaches it as an additive bias,
            at even lengths (`pad_to_even`).
  'einsum'- the same formula written for XLA:CPU (`einsum_attention`).
  'auto'  - 'cudnn' when `cudnn_supported` says the call qualifies, 'einsum' on CPU, else 'xla'.

A query row that may attend to nothing gets the mean of the values (every logit is the same large negative), as
the earlier einsum implementation did; such rows are padding and carry no loss.
"""
from typing import Optional

import jax
import jax.numpy as jnp

IMPLS = ("auto", "xla", "cudnn", "einsum")


def einsum_attention(q, k, v, mask, scale):
    """The CPU formulation (shapes as `attend`): q scaled instead of the logits, float32 softmax normalised after
    the value matmul (dividing out[B, Lq, H, Dh] by the row sums costs Dh/Lk of dividing the probabilities), query
    heads grouped over the kv heads. Why a second formula: on XLA:CPU jax.nn's (which normalises the
    probabilities) made the SigLIP step at the scenes widths measurably slower (docs/accelerator.md)."""
    b, lq, h, dh = q.shape
    hkv = k.shape[2]
    q = (q * jnp.asarray(scale, q.dtype)).reshape(b, lq, hkv, h // hkv, dh)
    logits = jnp.einsum("blkgd,bskd->bkgls", q, k).astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask[:, None, None], logits, jnp.finfo(jnp.float32).min)
    e = jnp.exp(logits - jax.lax.stop_gradient(logits.max(-1, keepdims=True)))
    out = jnp.einsum("bkgls,bskd->blkgd", e.astype(q.dtype), v)
    norm = jnp.moveaxis(e.sum(-1), 3, 1)[..., None]  # [B, Lq, Hkv, G, 1]
    return (out / norm).astype(q.dtype).reshape(b, lq, h, dh)


def cudnn_supported(q, k) -> bool:
    """Whether cuDNN flash attention takes this call: a GPU backend, half-precision inputs, head dim a multiple of 8
    and at most 256 (Hopper; 128 before it), more than one query."""
    if jax.default_backend() != "gpu" or q.dtype not in (jnp.bfloat16, jnp.float16) or k.dtype != q.dtype:
        return False
    dh = q.shape[-1]
    return not (dh % 8 or dh > 256 or q.shape[1] == 1)  # one query (MAP head, decode): nothing for flash to tile


def pad_to_even(q, k, v, mask):
    """Pads odd query / key lengths by one: the padded key is masked out, the padded query row is to be dropped.
    cuDNN trains through a mask (an additive bias) only at even lengths; a prefix-LM step feeds the decoder
    image + text - 1 tokens, often odd. mask bool[B, 1, Lq, Lk] -> bool[B, 1, Lq', Lk']."""
    pq, pk = q.shape[1] % 2, k.shape[1] % 2
    if not (pq or pk):
        return q, k, v, mask
    pad = lambda x, n: jnp.pad(x, ((0, 0), (0, n), (0, 0), (0, 0)))  # noqa: E731
    return pad(q, pq), pad(k, pk), pad(v, pk), jnp.pad(mask, ((0, 0), (0, 0), (0, pq), (0, pk)))


def attend(q, k, v, mask=None, *, scale: Optional[float] = None, impl: str = "auto"):
    """Softmax attention.

    q float[B, Lq, H, Dh], k and v float[B, Lk, Hkv, Dh] (H a multiple of Hkv), mask bool[B | 1, Lq | 1, Lk]
    (True = may attend) or None -> float[B, Lq, H, Dh] in q's dtype. `scale` defaults to Dh ** -0.5.
    """
    if impl not in IMPLS:
        raise ValueError(f"attention_impl {impl!r}: expected one of {', '.join(IMPLS)}")
    if impl == "auto":
        impl = "cudnn" if cudnn_supported(q, k) else "einsum" if jax.default_backend() == "cpu" else "xla"
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    lq = q.shape[1]
    if impl == "einsum":
        return einsum_attention(q, k, v, None if mask is None else jnp.asarray(mask, bool), scale)
    if mask is not None:
        mask = jnp.broadcast_to(jnp.asarray(mask, bool), (q.shape[0], lq, k.shape[1]))[:, None]
        if impl == "cudnn":
            q, k, v, mask = pad_to_even(q, k, v, mask)
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation=impl)
    return out[:, :lq]
