"""Vector quantisation: the pure nearest-code / straight-through / EMA math and the `VectorQuantizer` module.

The pure functions live here (not in `vlmjax/losses/`) because the module needs them and models may not import
losses; `vlmjax/losses/vq.py` re-exports them next to the reconstruction loss.

Everything is computed in float32 whatever the input dtype: bf16 cannot separate nearby codes reliably, and EMA
statistics need float32 to accumulate.

Objective (VQ-VAE, van den Oord et al. 2017):
    -log p(x | z_q) + ||sg[z_e] - z_q||^2 + beta ||z_e - sg[z_q]||^2,   beta = `commitment_cost`,
with straight-through z_q_st = z_e + sg(z_q - z_e). beta weights the COMMITMENT term, the one whose gradient
reaches the encoder (taming-transformers once had it on the other term; tests/test_vq.py pins it).
"""
from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlmjax.models.layers import l2_normalize

Dtype = Any
f32 = jnp.float32
sg = jax.lax.stop_gradient
CODE_EPS = 1e-6  # floor of a vector's norm when codes are l2-normalised


# --------------------------------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------------------------------
def squared_distances(z, codebook, precision=jax.lax.Precision.HIGHEST):
    """||z_i - e_k||^2 = ||z_i||^2 - 2 z_i.e_k + ||e_k||^2: float[N, D], float[K, D] -> float32[N, K].

    The matmul form costs one [N, D] x [D, K] matmul instead of an [N, K, D] broadcast. HIGHEST precision because
    TPUs otherwise run float32 matmuls in bf16 passes, which flips the argmin between close codes.
    """
    z, e = z.astype(f32), codebook.astype(f32)
    return (jnp.sum(z * z, axis=-1, keepdims=True)
            - 2.0 * jnp.dot(z, e.T, precision=precision)
            + jnp.sum(e * e, axis=-1)[None, :])


def nearest_code(z, codebook, precision=jax.lax.Precision.HIGHEST):
    """Index of the nearest codebook row (matmul form): float[N, D], float[K, D] -> int32[N]."""
    return jnp.argmin(squared_distances(z, codebook, precision), axis=-1).astype(jnp.int32)


def nearest_code_naive(z, codebook):
    """Same as `nearest_code` via the [N, K, D] broadcast of differences (reference for tests and the benchmark)."""
    diff = z.astype(f32)[:, None, :] - codebook.astype(f32)[None, :, :]
    return jnp.argmin(jnp.sum(diff * diff, axis=-1), axis=-1).astype(jnp.int32)


def quantize(z_e, codebook, commitment_cost: float = 0.25) -> Tuple[jax.Array, jax.Array, Dict[str, jax.Array]]:
    """Nearest-code quantisation with the straight-through estimator.

    z_e float[..., D], codebook float[K, D] -> (z_q_st float32[..., D], codes int32[...], losses) where
      losses['codebook']   = mean over all N*D elements of (sg[z_e] - z_q)^2          (gradient only to the codebook)
      losses['commitment'] = commitment_cost * mean over N*D of (z_e - sg[z_q])^2   (gradient only to z_e)
    N = number of vectors (product of the leading dims). So d commitment / d z_e = commitment_cost * 2 (z_e - z_q)
    / (N * D), and d codebook / d e_k = -2 sum_{i: code_i = k} (z_e_i - e_k) / (N * D).
    z_q_st = z_e + sg(z_q - z_e): equals z_q in the forward pass, identity Jacobian w.r.t. z_e in the backward.
    """
    z = z_e.astype(f32)
    e = codebook.astype(f32)
    d = z.shape[-1]
    codes = nearest_code(z.reshape(-1, d), e)
    z_q = jnp.take(e, codes, axis=0).reshape(z.shape)
    losses = {"codebook": jnp.mean(jnp.square(sg(z) - z_q)),
              "commitment": commitment_cost * jnp.mean(jnp.square(z - sg(z_q)))}
    return z + sg(z_q - z), codes.reshape(z.shape[:-1]), losses


def code_counts(codes, num_codes: int):
    """Hits per code: int[...] -> int32[K]. A scatter-add (not a one-hot [N, K]) so it scales to 16k codes."""
    return jax.ops.segment_sum(jnp.ones(codes.size, jnp.int32), codes.reshape(-1), num_segments=num_codes)


def codebook_usage(counts):
    """Fraction of codes hit at least once: int/float[K] -> float32 scalar."""
    return jnp.mean((counts > 0).astype(f32))


def perplexity(counts):
    """exp(entropy) of the code distribution: float[K] -> float32 scalar in [1, K] (K = uniform use)."""
    p = counts.astype(f32) / jnp.maximum(jnp.sum(counts).astype(f32), 1.0)
    return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))


