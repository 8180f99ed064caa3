"""Per-example preprocessing ops, configured as a list of specs `{'op': NAME, **kwargs}` (numpy + PIL only).

`get_preprocess_fn(specs, tokenizer=...)` chains the ops into `fn(example, rng) -> example`; each op takes the same
`np.random.Generator`, so the output is a pure function of (example, rng). `validate_specs` checks names and
arguments before anything compiles. An op that meets a bad record raises `DropExample(reason)`; the pipeline drops
the example and counts the reason. The op contract, the registry and the helpers for writing ops
(`get`, `as_text`, `image_hw`, `in_key_out_key`) are in `vlmjax.data.op_registry`; this module imports every host
op family (`filters`, `negatives`, `mentions`, `chat_ops`), so a spec list may use any of their ops.

Ops (`key` defaults to 'image' for image ops):
  decode(key, draft_size=None)                 PNG/JPEG bytes -> uint8[H, W, 3]; decoded arrays pass through;
                                               draft_size: JPEGs decoded at a reduced scale >= that size
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
import io
import math
import string
from typing import Dict, Optional, Sequence

import numpy as np
from PIL import Image

# The op families besides this module's: their @register lines fill op_registry.OPS when imported here, so every
# op resolves whatever the caller imported before.
from vlmjax.data import chat_ops, filters, mentions, negatives
from vlmjax.data.op_registry import (OPS, DropExample, Example, Op, as_text, build_from_registry, get,
                                     image_hw, in_key_out_key, names, register, spec_dict)

OP_FAMILIES = (chat_ops, filters, mentions, negatives)


def _mapping(m) -> Dict[str, str]:
    m = m.to_dict() if hasattr(m, "to_dict") else dict(m)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in m.items()):
        raise ValueError(f"mapping must be {{str: str}}, got {m!r}")
    return m


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
@in_key_out_key
def decode(key: str = "image", draft_size=None):
    """`draft_size` (int or [h, w]; for a pipeline that resizes to that size next): a JPEG is decoded at the
    smallest DCT scale (1, 1/2, 1/4 or 1/8) that keeps both sides at least that large, which costs a fraction of a
    full decode (libjpeg's scaled IDCT, PIL's `draft`); other formats, and JPEGs under twice the size, decode
    whole (docs/data.md has its cost and how close it stays to the full decode)."""
    draft = _pil_draft(draft_size)
    return lambda v, rng: _decoded(v, draft, np.asarray)


def _pil_draft(draft_size):
    """decode's `draft_size` as PIL's `draft` takes it: (w, h), or None."""
    return None if draft_size is None else image_hw(draft_size)[::-1]


def _is_pixels(v) -> bool:
    """An image already decoded (uint8[H, W(, C)]), not encoded bytes."""
    return isinstance(v, np.ndarray) and v.dtype != object and v.dtype.kind != "S" and v.ndim in (2, 3)


def _decoded(v, draft, finish) -> np.ndarray:
    """uint8[H, W, 3] of encoded bytes `v` (`finish(pil_rgb_image)` -> array) or of pixels `v` (1 or 3 channels);
    DropExample('corrupt_image') for bytes PIL cannot read."""
    if _is_pixels(v):
        img = v
    else:
        try:
            data = (v.tobytes() if v.dtype == np.uint8 else v.item()) if isinstance(v, np.ndarray) else v
            with Image.open(io.BytesIO(bytes(data))) as im:
                if draft is not None and im.format == "JPEG":
                    im.draft("RGB", draft)
                return finish(im.convert("RGB"))
        except Exception:  # PIL raises several types (UnidentifiedImageError, OSError, SyntaxError, ...)
            raise DropExample("corrupt_image") from None
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, -1)
    return img


def _decode_then_resize(decode_spec: dict, resize_spec: dict) -> Op:
    """`decode` then `resize` of one field as one op: the decoded PIL image is resized as it is, not copied to
    numpy and back between the two (its cost: docs/data.md); the pixels are the ones the two ops give (tested)."""
    key, hw, method = decode_spec.get("key", "image"), image_hw(resize_spec["size"]), resize_spec.get("method",
                                                                                                      "bilinear")
    draft = _pil_draft(decode_spec.get("draft_size"))
    resample = _RESAMPLE[method]

    def finish(im):  # PIL returns a copy for a resize to the image's own size, as resize_image skips it
        return np.asarray(im.resize(hw[::-1], resample))

    def op(ex, rng):
        v = get(ex, key)
        img = _decoded(v, draft, finish)
        return {**ex, key: resize_image(img, hw, method) if _is_pixels(v) else img}

    return op


def _fusable(specs, i: int) -> bool:
    """Whether specs i and i + 1 (both already checked by their builders) are a decode and a resize of one field."""
    if i + 1 >= len(specs):
        return False
    a, b = spec_dict(specs[i]), spec_dict(specs[i + 1])
    return a.get("op") == "decode" and b.get("op") == "resize" and a.get("key", "image") == b.get("key", "image")


@register("resize")
@in_key_out_key
def resize(size, key: str = "image", method: str = "bilinear"):
    hw = image_hw(size)
    if method not in _RESAMPLE:
        raise ValueError(f"method must be one of {sorted(_RESAMPLE)}, got {method!r}")
    return lambda img, rng: resize_image(np.asarray(img), hw, method)


@register("random_resized_crop")
@in_key_out_key
def random_resized_crop(size, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), key: str = "image",
                        method: str = "bilinear"):
    hw = image_hw(size)
    scale, ratio = tuple(map(float, scale)), tuple(map(float, ratio))
    if not (len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1):
        raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi <= 1, got {scale}")
    if not (len(ratio) == 2 and 0 < ratio[0] <= ratio[1]):
        raise ValueError(f"ratio must be (lo, hi) with 0 < lo <= hi, got {ratio}")

    def fn(img, rng):
        img = np.asarray(img)
        t, l, ch, cw = sample_crop_box(img.shape[0], img.shape[1], rng, scale, ratio)
        return resize_image(img[t:t + ch, l:l + cw], hw, method)

    return fn


@register("center_crop")
@in_key_out_key
def center_crop(size, key: str = "image"):
    h, w = image_hw(size)

    def fn(img, rng):
        img = np.asarray(img)
        if img.shape[0] < h or img.shape[1] < w:
            raise ValueError(f"center_crop: image {img.shape[:2]} is smaller than the crop {(h, w)}; resize first")
        t, l = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
        return img[t:t + h, l:l + w]

    return fn


@register("flip_lr")
@in_key_out_key
def flip_lr(p: float = 0.5, key: str = "image"):
    if not 0 <= p <= 1:
        raise ValueError(f"p must be in [0, 1], got {p}")

    def fn(img, rng):
        img = np.asarray(img)
        return img[:, ::-1] if rng.random() < p else img

    return fn


@register("value_range")
@in_key_out_key
def value_range(vmin: float = -1.0, vmax: float = 1.0, key: str = "image"):
    lo, scale = float(vmin), (float(vmax) - float(vmin)) / 255.0
    return lambda img, rng: np.asarray(img, np.float32) * np.float32(scale) + np.float32(lo)


@register("choice", reads=lambda a: names(a["key"]))
def choice(key, out=None) -> Op:
    keys = names(key)
    outs = keys if out is None else names(out)
    if len(outs) != len(keys):
        raise ValueError(f"out names {outs} do not match keys {keys}")

    def op(ex, rng):
        fields = [get(ex, k) for k in keys]
        n = len(fields[0])
        if any(len(f) != n for f in fields):
            raise ValueError(f"choice: fields {keys} have different lengths {[len(f) for f in fields]}")
        if n == 0:
            raise DropExample(f"empty_{keys[0]}")
        i = int(rng.integers(n))
        return {**ex, **{o: f[i] for o, f in zip(outs, fields)}}

    return op


def canonicalize_text(text: str) -> str:
    """HF's SiglipTokenizer (and big_vision's SigLIP) text canonicalisation: punctuation removed, lower case,
    whitespace collapsed."""
    return " ".join(text.translate(_PUNCTUATION).lower().split())


_PUNCTUATION = str.maketrans("", "", string.punctuation)


@register("tokenize", reads=lambda a: [a["key"]])
def tokenize(max_len: int, key: str = "text", out: Optional[str] = None, eos: bool = True, bos: bool = False,
             pad_id=None, canonicalize: bool = False, keep_eos: bool = False, *, tokenizer=None) -> Op:
    """Longer texts are cut to max_len after adding eos, so a cut text carries no eos (it did not end there);
    with `keep_eos` the text is cut before its eos instead, which stays last (HF tokenizers' truncation).

    A list of K texts gives int32[K, max_len] tokens and mask. `pad_id`: the id padding positions hold (default:
    the tokenizer's pad id; 'eos': its eos id, what SigLIP checkpoints were trained with). `canonicalize`: the
    text goes through `canonicalize_text` first, as HF's SiglipTokenizer does."""
    if not (isinstance(max_len, (int, np.integer)) and max_len > 0):
        raise ValueError(f"max_len must be a positive int, got {max_len!r}")
    if not (pad_id is None or pad_id == "eos" or (isinstance(pad_id, (int, np.integer)) and pad_id >= 0)):
        raise ValueError(f"pad_id must be an int >= 0, 'eos' or None, got {pad_id!r}")
    out = out or key

    def one(text):
        if canonicalize:
            text = canonicalize_text(text)
        if not text.strip():
            raise DropExample("empty_caption")
        ids = tokenizer.encode(text)
        end = [tokenizer.eos_id] if eos else []
        ids = ([tokenizer.bos_id] if bos else []) + list(ids)
        ids = ids[:max_len - len(end)] + end if keep_eos else (ids + end)[:max_len]
        pad = tokenizer.eos_id if pad_id == "eos" else tokenizer.pad_id if pad_id is None else pad_id
        tokens = np.full(max_len, pad, np.int32)
        tokens[:len(ids)] = ids
        mask = np.zeros(max_len, np.int32)
        mask[:len(ids)] = 1
        return tokens, mask

    def op(ex, rng):
        value = get(ex, key)
        if isinstance(value, (list, tuple)):
            pairs = [one(as_text(v)) for v in value]  # K texts -> int32[K, max_len]
            tokens, mask = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
        else:
            tokens, mask = one(as_text(value))
        return {**ex, out: tokens, f"{out}_mask": mask}

    return op


@register("keep", reads=lambda a: names(a["keys"]))
def keep(keys) -> Op:
    kept = names(keys)
    return lambda ex, rng: {k: get(ex, k) for k in kept}


@register("rename", reads=lambda a: list(_mapping(a["mapping"])))
def rename(mapping) -> Op:
    m = _mapping(mapping)

    def op(ex, rng):
        for k in m:
            get(ex, k)
        return {**{k: v for k, v in ex.items() if k not in m}, **{m[k]: ex[k] for k in m}}

    return op


@register("copy", reads=lambda a: list(_mapping(a["mapping"])))
def copy(mapping) -> Op:
    m = _mapping(mapping)
    return lambda ex, rng: {**ex, **{dst: get(ex, src) for src, dst in m.items()}}


# ---- specs -------------------------------------------------------------------------------------------------------
def _build(i: int, spec, tokenizer) -> Op:
    """Builds op i of a spec list; ValueError "preprocess[i] ('name'): ..." for any problem with the spec."""
    return build_from_registry(OPS, "preprocess", i, spec, tokenizer=tokenizer)


def validate_specs(specs: Sequence) -> None:
    """Raises ValueError naming the op index, name and argument of the first bad spec."""
    for i, spec in enumerate(specs or []):
        _build(i, spec, tokenizer=None)


def get_preprocess_fn(specs: Sequence, *, tokenizer=None, fuse: bool = True) -> Op:
    """`fn(example, rng) -> example` applying `specs` in order. `fuse`: a decode followed by a resize of the same
    field runs as one op (`_decode_then_resize`: the same pixels, less copying)."""
    specs = list(specs or [])
    ops = [_build(i, spec, tokenizer) for i, spec in enumerate(specs)]  # every spec checked, fused or not
    for i, spec in enumerate(specs):
        if spec_dict(spec)["op"] == "tokenize" and tokenizer is None:
            raise ValueError(f"preprocess[{i}] ('tokenize'): needs a tokenizer, but the task provides none")
    fused, i = [], 0
    while i < len(ops):
        if fuse and _fusable(specs, i):
            fused.append(_decode_then_resize(spec_dict(specs[i]), spec_dict(specs[i + 1])))
            i += 2
        else:
            fused.append(ops[i])
            i += 1
    ops = fused

    def fn(example: Example, rng: np.random.Generator) -> Example:
        example = dict(example)
        for op in ops:
            example = op(example, rng)
        return example

    return fn
