"""Next-token cross-entropy for the prefix LM.

Shift convention: the model reads `inputs = tokens[:, :-1]` and the logits at position i predict
`targets[:, i] = tokens[:, i + 1]`; `mask_loss` is aligned to the *targets* (a token is supervised where it is
predicted). `next_token_batch` builds that triple from a token sequence whose mask_loss marks supervised tokens,
so tasks never redo the shift.
"""
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

NORMALIZE = ("per_token", "per_example")


def next_token_batch(tokens, input_mask, mask_ar, mask_loss) -> Dict[str, jnp.ndarray]:
    """Shift a token sequence into model inputs and aligned targets.

    tokens int[B, L], input_mask/mask_ar/mask_loss [B, L] (mask_loss[i] = 1: token i is supervised) ->
    {'inputs', 'input_mask', 'mask_ar'}: [B, L-1] for positions 0..L-2,
    {'targets', 'mask_loss'}: [B, L-1] for tokens 1..L-1 (padding is never supervised).
    Works on numpy (host) and jax arrays alike.
    """
    xp = np if isinstance(tokens, np.ndarray) else jnp
    input_mask, mask_loss = xp.asarray(input_mask), xp.asarray(mask_loss)
    return {
        "inputs": tokens[:, :-1],
        "input_mask": input_mask[:, :-1],
        "mask_ar": xp.asarray(mask_ar)[:, :-1],
        "targets": tokens[:, 1:],
        "mask_loss": (mask_loss[:, 1:].astype(bool) & input_mask[:, 1:].astype(bool)).astype(xp.int32),
    }


def next_token_loss(logits, targets, mask_loss, normalize: str = "per_token",
                    z_loss: float = 0.0) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
    """Cross-entropy of float[B, L, V] logits against int[B, L] targets on mask_loss [B, L] positions.

    normalize: 'per_token'   sum over supervised tokens / number of supervised tokens;
               'per_example' mean over examples (with >= 1 supervised token) of each example's token mean,
                             so long answers do not outweigh short ones.
    z_loss: coefficient of the log-partition penalty mean(logsumexp(logits)^2) (PaLM / Chameleon use 1e-4..1e-5),
            normalised like the cross-entropy; keeps the softmax normaliser near 1 for stability.
    Returns (scalar loss = ce + z term, metrics {ce, z_loss (the added term), accuracy (supervised tokens),
    num_supervised}).
    """
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize={normalize!r}: expected one of {NORMALIZE}")
    logits = logits.astype(jnp.float32)
    w = jnp.asarray(mask_loss).astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    ce = lse - target_logit
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)

    per_row = w.sum(axis=1)
    if normalize == "per_token":
        reduce = lambda v: (v * w).sum() / jnp.maximum(w.sum(), 1.0)  # noqa: E731
    else:
        has_any = (per_row > 0).astype(jnp.float32)
        n_examples = jnp.maximum(has_any.sum(), 1.0)
        reduce = lambda v: ((v * w).sum(1) / jnp.maximum(per_row, 1.0)).sum() / n_examples  # noqa: E731

    ce_mean = reduce(ce)
    z_term = z_loss * reduce(jnp.square(lse))
    loss = ce_mean + z_term
    metrics = {"ce": ce_mean, "z_loss": z_term, "accuracy": (correct * w).sum() / jnp.maximum(w.sum(), 1.0),
               "num_supervised": w.sum()}
    return loss, metrics


def check_supervised(mask_loss: np.ndarray, where: str) -> None:
    """Host-side guard: a batch without a supervised token trains on a silent zero loss."""
    if not np.any(np.asarray(mask_loss)):
        raise ValueError(f"{where}: batch has no supervised token (mask_loss is all zero) — check the prompt "
                         "template / tokenizer (answer truncated by max length? prefix covering the whole sequence? "
                         "mask_loss built on the wrong side of the shift?)")
