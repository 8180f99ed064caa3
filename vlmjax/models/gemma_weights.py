"""Our `DecoderLM`'s weights from and to HF Gemma (`GemmaForCausalLM` / `GemmaModel`) and big_vision's Gemma.

Our `DecoderLM` (`vlmjax.models.lm`) is Gemma (v1): RMSNorm, tied embedding scaled by sqrt(width), rotate-half
RoPE, GeGLU (tanh GELU) MLP, MQA/GQA, q/k/v/out projections without bias, head_dim independent of the width,
logits scaled by head_dim ** -0.5. So the conversions are pure weight transforms, no module option:
  - Gemma's RMSNorm multiplies by (1 + w), ours by `scale`: scale = 1 + w on import, w = scale - 1 on export.
  - torch Linear weights are [out, in]: q/k/v [H*Dh, D] -> our [D, H, Dh]; o_proj [D, H*Dh] -> our [H, Dh, D].
  - big_vision's Gemma einsums (`models/ppp/gemma.py`): q [H, D, Dh], kv [2, Hkv, D, Dh] (or qkv [3, H, D, Dh]
    when Hkv == H), attn_vec [H, Dh, D], gating [2, D, F] (gate, up), linear [F, D]; layers stacked.

Not expressible, refused by name: Gemma 2/3 (post-norms, soft-capping, sliding windows, other query scaling),
attention biases, RoPE scaling, an untied output head; our qk_norm, SwiGLU, unscaled embeddings. big_vision's
params do not record the query scaling: a Gemma 2 checkpoint ('rsqrt_emb_per_head') is refused only through its
post-norm parameters.

`load_hf_gemma` / `export_hf_gemma` are the entry points; `vlmjax.models.paligemma_weights` builds PaliGemma's
conversions (and the format-registry interface) on the LM-level functions here.
"""
import json
import os
import re
from typing import Dict, Mapping, Union

import numpy as np

from vlmjax.models.weight_files import Flat, flatten, nest, read_state_dict, to_numpy, unstack_blocks

_BLOCK = re.compile(r"blocks_(\d+)/(.*)")


# ---- our DecoderLM layout: 'blocks_i/...' (python loop) <-> 'blocks/...' (scan_layers, leading depth axis) ----------
def stack_lm(flat: Flat, prefix: str = "") -> Flat:
    """'{prefix}blocks_i/x' leaves -> '{prefix}blocks/x' float[depth, ...] (a scanned DecoderLM)."""
    groups, out = {}, {}
    for k, v in flat.items():
        m = _BLOCK.fullmatch(k[len(prefix):]) if k.startswith(prefix) else None
        if m:
            groups.setdefault(m.group(2), {})[int(m.group(1))] = v
        else:
            out[k] = v
    for rest, by_layer in groups.items():
        out[f"{prefix}blocks/{rest}"] = np.stack([by_layer[i] for i in range(len(by_layer))])
    return out


def unstack_lm(flat: Flat, prefix: str = "") -> Flat:
    """Inverse of `stack_lm`; leaves already per block pass through."""
    out = {}
    for k, v in flat.items():
        if k.startswith(f"{prefix}blocks/"):
            for i in range(v.shape[0]):
                out[f"{prefix}blocks_{i}/{k[len(prefix) + 7:]}"] = v[i]
        else:
            out[k] = v
    return out


def _depth(flat: Flat, prefix: str = "") -> int:
    return len({m.group(1) for k in flat if k.startswith(prefix) for m in [_BLOCK.match(k[len(prefix):])] if m})


# ---- HF Gemma (names relative to GemmaModel: 'embed_tokens.weight', 'layers.i.*', 'norm.weight') -----------------
def lm_from_hf(sd: Mapping, num_heads: int, num_kv_heads: int) -> Flat:
    """GemmaModel state dict (numpy) -> our flat DecoderLM params. Pops what it converts from `sd`."""
    out = {"embedding": sd.pop("embed_tokens.weight"), "final_norm/scale": sd.pop("norm.weight") + 1}
    layers = sorted({int(m.group(1)) for k in sd for m in [re.match(r"layers\.(\d+)\.", k)] if m})
    if not layers or layers != list(range(len(layers))):
        raise ValueError(f"HF Gemma state dict: layers {layers}; expected 0..depth-1")
    for i in layers:
        src, dst = f"layers.{i}", f"blocks_{i}"
        width = out["embedding"].shape[1]
        for ours, theirs, heads in (("q", "q_proj", num_heads), ("k", "k_proj", num_kv_heads),
                                    ("v", "v_proj", num_kv_heads)):
            out[f"{dst}/attn/{ours}_kernel"] = sd.pop(f"{src}.self_attn.{theirs}.weight").T.reshape(width, heads, -1)
        out[f"{dst}/attn/out_kernel"] = sd.pop(f"{src}.self_attn.o_proj.weight").T.reshape(num_heads, -1, width)
        for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
            out[f"{dst}/mlp/{ours}_kernel"] = sd.pop(f"{src}.mlp.{theirs}.weight").T
        out[f"{dst}/pre_attn_norm/scale"] = sd.pop(f"{src}.input_layernorm.weight") + 1
        out[f"{dst}/pre_mlp_norm/scale"] = sd.pop(f"{src}.post_attention_layernorm.weight") + 1
    return out


