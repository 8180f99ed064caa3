"""Text-side inputs shared by the tasks that read captions: the SentencePiece tokenizer, nested tfds features as
flat keys, and host tokenization through the same `tokenize` op as the training text."""
import os

import numpy as np


def load_tokenizer(path: str, missing: str):
    """The SentencePiece model at `path` (config.tokenizer); FileNotFoundError `missing` when there is none."""
    from vlmjax.data.tokenizer import Tokenizer

    if not path or not os.path.isfile(os.path.expanduser(path)):
        raise FileNotFoundError(missing)
    return Tokenizer(path)


def flatten_features(example: dict, prefix: str = "") -> dict:
    """Nested tfds features become 'parent/child' keys ({'captions': {'text': x}} -> {'captions/text': x})."""
    out = {}
    for k, v in example.items():
        if isinstance(v, dict):
            out.update(flatten_features(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def tokenize_texts(tokenize_fn, texts) -> tuple:
    """list of N str -> (int32[N, L] ids, int32[N, L] mask) through a `tokenize` op reading and writing 'text'."""
    rows = [tokenize_fn({"text": t}, None) for t in texts]
    return (np.stack([r["text"] for r in rows]).astype(np.int32),
            np.stack([r["text_mask"] for r in rows]).astype(np.int32))


def data_op(data_cfg, name: str) -> dict:
    """The first spec of op `name` in `data_cfg.preprocess` ({} if there is none)."""
    for spec in data_cfg.preprocess:
        spec = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)
        if spec.get("op") == name:
            return spec
    return {}
