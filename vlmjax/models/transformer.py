"""Pre-LayerNorm transformer encoder blocks shared by the ViT image tower and the text tower.

Every parameter carries logical axis names (see `vlmjax/core/mesh.py` for the rules that map them onto the
`data`/`fsdp`/`tensor` mesh axes) and activations are constrained at block boundaries, so the same module runs
unsharded on a laptop and FSDP + tensor-parallel on a pod.
"""
import contextlib
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlmjax.models.attention import attend
from vlmjax.models.layers import dense_init, layer_norm, token_dense, token_dot

Dtype = Any

# Names of activation axes at block boundaries.
ACT_BLD = ("batch", "length", "act_embed")

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}
_SAVE_EVERYTHING = [False]


def remat_policy(name: str):
    """The jax.checkpoint policy for `name` (REMAT_POLICIES), or save-everything inside `no_recompute()`."""
    if name not in REMAT_POLICIES:
        raise ValueError(f"remat_policy {name!r}: expected one of {sorted(REMAT_POLICIES)}")
    return jax.checkpoint_policies.everything_saveable if _SAVE_EVERYTHING[0] else REMAT_POLICIES[name]


@contextlib.contextmanager
def no_recompute():
    """Models traced inside save every residual whatever their `remat_policy`: the trace then holds the model's
    own FLOPs without the backward pass's recomputation (model FLOPs, as MFU counts them). Trace only; the
    program itself still runs with its policy."""
    _SAVE_EVERYTHING[0] = True
    try:
        yield
    finally:
        _SAVE_EVERYTHING[0] = False


class MlpBlock(nn.Module):
    """Transformer MLP: float[B, L, D] -> float[B, L, D]."""

    mlp_dim: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        d = x.shape[-1]
        h = token_dense(self.mlp_dim, "fc1", ("embed", "mlp"), ("mlp",), self.dtype, self.param_dtype,
                        bias_init=nn.initializers.normal(1e-6))(x)
        h = nn.with_logical_constraint(nn.gelu(h), ("batch", "length", "act_mlp"))
        h = nn.Dropout(self.dropout)(h, deterministic)
        return token_dense(d, "fc2", ("mlp", "embed"), ("embed",), self.dtype, self.param_dtype)(h)