def lm_to_hf(flat: Flat) -> Dict[str, np.ndarray]:
    """Our flat DecoderLM params (per block) -> GemmaModel state dict. Pops what it converts from `flat`."""
    sd = {"embed_tokens.weight": flat.pop("embedding"), "norm.weight": flat.pop("final_norm/scale") - 1}
    for i in range(_depth(flat)):
        src, dst = f"blocks_{i}", f"layers.{i}"
        for ours, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj")):
            w = flat.pop(f"{src}/attn/{ours}_kernel")
            sd[f"{dst}.self_attn.{theirs}.weight"] = w.reshape(w.shape[0], -1).T
        w = flat.pop(f"{src}/attn/out_kernel")
        sd[f"{dst}.self_attn.o_proj.weight"] = w.reshape(-1, w.shape[-1]).T
        for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
            sd[f"{dst}.mlp.{theirs}.weight"] = flat.pop(f"{src}/mlp/{ours}_kernel").T
        sd[f"{dst}.input_layernorm.weight"] = flat.pop(f"{src}/pre_attn_norm/scale") - 1
        sd[f"{dst}.post_attention_layernorm.weight"] = flat.pop(f"{src}/pre_mlp_norm/scale") - 1
    return sd


def _rope_theta(cfg: dict) -> float:
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise NotImplementedError(f"rope {rope}: our DecoderLM has plain (unscaled) RoPE")
    return float(rope.get("rope_theta", cfg.get("rope_theta", 10_000.0)))


def gemma_lm_config(hf_config) -> dict:
    """HF GemmaConfig (object or dict) -> our `config.model.lm` dict. Raises for what DecoderLM does not do."""
    cfg = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
    if cfg.get("model_type", "gemma") != "gemma":
        raise NotImplementedError(f"model_type {cfg['model_type']!r}: only Gemma (v1) blocks convert")
    if cfg.get("hidden_act", "gelu_pytorch_tanh") not in ("gelu_pytorch_tanh", "gelu"):  # 'gelu' means tanh here
        raise NotImplementedError(f"hidden_act {cfg['hidden_act']!r}: our GeGLU is tanh-approximate GELU")
    if cfg.get("attention_bias") or not cfg.get("tie_word_embeddings", True):
        raise NotImplementedError("attention biases / an untied output head: our DecoderLM has neither")
    heads = cfg["num_attention_heads"]
    return dict(vocab_size=cfg["vocab_size"], width=cfg["hidden_size"], depth=cfg["num_hidden_layers"],
                num_heads=heads, num_kv_heads=cfg.get("num_key_value_heads") or heads,
                head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads, mlp_dim=cfg["intermediate_size"],
                rope_theta=_rope_theta(cfg), mlp_activation="gelu", norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                scale_embeddings=True, qk_norm=False)


# (config.model.lm key, the module's default, the value Gemma implies)
LM_REQUIRED = [("mlp_activation", "gelu", "gelu"), ("scale_embeddings", True, True), ("qk_norm", False, False)]


def check_options(cfg: Mapping, required, where: str, target: str) -> None:
    for key, default, want in required:
        node = cfg
        *parents, name = key.split(".")
        for p in parents:
            node = node.get(p) or {}
        value = node.get(name, default)
        if value != want:
            raise ValueError(f"{where}.{key}={value!r}: {target} needs {want!r}")


