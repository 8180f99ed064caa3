"""`type='caption'`: greedy captions scored by `cider` (CIDEr-D against all references, vlmjax/evaluators/cider.py)
and `exact` (the caption equals one of the references); `max_new_tokens` (default 32).

Optional `gen_captions` (VQ-image prefix-LM runs): a TensorBoard grid of images generated for them (`cfg_scale`,
`temperature`, `top_k`, `seed`).
"""
from vlmjax.data import chat_ops
from vlmjax.evaluators import cider
from vlmjax.evaluators.answers import predict_answers
from vlmjax.evaluators.base import Evaluator
from vlmjax.tasks.chat_prompts import answers_as_text, generate_images

KEYS = ("max_new_tokens", "gen_captions", "cfg_scale", "temperature", "top_k", "seed")


def reduce_caption(hyps, out) -> dict:
    """hyps: one caption per image; out: {refs uint8[B, K, C], refs_valid bool[B, K]}."""
    refs = [[chat_ops.bytes_to_text(r) for r, v in zip(rs, vs) if v] for rs, vs in zip(out["refs"], out["refs_valid"])]
    return {"cider": cider.cider_d(hyps, refs), "exact": cider.exact_match(hyps, refs)}


def generation_hook(task, cfg):
    """(variables, runtime) -> {'generated': uint8[N, H, W, 3]} for cfg.gen_captions (None without them)."""
    captions = list(cfg.get("gen_captions", []))
    if not captions:
        return None
    kw = dict(seed=int(cfg.get("seed", 0)), cfg_scale=cfg.get("cfg_scale", 3.0),
              temperature=float(cfg.get("temperature", 1.0)), top_k=cfg.get("top_k", None))
    return lambda variables, runtime: {"generated": generate_images(task, variables, captions, **kw)}


def build(task, cfg, where: str) -> Evaluator:
    predict = predict_answers(task, int(cfg.get("max_new_tokens", 32)))
    return Evaluator(data=cfg.data, predict=predict,
                     reduce=lambda out: reduce_caption([p[0] for p in answers_as_text(task, out["pred"])], out),
                     images=generation_hook(task, cfg) if getattr(task, "vq", False) else None)