class Attention(nn.Module):
    """Multi-head attention: float[B, Lq, D] (queries) and float[B, Lk, D] (keys) -> float[B, Lq, D].

    `mask` is bool[B, Lq, Lk] (or broadcastable); True = may attend.
    """

    num_heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: str = "auto"  # see vlmjax.models.attention

    @nn.compact
    def __call__(self, xq, xkv, mask=None):
        d = xq.shape[-1]
        if d % self.num_heads:
            raise ValueError(f"width {d} is not divisible by num_heads {self.num_heads}")
        hd = d // self.num_heads

        init = nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))

        def proj(name, x):
            # Explicit 3-D kernels (not DenseGeneral, which initialises a flat 2-D kernel) so the logical names
            # hold at creation time under a mesh.
            kernel = self.param(f"{name}_kernel", dense_init(("embed", "heads", "kv"), init),
                                (d, self.num_heads, hd), self.param_dtype)
            bias = self.param(f"{name}_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("heads", "kv")),
                              (self.num_heads, hd), self.param_dtype)
            return token_dot(x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)

        q, k, v = proj("query", xq), proj("key", xkv), proj("value", xkv)
        q = nn.with_logical_constraint(q, ("batch", "length", "act_heads", "act_kv"))
        out = attend(q, k, v, mask, impl=self.attention_impl)
        w_out = self.param("out_kernel", dense_init(("heads", "kv", "embed"),
                                                    nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2)),
                           (self.num_heads, hd, d), self.param_dtype)
        b_out = self.param("out_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                           (d,), self.param_dtype)
        b, lq = out.shape[:2]
        return (token_dot(out.reshape(b, lq, d), w_out.reshape(d, d).astype(self.dtype))
                + b_out.astype(self.dtype))


class EncoderBlock(nn.Module):
    """Pre-LN block: x + MHA(LN(x)), then + MLP(LN(x)). float[B, L, D] -> float[B, L, D]."""

    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: str = "auto"

    @nn.compact
    def __call__(self, x, mask=None, deterministic: bool = True):
        x = nn.with_logical_constraint(x, ACT_BLD)
        y = layer_norm("ln1", self.dtype, self.param_dtype)(x)
        y = Attention(self.num_heads, self.dtype, self.param_dtype, self.attention_impl, name="attn")(y, y, mask)
        x = x + nn.Dropout(self.dropout)(y, deterministic)
        y = layer_norm("ln2", self.dtype, self.param_dtype)(x)
        y = MlpBlock(self.mlp_dim, self.dropout, self.dtype, self.param_dtype, name="mlp")(y, deterministic)
        x = x + nn.Dropout(self.dropout)(y, deterministic)
        return nn.with_logical_constraint(x, ACT_BLD)


class Encoder(nn.Module):
    """A stack of `depth` EncoderBlocks + final LayerNorm.

    Returns (float[B, L, D] normalised output, list of the per-block outputs before the final norm) so a VLM can
    take features from an earlier layer (LLaVA uses the second-to-last).
    `remat_policy` picks what the backward pass keeps (see REMAT_POLICIES); `scan_layers` compiles one block
    and scans it, which keeps compile time flat in depth (per-block outputs are then not returned).
    """

    depth: int
    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    remat_policy: str = "none"
    scan_layers: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: str = "auto"
    scan_unroll: int = 1

    @nn.compact
    def __call__(self, x, mask=None, deterministic: bool = True):
        policy = remat_policy(self.remat_policy)
        block_cls = EncoderBlock
        if self.remat_policy != "none":
            # Under scan, CSE cannot merge the recomputation into the forward anyway; prevent_cse's
            # optimisation barriers would only block fusion (the JAX remat docs).
            block_cls = nn.remat(EncoderBlock, policy=policy, static_argnums=(3,),
                                 prevent_cse=not self.scan_layers)
        kw = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, dropout=self.dropout,
                  dtype=self.dtype, param_dtype=self.param_dtype, attention_impl=self.attention_impl)
        hidden = []
        if self.scan_layers:
            body = lambda mdl, carry, _: (mdl(carry, mask, deterministic), None)  # noqa: E731
            scanned = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                              length=self.depth, unroll=self.scan_unroll,
                              metadata_params={nn.PARTITION_NAME: "layers"})
            x, _ = scanned(block_cls(**kw, name="blocks"), x, None)
        else:
            for i in range(self.depth):
                x = block_cls(**kw, name=f"block{i:02d}")(x, mask, deterministic)
                hidden.append(x)
        return layer_norm("ln_final", self.dtype, self.param_dtype)(x), hidden


class MAPHead(nn.Module):
    """Multihead attention pooling (SigLIP): a learned query attends over the tokens. float[B, L, D] -> float[B, D]."""

    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: str = "auto"

    @nn.compact
    def __call__(self, x, mask=None):
        b, _, d = x.shape
        probe = self.param("probe", nn.with_logical_partitioning(nn.initializers.xavier_uniform(), (None, None, "embed")),
                           (1, 1, d), self.param_dtype)
        q = jnp.tile(probe.astype(self.dtype), (b, 1, 1))
        m = None if mask is None else mask[:, None, :]
        x = Attention(self.num_heads, self.dtype, self.param_dtype, self.attention_impl, name="attn")(q, x, m)
        y = layer_norm("ln", self.dtype, self.param_dtype)(x)
        x = x + MlpBlock(self.mlp_dim, 0.0, self.dtype, self.param_dtype, name="mlp")(y)
        return x[:, 0]


def pool(kind: str, x, *, map_head: Optional[Callable] = None, mask=None, last_index=None):
    """Reduce tokens float[B, L, D] -> float[B, D].

    kind: 'gap' (mean over real tokens), 'tok' (first token), 'map' (attention pooling), 'last' (token at
    `last_index` int[B], e.g. EOS of right-padded text).
    """
    if kind == "gap":
        if mask is None:
            return x.mean(axis=1)
        w = mask.astype(x.dtype)[..., None]
        return (x * w).sum(1) / jnp.maximum(w.sum(1), 1)
    if kind == "tok":
        return x[:, 0]
    if kind == "map":
        return map_head(x, mask)
    if kind == "last":
        return jnp.take_along_axis(x, last_index[:, None, None], axis=1)[:, 0]
    raise ValueError(f"pooling {kind!r}: expected one of gap, tok, map, last")
