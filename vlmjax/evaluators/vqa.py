"""`type='vqa'`: exact match of the greedily decoded answer over every question of the split.

Metrics `accuracy`, `questions`, plus `accuracy_<type>` with `question_types` (names of the `list_index` values);
`max_new_tokens` (default 8). Answers and references are compared after CIDEr's normalisation.
"""
import numpy as np

from vlmjax.data import chat_ops
from vlmjax.evaluators import cider
from vlmjax.evaluators.answers import predict_answers
from vlmjax.evaluators.base import Evaluator
from vlmjax.tasks.chat_prompts import answers_as_text

KEYS = ("max_new_tokens", "question_types")


def reduce_vqa(preds, out, types) -> dict:
    """preds: B lists of Q answer strings; out: {prompts_valid bool[B, Q], refs uint8[B, Q, C], question_type}."""
    valid = out["prompts_valid"].astype(bool)
    correct = np.zeros(valid.shape, bool)
    for i, j in zip(*np.nonzero(valid)):
        correct[i, j] = cider.normalize(preds[i][j]) == cider.normalize(chat_ops.bytes_to_text(out["refs"][i, j]))
    metrics = {"accuracy": float(correct[valid].mean()), "questions": float(valid.sum())}
    qtype = out.get("question_type")
    for t, name in enumerate(types):
        sel = valid & (qtype == t) if qtype is not None else np.zeros_like(valid)
        if sel.any():
            metrics[f"accuracy_{name}"] = float(correct[sel].mean())
    return metrics


def build(task, cfg, where: str) -> Evaluator:
    types = list(cfg.get("question_types", []))
    predict = predict_answers(task, int(cfg.get("max_new_tokens", 8)))
    return Evaluator(data=cfg.data, predict=predict,
                     reduce=lambda out: reduce_vqa(answers_as_text(task, out["pred"]), out, types))
