"""Export the TwoTowers parameter tree (`img/...`, `txt/...`, `t`, `b`) as a HF transformers `SiglipModel` folder:
`model.safetensors` + `config.json`, which `transformers.SiglipModel.from_pretrained(folder)` loads; or as a
big_vision `.npz` (`to_big_vision`, the names `weight_import.from_big_vision` reads).

The inverse of `weight_import.from_hf` (see there for the layouts): our [D, H, hd] / [H, hd, D] attention kernels
become torch Linear [out, in] weights, the MAP head's q, k, v are fused into `in_proj_weight`, scanned blocks are
unstacked. The HF config is read off the parameter shapes; only a model HF's SigLIP can express is exported: plain
ViT image tower (learned position table, MAP head, no conv stem / coord channels, no image projection), text
encoder pooled at the LAST position without a padding mask, followed by a linear head, tanh-GELU, LayerNorm eps
1e-6 (our modules' only choices). Anything else fails with a ValueError naming the `config.model` key.
"""
import json
import math
import os
import re
from typing import Dict, Mapping

import numpy as np

from vlmjax.models.weight_import import Flat


def flatten(tree: Mapping, prefix: str = "") -> Flat:
    """{'img': {'encoder': {...}}} -> {'img/encoder/...': np.ndarray} (the inverse of weight_import.nest)."""
    out = {}
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, path + "/"))
        else:
            out[path] = np.asarray(v)
    return out


def unstack_blocks(flat: Flat) -> Flat:
    """Scanned 'encoder/blocks/...' leaves [depth, ...] -> 'encoder/blockNN/...' (inverse of stack_blocks)."""
    out = {}
    for k, v in flat.items():
        m = re.fullmatch(r"(.*encoder)/blocks/(.*)", k)
        if m:
            for i in range(v.shape[0]):
                out[f"{m.group(1)}/block{i:02d}/{m.group(2)}"] = v[i]
        else:
            out[k] = v
    return out


def _heads_linear(kernel, bias):
    """Our kernel [D, H, hd], bias [H, hd] -> torch Linear weight [H*hd, D], bias [H*hd]."""
    return kernel.reshape(kernel.shape[0], -1).T, bias.reshape(-1)


def _out_linear(kernel):
    """Our out kernel [H, hd, D] -> torch out_proj weight [D, H*hd]."""
    return kernel.reshape(-1, kernel.shape[-1]).T


def _block(p: Flat, src: str, dst: str, sd: Dict) -> None:
    _ln(p, f"{src}/ln1", f"{dst}.layer_norm1", sd)
    _ln(p, f"{src}/ln2", f"{dst}.layer_norm2", sd)
    for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        sd[f"{dst}.self_attn.{theirs}.weight"], sd[f"{dst}.self_attn.{theirs}.bias"] = _heads_linear(
            p.pop(f"{src}/attn/{ours}_kernel"), p.pop(f"{src}/attn/{ours}_bias"))
    sd[f"{dst}.self_attn.out_proj.weight"] = _out_linear(p.pop(f"{src}/attn/out_kernel"))
    sd[f"{dst}.self_attn.out_proj.bias"] = p.pop(f"{src}/attn/out_bias")
    _mlp(p, f"{src}/mlp", f"{dst}.mlp", sd)


def _ln(p: Flat, src: str, dst: str, sd: Dict) -> None:
    sd[f"{dst}.weight"], sd[f"{dst}.bias"] = p.pop(f"{src}/scale"), p.pop(f"{src}/bias")


def _mlp(p: Flat, src: str, dst: str, sd: Dict) -> None:
    for fc in ("fc1", "fc2"):
        sd[f"{dst}.{fc}.weight"] = p.pop(f"{src}/{fc}/kernel").T
        sd[f"{dst}.{fc}.bias"] = p.pop(f"{src}/{fc}/bias")


def _depth(p: Flat, prefix: str) -> int:
    return len({m.group(1) for k in p for m in [re.match(rf"{prefix}/block(\d+)/", k)] if m})


