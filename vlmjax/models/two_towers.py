"""Two-tower image-text model (CLIP / SigLIP / LiT): an image tower and a text tower mapped into one embedding space.

Parameters: `img/...` (the ViT; its `head` is the image projection), `txt/...` (the TextTransformer; its `head` is
the text projection), `t` = log(temperature) float[1] and, when `bias_init` is set, `b` float[1] (big_vision
layout, so checkpoints of either side map name for name).

Temperature is learned in log space: gradient steps act on log t, so t stays positive and moves by ratios, which
is what matters for a logit scale. Inits: SigLIP t=10, b=-10 (a strongly negative bias matches the prior that
almost every pair in a B x B batch is negative); CLIP t=1/0.07, no bias, usually clamped at t <= 100
(`temperature_max`) because a runaway scale destabilises training.

Foreign weights: `load` reads a HF SigLIP or big_vision checkpoint into this tree, `export` writes one
(`vlmjax.models.siglip_hf` / `siglip_big_vision` hold the name and layout conversions).
"""
import json
import math
import os
import re
from typing import Mapping, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vlmjax.models import siglip_big_vision, siglip_hf
from vlmjax.models.layers import l2_normalize
from vlmjax.models.weight_files import flatten, nest, read_state_dict, stack_blocks, unstack_blocks

SIGLIP_INIT = {"temperature_init": 10.0, "bias_init": -10.0}
CLIP_INIT = {"temperature_init": 1 / 0.07, "bias_init": None, "temperature_max": 100.0}
EMBEDDING_EPS = 1e-8  # floor of an embedding's norm in l2_normalize: a zero embedding stays zero


def clamp_log_temperature(log_t, temperature_max: float):
    """log t float[] -> min(log t, log temperature_max); no clamp when temperature_max <= 0.

    Above the cap the gradient to log t is zero (as CLIP's clamp of its logit scale)."""
    if temperature_max and temperature_max > 0:
        return jnp.minimum(log_t, math.log(temperature_max))
    return log_t


class TwoTowers(nn.Module):
    """(images float[B, H, W, 3] | None, text int[B, L] | None, text_mask int[B, L] | None) ->
    (zimg float32[B, D] | None, ztxt float32[B, D] | None, out).

    Embeddings are L2-normalised. `out` holds `log_temperature` float[] (clamped), `temperature` float[] and
    `bias` float[] (absent without a bias), plus the towers' features as `img/<name>` and `txt/<name>`.
    """

    img: Optional[nn.Module] = None  # image tower: vlmjax.models.vit.ViT with num_classes = joint dim (or None)
    txt: Optional[nn.Module] = None  # text tower: vlmjax.models.text.TextTransformer, same convention
    temperature_init: float = 10.0
    bias_init: Optional[float] = -10.0  # None: no bias parameter (CLIP)
    temperature_max: float = 0.0  # 0: no clamp

    @nn.compact
    def __call__(self, images=None, text=None, text_mask=None, train: bool = False):
        if self.temperature_init <= 0:
            raise ValueError(f"temperature_init={self.temperature_init}: must be > 0 (it is stored as its log)")
        out = {}
        zimg = ztxt = None
        if images is not None:
            zimg, feats = self.img(images, train=train)
            out.update({f"img/{k}": v for k, v in feats.items() if k != "hidden"})
            zimg = l2_normalize(zimg.astype(jnp.float32), EMBEDDING_EPS)
        if text is not None:
            ztxt, feats = self.txt(text, text_mask, train=train)
            out.update({f"txt/{k}": v for k, v in feats.items()})
            ztxt = l2_normalize(ztxt.astype(jnp.float32), EMBEDDING_EPS)
        if zimg is not None and ztxt is not None and zimg.shape[-1] != ztxt.shape[-1]:
            raise ValueError(f"image embeddings have dim {zimg.shape[-1]} but text embeddings {ztxt.shape[-1]}: "
                             f"set out_dim (a projection head on both towers) or equal widths")
        log_t0 = math.log(self.temperature_init)
        t = self.param("t", nn.with_logical_partitioning(lambda *_: jnp.full((1,), log_t0, jnp.float32), (None,)))
        out["log_temperature"] = clamp_log_temperature(t[0], self.temperature_max)
        out["temperature"] = jnp.exp(out["log_temperature"])
        if self.bias_init is not None:
            b0 = float(self.bias_init)
            out["bias"] = self.param("b", nn.with_logical_partitioning(
                lambda *_: jnp.full((1,), b0, jnp.float32), (None,)))[0]
        return zimg, ztxt, out


