"""The prefix-LM `VLM`'s weights from and to HF PaliGemma and big_vision PaliGemma checkpoints.

PaliGemma = a SigLIP vision tower without a pooling head (its conversions live in `siglip_hf` /
`siglip_big_vision`), every patch token through one linear projector (HF `multi_modal_projector.linear`, big_vision
`img/head`), then Gemma (`gemma_weights`). Image tokens enter the LM unscaled in all three (HF scales only the token
embedding, inside `embed_tokens`); image + prompt attend bidirectionally (HF: token_type_ids 0, big_vision and we:
mask_ar 0), the suffix causally. Not expressible: an MLP projector, earlier-layer features, token merging, VQ image
tokens, a conv stem or coord channels (refused by name).

Entry points: `load_hf_paligemma` / `export_hf_paligemma`, `load_big_vision_paligemma` /
`export_big_vision_paligemma`; and the format-registry trio `load`, `check_exportable`, `export`
(`vlmjax.models.foreign`) for FORMATS, 'hf_gemma' included.
"""
import os
import re
from typing import Dict, Mapping, Optional, Union

import numpy as np

from vlmjax.models import siglip_big_vision, siglip_hf
from vlmjax.models.gemma_weights import (LM_REQUIRED, check_options, export_hf_gemma, flat_params, gemma_lm_config,
                                         hf_gemma_config, leftover, lm_from_big_vision, lm_from_hf, lm_to_big_vision,
                                         lm_to_hf, load_hf_gemma, read_hf, save_hf, stack_lm, untie)
from vlmjax.models.weight_files import Flat, flatten, nest, read_state_dict, stack_blocks, to_numpy

FORMATS = ("hf_gemma", "hf_paligemma", "big_vision_paligemma")
# (config.model key, the module's default, the value PaliGemma implies)
VLM_REQUIRED = [("projector", "linear", "linear"), ("feature_layer", -1, -1), ("token_merge", 1, 1),
                ("vit.posemb", "learn", "learn"), ("vit.stem_channels", 0, 0), ("vit.coord_channels", False, False)]


# ---- HF PaliGemma -------------------------------------------------------------------------------------------------
def _paligemma_names(sd: Mapping) -> dict:
    """transformers 5 in-memory names ('model.language_model.layers...', 'model.vision_tower.encoder...',
    'lm_head.weight') and file / hub names ('language_model.model.layers...', 'vision_tower[.vision_model].encoder...',
    'language_model.lm_head.weight') -> one set: 'language_model.layers...', 'vision_tower.vision_model...',
    'multi_modal_projector...', 'lm_head.weight'."""
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^language_model\.model\.", "language_model.", k.removeprefix("model."))
        k = k.replace("language_model.lm_head.", "lm_head.")
        if k.startswith("vision_tower.") and not k.startswith("vision_tower.vision_model."):
            k = "vision_tower.vision_model." + k[len("vision_tower."):]
        out[k] = v
    return out


def paligemma_model_config(hf_config) -> dict:
    """HF PaliGemmaConfig (object or dict) -> {'model': a prefix-LM's `config.model`, 'image_size'}. Raises for
    what our VLM does not do."""
    cfg = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
    v, t = cfg["vision_config"], cfg["text_config"]
    act, eps = v.get("hidden_act", "gelu_pytorch_tanh"), v.get("layer_norm_eps", 1e-6)
    if act != "gelu_pytorch_tanh" or abs(eps - 1e-6) > 1e-12:
        raise NotImplementedError("vision_config: our ViT is tanh-GELU with LayerNorm eps 1e-6")
    lm = gemma_lm_config(t)
    proj = cfg.get("projection_dim", v.get("projection_dim", lm["width"]))
    if proj != lm["width"]:
        raise ValueError(f"projection_dim {proj} != text hidden_size {lm['width']}")
    patch = v["patch_size"]
    vit = dict(patch_size=[patch, patch] if isinstance(patch, int) else list(patch), width=v["hidden_size"],
               depth=v["num_hidden_layers"], num_heads=v["num_attention_heads"], mlp_dim=v["intermediate_size"],
               posemb="learn")
    # The released config.json files leave out what equals transformers' defaults (image_size, head_dim, rope).
    side = int(round(v["num_image_tokens"] ** 0.5)) * vit["patch_size"][0] if "num_image_tokens" in v else 224
    size = v.get("image_size", side)
    return {"model": dict(vit=vit, lm=lm, projector="linear", feature_layer=-1),
            "image_size": size if isinstance(size, int) else size[0]}


