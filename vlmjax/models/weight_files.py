"""Flat state dicts ({'img/encoder/block00/ln1/scale': array}) and the files foreign checkpoints come in.

What every foreign-weight converter (`vlmjax.models.siglip_hf`, `siglip_big_vision`) shares: reading a checkpoint
file into host numpy arrays, and moving between our nested parameter tree, its flat '/'-joined form, and the
per-block ('encoder/blockNN/...') or scanned ('encoder/blocks/...', leading depth axis) layouts of an Encoder.
numpy only; torch and safetensors are imported lazily, and only to read files in their formats.
"""
import json
import os
import re
from typing import Dict, Mapping

import numpy as np

Flat = Dict[str, np.ndarray]


def to_numpy(value) -> np.ndarray:
    """torch tensor (any dtype, incl. bf16) or array-like -> float32/int numpy array."""
    if hasattr(value, "detach"):  # torch, without importing it
        value = value.detach().cpu()
        value = value.float() if value.is_floating_point() else value
        return value.numpy()
    value = np.asarray(value)
    return value.astype(np.float32) if value.dtype.kind == "f" or value.dtype.name == "bfloat16" else value


def nest(flat: Mapping[str, np.ndarray]) -> dict:
    """{'img/encoder/block00/ln1/scale': x} -> {'img': {'encoder': {...}}}."""
    out = {}
    for path, v in flat.items():
        node = out
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


def flatten(tree: Mapping, prefix: str = "") -> Flat:
    """{'img': {'encoder': {...}}} -> {'img/encoder/...': np.ndarray} (the inverse of `nest`)."""
    out = {}
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, path + "/"))
        else:
            out[path] = np.asarray(v)
    return out


def stack_blocks(flat: Flat) -> Flat:
    """Per-block 'encoder/blockNN/...' leaves -> scanned 'encoder/blocks/...' leaves with a leading depth axis."""
    groups, out = {}, {}
    for k, v in flat.items():
        m = re.fullmatch(r"(.*encoder)/block(\d+)/(.*)", k)
        if m:
            groups.setdefault((m.group(1), m.group(3)), {})[int(m.group(2))] = v
        else:
            out[k] = v
    for (prefix, rest), by_layer in groups.items():
        out[f"{prefix}/blocks/{rest}"] = np.stack([by_layer[i] for i in range(len(by_layer))])
    return out


def unstack_blocks(flat: Flat) -> Flat:
    """Scanned 'encoder/blocks/...' leaves [depth, ...] -> 'encoder/blockNN/...' (the inverse of `stack_blocks`)."""
    out = {}
    for k, v in flat.items():
        m = re.fullmatch(r"(.*encoder)/blocks/(.*)", k)
        if m:
            for i in range(v.shape[0]):
                out[f"{m.group(1)}/block{i:02d}/{m.group(2)}"] = v[i]
        else:
            out[k] = v
    return out


def read_state_dict(path: str) -> Flat:
    """Tensors of a .safetensors file, a folder (model.safetensors, a sharded index, or pytorch_model.bin), a
    torch .bin/.pt file, or a big_vision .npz -> flat {name: numpy array}."""
    if os.path.isdir(path):
        for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
            if os.path.exists(os.path.join(path, name)):
                return read_state_dict(os.path.join(path, name))
        raise FileNotFoundError(f"{path!r}: no model.safetensors / model.safetensors.index.json / pytorch_model.bin")
    if path.endswith(".safetensors.index.json"):
        with open(path) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        out = {}
        for s in shards:
            out.update(read_state_dict(os.path.join(os.path.dirname(path), s)))
        return out
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        try:
            return load_file(path)
        except TypeError:  # bf16 has no numpy dtype: go through torch
            from safetensors.torch import load_file as load_torch

            return {k: to_numpy(v) for k, v in load_torch(path).items()}
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    if path.endswith((".bin", ".pt", ".pth")):
        import torch

        return {k: to_numpy(v) for k, v in torch.load(path, map_location="cpu", weights_only=True).items()}
    raise ValueError(f"{path!r}: expected a .safetensors, .npz, .bin/.pt file or a HF model folder")
