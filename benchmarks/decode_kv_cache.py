"""Greedy decoding of a small DecoderLM: KV cache (prefill + one-token extend) vs full recompute every step.

Both are whole jitted loops over the same model and the same fixed shapes; the reference recomputes the full
prefix + generated sequence at every step (logits only at the last real position, so the head is not the cost).
Reports tokens/s for both, their ratio (target >= 10x), prefill time, and whether both produced the same tokens.

    python benchmarks/decode_kv_cache.py [--batch 4 --prefix 64 --new_tokens 64 --width 256 --depth 4]
"""
import argparse
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import timed, write_result  # noqa: E402

from vlmjax.models.lm import DecoderLM  # noqa: E402
from vlmjax.models.masks import make_attn_mask, positions_from_mask  # noqa: E402
from vlmjax.tasks.decode import decode, embed_tokens  # noqa: E402


def _last_logits(module, x, attn_mask, positions, last):
    hidden, _ = module(x, attn_mask, positions, return_hidden=True)
    return module.logits(jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0])


def full_recompute_decode(model, variables, prefix_tokens, new_tokens: int):
    """Greedy decode without a cache: step t runs the model over prefix + t tokens (fixed buffer, masked)."""
    b, p = prefix_tokens.shape
    length = p + new_tokens
    mask_ar = jnp.broadcast_to(jnp.arange(length) >= p, (b, length)).astype(jnp.int32)

    def body(t, seq):
        input_mask = jnp.broadcast_to(jnp.arange(length) < p + t, (b, length))
        x = model.apply(variables, seq, method="embed")
        logits = model.apply(variables, x, make_attn_mask(input_mask, mask_ar), positions_from_mask(input_mask),
                             jnp.full((b,), p + t - 1), method=_last_logits)
        return seq.at[:, p + t].set(jnp.argmax(logits, -1).astype(seq.dtype))

    seq = jnp.pad(prefix_tokens, ((0, 0), (0, new_tokens)))
    return jax.lax.fori_loop(0, new_tokens, body, seq)[:, p:]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prefix", type=int, default=64)
    ap.add_argument("--new_tokens", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    model = DecoderLM(vocab_size=args.vocab, width=args.width, depth=args.depth, num_heads=4, num_kv_heads=2,
                      head_dim=args.width // 4, mlp_dim=4 * args.width)
    variables = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 4, args.width))))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (args.batch, args.prefix), 0, args.vocab)
    x = embed_tokens(model, variables, tokens)
    input_mask = jnp.ones((args.batch, args.prefix), jnp.int32)
    mask_ar = jnp.zeros((args.batch, args.prefix), jnp.int32)

    kv = lambda n: decode(model, variables, x, input_mask, mask_ar, max_new_tokens=n).block_until_ready()  # noqa: E731
    full_jit = jax.jit(full_recompute_decode, static_argnames=("model", "new_tokens"))
    full = lambda: full_jit(model, variables, tokens, new_tokens=args.new_tokens).block_until_ready()  # noqa: E731

    t_kv = timed(lambda: kv(args.new_tokens), repeats=args.repeats)
    t_prefill = timed(lambda: kv(1), repeats=args.repeats)  # prefill + first token, no extend step
    t_full = timed(full, repeats=max(2, args.repeats // 2))
    same = bool(np.array_equal(np.asarray(kv(args.new_tokens)), np.asarray(full())))

    n_tok = args.batch * args.new_tokens
    result = {
        "config": vars(args),
        "kv_cache_tokens_per_s": n_tok / t_kv,
        "full_recompute_tokens_per_s": n_tok / t_full,
        "speedup_kv_vs_full_recompute": t_full / t_kv,
        "target_speedup": 10.0,
        "prefill_ms": 1e3 * t_prefill,
        "kv_cache_total_ms": 1e3 * t_kv,
        "full_recompute_total_ms": 1e3 * t_full,
        "kv_extend_ms_per_step": 1e3 * (t_kv - t_prefill) / max(args.new_tokens - 1, 1),
        "same_tokens": same,
        "reference": "full recompute of prefix + generated tokens at every step (jitted fori_loop, same model)",
    }
    print(f"KV cache: {result['kv_cache_tokens_per_s']:.0f} tok/s, full recompute: "
          f"{result['full_recompute_tokens_per_s']:.0f} tok/s, ratio {result['speedup_kv_vs_full_recompute']:.1f}x "
          f"(target >= 10x); prefill {result['prefill_ms']:.1f} ms; same tokens: {same}")
    write_result("decode_kv_cache", result)


if __name__ == "__main__":
    main()
