"""Data generated at run time for the input-pipeline benchmark (no download, no tensorflow): encoded images in one
file read through a random-access source, as an ArrayRecord source reads its records.

`photo_like_jpeg`: a smooth random picture plus per-pixel noise, JPEG quality 90 (~30 KB at 224-320 px, the size of
a web photo at that resolution); captions are random sentences over a small vocabulary.
"""
import io
import mmap
import os
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image

WORDS = ("a", "the", "photo", "of", "dog", "cat", "red", "blue", "small", "large", "car", "on", "street", "table",
         "with", "two", "people", "standing", "near", "tree", "green", "field", "white", "house", "sky", "under")


def photo_like_jpeg(rng: np.random.Generator, min_side: int = 224, max_side: int = 320) -> bytes:
    h, w = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
    base = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    img = np.asarray(base).astype(np.int16) + rng.integers(-20, 21, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def caption(rng: np.random.Generator) -> str:
    return " ".join(WORDS[i] for i in rng.integers(len(WORDS), size=int(rng.integers(6, 16))))


class FileRecords:
    """Random-access source: record i = {image_key: bytes of blob i of `path`, **fields[i]}; picklable (a grain
    worker reopens the file)."""

    def __init__(self, path: str, offsets: Sequence[int], fields: List[Dict], image_key: str = "image",
                 image_shape=None):
        self.path, self.offsets, self.fields, self.image_key = path, np.asarray(offsets, np.int64), fields, image_key
        self.image_shape = image_shape  # blobs are raw uint8 arrays of this shape (what tfds gives for a Tensor)
        self._mm = None

    def __len__(self) -> int:
        return len(self.fields)

    def __getitem__(self, i: int) -> Dict:
        if self._mm is None:
            with open(self.path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        i = int(i)
        blob = self._mm[self.offsets[i]:self.offsets[i + 1]]
        if self.image_shape is not None:
            blob = np.frombuffer(blob, np.uint8).reshape(self.image_shape)
        return {self.image_key: blob, **self.fields[i]}

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_mm"} | {"_mm": None}


def write_records(path: str, blobs: Sequence[bytes], fields: List[Dict], image_key: str = "image",
                  image_shape=None) -> FileRecords:
    """Writes `blobs` back to back into `path`; the source over them."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        for b in blobs:
            f.write(b)
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])])
    return FileRecords(path, offsets, fields, image_key, image_shape)


def jpeg_caption_records(path: str, n: int, seed: int = 0, sides=(224, 320)) -> FileRecords:
    """n photo-like JPEGs with sides in `sides` px, each with 3 captions (`captions`), as a source."""
    rng = np.random.default_rng(seed)
    blobs = [photo_like_jpeg(rng, *sides) for _ in range(n)]
    return write_records(path, blobs, [{"captions": [caption(rng) for _ in range(3)]} for _ in range(n)])


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=6)  # as the scenes builder writes them
    return buf.getvalue()


def _rectangles(rng: np.random.Generator, size: int):
    """(uint8[S, S, 3], label): 1-3 flat rectangles on a grey background, when `scenes` (tfds) cannot be imported."""
    img = np.full((size, size, 3), rng.integers(20, 70), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        y, x = rng.integers(0, size - 12, size=2)
        e = int(rng.integers(8, size // 2))
        img[y:y + e, x:x + e] = rng.integers(40, 250, size=3)
    return img, np.int64(rng.integers(24))


def scenes_records(path: str, n: int, image_size: int = 64, raw: bool = False) -> FileRecords:
    """n `scenes` train examples (PNG, or raw uint8 [S, S, 3] arrays with raw=True) with their labels, rendered by
    the dataset's own generator (flat rectangles where tfds is missing): the demo's data when the built dataset is
    not on this machine."""
    try:
        from vlmjax.data import scenes
    except ImportError:
        scenes = None
    rng = np.random.default_rng(0)
    blobs, fields = [], []
    for i in range(n):
        if scenes is not None:
            img, objs = scenes.render_scene(scenes.example_seed("train", i), image_size)
            label = np.int64(scenes.label_of(objs[scenes.main_index(objs)]))
        else:
            img, label = _rectangles(rng, image_size)
        blobs.append(img.tobytes() if raw else _png(img))
        fields.append({"label": label})
    return write_records(path, blobs, fields, image_shape=(image_size, image_size, 3) if raw else None)
