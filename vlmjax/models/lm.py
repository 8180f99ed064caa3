"""Decoder-only prefix LM (Gemma-style): RMSNorm, rotary positions, gated MLP, MQA/GQA/MHA, tied embedding.

The model takes embeddings, not token ids, so a VLM can concatenate projected image tokens in front of the text
(`embed` turns ids into embeddings). Attention follows an explicit bool mask (see `masks.make_attn_mask`), so
the prefix-LM, causal and block-causal variants are one model.

KV cache: an explicit pytree, not hidden flax state, so it can be jitted, carried through `lax.while_loop`,
reordered for beam search and sharded like any other array:

    {'k': per-layer float[B, S, Hkv, Dh] (a list; one stacked float[depth, B, S, Hkv, Dh] with scan_layers),
     'v': same,
     'mask': bool[B, S]  slot s holds a real token (padding written by prefill stays False),
     'end':  int32[B]    next slot each row writes to}

With a cache, the L new tokens are written to slots [end, end + L) of their row and attend to every valid earlier
slot plus the new tokens `attn_mask` (bool[B, L, L], new-vs-new) allows. Positions are explicit, so a row's
rotary positions need not equal its slot index (right-padded prompts decode exactly like unpadded ones).
Writes past the end of the cache are clamped by XLA: size the cache for prefix + every new token.
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from vlmjax.models.attention import attend
from vlmjax.models.layers import ACTIVATIONS, RMSNorm, token_dot
from vlmjax.models.masks import causal_mask
from vlmjax.models.transformer import remat_policy

Dtype = Any
ACT_BLD = ("batch", "length", "act_embed")


def _param(module, name, names, shape, init):
    return module.param(name, nn.with_logical_partitioning(init, names), shape, module.param_dtype)


def apply_rope(x, positions, theta: float):
    """Rotary embedding (rotate-half form). float[B, L, H, Dh], int[B, L] -> float[B, L, H, Dh]."""
    half = x.shape[-1] // 2
    inv_freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, L, half]
    sin, cos = jnp.sin(angle)[:, :, None], jnp.cos(angle)[:, :, None]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def _write_rows(buf, update, end):
    """Per-row write: buf[b, end[b]:end[b]+L] = update[b]. float[B, S, ...], float[B, L, ...], int[B]."""
    zeros = (0,) * (buf.ndim - 2)
    return jax.vmap(lambda b, u, e: lax.dynamic_update_slice(b, u.astype(b.dtype), (e, *zeros)))(buf, update, end)


class Attention(nn.Module):
    """Grouped-query self-attention with rotary positions and an optional per-layer KV cache.

    x float[B, L, D], mask bool[B, L, S] (S = L, or the cache length), positions int[B, L],
    layer_cache (k, v) float[B, S, Hkv, Dh] or None, end int[B] -> (float[B, L, D], new layer_cache).
    """

    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10_000.0
    qk_norm: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: str = "auto"  # vlmjax.models.attention

    @nn.compact
    def __call__(self, x, mask, positions, layer_cache=None, end=None):
        h, hkv, dh = self.num_heads, self.num_kv_heads, self.head_dim
        if h % hkv:
            raise ValueError(f"num_heads {h} is not a multiple of num_kv_heads {hkv}")
        d = x.shape[-1]
        # A single MQA kv head cannot be split over the tensor axis.
        kv_names = ("embed", "heads" if hkv > 1 else None, "kv")
        in_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=0, out_axis=(1, 2))
        wq = _param(self, "q_kernel", ("embed", "heads", "kv"), (d, h, dh), in_init)
        wk = _param(self, "k_kernel", kv_names, (d, hkv, dh), in_init)
        wv = _param(self, "v_kernel", kv_names, (d, hkv, dh), in_init)
        out_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=(0, 1), out_axis=2)
        wo = _param(self, "out_kernel", ("heads", "kv", "embed"), (h, dh, d), out_init)

        x = x.astype(self.dtype)
        q, k, v = (token_dot(x, w.astype(self.dtype)) for w in (wq, wk, wv))
        if self.qk_norm:
            q = RMSNorm("kv", dtype=self.dtype, param_dtype=self.param_dtype, name="q_norm")(q)
            k = RMSNorm("kv", dtype=self.dtype, param_dtype=self.param_dtype, name="k_norm")(k)
        q = apply_rope(q, positions, self.rope_theta)
        k = apply_rope(k, positions, self.rope_theta)
        q = nn.with_logical_constraint(q, ("batch", "length", "act_heads", "act_kv"))

        new_cache = None
        if layer_cache is not None:
            ck, cv = _write_rows(layer_cache[0], k, end), _write_rows(layer_cache[1], v, end)
            new_cache = (ck, cv)
            k, v = ck.astype(self.dtype), cv.astype(self.dtype)

        b, l = q.shape[:2]
        out = attend(q, k, v, mask, impl=self.attention_impl)
        return token_dot(out.reshape(b, l, h * dh), wo.reshape(h * dh, d).astype(self.dtype)), new_cache


class GatedMlp(nn.Module):
    """act(x W_gate) * (x W_up) W_down (GeGLU for 'gelu', SwiGLU for 'silu'). float[B, L, D] -> float[B, L, D]."""

    mlp_dim: int
    activation: str = "gelu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
        wg = _param(self, "gate_kernel", ("embed", "mlp"), (d, self.mlp_dim), init)
        wu = _param(self, "up_kernel", ("embed", "mlp"), (d, self.mlp_dim), init)
        wd = _param(self, "down_kernel", ("mlp", "embed"), (self.mlp_dim, d), init)
        x = x.astype(self.dtype)
        hid = ACTIVATIONS[self.activation](token_dot(x, wg.astype(self.dtype))) * token_dot(x, wu.astype(self.dtype))
        hid = nn.with_logical_constraint(hid, ("batch", "length", "act_mlp"))
        return token_dot(hid, wd.astype(self.dtype))


class DecoderBlock(nn.Module):
    """Pre-norm block. (x float[B, L, D], layer_cache, mask, positions, end) -> (x, new layer_cache).

    Carry first, per-layer cache second, so the same class works in a Python loop and under nn.scan.
    """

    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    rope_theta: float = 10_000.0
    activation: str = "gelu"
    qk_norm: bool = False
    norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: str = "auto"

    @nn.compact
    def __call__(self, x, layer_cache, mask, positions, end):
        def norm(name):
            return RMSNorm(eps=self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        x = nn.with_logical_constraint(x, ACT_BLD)
        y, layer_cache = Attention(self.num_heads, self.num_kv_heads, self.head_dim, self.rope_theta, self.qk_norm,
                                   self.dtype, self.param_dtype, self.attention_impl, name="attn")(norm("pre_attn_norm")(x), mask,
                                                                               positions, layer_cache, end)
        x = x + y
        y = GatedMlp(self.mlp_dim, self.activation, self.dtype, self.param_dtype, name="mlp")(norm("pre_mlp_norm")(x))
        return nn.with_logical_constraint(x + y, ACT_BLD), layer_cache


class DecoderLM(nn.Module):
    """Prefix-LM decoder with the output head tied to the embedding (logits = x @ embedding.T).

    Methods (all via `model.apply(variables, ..., method=...)`):
      embed(tokens int[B, L]) -> float[B, L, D]
      __call__(x float[B, L, D], attn_mask bool[B, L, L] | None (causal), positions int[B, L] | None, *,
               cache=None, return_hidden=False) -> (float32[B, L, V] logits (or float[B, L, D] hidden), new cache)
      logits(hidden float[..., D]) -> float32[..., V]
    and, on the unbound module, init_cache(batch, max_len) -> cache pytree (see module docstring).
    Default positions: 0..L-1 without a cache, cache['end'] + 0..L-1 with one.
    """

    vocab_size: int
    width: int
    depth: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    rope_theta: float = 10_000.0
    mlp_activation: str = "gelu"
    qk_norm: bool = False
    scale_embeddings: bool = True  # Gemma: x * sqrt(width), so unit-variance inputs from a 1/sqrt(D) table
    norm_eps: float = 1e-6
    remat_policy: str = "none"
    scan_layers: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: str = "auto"  # one of vlmjax.models.attention.IMPLS
    scan_unroll: int = 1  # layers per scan iteration (with scan_layers)

    def setup(self):
        if self.mlp_activation not in ACTIVATIONS:
            raise ValueError(f"mlp_activation {self.mlp_activation!r}: expected one of {sorted(ACTIVATIONS)}")
        policy = remat_policy(self.remat_policy)
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for rotary positions")
        self.embedding = _param(self, "embedding", ("vocab", "embed"), (self.vocab_size, self.width),
                                nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=1, out_axis=0))
        block = DecoderBlock
        if self.remat_policy != "none":
            block = nn.remat(DecoderBlock, policy=policy, prevent_cse=not self.scan_layers)
        kw = dict(num_heads=self.num_heads, num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
                  mlp_dim=self.mlp_dim, rope_theta=self.rope_theta, activation=self.mlp_activation,
                  qk_norm=self.qk_norm, norm_eps=self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                  attention_impl=self.attention_impl)
        if self.scan_layers:
            self.blocks = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                                  in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast), length=self.depth,
                                  unroll=self.scan_unroll, metadata_params={nn.PARTITION_NAME: "layers"})(**kw)
        else:
            self.blocks = [block(**kw) for _ in range(self.depth)]
        self.final_norm = RMSNorm(eps=self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)

    def embed(self, tokens):
        x = jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)
        if self.scale_embeddings:
            x = x * jnp.sqrt(jnp.float32(self.width)).astype(self.dtype)
        return nn.with_logical_constraint(x, ACT_BLD)

    def logits(self, hidden):
        return jnp.einsum("...d,vd->...v", hidden.astype(self.dtype), self.embedding.astype(self.dtype)).astype(
            jnp.float32)

    def __call__(self, x, attn_mask=None, positions=None, *, cache=None, return_hidden=False):
        b, l, _ = x.shape
        attn_mask = causal_mask(b, l) if attn_mask is None else jnp.asarray(attn_mask).astype(bool)
        if cache is None:
            mask, end, layer_caches = attn_mask, None, None
            if positions is None:
                positions = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
        else:
            end = cache["end"]
            # New queries see every valid earlier slot, and the new slots as attn_mask says.
            placed = _write_rows(jnp.zeros((b, cache["mask"].shape[1], l), bool), attn_mask.transpose(0, 2, 1), end)
            mask = cache["mask"][:, None, :] | placed.transpose(0, 2, 1)
            if positions is None:
                positions = end[:, None] + jnp.arange(l, dtype=jnp.int32)
            layer_caches = (cache["k"], cache["v"])

        x = nn.with_logical_constraint(x.astype(self.dtype), ACT_BLD)
        if self.scan_layers:
            x, new_kv = self.blocks(x, layer_caches, mask, positions, end)
        else:
            new_k, new_v = [], []
            for i, blk in enumerate(self.blocks):
                lc = None if layer_caches is None else (layer_caches[0][i], layer_caches[1][i])
                x, lc = blk(x, lc, mask, positions, end)
                if lc is not None:
                    new_k.append(lc[0])
                    new_v.append(lc[1])
            new_kv = (new_k, new_v)
        x = self.final_norm(x)

        new_cache = None
        if cache is not None:
            # A token is real iff it may attend to itself (make_attn_mask zeroes padded rows and columns).
            real = jnp.diagonal(attn_mask, axis1=1, axis2=2)
            new_cache = {"k": new_kv[0], "v": new_kv[1], "mask": _write_rows(cache["mask"], real, end),
                         "end": end + l}
        return (x if return_hidden else self.logits(x)), new_cache

    def init_cache(self, batch: int, max_len: int, dtype: Optional[Dtype] = None):
        """Empty cache for `batch` rows of `max_len` slots (call on the unbound module)."""
        shape = (batch, max_len, self.num_kv_heads, self.head_dim)
        dtype = self.dtype if dtype is None else dtype
        if self.scan_layers:
            k = jnp.zeros((self.depth, *shape), dtype)
            v = jnp.zeros((self.depth, *shape), dtype)
        else:
            k = [jnp.zeros(shape, dtype) for _ in range(self.depth)]
            v = [jnp.zeros(shape, dtype) for _ in range(self.depth)]
        return {"k": k, "v": v, "mask": jnp.zeros((batch, max_len), bool), "end": jnp.zeros((batch,), jnp.int32)}


def take_cache_rows(cache, idx):
    """Cache whose row r is row idx[r] of `cache` (beam reordering, batch expansion). idx int[B']."""
    kv_axis = 1 if not isinstance(cache["k"], (list, tuple)) else 0
    take_kv = lambda x: jnp.take(x, idx, axis=kv_axis)  # noqa: E731
    return {"k": jax.tree.map(take_kv, cache["k"]), "v": jax.tree.map(take_kv, cache["v"]),
            "mask": jnp.take(cache["mask"], idx, axis=0), "end": jnp.take(cache["end"], idx, axis=0)}
