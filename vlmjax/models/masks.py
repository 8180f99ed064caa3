"""Attention masks derived from the one prefix-LM data contract.

Every sequence carries two per-token fields:
  `input_mask` 1 = real token, 0 = padding (never attends, never attended to);
  `mask_ar`    0 = joins the current bidirectional block, 1 = starts a new causal step.
A token sees every real token whose block index (cumsum of mask_ar) is not greater than its own. So
  prefix-LM (image + prompt 0s, answer 1s)  -> full attention inside the prefix, causal answer;
  all 1s                                    -> plain causal LM;
  interleaved 1,0,0,1,0,...                 -> block-causal (each block bidirectional, blocks causal).
"""
import jax.numpy as jnp


def make_attn_mask(input_mask, mask_ar):
    """bool/int[B, L] input_mask, int[B, L] mask_ar -> bool[B, L, L] (query i may attend to key j)."""
    input_mask = jnp.asarray(input_mask).astype(bool)
    block = jnp.cumsum(jnp.asarray(mask_ar).astype(jnp.int32), axis=1)
    attn = block[:, None, :] <= block[:, :, None]
    return attn & input_mask[:, None, :] & input_mask[:, :, None]


def causal_mask(batch: int, length: int):
    """bool[B, L, L] lower-triangular: the plain causal LM (every token real, every mask_ar 1)."""
    tri = jnp.tril(jnp.ones((length, length), bool))
    return jnp.broadcast_to(tri, (batch, length, length))


def positions_from_mask(input_mask):
    """int32[B, L]: rotary position of each token = number of real tokens before it (padding holes skipped)."""
    input_mask = jnp.asarray(input_mask).astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(input_mask, axis=1) - 1, 0)