def from_hf_paligemma(state_dict: Mapping, hf_config) -> Flat:
    """PaliGemmaForConditionalGeneration state dict -> our flat VLM params ('lm/...', 'vit/...', 'proj/...').
    The vision tower's pooling head, if the checkpoint has one, is dropped: PaliGemma reads every patch token."""
    cfg = paligemma_model_config(hf_config)["model"]
    sd = _paligemma_names({k: to_numpy(v) for k, v in state_dict.items()})
    untie(sd, "lm_head.weight", "language_model.embed_tokens.weight")
    lm = {k[len("language_model."):]: sd.pop(k) for k in list(sd) if k.startswith("language_model.")}
    out = {f"lm/{k}": v for k, v in lm_from_hf(lm, cfg["lm"]["num_heads"], cfg["lm"]["num_kv_heads"]).items()}
    leftover(lm, "HF PaliGemma language model")
    vision = {k[len("vision_tower."):]: sd.pop(k) for k in list(sd) if k.startswith("vision_tower.")}
    for k, v in siglip_hf.from_hf(vision, cfg["vit"]["num_heads"]).items():
        if not k.startswith("img/map_head/"):
            out[f"vit/{k[4:]}"] = v
    out["proj/linear/kernel"] = sd.pop("multi_modal_projector.linear.weight").T
    out["proj/linear/bias"] = sd.pop("multi_modal_projector.linear.bias")
    leftover(sd, "HF PaliGemma state dict")
    return out


def _vision_to_hf(p: Flat) -> Dict[str, np.ndarray]:
    """Our 'vit/...' leaves (per block, no pooling head) -> SiglipVisionModel names ('vision_model...')."""
    v, sd = "vision_model", {}
    sd[f"{v}.embeddings.patch_embedding.weight"] = p.pop("vit/embedding/kernel").transpose(3, 2, 0, 1)
    sd[f"{v}.embeddings.patch_embedding.bias"] = p.pop("vit/embedding/bias")
    sd[f"{v}.embeddings.position_embedding.weight"] = p.pop("vit/pos_embedding")[0]
    depth = len({m.group(1) for k in p for m in [re.match(r"vit/encoder/block(\d+)/", k)] if m})
    for i in range(depth):
        siglip_hf._block(p, f"vit/encoder/block{i:02d}", f"{v}.encoder.layers.{i}", sd)
    siglip_hf._ln(p, "vit/encoder/ln_final", f"{v}.post_layernorm", sd)
    return sd


def to_hf_paligemma(params: Mapping) -> Dict[str, np.ndarray]:
    """Our VLM params (nested or flat, scanned or not) -> PaliGemmaForConditionalGeneration state dict
    under the names of the released checkpoints, which transformers loads (5.23 tested) ('language_model.model...',
    'vision_tower.vision_model...', 'multi_modal_projector.linear...'; the tied `lm_head` left out). Leftover
    parameters raise ValueError."""
    flat = flat_params(params)
    lm = {k[3:]: flat.pop(k) for k in list(flat) if k.startswith("lm/")}
    sd = {f"language_model.model.{k}": v for k, v in lm_to_hf(lm).items()}
    leftover(lm, "export to hf_paligemma: LM parameters Gemma has no place for")
    sd.update({f"vision_tower.{k}": v for k, v in _vision_to_hf(flat).items()})
    sd["multi_modal_projector.linear.weight"] = flat.pop("proj/linear/kernel").T
    sd["multi_modal_projector.linear.bias"] = flat.pop("proj/linear/bias")
    leftover(flat, "export to hf_paligemma: parameters PaliGemma has no place for (VQ image tokens, an MLP "
                    "projector, ...)")
    return sd


