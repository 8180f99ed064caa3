"""The small building blocks every model shares: dense layers over tokens, convolutions, norms, activations and
L2 normalisation. Each parameter carries logical axis names (`vlmjax/core/mesh.py` maps them onto the mesh).

Nothing here owns a model's parameter names: the callers name every module, so moving a helper here changes no
checkpoint path.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# Gated-MLP activations by name (GeGLU / SwiGLU); the tanh-approximate GELU is Gemma's.
ACTIVATIONS = {"gelu": lambda x: nn.gelu(x, approximate=True), "silu": nn.silu}


def dense_init(names, init=nn.initializers.xavier_uniform()):
    """`init` with the logical axis `names` of the parameter it creates."""
    return nn.with_logical_partitioning(init, names)


def token_dot(x, kernel):
    """float[..., D] x float[D, *F] -> float[..., *F], as ONE 2-D matmul over all tokens.

    The same contraction as `x @ kernel` with the leading dims of x (batch, length) and the trailing dims of the
    kernel (heads, head dim) merged: XLA:CPU runs 2-D matmuls and their gradients faster than dots with several free
    dims (docs/contrastive.md has the measurements). Merging keeps any batch / head sharding, so meshes are
    unaffected.
    """
    d = x.shape[-1]
    y = jnp.dot(x.reshape(-1, d), kernel.reshape(d, -1))
    return y.reshape(*x.shape[:-1], *kernel.shape[1:])


def _token_dot_general(x, kernel, dimension_numbers, precision=None, preferred_element_type=None):
    """`nn.Dense(dot_general=...)` hook: a plain dense contraction (last dim of x with the first of kernel) goes
    through `token_dot`; anything else is left to lax."""
    (lc, rc), (lb, rb) = dimension_numbers
    if tuple(lc) == (x.ndim - 1,) and tuple(rc) == (0,) and not lb and not rb:
        return token_dot(x, kernel)
    return jax.lax.dot_general(x, kernel, dimension_numbers, precision, preferred_element_type)


def token_dense(features: int, name: str, kernel_axes, bias_axes, dtype, param_dtype,
                bias_init=nn.initializers.zeros, kernel_init=nn.initializers.xavier_uniform()):
    """nn.Dense (same parameters, same names) whose matmul is `token_dot`."""
    return nn.Dense(features, dtype=dtype, param_dtype=param_dtype, name=name, dot_general=_token_dot_general,
                    kernel_init=dense_init(kernel_axes, kernel_init),
                    bias_init=nn.with_logical_partitioning(bias_init, bias_axes))


def conv(features: int, kernel: int, dtype, param_dtype, name: str, strides: int = 1, padding="SAME",
         in_axis="conv_in"):
    """Square `kernel` x `kernel` nn.Conv; kernel float[k, k, Cin, features] with logical axes
    (None, None, in_axis, 'conv_out'), bias float[features] ('conv_out')."""
    return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding=padding, dtype=dtype,
                   param_dtype=param_dtype, name=name,
                   kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                            (None, None, in_axis, "conv_out")),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)))


def group_norm(groups: int, dtype, param_dtype, name: str):
    """nn.GroupNorm with `groups` groups; scale and bias replicated."""
    return nn.GroupNorm(num_groups=groups, dtype=dtype, param_dtype=param_dtype, name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones, (None,)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)))


def layer_norm(name, dtype, param_dtype, axis: str = "embed"):
    """nn.LayerNorm (eps 1e-6) whose scale and bias float[D] have the logical axis `axis`."""
    return nn.LayerNorm(dtype=dtype, param_dtype=param_dtype, name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axis,)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axis,)))


class RMSNorm(nn.Module):
    """x / rms(x) * scale over the last axis, computed in float32. `axis_name` is the scale's logical name."""

    axis_name: str = "embed"
    eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
                           (x.shape[-1],), self.param_dtype)
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.eps)
        return (y * scale.astype(jnp.float32)).astype(self.dtype)


def l2_normalize(x, eps: float):
    """x / max(||x||, eps) along the last axis: float[..., D] -> float[..., D] (a zero row stays zero).

    Callers keep their own eps: 1e-8 for two-tower embeddings, 1e-6 for VQ codes."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))
