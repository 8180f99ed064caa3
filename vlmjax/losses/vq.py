"""VQ-VAE objective: reconstruction term plus the quantizer's codebook and commitment terms.

The quantisation math (nearest code, straight-through, codebook/commitment losses, usage) has its single
implementation in `vlmjax/models/quantizer.py` (models may not import losses); it is re-exported here so tasks
find every VQ loss piece in one place.
"""
from typing import Dict, Tuple

import jax
import jax.numpy as jnp

from vlmjax.models.quantizer import (codebook_usage, code_counts, nearest_code, nearest_code_naive,  # noqa: F401
                                     perplexity, quantize)

RECON_KINDS = ("l1", "l2")


def reconstruction_loss(x, x_hat, kind: str = "l1"):
    """Mean per-element |x - x_hat| ('l1') or (x - x_hat)^2 ('l2'): float[B, ...] x2 -> float32 scalar.

    The mean over every pixel and channel is -log p(x | z_q) of a Laplace ('l1') / Gaussian ('l2') decoder up to
    scale and constants.
    """
    d = x.astype(jnp.float32) - x_hat.astype(jnp.float32)
    if kind == "l1":
        return jnp.mean(jnp.abs(d))
    if kind == "l2":
        return jnp.mean(jnp.square(d))
    raise ValueError(f"reconstruction loss kind {kind!r}: expected one of {RECON_KINDS}")


def vqvae_loss(images, recon, aux, kind: str = "l1") -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """Total VQ-VAE loss = reconstruction + codebook + commitment (beta already applied by the quantizer).

    images, recon float[B, H, W, C]; aux is `VQVAE.__call__`'s aux. Returns (scalar loss, metrics of scalars).
    """
    rec = reconstruction_loss(images, recon, kind)
    losses = aux["losses"]
    total = rec + losses["codebook"] + losses["commitment"]
    metrics = {"loss_recon": rec, "loss_codebook": losses["codebook"], "loss_commitment": losses["commitment"],
               "codebook_usage": aux["usage"], "codebook_perplexity": aux["perplexity"],
               "codes_restarted": aux["restarted"].astype(jnp.float32)}
    return total, metrics
