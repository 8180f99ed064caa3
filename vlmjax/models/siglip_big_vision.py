"""big_vision two-towers `.npz` <-> our TwoTowers parameter tree, both ways.

big_vision's names ('params/img/Transformer/encoderblock_0/...', 'params/txt/Encoder_0/...', layers unrolled or
scanned) hold the same flax layouts as ours (the same modules, less our conv stem and coord channels): only the
names change. `from_big_vision` reads released SigLIP checkpoints; `to_big_vision` writes our params under those
names (layers unrolled). The model-level `load` / `export` are at the end of `vlmjax.models.two_towers`.
"""
import re
from typing import Dict, Mapping

import numpy as np

from vlmjax.models.weight_files import Flat, flatten, to_numpy, unstack_blocks

_BV_RULES = [  # (regex on the big_vision path after 'params/', replacement in ours); applied in order, first wins
    (r"img/Transformer/encoderblock_(\d+)/(.*)", lambda m: f"img/encoder/block{int(m[1]):02d}/{m[2]}"),
    (r"txt/Encoder_0/encoderblock_(\d+)/(.*)", lambda m: f"txt/encoder/block{int(m[1]):02d}/{m[2]}"),
    (r"img/Transformer/encoder_norm/(.*)", r"img/encoder/ln_final/\1"),
    (r"txt/Encoder_0/encoder_norm/(.*)", r"txt/encoder/ln_final/\1"),
    (r"txt/Embed_0/embedding", "txt/embedding/embedding"),
    (r"img/MAPHead_0/(.*)", r"img/map_head/\1"),
]
_BV_LEAF = [  # renames inside a block / the MAP head
    (r"/LayerNorm_0/", "/ln1/"), (r"/LayerNorm_1/", "/ln2/"),
    (r"/MlpBlock_0/Dense_0/", "/mlp/fc1/"), (r"/MlpBlock_0/Dense_1/", "/mlp/fc2/"),
    (r"/MultiHeadDotProductAttention_\d/(query|key|value|out)/(kernel|bias)$", r"/attn/\1_\2"),
]


def _unscan(flat: Flat) -> Flat:
    """big_vision scanned layers ('.../encoderblock/...' with a leading depth axis) -> 'encoderblock_i' keys."""
    out = {}
    for k, v in flat.items():
        if "/encoderblock/" in k:
            for i in range(v.shape[0]):
                out[k.replace("/encoderblock/", f"/encoderblock_{i}/")] = v[i]
        else:
            out[k] = v
    return out


def from_big_vision(flat: Mapping) -> Flat:
    """big_vision two-towers params (flat '/'-joined keys, with or without 'params/') -> our flat params."""
    flat = _unscan({k.removeprefix("params/"): to_numpy(v) for k, v in flat.items()})
    out = {}
    for key, value in flat.items():
        new = key
        for pattern, repl in _BV_RULES:
            if re.fullmatch(pattern, key):
                new = re.sub(pattern, repl, key)
                break
        if "/map_head/" in new:  # the MAP head's only LayerNorm is our `ln`
            new = new.replace("/LayerNorm_0/", "/ln/")
        for pattern, repl in _BV_LEAF:
            new = re.sub(pattern, repl, new)
        known = re.match(r"(img|txt)/|[tb]$", new)  # e.g. a HF 'logit_bias' is not
        if not known or re.search(r"_\d+/|Transformer|Encoder_0|Dense_|LayerNorm_", new):
            raise ValueError(f"big_vision checkpoint: no rule for {key!r} (became {new!r})")
        out[new] = value
    return out


_TO_BV = [  # (regex on our path, replacement); applied in order to each path (the inverse of the rules above)
    (r"^img/encoder/block(\d+)/", lambda m: f"img/Transformer/encoderblock_{int(m[1])}/"),
    (r"^txt/encoder/block(\d+)/", lambda m: f"txt/Encoder_0/encoderblock_{int(m[1])}/"),
    (r"^img/encoder/ln_final/", "img/Transformer/encoder_norm/"),
    (r"^txt/encoder/ln_final/", "txt/Encoder_0/encoder_norm/"),
    (r"^txt/embedding/embedding$", "txt/Embed_0/embedding"),
    (r"^img/map_head/ln/", "img/MAPHead_0/LayerNorm_0/"),
    (r"^img/map_head/", "img/MAPHead_0/"),
    (r"/ln1/", "/LayerNorm_0/"), (r"/ln2/", "/LayerNorm_1/"),
    (r"/mlp/fc1/", "/MlpBlock_0/Dense_0/"), (r"/mlp/fc2/", "/MlpBlock_0/Dense_1/"),
    (r"/attn/(query|key|value|out)_(kernel|bias)$", r"/MultiHeadDotProductAttention_0/\1/\2"),
]


def to_big_vision(params: Mapping) -> Dict[str, np.ndarray]:
    """Our params (nested or flat, scanned or not) -> big_vision two-towers names ('params/img/Transformer/
    encoderblock_0/...', layers unrolled), the layout `from_big_vision` reads."""
    out = {}
    for key, value in unstack_blocks(flatten(params)).items():
        new = key
        for pattern, repl in _TO_BV:
            new = re.sub(pattern, repl, new)
        out[f"params/{new}"] = np.asarray(value, np.float32)
    return out


