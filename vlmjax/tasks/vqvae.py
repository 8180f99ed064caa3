"""VQ-VAE image tokenizer task: reconstruction + VQ training, reconstruction/codebook evaluators, encode/decode.

Batch: `image` float[B, H, W, 3] in [-1, 1] (the `value_range` op's default). The quantizer's statistics (EMA
codebook, restart offsets, usage window) live in the 'vq_stats' collection, carried by the core as model state;
dead-code restarts draw from the 'vq' rng stream.

Evaluators (`config.evals.<name>.type`):
  recon     psnr, ssim (per image, then averaged over the split; images in [-1, 1], reconstructions clipped to it),
            l1; plus a TensorBoard grid of `num_images` originals each next to its reconstruction.
  codebook  usage (fraction of the K codes hit at least once over the whole split) and perplexity (exp entropy of
            the split's code histogram, K = all codes equally used).
Predict functions (the tokenizer API, jit-able; the prefix-LM uses them): `encode(variables, images) ->
int32[B, h, w]`, `decode(variables, codes) -> float32[B, H, W, 3]` in [-1, 1], `reconstruct(variables, images)`.
Not implemented yet: the optional VQGAN-style patch adversarial loss.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlmjax.losses.vq import RECON_KINDS, codebook_usage, perplexity, vqvae_loss
from vlmjax.models.vqvae import VQVAE
from vlmjax.tasks import image_metrics
from vlmjax.tasks.base import Evaluator, Task
from vlmjax.tasks.model_config import build_module, check_keys

EVAL_TYPES = ("recon", "codebook")
EVAL_KEYS = {"recon": ("type", "every_steps", "data", "num_images"), "codebook": ("type", "every_steps", "data")}
DEFAULT_NUM_IMAGES = 8


class VQVAETask(Task):
    """Loss = reconstruction (`config.recon_loss`: 'l1' | 'l2') + codebook + beta * commitment."""

    mutable = ("vq_stats",)
    rng_streams = ("dropout", "vq")

    def __init__(self, config):
        super().__init__(config)
        self.model = build_module(VQVAE, config.model)

    @classmethod
    def config_defaults(cls):
        return {"image_size": 64, "recon_loss": "l1"}

    def validate(self):
        if self.config.recon_loss not in RECON_KINDS:
            raise ValueError(f"config.recon_loss={self.config.recon_loss!r}: expected one of {RECON_KINDS}")
        s, f = int(self.config.image_size), self.model.downsample_factor
        if s % f:
            raise ValueError(f"config.image_size={s} is not divisible by the downsampling factor f={f} "
                             f"(config.model.ch_mult has {len(self.model.ch_mult)} levels)")
        self.evaluators()  # unknown evaluator types and keys fail here, before anything compiles

    def dummy_batch(self, batch_size):
        s = int(self.config.image_size)
        return {"image": np.zeros((batch_size, s, s, 3), np.float32)}

    def init(self, rng, batch):
        return logical_boxes(self.model.init({"params": rng}, batch["image"], train=False))

    # -- training -------------------------------------------------------------------------------------------------
    def loss(self, params, state, batch, rngs, step):
        images = batch["image"]
        (recon, aux), new_state = self.model.apply({"params": params, **state}, images, train=True, rngs=rngs,
                                                   mutable=list(self.mutable))
        total, metrics = vqvae_loss(images, recon, aux, self.config.recon_loss)
        metrics["psnr"] = jnp.mean(image_metrics.psnr(images, jnp.clip(recon, -1.0, 1.0)))
        return total, (metrics, {**state, **new_state})

    # -- tokenizer API --------------------------------------------------------------------------------------------
    def encode(self, variables, images):
        """float[B, H, W, 3] in [-1, 1] -> int32[B, H/f, W/f]."""
        return self.model.apply(variables, images, method=VQVAE.encode)

    def decode(self, variables, codes):
        """int[B, h, w] -> float32[B, h*f, w*f, 3], clipped to [-1, 1]."""
        return jnp.clip(self.model.apply(variables, codes, method=VQVAE.decode), -1.0, 1.0)

    def reconstruct(self, variables, images):
        """float[B, H, W, 3] -> float32[B, H, W, 3] in [-1, 1] (one forward pass, same as decode(encode(x)))."""
        recon, _ = self.model.apply(variables, images, train=False)
        return jnp.clip(recon, -1.0, 1.0)

    def predict_fns(self):
        return {"encode": self.encode, "decode": self.decode, "reconstruct": self.reconstruct}

    # -- evaluation -----------------------------------------------------------------------------------------------
    def evaluators(self):
        evals = {}
        for name, cfg in self.config.evals.items():
            kind = cfg.get("type", "")
            if kind not in EVAL_TYPES:
                raise ValueError(f"config.evals.{name}.type={kind!r}: this task offers {', '.join(EVAL_TYPES)}")
            check_keys(cfg, EVAL_KEYS[kind], f"config.evals.{name}")
            if kind == "recon":
                evals[name] = Evaluator(data=cfg.data, predict=self._predict_recon, reduce=reduce_recon,
                                        images=self._images_hook(cfg))
            else:
                evals[name] = Evaluator(data=cfg.data, predict=self._predict_codes,
                                        reduce=lambda out: reduce_codebook(out, self.model.num_codes))
        return evals

    def _predict_recon(self, variables, batch):
        images = batch["image"]
        recon = self.reconstruct(variables, images)
        return {"psnr": image_metrics.psnr(images, recon), "ssim": image_metrics.ssim(images, recon),
                "l1": jnp.mean(jnp.abs(images - recon), axis=(1, 2, 3))}

    def _predict_codes(self, variables, batch):
        return {"codes": self.encode(variables, batch["image"])}

    def reconstruct_batch(self, variables, batch):
        """{'image': float[B, H, W, 3]} -> {'image', 'recon'}: originals and reconstructions (for predict_all)."""
        return {"image": batch["image"], "recon": self.reconstruct(variables, batch["image"])}

    def _images_hook(self, cfg):
        """(variables, runtime) -> {'reconstructions': uint8[N, H, 2W, 3]}: the first N examples of the split, each
        original with its reconstruction on its right."""
        n = int(cfg.get("num_images", DEFAULT_NUM_IMAGES))
        if n <= 0:
            return None
        data = ml_collections.ConfigDict(cfg.data.to_dict())
        data.max_examples = min(n, data.max_examples) if data.max_examples else n

        def hook(variables, runtime):
            # Through the runtime's predict_all: same mesh, shardings and logical rules as the metrics pass.
            out = runtime.predict_all(self.reconstruct_batch, variables, data)
            return {"reconstructions": np.asarray(image_metrics.to_uint8(
                np.concatenate([out["image"], out["recon"]], axis=2)))}

        return hook


def logical_boxes(variables):
    """Re-box plain `nn.Partitioned` leaves as `nn.LogicallyPartitioned` (same names).

    Work-around: `VectorQuantizer` (ema=True) boxes `vq_stats/ema_sums` with `nn.Partitioned(value, ('codebook',
    None))`, i.e. with MESH axis names; unboxing it under the trainer's mesh then fails ("Resource axis: codebook
    ... is not found in mesh"). The names are logical, like every other box in the model.
    """
    def rebox(x):
        if type(x) is nn.Partitioned:
            return nn.LogicallyPartitioned(x.value, x.names, mesh=x.mesh)
        return x

    return jax.tree.map(rebox, variables, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def reduce_recon(out):
    """Per-image psnr/ssim/l1 arrays -> their means over the split."""
    return {k: float(np.mean(out[k])) for k in ("psnr", "ssim", "l1")}


def reduce_codebook(out, num_codes: int):
    """Codes int[N, h, w] of the whole split -> usage (fraction of codes used) and perplexity."""
    counts = np.bincount(np.asarray(out["codes"]).reshape(-1), minlength=num_codes)
    return {"usage": float(codebook_usage(counts)), "perplexity": float(perplexity(jnp.asarray(counts))),
            "codes_used": float(np.sum(counts > 0))}