def hf_paligemma_config(params: Mapping, model_cfg: Mapping, image_token_index: Optional[int] = None) -> dict:
    """config.json of a PaliGemmaForConditionalGeneration with the shapes of our VLM `params`. The image placeholder
    id defaults to the vocabulary size (out of vocabulary: HF embeds it as id 0 and then overwrites it)."""
    flat = flat_params(params)
    lm = {k[3:]: v for k, v in flat.items() if k.startswith("lm/")}
    text = hf_gemma_config(lm, model_cfg.get("lm", {}))
    text.pop("architectures")
    kernel = flat["vit/embedding/kernel"]  # [ph, pw, 3, D]
    n_pos, width = flat["vit/pos_embedding"].shape[1:]
    side = int(round(n_pos ** 0.5))
    heads = flat["vit/encoder/block00/attn/query_kernel"].shape[1]
    vision = dict(model_type="siglip_vision_model", hidden_size=int(width), num_attention_heads=int(heads),
                  intermediate_size=int(flat["vit/encoder/block00/mlp/fc1/kernel"].shape[1]),
                  num_hidden_layers=len({k.split("/")[2] for k in flat if k.startswith("vit/encoder/block")}),
                  image_size=int(side * kernel.shape[0]), patch_size=int(kernel.shape[0]), num_channels=3,
                  hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, vision_use_head=False,
                  projection_dim=text["hidden_size"])
    token = text["vocab_size"] if image_token_index is None else int(image_token_index)
    return {"architectures": ["PaliGemmaForConditionalGeneration"], "model_type": "paligemma",
            "torch_dtype": "float32", "image_token_index": token, "vocab_size": text["vocab_size"],
            "projection_dim": text["hidden_size"], "hidden_size": text["hidden_size"], "tie_word_embeddings": True,
            "text_config": text, "vision_config": vision}


def load_hf_paligemma(path_or_state_dict: Union[str, Mapping], config=None, scan_layers: bool = False) -> dict:
    """Nested numpy params for our `VLM` (`paligemma_model_config(config)['model']`) from a HF PaliGemma folder /
    file (config.json next to it) or a state dict with `config`. `scan_layers` stacks LM and ViT blocks."""
    sd, config = read_hf(path_or_state_dict, config)
    if config is None:
        raise ValueError("load_hf_paligemma: no config.json next to the weights and no `config`")
    flat = from_hf_paligemma(sd, config)
    return nest(stack_lm(stack_blocks(flat), "lm/") if scan_layers else flat)


def check_paligemma(model_cfg: Mapping, target: str = "HF PaliGemma") -> None:
    """Raises ValueError naming the first `config.model` key a PaliGemma checkpoint cannot express."""
    check_options(model_cfg, VLM_REQUIRED, "config.model", target)
    check_options(model_cfg.get("lm") or {}, LM_REQUIRED, "config.model.lm", target)


def export_hf_paligemma(params: Mapping, model_cfg: Mapping, out_dir: str,
                        image_token_index: Optional[int] = None) -> list:
    """Writes `out_dir/model.safetensors` + `config.json` that `PaliGemmaForConditionalGeneration.from_pretrained`
    loads, for the VLM `params` built from `model_cfg` (a prefix-LM run's `config.model`)."""
    check_paligemma(model_cfg)
    config = hf_paligemma_config(params, model_cfg, image_token_index)
    return save_hf(to_hf_paligemma(params), config, out_dir)


# ---- big_vision PaliGemma .npz ('params/img/...': a big_vision ViT whose `head` is the projector; 'params/llm/...':
# big_vision's Gemma, `models/ppp/gemma.py` as wrapped by `models/proj/paligemma/gemma_bv.py`) --------------------
def from_big_vision_paligemma(flat: Mapping) -> Flat:
    """big_vision PaliGemma params (flat '/'-joined keys, with or without 'params/') -> our flat VLM params."""
    flat = {k.removeprefix("params/"): to_numpy(v) for k, v in flat.items()}
    llm = {k[4:]: flat.pop(k) for k in list(flat) if k.startswith("llm/")}
    out = {f"lm/{k}": v for k, v in lm_from_big_vision(llm).items()}
    leftover(llm, "big_vision PaliGemma llm")
    out["proj/linear/kernel"], out["proj/linear/bias"] = flat.pop("img/head/kernel"), flat.pop("img/head/bias")
    img = {k: flat.pop(k) for k in list(flat) if k.startswith("img/")}
    out.update({f"vit/{k[4:]}": v for k, v in siglip_big_vision.from_big_vision(img).items()})
    leftover(flat, "big_vision PaliGemma checkpoint")
    return out


