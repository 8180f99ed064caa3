"""Images from a user (files, PIL images, numpy arrays) -> the float batch a trained run's model takes.

One reader for the Python API (vlmjax/api.py) and the CLIs: a missing or undecodable file fails with one message
naming it, and an image of any size goes through the run's own evaluation preprocessing (its deterministic image
ops: decode / resize / center_crop / value_range), with a resize to the run's `image_size` added where those ops
leave another size (a run trained on data already at that size has no resize op of its own).
"""
import os

import numpy as np

IMAGE_OPS = ("decode", "resize", "center_crop", "value_range")


def read_image_file(path, where: str = "image") -> np.ndarray:
    """An image file (PNG, JPEG, ... anything PIL reads) -> uint8[H, W, 3] RGB.

    Raises ValueError "`where` 'path': no such file" or "... cannot decode as an image (...)".
    """
    from PIL import Image

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{where} {path!r}: no such file")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # PIL raises several types (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise ValueError(f"{where} {path!r}: cannot decode as an image ({type(e).__name__}: {e})") from None


def to_uint8_rgb(image, where: str = "image") -> np.ndarray:
    """A file path, PIL image or array -> uint8[H, W, 3].

    Arrays are pixel values: uint8, or any other dtype in [0, 255] (rounded and clipped); [H, W] and [H, W, 1]
    are grey, [H, W, 4] drops alpha.
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image_file(image, where)
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{where}: expected an image [H, W], [H, W, 1|3|4], got an array of shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(np.round(arr.astype(np.float64)), 0, 255).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, -1)
    return arr[..., :3]


def as_image_list(images) -> tuple:
    """(list of images, was_single): a single image (path, PIL image, [H, W(, C)] array) or a batch (a list, or a
    [N, H, W, C] array)."""
    if isinstance(images, np.ndarray):
        return (list(images), False) if images.ndim == 4 else ([images], True)
    if isinstance(images, (list, tuple)):
        return list(images), False
    return [images], True


def image_specs(config, eval_name: str = "") -> list:
    """The deterministic image ops (key 'image') of the run's evaluator `eval_name` (default: the first evaluator
    with image ops), else of its training data."""
    def image_ops(specs):
        specs = [s.to_dict() if hasattr(s, "to_dict") else dict(s) for s in specs]
        return [s for s in specs if s["op"] in IMAGE_OPS and s.get("key", "image") == "image"]

    evals = config.get("evals", {})
    if eval_name:
        return image_ops(evals[eval_name].data.preprocess)
    for ev in evals.values():
        if image_ops(ev.data.get("preprocess", [])):
            return image_ops(ev.data.preprocess)
    return image_ops(config.data.preprocess)


def preprocess_fn(specs, image_size: int = 0):
    """uint8[H, W, 3] -> float32[h, w, 3] through `specs` (image_specs' output). With `image_size`, an image that
    the size-changing ops leave at another size is resized to image_size x image_size (bilinear, as the `resize`
    op) before `value_range`."""
    from vlmjax.data import ops

    sizing = ops.get_preprocess_fn([s for s in specs if s["op"] != "value_range"])
    values = ops.get_preprocess_fn([s for s in specs if s["op"] == "value_range"])

    def fn(image: np.ndarray) -> np.ndarray:
        img = sizing({"image": image}, None)["image"]
        if image_size and tuple(img.shape[:2]) != (image_size, image_size):
            img = ops.resize_image(np.asarray(img), (image_size, image_size))
        return np.asarray(values({"image": img}, None)["image"], np.float32)

    return fn


def image_batch(images, fn, where: str = "image") -> tuple:
    """(float32[N, h, w, 3], was_single) of `images` (see as_image_list) through `fn` (preprocess_fn's output)."""
    items, single = as_image_list(images)
    if not items:
        raise ValueError(f"{where}: no images given")
    return np.stack([fn(to_uint8_rgb(im, where)) for im in items]), single
