"""Foreign checkpoint formats -> the model that reads and writes them.

The core (`config.init_from.format`) and the CLIs (`vlmjax-export --format`) go through here, so neither parses a
model's parameter paths: each model file ends with its own `load` / `check_exportable` / `export` (as big_vision's
`two_towers.load`), and this table says which model a format belongs to.
"""
from typing import Mapping

from vlmjax.models import paligemma_weights, two_towers

FORMATS = {fmt: two_towers for fmt in two_towers.FORMATS}  # 'hf_siglip', 'big_vision'
# the prefix-LM's: 'hf_gemma', 'hf_paligemma', 'big_vision_paligemma'
FORMATS.update({fmt: paligemma_weights for fmt in paligemma_weights.FORMATS})


def load(fmt: str, path: str, template: Mapping = None) -> dict:
    """Nested host numpy params read from `path` in format `fmt`, in the layout `template` ({our parameter path:
    shape} of the leaves being initialised) asks for: scanned blocks if it scans, its head counts if the file does
    not say. ValueError / KeyError name what does not convert."""
    return FORMATS[fmt].load(path, fmt=fmt, template=template)


def check_exportable(model_cfg, fmt: str) -> None:
    """ValueError naming the first `config.model` key that format `fmt` cannot express."""
    FORMATS[fmt].check_exportable(model_cfg, fmt)


def export(fmt: str, params: Mapping, model_cfg, out: str) -> list:
    """Writes `params` (built from `model_cfg`) to `out` in format `fmt`; returns the written paths."""
    return FORMATS[fmt].export(params, model_cfg, fmt, out)