def hf_gemma_config(flat: Flat, lm_cfg: Mapping) -> dict:
    """config.json of a GemmaForCausalLM with the shapes of our flat (per-block) params and `lm_cfg`'s options."""
    vocab, width = flat["embedding"].shape
    _, heads, head_dim = flat["blocks_0/attn/q_kernel"].shape
    theta = float(lm_cfg.get("rope_theta", 10_000.0))
    return {"architectures": ["GemmaForCausalLM"], "model_type": "gemma", "torch_dtype": "float32",
            "vocab_size": int(vocab), "hidden_size": int(width), "num_hidden_layers": _depth(flat),
            "intermediate_size": int(flat["blocks_0/mlp/gate_kernel"].shape[1]), "num_attention_heads": int(heads),
            "num_key_value_heads": int(flat["blocks_0/attn/k_kernel"].shape[1]), "head_dim": int(head_dim),
            "hidden_act": "gelu_pytorch_tanh", "rms_norm_eps": float(lm_cfg.get("norm_eps", 1e-6)),
            "rope_parameters": {"rope_type": "default", "rope_theta": theta}, "rope_theta": theta,
            "attention_bias": False, "tie_word_embeddings": True, "max_position_embeddings": 8192}


# ---- files and configs --------------------------------------------------------------------------------------------
def read_hf(path_or_state_dict: Union[str, Mapping], config) -> tuple:
    """(flat numpy state dict without buffers, config dict or None) from a path (config.json next to it) or a dict."""
    if isinstance(path_or_state_dict, str):
        sd = read_state_dict(path_or_state_dict)
        folder = path_or_state_dict if os.path.isdir(path_or_state_dict) else os.path.dirname(path_or_state_dict)
        if config is None and os.path.exists(os.path.join(folder, "config.json")):
            with open(os.path.join(folder, "config.json")) as f:
                config = json.load(f)
    else:
        sd = {k: to_numpy(v) for k, v in path_or_state_dict.items()}
    config = config.to_dict() if hasattr(config, "to_dict") else config
    return {k: v for k, v in sd.items() if not k.endswith(("position_ids", "rotary_emb.inv_freq"))}, config


def untie(sd: dict, head: str, embed: str) -> None:
    """Drops an output head that is the embedding (tied, as Gemma's); raises if it is not."""
    if head in sd:
        w = sd.pop(head)
        if not np.array_equal(w, sd[embed]):
            raise NotImplementedError(f"{head!r} differs from {embed!r}: our DecoderLM ties the output head")


def leftover(sd: Mapping, what: str) -> None:
    if sd:
        raise ValueError(f"{what}: {len(sd)} keys not converted, e.g. {sorted(sd)[:5]}")


def save_hf(sd: Mapping, config: dict, out_dir: str) -> list:
    from safetensors.numpy import save_file

    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "model.safetensors"), os.path.join(out_dir, "config.json")]
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()}, paths[0], metadata={"format": "pt"})
    with open(paths[1], "w") as f:
        json.dump(config, f, indent=2)
    return paths


def flat_params(params: Mapping) -> Flat:
    """Our params (a DecoderLM's or a VLM's, nested or flat, scanned or not) -> flat float32, blocks unstacked."""
    flat = unstack_lm(unstack_lm(unstack_blocks(flatten(params))), "lm/")
    return {k: np.asarray(v, np.float32) for k, v in flat.items()}


# ---- Gemma --------------------------------------------------------------------------------------------------------
def load_hf_gemma(path_or_state_dict: Union[str, Mapping], config=None, scan_layers: bool = False) -> dict:
    """Nested numpy params for our `DecoderLM` (`gemma_lm_config(config)`) from a HF `GemmaForCausalLM` or
    `GemmaModel`: a folder / .safetensors / .bin (config.json next to it) or a state dict with `config` (a GemmaConfig
    or its dict). `scan_layers` stacks the blocks for a scanned DecoderLM."""
    sd, config = read_hf(path_or_state_dict, config)
    if config is None:
        raise ValueError("load_hf_gemma: no config.json next to the weights and no `config`: head counts unknown")
    lm_cfg = gemma_lm_config(config)
    sd = {k.removeprefix("model."): v for k, v in sd.items()}
    untie(sd, "lm_head.weight", "embed_tokens.weight")
    flat = lm_from_hf(sd, lm_cfg["num_heads"], lm_cfg["num_kv_heads"])
    leftover(sd, "HF Gemma state dict")
    return nest(stack_lm(flat) if scan_layers else flat)


def export_hf_gemma(params: Mapping, model_cfg: Mapping, out_dir: str) -> list:
    """Writes `out_dir/model.safetensors` + `config.json` that `GemmaForCausalLM.from_pretrained(out_dir)` loads,
    for DecoderLM `params` (bare, or a VLM's: its `lm/` subtree) built from `model_cfg` (`config.model.lm`, or a
    prefix-LM's `config.model` holding it). Returns the written paths."""
    lm_cfg = model_cfg.get("lm", model_cfg)
    check_options(lm_cfg, LM_REQUIRED, "config.model.lm", "HF Gemma")
    flat = flat_params(params.get("lm", params))
    config = hf_gemma_config(flat, lm_cfg)
    sd = {f"model.{k}": v for k, v in lm_to_hf(flat).items()}
    leftover(flat, "export to hf_gemma: parameters GemmaForCausalLM has no place for")
    return save_hf(sd, config, out_dir)


