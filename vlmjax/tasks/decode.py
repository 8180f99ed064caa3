"""Autoregressive decoding with a KV cache: prefill the prefix, then extend one token at a time.

Mixed prompt lengths: prefixes are given right-padded (prefix_input_mask marks the real tokens, holes allowed).
Prefill writes every prefix slot into the cache, padding included, but marks padded slots invalid, and each row
keeps its own rotary positions (number of real tokens before it). A generated token is written at the same slot
for every row yet sits at position `real prefix length + t` of its own row, and padded slots get exactly zero
attention weight. So a row decodes the same tokens in any batch as alone (deterministic samplers; a stochastic
sampler draws the batch with one key per step, so its draws depend on the batch).

Stop tokens: a row's output keeps its first stop token; everything after it is `pad_token`. The loop exits
early once every row has stopped.

The jitted core is cached on (model, shapes, static options): repeated calls with the same shapes and the same
sampler/top_k/beam_size/max_new_tokens do not recompile; temperature, top_p, length_penalty, cfg_scale,
logits_mask and stop tokens (up to 8 of them) are traced values and may change freely.

The loops (`sample_loop`, `beam_search`) are written against a generic `step(state, tokens int32[N]) ->
(logits float[N, V], state)` and `reorder(state, rows int32[N']) -> state`, so they work with any model.
"""
import functools
from typing import Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from vlmjax.models.lm import take_cache_rows
from vlmjax.models.masks import make_attn_mask, positions_from_mask

SAMPLERS = ("greedy", "temperature", "top_k", "top_p", "nucleus", "beam")
NEG_INF = -jnp.inf


# -- logit filters and samplers ----------------------------------------------------------------------------------
def top_k_filter(logits, k: int):
    """Keep the k largest logits of float[..., V] (ties at the k-th value kept), the rest -inf."""
    kth = lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits >= kth, logits, NEG_INF)


def top_p_filter(logits, p):
    """Nucleus: keep the smallest set of most likely tokens whose probability reaches p (at least one)."""
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # A token is kept while the mass strictly before it is still short of p.
    keep = (jnp.cumsum(probs, axis=-1) - probs) < p
    threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits >= threshold, logits, NEG_INF)


def sample_logits(logits, rng, sampler: str = "greedy", temperature=1.0, top_k: Optional[int] = None, top_p=None):
    """float[B, V] -> int32[B]. 'greedy' = argmax; other samplers draw from softmax(logits / temperature),
    after a top-k and/or nucleus filter when top_k / top_p are given ('top_k' / 'top_p' require theirs)."""
    if sampler == "greedy":
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


