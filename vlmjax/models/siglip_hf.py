"""HF transformers `SiglipModel` <-> our TwoTowers parameter tree (`img/...`, `txt/...`, `t`, `b`), both ways.

`from_hf`: a SiglipModel state dict -> our flat params (host numpy). torch Linear weights are [out, in] and get
transposed; q/k/v/out projections are reshaped to our [D, H, hd] / [H, hd, D] kernels; the pooling head's fused
`in_proj_weight` [3D, D] is split into q, k, v. `to_hf` is its exact inverse, `hf_siglip_config` the config.json
of the result, `siglip_model_config` the other way (an HF config -> our `config.model`).

Architecture match (why no module option is needed): both use pre-LN blocks, LayerNorm eps 1e-6 (flax's default),
tanh-approximate GELU (`gelu_pytorch_tanh`, flax's `nn.gelu` default), biased q/k/v/out projections, a learned
position table, a MAP head on the image side with no projection, and on the text side a bidirectional encoder
pooled at the LAST position (no padding mask) followed by a linear head. `siglip_model_config` refuses configs
whose activation or eps we do not implement. Files are read by `vlmjax.models.weight_files.read_state_dict`; the
model-level `load` / `export` are at the end of `vlmjax.models.two_towers`.
"""
import json
import math
import os
import re
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from vlmjax.models.weight_files import Flat, flatten, to_numpy, unstack_blocks

HF_PREFIXES = ("vision_model.", "text_model.", "model.vision_model.")  # keys that mark a HF SiglipModel state dict


def config_heads(path: str) -> Optional[Tuple[int, int]]:
    """(vision, text) attention head counts from the config.json next to a HF checkpoint (as `save_pretrained`
    writes it), or None when there is none: the state dict does not record how D splits into heads."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    if not os.path.exists(os.path.join(folder, "config.json")):
        return None
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    return cfg["vision_config"]["num_attention_heads"], cfg["text_config"]["num_attention_heads"]


# ---- HF -> ours -----------------------------------------------------------------------------------------------
def _linear_heads(w, b, heads: int):
    """torch Linear [H*hd, D] weight, [H*hd] bias -> our kernel [D, H, hd], bias [H, hd]."""
    d = w.shape[1]
    return w.T.reshape(d, heads, -1), b.reshape(heads, -1)


def _out_heads(w, heads: int):
    """torch out_proj weight [D, H*hd] -> our out kernel [H, hd, D]."""
    return w.T.reshape(heads, -1, w.shape[0])


def _hf_ln(sd: Flat, src: str, dst: str, out: Flat) -> None:
    out[f"{dst}/scale"], out[f"{dst}/bias"] = sd.pop(f"{src}.weight"), sd.pop(f"{src}.bias")


def _hf_block(sd: Flat, src: str, dst: str, heads: int, out: Flat) -> None:
    for ours, theirs in (("ln1", "layer_norm1"), ("ln2", "layer_norm2")):
        _hf_ln(sd, f"{src}.{theirs}", f"{dst}/{ours}", out)
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


def _hf_tower(sd: Flat, src: str, dst: str, heads: int, final_norm: str, out: Flat) -> None:
    """A tower's position table, encoder blocks and final LayerNorm (`final_norm`: HF's name for it)."""
    out[f"{dst}/pos_embedding"] = sd.pop(f"{src}.embeddings.position_embedding.weight")[None]
    _hf_encoder(sd, f"{src}.encoder", f"{dst}/encoder", heads, out)
    _hf_ln(sd, f"{src}.{final_norm}", f"{dst}/encoder/ln_final", out)


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
        _hf_tower(sd, v, "img", num_heads, "post_layernorm", out)
        if f"{v}.head.probe" in sd:
            h = "img/map_head"
            out[f"{h}/probe"] = sd.pop(f"{v}.head.probe")
            w = sd.pop(f"{v}.head.attention.in_proj_weight")
            b = sd.pop(f"{v}.head.attention.in_proj_bias")
            for name, wi, bi in zip(("query", "key", "value"), np.split(w, 3), np.split(b, 3)):
                out[f"{h}/attn/{name}_kernel"], out[f"{h}/attn/{name}_bias"] = _linear_heads(wi, bi, num_heads)
            out[f"{h}/attn/out_kernel"] = _out_heads(sd.pop(f"{v}.head.attention.out_proj.weight"), num_heads)
            out[f"{h}/attn/out_bias"] = sd.pop(f"{v}.head.attention.out_proj.bias")
            _hf_ln(sd, f"{v}.head.layernorm", f"{h}/ln", out)
            _hf_mlp(sd, f"{v}.head.mlp", f"{h}/mlp", out)
    if f"{t}.embeddings.token_embedding.weight" in sd:
        out["txt/embedding/embedding"] = sd.pop(f"{t}.embeddings.token_embedding.weight")
        _hf_tower(sd, t, "txt", th, "final_layer_norm", out)
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


# ---- ours -> HF -----------------------------------------------------------------------------------------------
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
