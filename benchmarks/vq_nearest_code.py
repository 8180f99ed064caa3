"""Nearest-code search: matmul form (||z||^2 - 2 z.e + ||e||^2) vs the naive [N, K, D] broadcast, for a
16384-code codebook of dim 8 (LlamaGen-style low-dim codes) and dim 256; plus encode throughput of a small f=8
VQVAE at 64 px, against the same encoder without quantisation (the quantiser's overhead).

Run: .venv/bin/python benchmarks/vq_nearest_code.py [--n 4096] [--repeats 5]
Writes benchmarks/results/vq_nearest_code.json.
"""
import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from vlmjax.models.quantizer import nearest_code, nearest_code_naive
from vlmjax.models.vqvae import VQVAE

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "vq_nearest_code.json")


def time_fn(fn, *args, repeats: int):
    """Median wall seconds of `fn(*args)` after one warm-up (compile) call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_search(n: int, k: int, d: int, repeats: int) -> dict:
    r = np.random.RandomState(0)
    z = jnp.asarray(r.randn(n, d), jnp.float32)
    cb = jnp.asarray(r.randn(k, d), jnp.float32)
    fast, naive = jax.jit(nearest_code), jax.jit(nearest_code_naive)
    agree = float(np.mean(np.asarray(fast(z, cb)) == np.asarray(naive(z, cb))))
    t_fast = time_fn(fast, z, cb, repeats=repeats)
    t_naive = time_fn(naive, z, cb, repeats=repeats)
    out = {"n": n, "codes": k, "dim": d, "matmul_ms": 1e3 * t_fast, "naive_ms": 1e3 * t_naive,
           "speedup_matmul_over_naive": t_naive / t_fast, "matmul_vectors_per_s": n / t_fast,
           "codes_agree_fraction": agree}
    print(f"nearest_code N={n} K={k} D={d}: matmul {1e3 * t_fast:.2f} ms, naive {1e3 * t_naive:.2f} ms, "
          f"speedup x{t_naive / t_fast:.2f}, agreement {agree:.4f}")
    return out


def bench_encode(batch: int, size: int, repeats: int) -> dict:
    model = VQVAE(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1, z_channels=32, norm_groups=8, num_codes=1024,
                  code_dim=32)
    images = jnp.asarray(np.random.RandomState(1).uniform(-1, 1, (batch, size, size, 3)), jnp.float32)
    variables = jax.jit(model.init)(jax.random.key(0), images)
    encode = jax.jit(lambda v, x: model.apply(v, x, method=VQVAE.encode))
    # Reference: the same encoder + pre-quant conv without the nearest-code search.
    features = jax.jit(lambda v, x: model.apply(v, x, method=lambda m, x: m.pre_quant(m.enc(x, False))))
    t_enc = time_fn(encode, variables, images, repeats=repeats)
    t_ref = time_fn(features, variables, images, repeats=repeats)
    f = model.downsample_factor
    out = {"batch": batch, "image_size": size, "downsample": f, "tokens_per_image": (size // f) ** 2,
           "encode_images_per_s": batch / t_enc, "encoder_only_images_per_s": batch / t_ref,
           "encode_time_over_encoder_only": t_enc / t_ref}
    print(f"VQVAE f={f} {size}px encode: {batch / t_enc:.1f} images/s; encoder alone {batch / t_ref:.1f} images/s "
          f"(encode/encoder time x{t_enc / t_ref:.3f})")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4096, help="vectors to quantise")
    ap.add_argument("--codes", type=int, default=16384)
    ap.add_argument("--dims", type=int, nargs="+", default=[8, 256])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    device = jax.devices()[0]
    print(f"device: {device.platform} {device.device_kind} x{jax.device_count()}, jax {jax.__version__}")
    results = {"device": f"{device.platform}:{device.device_kind}", "host": platform.machine(),
               "jax": jax.__version__, "repeats": args.repeats, "reference": "naive broadcast search / encoder "
               "without quantisation", "search": [bench_search(args.n, args.codes, d, args.repeats)
                                                 for d in args.dims],
               "encode": bench_encode(args.batch, 64, args.repeats)}
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