def ema_update(counts, sums, z, codes, decay: float, eps: float = 1e-5):
    """One EMA (k-means-like) codebook step (VQ-VAE appendix / Sonnet's VectorQuantizerEMA).

    counts float32[K], sums float32[K, D], z float[N, D], codes int32[N] -> (counts, sums, codebook float32[K, D]):
      counts <- decay * counts + (1 - decay) * n_k,        n_k = #{i: code_i = k}
      sums   <- decay * sums   + (1 - decay) * sum_{i: code_i = k} z_i
      codebook = sums / smoothed counts,  smoothed = (counts + eps) / (total + K eps) * total   (Laplace)
    n_k and the per-code sums are plain sums over the batch: under SPMD jit with a sharded batch they are global
    sums, so every device computes the same codebook.
    """
    k = counts.shape[0]
    n_k = jax.ops.segment_sum(jnp.ones(codes.shape, f32), codes, num_segments=k)
    s_k = jax.ops.segment_sum(z.astype(f32), codes, num_segments=k)
    counts = decay * counts + (1.0 - decay) * n_k
    sums = decay * sums + (1.0 - decay) * s_k
    total = jnp.sum(counts)
    smoothed = (counts + eps) / (total + k * eps) * total
    return counts, sums, sums / smoothed[:, None]


def restart_candidates(rng, z, num_codes: int):
    """One encoder output per code, drawn uniformly (with replacement) from the batch: float[N, D] -> float[K, D]."""
    idx = jax.random.randint(rng, (num_codes,), 0, z.shape[0])
    return jnp.take(z, idx, axis=0)


# --------------------------------------------------------------------------------------------------------------------
# Module
# --------------------------------------------------------------------------------------------------------------------
def _act_names(ndim: int):
    return ("batch",) + (None,) * (ndim - 2) + ("act_embed",)


