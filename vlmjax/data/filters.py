"""ALIGN-style filters for noisy web image-text pairs, as preprocess ops (Jia et al. 2021, section 3).

ALIGN keeps an image only if its shorter side exceeds 200 px and its aspect ratio is below 3, and drops alt-texts
shared by more than 10 images ("1920x1080", "image") and captions that are too short or too long to describe the
image. Each op raises `DropExample(reason)`; the pipeline counts the reasons into the train metrics
(`data/dropped/small_image`, ...), so the price of each filter shows on the dashboard.

Ops (put them before `decode`: they read the image header or the source's size fields, never the pixels):
  filter_image_size(min_side=200, max_aspect=3.0, key='image')    'small_image', 'aspect_ratio'
  filter_caption_words(min_words=3, max_words=20, key='caption')  'short_caption', 'long_caption'
  filter_frequent_caption(max_images_per_caption=10, count_key='caption_count')   'frequent_caption'
  align_filters(...)                                              the three above with ALIGN's thresholds
                                                                  (max_images_per_caption=0: without the third)
  filter_values(key, values)                                      'value_<key>': keeps an example whose scalar
                                                                  `key` is one of `values` (e.g. an evaluation
                                                                  on one-object images of some classes)

The caption-frequency table is a property of the whole source, so the source computes it once (the webdataset
source does while indexing its shards; `CaptionCounts` wraps any other random-access source) and hands each
example its `caption_count`; the op stays a pure per-example function.
"""
import collections
import hashlib
import io
from typing import Dict, Tuple

import numpy as np
from PIL import Image

from vlmjax.data.op_registry import DropExample, Op, as_text, get, register


def normalize_caption(text: str) -> str:
    """The form two captions must share to count as the same alt-text (case and whitespace ignored)."""
    return " ".join(text.lower().split())