# -- generic loops -----------------------------------------------------------------------------------------------
def _stop_array(stop_tokens):
    """int32[S] (S a multiple of 8, padded with -1, which no token equals) so that the count does not retrace."""
    stop_tokens = jnp.asarray(stop_tokens, jnp.int32).reshape(-1)
    n = stop_tokens.shape[0]
    return jnp.pad(stop_tokens, (0, max(8, -(-n // 8) * 8) - n), constant_values=-1)


def sample_loop(step: Callable, state, first_logits, *, max_new_tokens: int, choose: Callable, stop_tokens=(),
                pad_token: int = 0, rng=None, return_logits: bool = False):
    """Token-by-token decoding. first_logits float[N, V]; choose(logits float[N, V], key) -> int32[N].

    Returns int32[N, T] (and float32[N, T, V] logits that produced each token when return_logits).
    """
    n, v = first_logits.shape
    stops = _stop_array(stop_tokens)
    rng = jax.random.PRNGKey(0) if rng is None else rng

    def emit(t, logits, tokens, done, logit_buf):
        tok = jnp.where(done, pad_token, choose(logits, jax.random.fold_in(rng, t)))
        tokens = tokens.at[:, t].set(tok)
        if return_logits:
            logit_buf = logit_buf.at[:, t].set(logits.astype(jnp.float32))
        return tokens, done | jnp.isin(tok, stops), tok, logit_buf

    tokens = jnp.full((n, max_new_tokens), pad_token, jnp.int32)
    logit_buf = jnp.zeros((n, max_new_tokens, v), jnp.float32) if return_logits else None
    tokens, done, tok, logit_buf = emit(0, first_logits, tokens, jnp.zeros((n,), bool), logit_buf)

    def cond(carry):
        t, _, done, *_ = carry
        return (t < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        t, tokens, done, tok, state, logit_buf = carry
        logits, state = step(state, tok)
        tokens, done, tok, logit_buf = emit(t, logits, tokens, done, logit_buf)
        return t + 1, tokens, done, tok, state, logit_buf

    _, tokens, _, _, _, logit_buf = lax.while_loop(cond, body, (1, tokens, done, tok, state, logit_buf))
    return (tokens, logit_buf) if return_logits else tokens


def beam_search(step: Callable, reorder: Callable, state, first_logits, *, beam_size: int, max_new_tokens: int,
                stop_tokens=(), pad_token: int = 0, length_penalty=0.0, logits_filter: Callable = lambda x: x):
    """Beam search over N rows. first_logits float[N, V]; `state` holds N rows and is expanded to N * beam_size.

    Beams are kept by summed log-probability; a finished beam keeps its score (it can only continue with pad at
    no cost) and competes with the live ones. The returned beam maximises score / length**length_penalty
    (length counts generated tokens up to and including the stop token). Returns (int32[N, T], float32[N] score).
    """
    n, v = first_logits.shape
    k = beam_size
    stops = _stop_array(stop_tokens)
    state = reorder(state, jnp.repeat(jnp.arange(n), k))
    pad_only = jnp.full((v,), NEG_INF).at[pad_token].set(0.0)
    row_base = (jnp.arange(n) * k)[:, None]

    def select(t, logits, seqs, scores, done, lengths, state):
        logp = jax.nn.log_softmax(logits_filter(logits.astype(jnp.float32)), axis=-1).reshape(n, k, v)
        logp = jnp.where(done[..., None], pad_only, logp)
        top_scores, top_idx = lax.top_k((scores[..., None] + logp).reshape(n, k * v), k)
        parent, tok = top_idx // v, (top_idx % v).astype(jnp.int32)
        seqs = jnp.take_along_axis(seqs, parent[..., None], axis=1).at[:, :, t].set(tok)
        parent_done = jnp.take_along_axis(done, parent, axis=1)
        lengths = jnp.take_along_axis(lengths, parent, axis=1) + (~parent_done).astype(jnp.int32)
        done = parent_done | jnp.isin(tok, stops)
        state = reorder(state, (row_base + parent).reshape(-1))
        return seqs, top_scores, done, lengths, state, tok.reshape(-1)

    seqs = jnp.full((n, k, max_new_tokens), pad_token, jnp.int32)
    # All beams start as copies of one: only beam 0 may propose at the first step.
    scores = jnp.where(jnp.arange(k) == 0, 0.0, NEG_INF) * jnp.ones((n, 1))
    zeros = jnp.zeros((n, k), jnp.int32)
    first = jnp.repeat(first_logits, k, axis=0)
    seqs, scores, done, lengths, state, tok = select(0, first, seqs, scores, zeros.astype(bool), zeros, state)

    def cond(carry):
        return (carry[0] < max_new_tokens) & ~jnp.all(carry[3])

    def body(carry):
        t, seqs, scores, done, lengths, state, tok = carry
        logits, state = step(state, tok)
        return (t + 1, *select(t, logits, seqs, scores, done, lengths, state))

    _, seqs, scores, done, lengths, _, _ = lax.while_loop(cond, body, (1, seqs, scores, done, lengths, state, tok))
    final = scores / jnp.maximum(lengths, 1).astype(jnp.float32) ** length_penalty
    best = jnp.argmax(final, axis=1)
    best_seq = jnp.take_along_axis(seqs, best[:, None, None], axis=1)[:, 0]
    return best_seq, jnp.take_along_axis(final, best[:, None], axis=1)[:, 0]


# -- the prefix LM: prefill + extend -----------------------------------------------------------------------------
def _prefill_fn(module, x, attn_mask, positions, cache, last):
    hidden, cache = module(x, attn_mask, positions, cache=cache, return_hidden=True)
    h_last = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    return module.logits(h_last), cache


def _extend_fn(module, tokens, positions, cache):
    x = module.embed(tokens[:, None])
    logits, cache = module(x, jnp.ones((tokens.shape[0], 1, 1), bool), positions[:, None], cache=cache)
    return logits[:, 0], cache


def _pad_to(x, length):
    return jnp.pad(x, [(0, 0), (0, length - x.shape[1])] + [(0, 0)] * (x.ndim - 2))


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "sampler", "top_k", "beam_size", "pad_token",
                                             "return_logits"))
def _decode_jit(model, variables, prefix, cfg_prefix, temperature, top_p, length_penalty, cfg_scale, logits_mask, rng,
                stop_tokens, *, max_new_tokens, sampler, top_k, beam_size, pad_token, return_logits):
    x, input_mask, mask_ar = prefix
    use_cfg = cfg_prefix is not None
    if use_cfg:  # conditional rows first, then their null-prompt twins
        p = max(x.shape[1], cfg_prefix[0].shape[1])
        x, input_mask, mask_ar = (jnp.concatenate([_pad_to(a, p), _pad_to(c, p)]) for a, c in zip(prefix, cfg_prefix))
    input_mask = input_mask.astype(bool)
    p = x.shape[1]
    cache = model.init_cache(x.shape[0], p + max(max_new_tokens - 1, 0))
    positions = positions_from_mask(input_mask)
    last = jnp.max(jnp.where(input_mask, jnp.arange(p), 0), axis=1)
    logits, cache = model.apply(variables, x, make_attn_mask(input_mask, mask_ar), positions, cache, last,
                                method=_prefill_fn)

    def guide(logits):
        if not use_cfg:
            return logits
        cond, uncond = jnp.split(logits, 2)
        return uncond + cfg_scale * (cond - uncond)

    def step(state, tokens):
        if use_cfg:
            tokens = jnp.concatenate([tokens, tokens])
        logits, cache = model.apply(variables, tokens, state["pos"], state["cache"], method=_extend_fn)
        return guide(logits), {"cache": cache, "pos": state["pos"] + 1}

    def reorder(state, rows):
        if use_cfg:
            rows = jnp.concatenate([rows, rows + state["pos"].shape[0] // 2])
        return {"cache": take_cache_rows(state["cache"], rows), "pos": state["pos"][rows]}

    def restrict(logits):
        return jnp.where(logits_mask, logits, NEG_INF)

    state = {"cache": cache, "pos": input_mask.sum(axis=1).astype(jnp.int32)}
    first = guide(logits)
    if sampler == "beam":
        tokens, _ = beam_search(step, reorder, state, first, beam_size=beam_size, max_new_tokens=max_new_tokens,
                                stop_tokens=stop_tokens, pad_token=pad_token, length_penalty=length_penalty,
                                logits_filter=restrict)
        return tokens
    top_p_used = top_p if sampler in ("top_p", "nucleus") else None
    choose = lambda lg, key: sample_logits(restrict(lg), key, sampler, temperature, top_k, top_p_used)  # noqa: E731
    return sample_loop(step, state, first, max_new_tokens=max_new_tokens, choose=choose, stop_tokens=stop_tokens,
                       pad_token=pad_token, rng=rng, return_logits=return_logits)


def decode(model, params, prefix_embeds, prefix_input_mask, prefix_mask_ar, *, max_new_tokens: int,
           sampler: str = "greedy", temperature: float = 1.0, top_k: Optional[int] = None,
           top_p: Optional[float] = None, beam_size: int = 1, length_penalty: float = 0.0,
           stop_tokens: Sequence[int] = (), pad_token: int = 0, rng=None, logits_mask=None,
           cfg_scale: Optional[float] = None, cfg_null_prefix=None, return_logits: bool = False):
    """Generate `max_new_tokens` tokens after each prefix.

    model: a DecoderLM (unbound); params: its variables ({'params': ...}) or the params tree alone.
    prefix_embeds float[B, P, D] (e.g. image tokens + embedded prompt), prefix_input_mask [B, P] (right-padded),
    prefix_mask_ar [B, P] (0 within the bidirectional prefix).
    sampler: 'greedy' | 'temperature' | 'top_k' (needs top_k) | 'top_p'/'nucleus' (needs top_p) | 'beam'
    (beam_size, length_penalty: best beam by score / length**length_penalty). top_k also filters 'temperature'.
    logits_mask bool[V]: tokens that may be generated (e.g. the image-token range while generating an image).
    cfg_scale with cfg_null_prefix = (embeds [B, P', D], input_mask, mask_ar), the null-prompt twin of each row:
    classifier-free guidance, logits = uncond + cfg_scale * (cond - uncond), both rows fed the chosen token.
    Returns int32[B, max_new_tokens] (and float32[B, T, V] guided logits per step when return_logits; not for beam).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r}: expected one of {SAMPLERS}")
    if sampler == "top_k" and top_k is None:
        raise ValueError("sampler='top_k' needs top_k")
    if sampler in ("top_p", "nucleus") and top_p is None:
        raise ValueError(f"sampler={sampler!r} needs top_p")
    if sampler == "beam" and return_logits:
        raise ValueError("return_logits is not available with beam search")
    if (cfg_scale is None) != (cfg_null_prefix is None):
        raise ValueError("classifier-free guidance needs both cfg_scale and cfg_null_prefix")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 1")
    variables = params if isinstance(params, Mapping) and "params" in params else {"params": params}

    def as_prefix(embeds, input_mask, mask_ar):  # fixed dtypes: int and bool masks share one compilation
        return jnp.asarray(embeds), jnp.asarray(input_mask).astype(bool), jnp.asarray(mask_ar).astype(jnp.int32)

    prefix = as_prefix(prefix_embeds, prefix_input_mask, prefix_mask_ar)
    cfg_prefix = None if cfg_null_prefix is None else as_prefix(*cfg_null_prefix)
    f32 = lambda v: jnp.asarray(0.0 if v is None else v, jnp.float32)  # noqa: E731
    # Always an array (all True = unconstrained): None would give a second compiled variant.
    logits_mask = jnp.ones((model.vocab_size,), bool) if logits_mask is None else jnp.asarray(logits_mask, bool)
    return _decode_jit(model, variables, prefix, cfg_prefix, f32(temperature), f32(top_p), f32(length_penalty),
                       f32(cfg_scale), logits_mask, jax.random.PRNGKey(0) if rng is None else rng,
                       _stop_array(tuple(int(s) for s in stop_tokens)), max_new_tokens=max_new_tokens,
                       sampler=sampler, top_k=None if sampler in ("greedy", "beam") else top_k,
                       beam_size=beam_size if sampler == "beam" else 1, pad_token=pad_token,
                       return_logits=return_logits)


@functools.partial(jax.jit, static_argnames=("model",))
def embed_tokens(model, variables, tokens):
    """int[B, L] -> float[B, L, D] through the model's embedding (to build text prefixes)."""
    return model.apply(variables, tokens, method="embed")