class VectorQuantizer(nn.Module):
    """float[..., C] -> (z_q_st float[..., C], codes int32[...], aux).

    aux = {'losses': {'codebook', 'commitment'}, 'usage', 'perplexity', 'restarted'}. In training (train=True and
    'vq_stats' mutable) usage/perplexity are over the current window of `restart_window` steps including this
    batch; otherwise over this batch. 'restarted' = number of codes replaced this step.

    Variables:
      params/codebook float[K, D]               (ema=False) learnt by the codebook loss.
      vq_stats/codebook, ema_counts, ema_sums   (ema=True) updated by `ema_update`; the codebook loss is then 0.
      vq_stats/codebook_offset float[K, D]      (ema=False, restart_unused) added to the param codebook: a restart
                                                sets offset_k = z - param_k, so code k becomes z while param_k keeps
                                                its optimizer state and still learns (params are not mutable in apply).
      vq_stats/window_counts int32[K], window_step int32   hits and steps since the last window reset.
    Statistics change only when called with train=True and mutable=['vq_stats'] (never during init). Restarts draw
    from `self.make_rng('vq')`; being part of one SPMD program, they are identical on every device.

    `l2_normalize`: z_e and codes are unit-normalised before the search (ViT-VQGAN / LlamaGen). `project`: linear
    maps input_dim -> code_dim before and code_dim -> input_dim after quantisation (low-dimensional codes).
    """

    num_codes: int = 1024
    code_dim: int = 64
    commitment_cost: float = 0.25
    ema: bool = False
    ema_decay: float = 0.99
    ema_eps: float = 1e-5
    l2_normalize: bool = False
    project: bool = False
    input_dim: Optional[int] = None  # width of the vectors in/out; required when project=True
    restart_unused: bool = False
    restart_window: int = 100
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        k, d = self.num_codes, self.code_dim
        # Unit-norm rows on average (std 1/sqrt(D)), the scale of normalised encoder outputs.
        init = nn.initializers.variance_scaling(1.0, "fan_out", "normal")
        cb_names = ("codebook", None)
        if self.project:
            if not self.input_dim:
                raise ValueError("VectorQuantizer: project=True needs input_dim (the width of the incoming vectors)")
            dense = lambda n, names, name: nn.Dense(  # noqa: E731
                n, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
                kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), names),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (names[1],)))
            self.proj_in = dense(d, ("embed", None), "proj_in")
            self.proj_out = dense(self.input_dim, (None, "embed"), "proj_out")
        if self.ema:
            self.ema_codebook = self.variable("vq_stats", "codebook", lambda: nn.with_logical_partitioning(
                init, cb_names)(self.make_rng("params"), (k, d), f32))
            # counts start at 1 and sums at the initial codebook, so sums / counts is the codebook from step 0.
            self.ema_counts = self.variable("vq_stats", "ema_counts", lambda: nn.with_logical_partitioning(
                nn.initializers.ones, ("codebook",))(None, (k,), f32))
            self.ema_sums = self.variable("vq_stats", "ema_sums",
                                          lambda: nn.LogicallyPartitioned(self.ema_codebook.value, cb_names))
        else:
            self.codebook = self.param("codebook", nn.with_logical_partitioning(init, cb_names), (k, d),
                                       self.param_dtype)
            if self.restart_unused:
                self.offset = self.variable("vq_stats", "codebook_offset", lambda: nn.with_logical_partitioning(
                    nn.initializers.zeros, cb_names)(None, (k, d), f32))
        self.window_counts = self.variable("vq_stats", "window_counts", lambda: nn.with_logical_partitioning(
            nn.initializers.zeros, ("codebook",))(None, (k,), jnp.int32))
        self.window_step = self.variable("vq_stats", "window_step", lambda: jnp.zeros((), jnp.int32))

    def _raw_codebook(self):
        """The codebook before normalisation: float32[K, D]."""
        if self.ema:
            return self.ema_codebook.value
        cb = self.codebook.astype(f32)
        return cb + self.offset.value if self.restart_unused else cb

    def search_codebook(self):
        """The codebook the search uses (l2-normalised if configured): float32[K, D]."""
        cb = self._raw_codebook()
        return l2_normalize(cb, CODE_EPS) if self.l2_normalize else cb

    def _to_codes_space(self, x):
        x = nn.with_logical_constraint(x.astype(self.dtype), _act_names(x.ndim))
        if self.project:
            x = self.proj_in(x)
        z = x.astype(f32)
        return l2_normalize(z, CODE_EPS) if self.l2_normalize else z

    def _from_codes_space(self, z):
        z = z.astype(self.dtype)
        if self.project:
            z = self.proj_out(z)
        return nn.with_logical_constraint(z, _act_names(z.ndim))

    def embed_codes(self, codes):
        """int[...] -> float[..., C]: what the decoder sees for given codes (same as z_q_st's forward value)."""
        return self._from_codes_space(jnp.take(self.search_codebook(), codes, axis=0))

    def features(self, x):
        """float[..., C] -> float32[..., D]: the vectors `codes` rounds to their nearest code (after the optional
        projection and l2 normalisation), the codes' continuous counterpart."""
        return self._to_codes_space(x)

    def codes(self, x):
        """float[..., C] -> int32[...] without losses or statistics."""
        z = self.features(x)
        return nearest_code(z.reshape(-1, z.shape[-1]), self.search_codebook()).reshape(z.shape[:-1])

    def __call__(self, x, train: bool = False):
        z = self._to_codes_space(x)
        z_q_st, codes, losses = quantize(z, self.search_codebook(), self.commitment_cost)
        if self.ema:  # the codebook is not a parameter: no gradient to give it
            losses["codebook"] = jnp.zeros((), f32)
        counts = code_counts(codes, self.num_codes)
        restarted = jnp.zeros((), jnp.int32)
        if train and self.is_mutable_collection("vq_stats") and not self.is_initializing():
            counts, restarted = self._update_stats(z.reshape(-1, z.shape[-1]), codes.reshape(-1), counts)
        aux = {"losses": losses, "usage": codebook_usage(counts), "perplexity": perplexity(counts),
               "restarted": restarted}
        return self._from_codes_space(z_q_st), codes, aux

    def _update_stats(self, z, codes, batch_counts):
        """Window counters, EMA step and dead-code restart for the NEXT step. Returns (window counts, #restarted)."""
        window = self.window_counts.value + batch_counts
        step = self.window_step.value + 1
        window_done = step >= self.restart_window
        if self.ema:
            counts, sums, cb = ema_update(self.ema_counts.value, self.ema_sums.value, z, codes, self.ema_decay,
                                          self.ema_eps)
        restarted = jnp.zeros((), jnp.int32)
        if self.restart_unused:
            dead = (window == 0) & window_done
            cand = restart_candidates(self.make_rng("vq"), sg(z), self.num_codes)
            restarted = jnp.sum(dead.astype(jnp.int32))
            if self.ema:
                # A restarted code starts as a one-member cluster at its new position.
                cb = jnp.where(dead[:, None], cand, cb)
                sums = jnp.where(dead[:, None], cand, sums)
                counts = jnp.where(dead, 1.0, counts)
            else:
                param = sg(self.codebook.astype(f32))
                self.offset.value = jnp.where(dead[:, None], cand - param, self.offset.value)
        if self.ema:
            self.ema_counts.value, self.ema_sums.value, self.ema_codebook.value = counts, sums, cb
        self.window_counts.value = jnp.where(window_done, 0, window)
        self.window_step.value = jnp.where(window_done, 0, step)
        return window, restarted