# ---- big_vision Gemma (names after 'llm/' in a PaliGemma checkpoint) -------------------------------------------------
def _bv_layers(llm: Flat) -> Dict[int, Flat]:
    """{'layers/x': float[depth, ...]} (scanned, big_vision's default) or {'layers/i/x': ...} -> {i: {'x': ...}}."""
    out = {}
    for k in [k for k in llm if k.startswith("layers/")]:
        v, rest = llm.pop(k), k[len("layers/"):]
        m = re.fullmatch(r"(\d+)/(.*)", rest)
        if m:
            out.setdefault(int(m.group(1)), {})[m.group(2)] = v
        else:
            for i in range(v.shape[0]):
                out.setdefault(i, {})[rest] = v[i]
    return out


def lm_from_big_vision(llm: Flat) -> Flat:
    """big_vision Gemma params (names after 'llm/') -> our flat DecoderLM params. Pops what it converts."""
    emb = llm.pop("embedder/input_embedding")
    out = {"embedding": emb, "final_norm/scale": llm.pop("final_norm/scale") + 1}
    layers = _bv_layers(llm)
    for i, lp in sorted(layers.items()):
        dst = f"blocks_{i}"
        if "attn/qkv_einsum/w" in lp:  # [3, H, D, Dh] when num_kv_heads == num_heads
            q, k, v = lp.pop("attn/qkv_einsum/w")
        else:
            q, (k, v) = lp.pop("attn/q_einsum/w"), lp.pop("attn/kv_einsum/w")  # [H, D, Dh], [2, Hkv, D, Dh]
        for name, w in (("q", q), ("k", k), ("v", v)):
            out[f"{dst}/attn/{name}_kernel"] = w.transpose(1, 0, 2)
        out[f"{dst}/attn/out_kernel"] = lp.pop("attn/attn_vec_einsum/w")  # [H, Dh, D], as ours
        gating = lp.pop("mlp/gating_einsum")  # [2, D, F]; some Gemma releases store [2, F, D]
        if gating.shape[1] != emb.shape[1]:
            gating = gating.swapaxes(1, 2)
        out[f"{dst}/mlp/gate_kernel"], out[f"{dst}/mlp/up_kernel"] = gating
        out[f"{dst}/mlp/down_kernel"] = lp.pop("mlp/linear")
        out[f"{dst}/pre_attn_norm/scale"] = lp.pop("pre_attention_norm/scale") + 1
        out[f"{dst}/pre_mlp_norm/scale"] = lp.pop("pre_ffw_norm/scale") + 1
        leftover(lp, f"big_vision Gemma layer {i} (post-norms: Gemma 2?)")
    return out


def lm_to_big_vision(flat: Flat) -> Flat:
    """Our flat DecoderLM params (per block) -> big_vision Gemma names (after 'llm/'), layers scanned as
    gemma_bv's default `scan=True` stores them. Pops what it converts."""
    out = {"embedder/input_embedding": flat.pop("embedding"), "final_norm/scale": flat.pop("final_norm/scale") - 1}
    layers = []
    for i in range(_depth(flat)):
        src, lp = f"blocks_{i}", {}
        q, k, v = (flat.pop(f"{src}/attn/{n}_kernel").transpose(1, 0, 2) for n in ("q", "k", "v"))
        if q.shape[0] == k.shape[0]:  # big_vision's Attention fuses q, k, v when num_kv_heads == num_heads
            lp["attn/qkv_einsum/w"] = np.stack([q, k, v])
        else:
            lp["attn/q_einsum/w"], lp["attn/kv_einsum/w"] = q, np.stack([k, v])
        lp["attn/attn_vec_einsum/w"] = flat.pop(f"{src}/attn/out_kernel")
        lp["mlp/gating_einsum"] = np.stack([flat.pop(f"{src}/mlp/gate_kernel"), flat.pop(f"{src}/mlp/up_kernel")])
        lp["mlp/linear"] = flat.pop(f"{src}/mlp/down_kernel")
        lp["pre_attention_norm/scale"] = flat.pop(f"{src}/pre_attn_norm/scale") - 1
        lp["pre_ffw_norm/scale"] = flat.pop(f"{src}/pre_mlp_norm/scale") - 1
        layers.append(lp)
    for name in layers[0]:
        out[f"layers/{name}"] = np.stack([lp[name] for lp in layers])
    return out
