"""Per-example preprocessing ops, configured as a list of specs `{'op': NAME, **kwargs}` (numpy + PIL only).

`get_preprocess_fn(specs, tokenizer=...)` chains the ops into `fn(example, rng) -> example`; each op takes the same
`np.random.Generator`, so the output is a pure function of (example, rng). `validate_specs` checks names and
arguments before anything compiles. An op that meets a bad record raises `DropExample(reason)`; the pipeline drops
the example and counts the reason.

Ops (`key` defaults to 'image' for image ops):
  decode(key)                                  PNG/JPEG bytes -> uint8[H, W, 3]; decoded arrays pass through
  resize(size, key, method='bilinear')         size int or [h, w]
  random_resized_crop(size, scale, ratio, key) Inception-style crop of a random area/aspect, resized to size
  center_crop(size, key)                       central [h, w] window
  flip_lr(p=0.5, key)                          mirror left-right with probability p
  value_range(vmin=-1, vmax=1, key)            uint8 [0, 255] -> float32 [vmin, vmax]
  choice(key, out=None)                        one random element of a list field; key may be a list of fields,
                                               all indexed alike (e.g. questions and answers)
  tokenize(max_len, key, out=None, eos=True, bos=False)
                                               text -> int32[max_len] ids and `<out>_mask` int32[max_len] (1 = token)
  keep(keys), rename(mapping), copy(mapping)   select, rename {old: new}, duplicate {src: dst}
"""
import difflib
import importlib
import inspect
import io
import math
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

Example = Dict[str, object]
Op = Callable[[Example, np.random.Generator], Example]


