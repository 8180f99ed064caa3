"""`type='perplexity'`: exp of the per-token cross-entropy of teacher-forced text (training-format data).

Uses the task's `text_nll(variables, batch) -> {ce_sum float[B], count float[B]}` predict fn (image tokens are
never counted). Metrics `perplexity`, `ce`.
"""
import numpy as np

from vlmjax.evaluators.base import Evaluator

KEYS = ()


def reduce_perplexity(out) -> dict:
    ce = float(out["ce_sum"].sum() / max(out["count"].sum(), 1.0))
    return {"perplexity": float(np.exp(ce)), "ce": ce}


def build(task, cfg, where: str) -> Evaluator:
    return Evaluator(data=cfg.data, predict=task.predict_fns()["text_nll"], reduce=reduce_perplexity)