# ---- foreign weights (`config.init_from.format`, `vlmjax-export --format`) -------------------------------------------
FORMATS = ("hf_siglip", "big_vision")


def _template_heads(path: str, template: Mapping) -> Tuple[int, int]:
    """(vision, text) head counts from the query kernels [D, H, hd] of the leaves being initialised."""
    heads = {}
    for src, shape in (template or {}).items():
        m = re.fullmatch(r"(img|txt)/encoder/block(?:s|\d+)/attn/query_kernel", src)
        if m:
            heads.setdefault(m.group(1), shape[-2])
    if not heads:
        raise ValueError(f"{path!r}: no config.json next to it to read the attention head counts from, and no "
                         f"img/txt attention block selected to infer them")
    return heads.get("img", heads.get("txt")), heads.get("txt", heads.get("img"))


def load(path: str, num_heads: int = None, text_num_heads: int = None, scan_layers: bool = None, *,
         fmt: str = None, template: Mapping = None) -> dict:
    """Nested host numpy params for `TwoTowers` from a foreign checkpoint (big_vision's `two_towers.load`).

    path: a HF `SiglipModel` checkpoint ('hf_siglip': .safetensors, a sharded index, pytorch_model.bin, or a
    folder of them) or a big_vision .npz ('big_vision'); `fmt` None tells them apart by their key names.
    template: {our parameter path: shape} of the leaves being initialised (what `config.init_from` selects). It
    settles what the file leaves open: the HF head counts when neither `num_heads` nor a config.json next to the
    file gives them, and, when `scan_layers` is None, whether each tower's blocks are stacked into the scanned
    `encoder/blocks` layout (a tower is stacked where the template's tower has that layout: one tower may scan
    and the other not)."""
    flat = read_state_dict(path)
    fmt = fmt or ("hf_siglip" if any(k.startswith(siglip_hf.HF_PREFIXES) for k in flat) else "big_vision")
    if fmt == "hf_siglip":
        if num_heads is None:
            num_heads, text_num_heads = siglip_hf.config_heads(path) or _template_heads(path, template)
        params = siglip_hf.from_hf(flat, num_heads, text_num_heads)
    else:
        params = siglip_big_vision.from_big_vision(flat)
    if scan_layers is not None:
        return nest(stack_blocks(params) if scan_layers else params)
    scanned = {k.split("/")[0] for k in template or () if "/blocks/" in k}  # 'img', 'txt'
    stacked = stack_blocks({k: v for k, v in params.items() if k.split("/")[0] in scanned})
    return nest({**{k: v for k, v in params.items() if k.split("/")[0] not in scanned}, **stacked})


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


def save_hf_siglip(params: Mapping, model_cfg, out_dir: str) -> list:
    """Writes `out_dir/model.safetensors` and `out_dir/config.json` (a HF `SiglipModel` folder) for the TwoTowers
    `params` built from `model_cfg` (a contrastive run's `config.model`). Returns the written paths."""
    from safetensors.numpy import save_file

    check_exportable(model_cfg, "hf_siglip")
    flat = unstack_blocks(flatten(params))
    heads = [flat[f"{tower}/encoder/block00/attn/query_kernel"].shape[1] for tower in ("img", "txt")]
    sd = siglip_hf.to_hf(flat, float(model_cfg.get("temperature_max", 0.0) or 0.0))
    config = siglip_hf.hf_siglip_config(sd, *heads)
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "model.safetensors"), os.path.join(out_dir, "config.json")]
    save_file(sd, paths[0], metadata={"format": "pt"})
    with open(paths[1], "w") as f:
        json.dump(config, f, indent=2)
    return paths


def save_big_vision(params: Mapping, model_cfg, path: str) -> list:
    """Writes `path` (.npz, big_vision's checkpoint format for numpy) for the TwoTowers `params` built from
    `model_cfg`. Returns [path]."""
    check_exportable(model_cfg, "big_vision")
    path = path if path.endswith(".npz") else path + ".npz"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, **siglip_big_vision.to_big_vision(params))
    return [path]


def export(params: Mapping, model_cfg, fmt: str, out: str) -> list:
    """Writes `params` in format `fmt` (see FORMATS) to `out`; returns the written paths."""
    return {"hf_siglip": save_hf_siglip, "big_vision": save_big_vision}[fmt](params, model_cfg, out)
