"""Per-batch preprocessing that runs on the accelerator, inside the jitted train step (pure jnp functions).

Decoding stays on the host; what is cheap on a device and costly on the host's cores moves here: the uint8 -> float
conversion (so the host also sends 4x fewer bytes), random crops and flips. Configured like the host ops, as
`config.data.device_preprocess`: a list of `{'op': NAME, **kwargs}` applied in order to the train batch, each op with
its own key `fold_in(rng, i)`; evaluation batches never pass through it (they use their own host `preprocess`).

Ops (`key` defaults to 'image'; images are [B, H, W, C]):
  value_range(vmin=-1, vmax=1, key)    uint8 -> float32, bit-equal to the host op `value_range`
  random_crop(size, key)               a [h, w] window at a uniformly random place, per example
  flip_lr(p=0.5, key)                  mirror left-right, per example with probability p
"""
from typing import Callable, Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vlmjax.data.op_registry import build_from_registry, image_hw, register
from vlmjax.data.ops import value_range as host_value_range

Batch = Dict[str, jax.Array]
DeviceOp = Callable[[Batch, jax.Array], Batch]

_DEVICE_OPS: Dict[str, Callable[..., DeviceOp]] = {}


def _register(name: str):
    return register(name, _DEVICE_OPS)


# ---- pure functions on arrays -------------------------------------------------------------------------------------
def value_range_table(vmin: float = -1.0, vmax: float = 1.0) -> np.ndarray:
    """float32[256]: the host op `value_range` applied to every uint8 value."""
    return host_value_range(vmin, vmax, key="v")({"v": np.arange(256, dtype=np.uint8)}, None)["v"]


def apply_value_range(images: jax.Array, table: jax.Array) -> jax.Array:
    """uint8[B, H, W, C] -> float32[B, H, W, C] by lookup in `table` float32[256], so equal bit for bit to the host
    op (a multiply-add could be fused into one FMA and round differently)."""
    if images.dtype != jnp.uint8:
        raise ValueError(f"device value_range: expects uint8 images (drop the host value_range op), got "
                         f"{images.dtype}")
    return jnp.take(table, images.astype(jnp.int32), axis=0)


def crop(images: jax.Array, tops: jax.Array, lefts: jax.Array, hw: tuple) -> jax.Array:
    """[B, H, W, C] -> [B, h, w, C]: example b's window starts at (tops[b], lefts[b]) (int32[B]).

    Two gathers along the image axes (not a vmapped dynamic_slice): elementwise over the batch axis, so a batch
    sharded over it stays sharded, under auto and explicit mesh axes alike."""
    h, w = hw
    rows = tops[:, None, None, None] + jnp.arange(h)[None, :, None, None]
    cols = lefts[:, None, None, None] + jnp.arange(w)[None, None, :, None]
    return jnp.take_along_axis(jnp.take_along_axis(images, rows, axis=1), cols, axis=2)


def sample_crop_offsets(rng: jax.Array, batch: int, in_hw: tuple, hw: tuple):
    """(tops, lefts) int32[B], uniform over the valid windows of an [h, w] crop of an in_hw image."""
    if hw[0] > in_hw[0] or hw[1] > in_hw[1]:
        raise ValueError(f"device random_crop: crop {hw} is larger than the images {in_hw}")
    kt, kl = jax.random.split(rng)
    return (jax.random.randint(kt, (batch,), 0, in_hw[0] - hw[0] + 1),
            jax.random.randint(kl, (batch,), 0, in_hw[1] - hw[1] + 1))


def flip(images: jax.Array, mask: jax.Array) -> jax.Array:
    """[B, H, W, C]: example b mirrored left-right where mask[b] (bool[B])."""
    return jnp.where(mask[:, None, None, None], images[:, :, ::-1], images)


# ---- ops ---------------------------------------------------------------------------------------------------------
@_register("value_range")
def value_range(vmin: float = -1.0, vmax: float = 1.0, key: str = "image") -> DeviceOp:
    table = value_range_table(vmin, vmax)
    return lambda batch, rng: {**batch, key: apply_value_range(batch[key], jnp.asarray(table))}


@_register("random_crop")
def random_crop(size, key: str = "image") -> DeviceOp:
    hw = image_hw(size)

    def op(batch, rng):
        images = batch[key]
        tops, lefts = sample_crop_offsets(rng, images.shape[0], images.shape[1:3], hw)
        return {**batch, key: crop(images, tops, lefts, hw)}

    return op


@_register("flip_lr")
def flip_lr(p: float = 0.5, key: str = "image") -> DeviceOp:
    if not 0 <= p <= 1:
        raise ValueError(f"p must be in [0, 1], got {p}")
    return lambda batch, rng: {**batch, key: flip(batch[key], jax.random.uniform(rng, (batch[key].shape[0],)) < p)}


def get_device_preprocess_fn(specs: Sequence) -> Callable[[Batch, jax.Array], Batch]:
    """`fn(batch, rng) -> batch` applying `specs` in order (identity for none); ValueError
    "device_preprocess[i] ('name'): ..." for a bad spec, raised here, before anything is traced."""
    ops = [build_from_registry(_DEVICE_OPS, "device_preprocess", i, spec) for i, spec in enumerate(specs or [])]

    def fn(batch: Batch, rng: jax.Array) -> Batch:
        for i, op in enumerate(ops):
            try:
                batch = op(batch, jax.random.fold_in(rng, i))
            except KeyError as e:
                raise KeyError(f"device_preprocess[{i}]: the batch has no key {e}; it has {sorted(batch)}") from None
        return batch

    return fn