def to_big_vision_paligemma(params: Mapping) -> Dict[str, np.ndarray]:
    """Our VLM params (nested or flat, scanned or not) -> big_vision PaliGemma names ('params/img/...',
    'params/llm/...'), what `from_big_vision_paligemma` and big_vision's `paligemma.load` read."""
    flat = flat_params(params)
    lm = {k[3:]: flat.pop(k) for k in list(flat) if k.startswith("lm/")}
    out = {f"params/llm/{k}": v for k, v in lm_to_big_vision(lm).items()}
    leftover(lm, "export to big_vision_paligemma: LM parameters big_vision's Gemma has no place for")
    out["params/img/head/kernel"], out["params/img/head/bias"] = flat.pop("proj/linear/kernel"), flat.pop(
        "proj/linear/bias")
    vit = {f"img/{k[4:]}": flat.pop(k) for k in list(flat) if k.startswith("vit/")}
    out.update(siglip_big_vision.to_big_vision(vit))
    leftover(flat, "export to big_vision_paligemma: parameters PaliGemma has no place for")
    return out


def load_big_vision_paligemma(path_or_params: Union[str, Mapping], scan_layers: bool = False) -> dict:
    """Nested numpy VLM params from a big_vision PaliGemma .npz (or its flat dict)."""
    flat = read_state_dict(path_or_params) if isinstance(path_or_params, str) else path_or_params
    flat = from_big_vision_paligemma(flat)
    return nest(stack_lm(stack_blocks(flat), "lm/") if scan_layers else flat)


def export_big_vision_paligemma(params: Mapping, model_cfg: Mapping, path: str) -> list:
    """Writes `path` (.npz) for the VLM `params` built from `model_cfg`. Returns [path]."""
    check_paligemma(model_cfg, "big_vision PaliGemma")
    path = path if path.endswith(".npz") else path + ".npz"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, **to_big_vision_paligemma(params))
    return [path]


# ---- the format registry's interface (`vlmjax.models.foreign`) ----------------------------------------------------
def load(path: str, *, fmt: str, template: Mapping = None) -> dict:
    """Nested numpy params read from `path` in `fmt`, in the layout of `template` ({our path: shape} of the leaves
    being initialised): LM / ViT blocks stacked when the template scans them; 'hf_gemma' under 'lm/' when the
    template is a VLM's."""
    keys = list(template or ())
    if fmt == "hf_gemma":
        vlm = any(k.startswith("lm/") for k in keys)
        params = load_hf_gemma(path, scan_layers=any(k.startswith(("blocks/", "lm/blocks/")) for k in keys))
        return {"lm": params} if vlm else params
    flat = load_big_vision_paligemma(path) if fmt == "big_vision_paligemma" else load_hf_paligemma(path)
    flat = flatten(flat)
    if any(k.startswith("vit/encoder/blocks/") for k in keys):
        flat = stack_blocks(flat)
    if any(k.startswith("lm/blocks/") for k in keys):
        flat = stack_lm(flat, "lm/")
    return nest(flat)


def check_exportable(model_cfg: Mapping, fmt: str) -> None:
    """ValueError naming the first `config.model` key that `fmt` cannot express."""
    if fmt == "hf_gemma":
        check_options(model_cfg.get("lm", model_cfg), LM_REQUIRED, "config.model.lm", "HF Gemma")
    else:
        check_paligemma(model_cfg, {"hf_paligemma": "HF PaliGemma"}.get(fmt, "big_vision PaliGemma"))


def export(params: Mapping, model_cfg: Mapping, fmt: str, out: str) -> list:
    """Writes `params` (built from `model_cfg`) to `out` in `fmt`; returns the written paths."""
    fn = {"hf_gemma": export_hf_gemma, "hf_paligemma": export_hf_paligemma,
          "big_vision_paligemma": export_big_vision_paligemma}[fmt]
    return fn(params, model_cfg, out)
