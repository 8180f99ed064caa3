"""`type='classification'`: top-1 accuracy and mean cross-entropy of the task's `logits` predict fn on a split.

Batches: `image` float[B, H, W, 3], `label` int[B]. Metrics `accuracy`, `loss`.
"""
import jax.numpy as jnp
import numpy as np

from vlmjax.evaluators.base import Evaluator
from vlmjax.losses.classification import softmax_xent

KEYS = ()


def build(task, cfg, where: str) -> Evaluator:
    logits_fn = task.predict_fns()["logits"]

    def predict(variables, batch):
        logits = logits_fn(variables, batch["image"])
        return {"correct": jnp.argmax(logits, -1) == batch["label"], "loss": softmax_xent(logits, batch["label"])}

    return Evaluator(data=cfg.data, predict=predict, reduce=reduce_accuracy)


def reduce_accuracy(out) -> dict:
    """{'correct': bool[N], 'loss': float[N]} -> {'accuracy', 'loss'}: their means over the split."""
    return {"accuracy": float(np.mean(out["correct"])), "loss": float(np.mean(out["loss"]))}