def to_hf(params: Mapping, temperature_max: float = 0.0) -> Dict[str, np.ndarray]:
    """Our params (nested or flat, scanned or not) -> HF `SiglipModel` state dict {name: float32 array}.

    `temperature_max` (the model's clamp on t, 0: none) is folded into `logit_scale`, which HF never clamps; a
    model without a bias (CLIP-style) gets `logit_bias` 0. Leftover parameters raise ValueError naming them."""
    p = {k: np.asarray(v, np.float32) for k, v in unstack_blocks(flatten(params)).items()}
    sd = {}
    v, t = "vision_model", "text_model"
    sd[f"{v}.embeddings.patch_embedding.weight"] = p.pop("img/embedding/kernel").transpose(3, 2, 0, 1)  # [D, 3, ph, pw]
    sd[f"{v}.embeddings.patch_embedding.bias"] = p.pop("img/embedding/bias")
    sd[f"{v}.embeddings.position_embedding.weight"] = p.pop("img/pos_embedding")[0]
    for i in range(_depth(p, "img/encoder")):
        _block(p, f"img/encoder/block{i:02d}", f"{v}.encoder.layers.{i}", sd)
    _ln(p, "img/encoder/ln_final", f"{v}.post_layernorm", sd)
    h = "img/map_head"
    sd[f"{v}.head.probe"] = p.pop(f"{h}/probe")
    qkv = [_heads_linear(p.pop(f"{h}/attn/{n}_kernel"), p.pop(f"{h}/attn/{n}_bias"))
           for n in ("query", "key", "value")]
    sd[f"{v}.head.attention.in_proj_weight"] = np.concatenate([w for w, _ in qkv])
    sd[f"{v}.head.attention.in_proj_bias"] = np.concatenate([b for _, b in qkv])
    sd[f"{v}.head.attention.out_proj.weight"] = _out_linear(p.pop(f"{h}/attn/out_kernel"))
    sd[f"{v}.head.attention.out_proj.bias"] = p.pop(f"{h}/attn/out_bias")
    _ln(p, f"{h}/ln", f"{v}.head.layernorm", sd)
    _mlp(p, f"{h}/mlp", f"{v}.head.mlp", sd)

    sd[f"{t}.embeddings.token_embedding.weight"] = p.pop("txt/embedding/embedding")
    sd[f"{t}.embeddings.position_embedding.weight"] = p.pop("txt/pos_embedding")[0]
    for i in range(_depth(p, "txt/encoder")):
        _block(p, f"txt/encoder/block{i:02d}", f"{t}.encoder.layers.{i}", sd)
    _ln(p, "txt/encoder/ln_final", f"{t}.final_layer_norm", sd)
    sd[f"{t}.head.weight"] = p.pop("txt/head/kernel").T
    sd[f"{t}.head.bias"] = p.pop("txt/head/bias")
    log_t = p.pop("t").reshape(1)
    if temperature_max:
        log_t = np.minimum(log_t, np.float32(math.log(temperature_max)))
    sd["logit_scale"] = log_t
    sd["logit_bias"] = p.pop("b", np.zeros(1, np.float32)).reshape(1)
    if p:
        raise ValueError(f"export to hf_siglip: {len(p)} parameters HF's SiglipModel has no place for, e.g. "
                         f"{sorted(p)[:5]} (an image projection head, a conv stem, ...)")
    return {k: np.ascontiguousarray(x) for k, x in sd.items()}


# Per format: (config.model key, the module's default, the value the format implies). big_vision's two towers have
# the same modules as ours, less the conv stem and coord channels.
_REQUIRED = {
    "hf_siglip": [("image.pool_type", "gap", "map"), ("image.posemb", "learn", "learn"),
                  ("image.stem_channels", 0, 0), ("image.coord_channels", False, False),
                  ("text.pool_type", "last", "last"), ("text.causal", False, False),
                  ("text.mask_padding", True, False)],
    "big_vision": [("image.stem_channels", 0, 0), ("image.coord_channels", False, False)],
}


