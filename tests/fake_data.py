"""Small in-memory datasets for core tests, registered as pipeline sources `fake:<kind>`.

Images are PNG bytes (so the `decode` op runs as on real data); the label is a colour drawn into the image, so a
tiny ViT can learn it in a few steps. `fake:bad` adds a corrupt image and an empty caption at known indices.
"""
import io

import numpy as np
from PIL import Image

from vlmjax.data import pipeline

NUM_CLASSES = 4
SIZE = 16
BAD_IMAGE_INDEX = 3
EMPTY_CAPTION_INDEX = 5


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def make_examples(n: int, seed: int, bad: bool = False):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = int(rng.integers(NUM_CLASSES))
        img = rng.integers(0, 60, (SIZE, SIZE, 3)).astype(np.uint8)
        img[4:12, 4:12, label % 3] = 200 if label < 3 else 120
        if label == 3:
            img[4:12, 4:12, 1] = 200
        image = _png(img)
        caption = f"example {i}"
        if bad and i == BAD_IMAGE_INDEX:
            image = b"\x89PNG this is not an image"
        if bad and i == EMPTY_CAPTION_INDEX:
            caption = "   "
        out.append({"id": np.int64(i), "image": image, "label": np.int64(label), "caption": caption})
    return out


NAN_INDEX = 40


def make_float_examples(n: int, seed: int):
    """Decoded float images (no `decode` op needed); example NAN_INDEX holds a NaN pixel."""
    out = []
    for ex in make_examples(n, seed):
        img = np.asarray(Image.open(io.BytesIO(ex["image"])), np.float32) / 127.5 - 1
        if ex["id"] == NAN_INDEX:
            img[0, 0, 0] = np.nan
        out.append({"image": img, "label": ex["label"]})
    return out


_CACHE = {}


@pipeline.register_source("fake")
def fake_source(cfg, split):
    kind = cfg.name.split(":", 1)[1]
    key = (kind, split)
    if key not in _CACHE:
        n = 256 if split == "train" else 64
        seed = 0 if split == "train" else 1
        if kind == "nan":
            _CACHE[key] = make_float_examples(n, seed) if split == "train" else make_float_examples(n, seed)[:40]
        else:
            _CACHE[key] = make_examples(n, seed, bad=(kind == "bad"))
    return _CACHE[key]