def caption_hash(text: str) -> int:
    """Stable 63-bit id of the normalised caption (Python's hash() is salted per process; hosts must agree).

    Frequency tables key on this, not on the text: 12M captions as ints fit in memory, as strings they may not.
    """
    digest = hashlib.blake2b(normalize_caption(text).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def image_size(ex: dict, key: str = "image") -> Tuple[int, int]:
    """(width, height) of `ex[key]`: the source's 'width'/'height' fields when present, else the array shape, else
    the encoded image's header (no pixel decode). Unreadable bytes raise DropExample('corrupt_image')."""
    w, h = ex.get("width"), ex.get("height")
    if w is not None and h is not None and int(w) > 0 and int(h) > 0:
        return int(w), int(h)
    v = get(ex, key)
    if isinstance(v, np.ndarray) and v.dtype != object and v.dtype.kind != "S" and v.ndim in (2, 3):
        return int(v.shape[1]), int(v.shape[0])
    try:
        data = v.item() if isinstance(v, np.ndarray) else v
        with Image.open(io.BytesIO(bytes(data))) as im:
            return im.size
    except Exception:  # PIL raises several types for bad bytes
        raise DropExample("corrupt_image") from None


@register("filter_image_size", reads=lambda a: [a["key"], "width", "height"])
def filter_image_size(min_side: int = 200, max_aspect: float = 3.0, key: str = "image") -> Op:
    """Keeps images whose shorter side is larger than `min_side` px and whose aspect ratio (long/short side) is
    smaller than `max_aspect` (ALIGN: "larger than 200 pixels", "smaller than 3"); drops the others as
    'small_image' (shorter side <= min_side) or 'aspect_ratio' (ratio >= max_aspect)."""
    if not (isinstance(min_side, (int, np.integer)) and min_side >= 0):
        raise ValueError(f"min_side must be an int >= 0, got {min_side!r}")
    if not float(max_aspect) >= 1:
        raise ValueError(f"max_aspect must be >= 1, got {max_aspect!r}")

    def op(ex, rng):
        w, h = image_size(ex, key)
        if min(w, h) <= min_side:
            raise DropExample("small_image")
        if max(w, h) >= float(max_aspect) * min(w, h):
            raise DropExample("aspect_ratio")
        return ex

    return op


@register("filter_caption_words", reads=lambda a: [a["key"]])
def filter_caption_words(min_words: int = 3, max_words: int = 20, key: str = "caption") -> Op:
    """Drops captions of < min_words ('short_caption') or > max_words ('long_caption') whitespace-split words."""
    if not (isinstance(min_words, (int, np.integer)) and isinstance(max_words, (int, np.integer))
            and 0 <= min_words <= max_words):
        raise ValueError(f"need ints 0 <= min_words <= max_words, got {min_words!r}, {max_words!r}")

    def op(ex, rng):
        n = len(as_text(get(ex, key)).split())
        if n < min_words:
            raise DropExample("short_caption")
        if n > max_words:
            raise DropExample("long_caption")
        return ex

    return op


@register("filter_frequent_caption", reads=lambda a: [a["count_key"]])
def filter_frequent_caption(max_images_per_caption: int = 10, count_key: str = "caption_count") -> Op:
    """Drops examples whose caption is shared by more than `max_images_per_caption` images of the source."""
    if not (isinstance(max_images_per_caption, (int, np.integer)) and max_images_per_caption >= 1):
        raise ValueError(f"max_images_per_caption must be an int >= 1, got {max_images_per_caption!r}")

    def op(ex, rng):
        if count_key not in ex:
            raise ValueError(
                f"filter_frequent_caption: the example has no {count_key!r} (keys: {sorted(ex)}); the webdataset "
                f"source provides it, other sources need `vlmjax.data.filters.CaptionCounts`; put the op before "
                f"any `keep` that drops it")
        if int(np.asarray(ex[count_key])) > max_images_per_caption:
            raise DropExample("frequent_caption")
        return ex

    return op


@register("align_filters", reads=lambda a: [a["image_key"], "width", "height", a["caption_key"],
                                          "caption_count"])
def align_filters(min_side: int = 200, max_aspect: float = 3.0, min_words: int = 3, max_words: int = 20,
                  max_images_per_caption: int = 10, image_key: str = "image", caption_key: str = "caption") -> Op:
    """All three filters with ALIGN's thresholds; image checks first (cheapest, and they reject the most).

    max_images_per_caption=0 leaves out the frequency filter (for a source without caption counts)."""
    ops = [filter_image_size(min_side, max_aspect, image_key),
           filter_caption_words(min_words, max_words, caption_key)]
    if max_images_per_caption:
        ops.append(filter_frequent_caption(max_images_per_caption))

    def op(ex, rng):
        for f in ops:
            ex = f(ex, rng)
        return ex

    return op


class CaptionCounts:
    """Wraps a random-access source so each example carries `caption_count` (images sharing its caption).

    The table is built by one pass over the source at construction (reading every record once) and only keeps
    captions seen more than once, keyed by a 63-bit hash.
    """

    def __init__(self, source, key: str = "caption", count_key: str = "caption_count"):
        self.source, self.key, self.count_key = source, key, count_key
        counts = collections.Counter(caption_hash(as_text(source[i][key])) for i in range(len(source)))
        self.counts: Dict[int, int] = {h: c for h, c in counts.items() if c > 1}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        ex = dict(self.source[i])
        ex[self.count_key] = self.counts.get(caption_hash(as_text(ex[self.key])), 1)
        return ex


@register("filter_values", reads=lambda a: [a["key"]])
def filter_values(key: str, values) -> Op:
    """Keeps examples whose scalar feature `key` equals one of `values` (ints or strings); drops the others as
    'value_<key>'. In evaluation a dropped example is padding, so a metric covers exactly the kept ones."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__") or not list(values):
        raise ValueError(f"values must be a non-empty list, got {values!r}")
    wanted = {as_text(v) if isinstance(v, (str, bytes)) else int(v) for v in values}

    def op(ex, rng):
        v = get(ex, key)
        v = as_text(v) if isinstance(v, (str, bytes)) else int(np.asarray(v))
        if v not in wanted:
            raise DropExample(f"value_{key}")
        return ex

    return op
