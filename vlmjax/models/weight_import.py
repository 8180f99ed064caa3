"""Import SigLIP checkpoints into the TwoTowers parameter tree (`img/...`, `txt/...`, `t`, `b`).

Two sources, both turned into host numpy arrays in our layout (numpy only; torch/safetensors are imported lazily
and only to read files in their formats):
  HF transformers `SiglipModel` state dict (a dict of tensors/arrays, `model.safetensors`, a sharded
      `model.safetensors.index.json` folder or a `pytorch_model.bin`): torch Linear weights are [out, in] and get
      transposed; q/k/v/out projections are reshaped to our [D, H, hd] / [H, hd, D] kernels; the pooling head's
      fused `in_proj_weight` [3D, D] is split into q, k, v.
  big_vision `.npz` (flattened 'params/img/Transformer/encoderblock_0/...' keys, layers unrolled or scanned):
      the same flax layouts as ours, renamed.

Architecture match (why no module option is needed): both use pre-LN blocks, LayerNorm eps 1e-6 (flax's default),
tanh-approximate GELU (`gelu_pytorch_tanh`, flax's `nn.gelu` default), biased q/k/v/out projections, a learned
position table, a MAP head on the image side with no projection, and on the text side a bidirectional encoder
pooled at the LAST position (no padding mask) followed by a linear head. `siglip_model_config` turns an HF config
into our `config.model` and refuses configs whose activation or eps we do not implement.

`load_siglip(path)` -> params (nested dict of numpy arrays) for `TwoTowers`; `scan_layers=True` stacks blocks into
the `encoder/blocks` layout of a scanned Encoder.
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


# ---- HF transformers ------------------------------------------------------------------------------------------
def _linear_heads(w, b, heads: int):
    """torch Linear [H*hd, D] weight, [H*hd] bias -> our kernel [D, H, hd], bias [H, hd]."""
    d = w.shape[1]
    return w.T.reshape(d, heads, -1), b.reshape(heads, -1)


def _out_heads(w, heads: int):
    """torch out_proj weight [D, H*hd] -> our out kernel [H, hd, D]."""
    return w.T.reshape(heads, -1, w.shape[0])


def _hf_block(sd: Flat, src: str, dst: str, heads: int, out: Flat) -> None:
    for ours, theirs in (("ln1", "layer_norm1"), ("ln2", "layer_norm2")):
        out[f"{dst}/{ours}/scale"] = sd.pop(f"{src}.{theirs}.weight")
        out[f"{dst}/{ours}/bias"] = sd.pop(f"{src}.{theirs}.bias")
    for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        out[f"{dst}/attn/{ours}_kernel"], out[f"{dst}/attn/{ours}_bias"] = _linear_heads(
            sd.pop(f"{src}.self_attn.{theirs}.weight"), sd.pop(f"{src}.self_attn.{theirs}.bias"), heads)
    out[f"{dst}/attn/out_kernel"] = _out_heads(sd.pop(f"{src}.self_attn.out_proj.weight"), heads)
    out[f"{dst}/attn/out_bias"] = sd.pop(f"{src}.self_attn.out_proj.bias")
    _hf_mlp(sd, f"{src}.mlp", f"{dst}/mlp", out)


def _hf_mlp(sd: Flat, src: str, dst: str, out: Flat) -> None:
    for fc in ("fc1", "fc2"):
        out[f"{dst}/{fc}/kernel"] = sd.pop(f"{src}.{fc}.weight").T
        out[f"{dst}/{fc}/bias"] = sd.pop(f"{src}.{fc}.bias")


def _hf_encoder(sd: Flat, src: str, dst: str, heads: int, out: Flat) -> None:
    layers = sorted({int(m.group(1)) for k in sd for m in [re.match(rf"{re.escape(src)}\.layers\.(\d+)\.", k)] if m})
    if layers != list(range(len(layers))) or not layers:
        raise ValueError(f"HF state dict: encoder layers under {src!r} are {layers}; expected 0..depth-1")
    for i in layers:
        _hf_block(sd, f"{src}.layers.{i}", f"{dst}/block{i:02d}", heads, out)


def from_hf(state_dict: Mapping, num_heads: int, text_num_heads: int = None) -> Flat:
    """HF `SiglipModel.state_dict()` -> our flat params ('img/...', 'txt/...', 't', 'b').

    `num_heads` (vision) and `text_num_heads` (default: the same) come from the HF config; the state dict does not
    record how D splits into heads. Leftover keys (other than buffers) raise, so nothing is silently ignored.
    """
    sd = {k.removeprefix("model."): to_numpy(v) for k, v in state_dict.items()}
    sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}  # index buffers, not parameters
    th = text_num_heads or num_heads
    out = {}
    v, t = "vision_model", "text_model"
    if f"{v}.embeddings.patch_embedding.weight" in sd:
        out["img/embedding/kernel"] = sd.pop(f"{v}.embeddings.patch_embedding.weight").transpose(2, 3, 1, 0)
        out["img/embedding/bias"] = sd.pop(f"{v}.embeddings.patch_embedding.bias")
        out["img/pos_embedding"] = sd.pop(f"{v}.embeddings.position_embedding.weight")[None]
        _hf_encoder(sd, f"{v}.encoder", "img/encoder", num_heads, out)
        out["img/encoder/ln_final/scale"] = sd.pop(f"{v}.post_layernorm.weight")
        out["img/encoder/ln_final/bias"] = sd.pop(f"{v}.post_layernorm.bias")
        if f"{v}.head.probe" in sd:
            h = "img/map_head"
            out[f"{h}/probe"] = sd.pop(f"{v}.head.probe")
            w = sd.pop(f"{v}.head.attention.in_proj_weight")
            b = sd.pop(f"{v}.head.attention.in_proj_bias")
            for name, wi, bi in zip(("query", "key", "value"), np.split(w, 3), np.split(b, 3)):
                out[f"{h}/attn/{name}_kernel"], out[f"{h}/attn/{name}_bias"] = _linear_heads(wi, bi, num_heads)
            out[f"{h}/attn/out_kernel"] = _out_heads(sd.pop(f"{v}.head.attention.out_proj.weight"), num_heads)
            out[f"{h}/attn/out_bias"] = sd.pop(f"{v}.head.attention.out_proj.bias")
            out[f"{h}/ln/scale"] = sd.pop(f"{v}.head.layernorm.weight")
            out[f"{h}/ln/bias"] = sd.pop(f"{v}.head.layernorm.bias")
            _hf_mlp(sd, f"{v}.head.mlp", f"{h}/mlp", out)
    if f"{t}.embeddings.token_embedding.weight" in sd:
        out["txt/embedding/embedding"] = sd.pop(f"{t}.embeddings.token_embedding.weight")
        out["txt/pos_embedding"] = sd.pop(f"{t}.embeddings.position_embedding.weight")[None]
        _hf_encoder(sd, f"{t}.encoder", "txt/encoder", th, out)
        out["txt/encoder/ln_final/scale"] = sd.pop(f"{t}.final_layer_norm.weight")
        out["txt/encoder/ln_final/bias"] = sd.pop(f"{t}.final_layer_norm.bias")
        if f"{t}.head.weight" in sd:
            out["txt/head/kernel"] = sd.pop(f"{t}.head.weight").T
            out["txt/head/bias"] = sd.pop(f"{t}.head.bias")
    if "logit_scale" in sd:  # HF keeps log t as we do: logits = exp(logit_scale) * cos + logit_bias
        out["t"] = sd.pop("logit_scale").reshape(1)
        out["b"] = sd.pop("logit_bias").reshape(1)
    if sd:
        raise ValueError(f"HF state dict: {len(sd)} keys not converted, e.g. {sorted(sd)[:5]}; is this a SigLIP "
                         f"(v1) SiglipModel checkpoint?")
    return out


# ---- big_vision -----------------------------------------------------------------------------------------------
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


# ---- files ----------------------------------------------------------------------------------------------------
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


def load_siglip(path: str, num_heads: int = None, text_num_heads: int = None, scan_layers: bool = False) -> dict:
    """Nested numpy params for `TwoTowers` from a HF SigLIP checkpoint (needs `num_heads`; read from config.json
    next to it when omitted) or a big_vision .npz."""
    flat = read_state_dict(path)
    if any(k.startswith(("vision_model.", "text_model.", "model.vision_model.")) for k in flat):
        if num_heads is None:
            folder = path if os.path.isdir(path) else os.path.dirname(path)
            with open(os.path.join(folder, "config.json")) as f:
                cfg = json.load(f)
            num_heads = cfg["vision_config"]["num_attention_heads"]
            text_num_heads = cfg["text_config"]["num_attention_heads"]
        params = from_hf(flat, num_heads, text_num_heads)
    else:
        params = from_big_vision(flat)
    return nest(stack_blocks(params) if scan_layers else params)


def siglip_model_config(hf_config) -> dict:
    """HF SiglipConfig (object or dict) -> {'model': config.model dict, 'image_size', 'text_len'} for the
    contrastive task. Raises for settings our modules do not implement."""
    cfg = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
    v, t = cfg["vision_config"], cfg["text_config"]
    for name, c in (("vision_config", v), ("text_config", t)):
        if c.get("hidden_act", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
            raise NotImplementedError(f"{name}.hidden_act={c['hidden_act']!r}: our MlpBlock is tanh-approximate GELU")
        if abs(c.get("layer_norm_eps", 1e-6) - 1e-6) > 1e-12:
            raise NotImplementedError(f"{name}.layer_norm_eps={c['layer_norm_eps']}: our LayerNorms use 1e-6")
    if not v.get("vision_use_head", True):
        raise NotImplementedError("vision_config.vision_use_head=False: SigLIP two-towers use the MAP head")
    proj = t.get("projection_size") or t["hidden_size"]
    if proj != v["hidden_size"]:
        raise ValueError(f"text projection_size {proj} != vision hidden_size {v['hidden_size']}: no shared space")
    patch = v["patch_size"]
    model = {
        "image": {"patch_size": [patch, patch] if isinstance(patch, int) else list(patch), "width": v["hidden_size"],
                  "depth": v["num_hidden_layers"], "num_heads": v["num_attention_heads"],
                  "mlp_dim": v["intermediate_size"], "posemb": "learn", "pool_type": "map"},
        "text": {"vocab_size": t["vocab_size"], "width": t["hidden_size"], "depth": t["num_hidden_layers"],
                 "num_heads": t["num_attention_heads"], "mlp_dim": t["intermediate_size"], "pool_type": "last",
                 "mask_padding": False},
        "out_dim": [0, proj],
        "temperature_init": 10.0, "bias_init": -10.0,
    }
    size = v["image_size"]
    return {"model": model, "image_size": size if isinstance(size, int) else size[0],
            "text_len": t["max_position_embeddings"]}