class DropExample(Exception):
    """Raised by an op for a record that cannot be used; `reason` is a short snake_case tag that gets counted."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


_OPS: Dict[str, Callable[..., Op]] = {}


def register(name: str, registry: Optional[Dict[str, Callable]] = None):
    """Register an op builder `fn(**kwargs) -> op(example, rng) -> example` under `name` (in `registry`: another
    family of ops, e.g. the device ops)."""

    def deco(fn):
        (_OPS if registry is None else registry)[name] = fn
        return fn

    return deco


# ---- helpers -----------------------------------------------------------------------------------------------------
def _hw(size) -> tuple:
    hw = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(hw) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in hw):
        raise ValueError(f"size must be a positive int or [h, w], got {size!r}")
    return int(hw[0]), int(hw[1])


def _names(keys) -> List[str]:
    return [keys] if isinstance(keys, str) else list(keys)


def _mapping(m) -> Dict[str, str]:
    m = m.to_dict() if hasattr(m, "to_dict") else dict(m)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in m.items()):
        raise ValueError(f"mapping must be {{str: str}}, got {m!r}")
    return m


def _get(example: Example, key: str):
    try:
        return example[key]
    except KeyError:
        raise KeyError(f"preprocess: example has no key {key!r}; it has {sorted(example)}") from None


def _text(value) -> str:
    if isinstance(value, np.ndarray):
        value = value.item()
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST, "area": Image.BOX}


def resize_image(img: np.ndarray, hw: tuple, method: str = "bilinear") -> np.ndarray:
    """uint8 or float[H, W, C] -> same dtype [h, w, C] (PIL, antialiased when shrinking)."""
    h, w = hw
    if img.shape[:2] == (h, w):
        return img
    if img.dtype == np.uint8:
        return np.asarray(Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img).resize(
            (w, h), _RESAMPLE[method])).reshape(h, w, -1)
    chans = [np.asarray(Image.fromarray(img[..., c].astype(np.float32), mode="F").resize((w, h), _RESAMPLE[method]))
             for c in range(img.shape[-1])]
    return np.stack(chans, -1).astype(img.dtype)


def sample_crop_box(h: int, w: int, rng: np.random.Generator, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3),
                    attempts: int = 10) -> tuple:
    """(top, left, height, width) covering a `scale` fraction of the area with aspect w/h in `ratio`.

    After `attempts` misses (the window would not fit) falls back to the largest central crop within `ratio`.
    """
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        area = h * w * rng.uniform(*scale)
        r = math.exp(rng.uniform(*log_r))
        cw, ch = int(round(math.sqrt(area * r))), int(round(math.sqrt(area / r)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    r = min(max(w / h, ratio[0]), ratio[1])
    cw, ch = (w, min(h, int(round(w / r)))) if w / h <= r else (min(w, int(round(h * r))), h)
    return (h - ch) // 2, (w - cw) // 2, ch, cw


# ---- ops ---------------------------------------------------------------------------------------------------------
@register("decode")
def decode(key: str = "image") -> Op:
    def op(ex, rng):
        v = _get(ex, key)
        if isinstance(v, np.ndarray) and v.dtype != object and v.dtype.kind != "S" and v.ndim in (2, 3):
            img = v
        else:
            try:
                data = (v.tobytes() if v.dtype == np.uint8 else v.item()) if isinstance(v, np.ndarray) else v
                with Image.open(io.BytesIO(bytes(data))) as im:
                    img = np.asarray(im.convert("RGB"))
            except Exception:  # PIL raises several types (UnidentifiedImageError, OSError, SyntaxError, ...)
                raise DropExample("corrupt_image") from None
        if img.ndim == 2:
            img = img[..., None]
        if img.shape[-1] == 1:
            img = np.repeat(img, 3, -1)
        return {**ex, key: img}

    return op


@register("resize")
def resize(size, key: str = "image", method: str = "bilinear") -> Op:
    hw = _hw(size)
    if method not in _RESAMPLE:
        raise ValueError(f"method must be one of {sorted(_RESAMPLE)}, got {method!r}")
    return lambda ex, rng: {**ex, key: resize_image(np.asarray(_get(ex, key)), hw, method)}


@register("random_resized_crop")
def random_resized_crop(size, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), key: str = "image",
                        method: str = "bilinear") -> Op:
    hw = _hw(size)
    scale, ratio = tuple(map(float, scale)), tuple(map(float, ratio))
    if not (len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1):
        raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi <= 1, got {scale}")
    if not (len(ratio) == 2 and 0 < ratio[0] <= ratio[1]):
        raise ValueError(f"ratio must be (lo, hi) with 0 < lo <= hi, got {ratio}")

    def op(ex, rng):
        img = np.asarray(_get(ex, key))
        t, l, ch, cw = sample_crop_box(img.shape[0], img.shape[1], rng, scale, ratio)
        return {**ex, key: resize_image(img[t:t + ch, l:l + cw], hw, method)}

    return op


@register("center_crop")
def center_crop(size, key: str = "image") -> Op:
    h, w = _hw(size)

    def op(ex, rng):
        img = np.asarray(_get(ex, key))
        if img.shape[0] < h or img.shape[1] < w:
            raise ValueError(f"center_crop: image {img.shape[:2]} is smaller than the crop {(h, w)}; resize first")
        t, l = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
        return {**ex, key: img[t:t + h, l:l + w]}

    return op


@register("flip_lr")
def flip_lr(p: float = 0.5, key: str = "image") -> Op:
    if not 0 <= p <= 1:
        raise ValueError(f"p must be in [0, 1], got {p}")

    def op(ex, rng):
        img = np.asarray(_get(ex, key))
        return {**ex, key: img[:, ::-1] if rng.random() < p else img}

    return op


@register("value_range")
def value_range(vmin: float = -1.0, vmax: float = 1.0, key: str = "image") -> Op:
    lo, scale = float(vmin), (float(vmax) - float(vmin)) / 255.0
    return lambda ex, rng: {**ex, key: (np.asarray(_get(ex, key), np.float32) * np.float32(scale)
                                        + np.float32(lo))}


@register("choice")
def choice(key, out=None) -> Op:
    keys = _names(key)
    outs = keys if out is None else _names(out)
    if len(outs) != len(keys):
        raise ValueError(f"out names {outs} do not match keys {keys}")

    def op(ex, rng):
        fields = [_get(ex, k) for k in keys]
        n = len(fields[0])
        if any(len(f) != n for f in fields):
            raise ValueError(f"choice: fields {keys} have different lengths {[len(f) for f in fields]}")
        if n == 0:
            raise DropExample(f"empty_{keys[0]}")
        i = int(rng.integers(n))
        return {**ex, **{o: f[i] for o, f in zip(outs, fields)}}

    return op


@register("tokenize")
def tokenize(max_len: int, key: str = "text", out: Optional[str] = None, eos: bool = True, bos: bool = False, *,
             tokenizer=None) -> Op:
    """Longer texts are cut to max_len after adding eos, so a cut text carries no eos (it did not end there).

    A list of K texts gives int32[K, max_len] tokens and mask."""
    if not (isinstance(max_len, (int, np.integer)) and max_len > 0):
        raise ValueError(f"max_len must be a positive int, got {max_len!r}")
    out = out or key

    def one(text):
        if not text.strip():
            raise DropExample("empty_caption")
        ids = tokenizer.encode(text)
        ids = ([tokenizer.bos_id] if bos else []) + list(ids) + ([tokenizer.eos_id] if eos else [])
        ids = ids[:max_len]
        tokens = np.full(max_len, tokenizer.pad_id, np.int32)
        tokens[:len(ids)] = ids
        mask = np.zeros(max_len, np.int32)
        mask[:len(ids)] = 1
        return tokens, mask

    def op(ex, rng):
        value = _get(ex, key)
        if isinstance(value, (list, tuple)):
            pairs = [one(_text(v)) for v in value]  # K texts -> int32[K, max_len]
            tokens, mask = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
        else:
            tokens, mask = one(_text(value))
        return {**ex, out: tokens, f"{out}_mask": mask}

    return op


@register("keep")
def keep(keys) -> Op:
    names = _names(keys)
    return lambda ex, rng: {k: _get(ex, k) for k in names}


@register("rename")
def rename(mapping) -> Op:
    m = _mapping(mapping)

    def op(ex, rng):
        for k in m:
            _get(ex, k)
        return {**{k: v for k, v in ex.items() if k not in m}, **{m[k]: ex[k] for k in m}}

    return op


@register("copy")
def copy(mapping) -> Op:
    m = _mapping(mapping)
    return lambda ex, rng: {**ex, **{dst: _get(ex, src) for src, dst in m.items()}}


# ---- specs -------------------------------------------------------------------------------------------------------
def _spec_dict(spec) -> dict:
    return spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)


# Modules whose ops register themselves on import (they import this module, so it cannot import them at the top).
_OP_MODULES = ("vlmjax.data.filters", "vlmjax.data.negatives", "vlmjax.data.chat_ops")


def _build(i: int, spec, tokenizer) -> Op:
    """Builds op i of a spec list; ValueError "preprocess[i] ('name'): ..." for any problem with the spec."""
    for module in _OP_MODULES:  # every op resolves, whatever the caller happened to import before
        importlib.import_module(module)
    return build_from_registry(_OPS, "preprocess", i, spec, tokenizer=tokenizer)


def build_from_registry(registry: Dict[str, Callable], section: str, i: int, spec, **context):
    """`registry[spec['op']](**args)`; ValueError "<section>[i] ('name'): ..." naming the unknown op, argument or
    missing argument. `context` fills the builder's keyword-only parameters it declares (e.g. `tokenizer`)."""
    try:
        spec = _spec_dict(spec)
    except (TypeError, ValueError):
        raise ValueError(f"{section}[{i}]: expected a dict {{'op': NAME, ...}}, got {spec!r}") from None
    kwargs = dict(spec)
    name = kwargs.pop("op", None)
    if name not in registry:
        hint = difflib.get_close_matches(str(name), registry, n=1)
        hint = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ValueError(f"{section}[{i}]: unknown op {name!r}{hint}; known ops: {', '.join(sorted(registry))}")
    where = f"{section}[{i}] ({name!r})"
    params = inspect.signature(registry[name]).parameters
    allowed = [p for p, v in params.items() if v.kind != inspect.Parameter.KEYWORD_ONLY]
    for arg in kwargs:
        if arg not in allowed:
            raise ValueError(f"{where}: unknown argument {arg!r}; expected one of: {', '.join(allowed)}")
    for p in allowed:
        if params[p].default is inspect.Parameter.empty and p not in kwargs:
            raise ValueError(f"{where}: missing argument {p!r}")
    kwargs.update({k: v for k, v in context.items() if k in params})
    try:
        return registry[name](**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None


def validate_specs(specs: Sequence) -> None:
    """Raises ValueError naming the op index, name and argument of the first bad spec."""
    for i, spec in enumerate(specs or []):
        _build(i, spec, tokenizer=None)


def get_preprocess_fn(specs: Sequence, *, tokenizer=None) -> Op:
    """`fn(example, rng) -> example` applying `specs` in order."""
    ops = [_build(i, spec, tokenizer) for i, spec in enumerate(specs or [])]
    for i, spec in enumerate(specs or []):
        if _spec_dict(spec)["op"] == "tokenize" and tokenizer is None:
            raise ValueError(f"preprocess[{i}] ('tokenize'): needs a tokenizer, but the task provides none")

    def fn(example: Example, rng: np.random.Generator) -> Example:
        example = dict(example)
        for op in ops:
            example = op(example, rng)
        return example

    return fn
