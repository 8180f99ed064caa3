"""`type='recon'`: an image tokenizer's reconstructions (the task's `reconstruct` predict fn) on a split.

Metrics psnr, ssim (per image, then averaged over the split; images in [-1, 1], reconstructions clipped to it),
l1; plus a TensorBoard grid of `num_images` originals each next to its reconstruction.
"""
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlmjax.evaluators.base import Evaluator
from vlmjax.losses import image_metrics

KEYS = ("num_images",)
DEFAULT_NUM_IMAGES = 8


def build(task, cfg, where: str) -> Evaluator:
    reconstruct = task.predict_fns()["reconstruct"]

    def predict(variables, batch):
        images = batch["image"]
        recon = reconstruct(variables, images)
        return {"psnr": image_metrics.psnr(images, recon), "ssim": image_metrics.ssim(images, recon),
                "l1": jnp.mean(jnp.abs(images - recon), axis=(1, 2, 3))}

    return Evaluator(data=cfg.data, predict=predict, reduce=reduce_recon, images=images_hook(task, cfg))


def reduce_recon(out) -> dict:
    """Per-image psnr/ssim/l1 arrays -> their means over the split."""
    return {k: float(np.mean(out[k])) for k in ("psnr", "ssim", "l1")}


def reconstruct_batch(task):
    """predict fn {'image': float[B, H, W, 3]} -> {'image', 'recon'}: originals and reconstructions."""
    reconstruct = task.predict_fns()["reconstruct"]
    return lambda variables, batch: {"image": batch["image"], "recon": reconstruct(variables, batch["image"])}


def images_hook(task, cfg):
    """(variables, runtime) -> {'reconstructions': uint8[N, H, 2W, 3]}: the first N examples of the split, each
    original with its reconstruction on its right (None when num_images <= 0)."""
    n = int(cfg.get("num_images", DEFAULT_NUM_IMAGES))
    if n <= 0:
        return None
    data = ml_collections.ConfigDict(cfg.data.to_dict())
    data.max_examples = min(n, data.max_examples) if data.max_examples else n
    predict = reconstruct_batch(task)

    def hook(variables, runtime):
        # Through the runtime's predict_all: same mesh, shardings and logical rules as the metrics pass.
        out = runtime.predict_all(predict, variables, data)
        return {"reconstructions": np.asarray(image_metrics.to_uint8(
            np.concatenate([out["image"], out["recon"]], axis=2)))}

    return hook
