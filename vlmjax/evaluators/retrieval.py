"""`type='retrieval'`: every image of a split against all of its captions (two-tower tasks).

`caption_key` (default 'captions'; nested tfds features are addressed as 'captions/text') holds up to
`max_captions` (default 5) captions per image, tokenized per example by this evaluator's `example_fn` (after the
task's preprocessing, which must keep the key). Metrics img2txt_r@{1,5,10}, txt2img_r@{1,5,10}. Captions with
identical tokens are one answer, correct for every image that came with one of them; other exact ties count in
the query's favour (vlmjax/evaluators/retrieval_metrics.py).
"""
import numpy as np

from vlmjax.data.op_registry import as_text
from vlmjax.evaluators import retrieval_metrics as rm
from vlmjax.evaluators.base import Evaluator
from vlmjax.tasks.text_inputs import tokenize_texts

KEYS = ("caption_key", "max_captions")


def captions_fn(tokenize, key: str, max_captions: int, text_len: int):
    """Host: preprocessed example -> the example with `key` replaced by `captions`, `captions_mask`
    int32[K, text_len] and `captions_valid` bool[K] (K = max_captions; empty captions dropped, then zero rows)."""
    shape = (max_captions, text_len)

    def fn(ex):
        if key not in ex:
            raise KeyError(f"retrieval: the preprocessed example has no {key!r} (it has {sorted(ex)}); keep it in "
                           f"config.evals.<name>.data.preprocess")
        texts = ex.pop(key)
        texts = [texts] if isinstance(texts, (str, bytes)) else list(texts)  # one caption (webdataset)
        texts = [t for t in texts[:max_captions] if as_text(t).strip()]
        ids, mask = tokenize_texts(tokenize, texts) if texts else (None, None)
        pad = max_captions - len(texts)
        ex["captions"] = np.zeros(shape, np.int32) if ids is None else np.pad(ids, ((0, pad), (0, 0)))
        ex["captions_mask"] = np.zeros(shape, np.int32) if ids is None else np.pad(mask, ((0, pad), (0, 0)))
        ex["captions_valid"] = np.arange(max_captions) < len(texts)
        return ex

    return fn


def reduce_retrieval(out) -> dict:
    """{zimg float[N, D], ztxt float[N, K, D], captions(_mask) int[N, K, L], captions_valid bool[N, K]} -> recalls."""
    valid = out["captions_valid"].astype(bool)  # [N, K]
    txt_to_img = np.nonzero(valid)[0]  # row-major: caption k of image i -> i
    # Captions the model sees identically (same tokens) are one answer; see retrieval_metrics on ties.
    tokens = np.concatenate([out["captions"], out["captions_mask"]], axis=-1)[valid]  # [M, 2L]
    groups = np.unique(tokens, axis=0, return_inverse=True)[1].reshape(-1) if len(tokens) else None
    return rm.retrieval_recall(out["zimg"], out["ztxt"][valid], txt_to_img, txt_groups=groups)


def build(task, cfg, where: str) -> Evaluator:
    fns = task.predict_fns()
    embed_image, embed_text = fns["embed_image"], fns["embed_text"]

    def predict(variables, batch):
        b, k, n = batch["captions"].shape
        ztxt = embed_text(variables, batch["captions"].reshape(b * k, n), batch["captions_mask"].reshape(b * k, n))
        return {"zimg": embed_image(variables, batch["image"]), "ztxt": ztxt.reshape(b, k, -1),
                "captions_valid": batch["captions_valid"], "captions": batch["captions"],
                "captions_mask": batch["captions_mask"]}

    example_fn = captions_fn(task.text_tokenize_fn(), cfg.get("caption_key", "captions"),
                             int(cfg.get("max_captions", 5)), int(task.config.text_len))
    return Evaluator(data=cfg.data, predict=predict, reduce=reduce_retrieval, example_fn=example_fn)