def check_exportable(model_cfg, fmt: str = "hf_siglip") -> None:
    """Raises ValueError naming the first `config.model` key whose value the format `fmt` cannot express."""
    for key, default, want in _REQUIRED[fmt]:
        tower, name = key.split(".")
        value = (model_cfg.get(tower) or {}).get(name, default)
        if value != want:
            target = {"hf_siglip": "HF SiglipModel"}.get(fmt, fmt)
            raise ValueError(f"config.model.{key}={value!r}: {target} needs {want!r}; this run cannot be exported "
                             f"as {fmt}")


def hf_siglip_config(state_dict: Mapping, num_heads: int, text_num_heads: int) -> dict:
    """The `config.json` of a SiglipModel with the shapes of `state_dict` (to_hf's output)."""
    sd = state_dict
    v, t = "vision_model", "text_model"
    width, _, patch, _ = sd[f"{v}.embeddings.patch_embedding.weight"].shape
    n_pos = sd[f"{v}.embeddings.position_embedding.weight"].shape[0]
    side = math.isqrt(n_pos)
    if side * side != n_pos:
        raise ValueError(f"export to hf_siglip: {n_pos} image positions is not a square grid")

    def depth(tower):
        return len({k.split(".")[3] for k in sd if k.startswith(f"{tower}.encoder.layers.")})

    vocab, text_width = sd[f"{t}.embeddings.token_embedding.weight"].shape
    vision = dict(hidden_size=int(width), intermediate_size=int(sd[f"{v}.encoder.layers.0.mlp.fc1.weight"].shape[0]),
                  num_hidden_layers=depth(v), num_attention_heads=int(num_heads), num_channels=3,
                  image_size=int(side * patch), patch_size=int(patch), hidden_act="gelu_pytorch_tanh",
                  layer_norm_eps=1e-6, model_type="siglip_vision_model")
    text = dict(vocab_size=int(vocab), hidden_size=int(text_width),
                intermediate_size=int(sd[f"{t}.encoder.layers.0.mlp.fc1.weight"].shape[0]),
                num_hidden_layers=depth(t), num_attention_heads=int(text_num_heads),
                max_position_embeddings=int(sd[f"{t}.embeddings.position_embedding.weight"].shape[0]),
                projection_size=int(sd[f"{t}.head.weight"].shape[0]), hidden_act="gelu_pytorch_tanh",
                layer_norm_eps=1e-6, model_type="siglip_text_model")
    return {"architectures": ["SiglipModel"], "model_type": "siglip", "torch_dtype": "float32",
            "vision_config": vision, "text_config": text}


def save_hf_siglip(params: Mapping, model_cfg, out_dir: str) -> list:
    """Writes `out_dir/model.safetensors` and `out_dir/config.json` for the TwoTowers `params` built from
    `model_cfg` (a contrastive run's `config.model`). Returns the written paths."""
    from safetensors.numpy import save_file

    check_exportable(model_cfg, "hf_siglip")
    flat = unstack_blocks(flatten(params))
    heads = [flat[f"{tower}/encoder/block00/attn/query_kernel"].shape[1] for tower in ("img", "txt")]
    sd = to_hf(flat, float(model_cfg.get("temperature_max", 0.0) or 0.0))
    config = hf_siglip_config(sd, *heads)
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "model.safetensors"), os.path.join(out_dir, "config.json")]
    save_file(sd, paths[0], metadata={"format": "pt"})
    with open(paths[1], "w") as f:
        json.dump(config, f, indent=2)
    return paths


# ---- big_vision -----------------------------------------------------------------------------------------------
_TO_BV = [  # (regex on our path, replacement); applied in order to each path (the inverse of weight_import's rules)
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
    encoderblock_0/...', layers unrolled), the layout `weight_import.from_big_vision` reads."""
    out = {}
    for key, value in unstack_blocks(flatten(params)).items():
        new = key
        for pattern, repl in _TO_BV:
            new = re.sub(pattern, repl, new)
        out[f"params/{new}"] = np.asarray(value, np.float32)
    return out


def save_big_vision(params: Mapping, model_cfg, path: str) -> list:
    """Writes `path` (.npz, big_vision's checkpoint format for numpy) for the TwoTowers `params` built from
    `model_cfg`. Returns [path]."""
    check_exportable(model_cfg, "big_vision")
    path = path if path.endswith(".npz") else path + ".npz"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, **to_big_vision(params))
    return [path]
