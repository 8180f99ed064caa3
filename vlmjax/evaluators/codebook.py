"""`type='codebook'`: how an image tokenizer uses its codebook over a split (the task's `encode` predict fn).

Metrics usage (fraction of the K codes hit at least once over the whole split), perplexity (exp entropy of the
split's code histogram, K = all codes equally used) and codes_used.
"""
import functools

import jax.numpy as jnp
import numpy as np

from vlmjax.evaluators.base import Evaluator
from vlmjax.losses.vq import codebook_usage, perplexity

KEYS = ()


def predict_codes(task):
    """predict fn {'image': float[B, H, W, 3]} -> {'codes': int32[B, h, w]}."""
    encode = task.predict_fns()["encode"]
    return lambda variables, batch: {"codes": encode(variables, batch["image"])}


def build(task, cfg, where: str) -> Evaluator:
    return Evaluator(data=cfg.data, predict=predict_codes(task),
                     reduce=functools.partial(reduce_codebook, num_codes=task.model.num_codes))


def reduce_codebook(out, num_codes: int) -> dict:
    """Codes int[N, h, w] of the whole split -> usage (fraction of codes used) and perplexity."""
    counts = np.bincount(np.asarray(out["codes"]).reshape(-1), minlength=num_codes)
    return {"usage": float(codebook_usage(counts)), "perplexity": float(perplexity(jnp.asarray(counts))),
            "codes_used": float(np.sum(counts > 0))}
