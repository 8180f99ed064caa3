"""VQ-VAE image tokenizer task: reconstruction + VQ training, reconstruction/codebook evaluators, encode/decode.

Batch: `image` float[B, H, W, 3] in [-1, 1] (the `value_range` op's default). The quantizer's statistics (EMA
codebook, restart offsets, usage window) live in the 'vq_stats' collection, carried by the core as model state;
dead-code restarts draw from the 'vq' rng stream.

Evaluators (`config.evals.<name>.type`): recon, codebook (vlmjax/evaluators/). Predict functions (the tokenizer
API, jit-able; the prefix-LM uses them): `encode(variables, images) ->
int32[B, h, w]`, `decode(variables, codes) -> float32[B, H, W, 3]` in [-1, 1], `reconstruct(variables, images)`.

Optional VQGAN-style adversarial loss (`config.adversarial`, off while `weight` is 0, the default): a PatchGAN
discriminator (`vlmjax/models/discriminator.py`) whose params live in `params['disc']`, trained in the same step by
the same optimizer as the tokenizer; `vlmjax/losses/adversarial.py` explains why one summed loss with
stop-gradients is two optimizers stepping together. From train step `start_step` (the trainer's 0-based state
step) the loss adds weight * hinge generator loss + hinge discriminator loss; before it both are multiplied by 0
(taming's `disc_start`: the discriminator does not train either). The weight is fixed: taming's adaptive weight
(ratio of the reconstruction and GAN gradient norms at the decoder's last layer) is not implemented.
The tokenizer API ignores `params['disc']`.
"""
import jax
import jax.numpy as jnp
import numpy as np

from vlmjax.losses.adversarial import adversarial_gate, adversarial_loss
from vlmjax.losses import image_metrics
from vlmjax.losses.vq import RECON_KINDS, vqvae_loss
from vlmjax.models.discriminator import PatchDiscriminator
from vlmjax.models.vqvae import VQVAE
from vlmjax.tasks.base import Task
from vlmjax.tasks.model_config import build_module

DISC = "disc"  # key of the discriminator's params in `params`
ADVERSARIAL_DEFAULTS = dict(weight=0.0, start_step=0, disc_channels=64, disc_layers=3, disc_norm_groups=8)


def generator_params(params):
    """`params` without the discriminator's: what the VQVAE module applies."""
    return {k: v for k, v in params.items() if k != DISC}


class VQVAETask(Task):
    """Loss = reconstruction (`config.recon_loss`: 'l1' | 'l2') + codebook + beta * commitment
    [+ gate * (adversarial.weight * hinge G loss + hinge D loss)]."""

    mutable = ("vq_stats",)
    rng_streams = ("dropout", "vq")
    eval_kinds = ("recon", "codebook")

    def __init__(self, config):
        super().__init__(config)
        self.model = build_module(VQVAE, config.model)
        adv = config.get("adversarial", ADVERSARIAL_DEFAULTS)
        self.adv_weight, self.adv_start = float(adv["weight"]), int(adv["start_step"])
        self.disc = None
        if self.adv_weight:
            self.disc = PatchDiscriminator(channels=int(adv["disc_channels"]), num_layers=int(adv["disc_layers"]),
                                           norm_groups=int(adv["disc_norm_groups"]), dtype=self.model.dtype,
                                           param_dtype=self.model.param_dtype)

    @classmethod
    def config_defaults(cls):
        return {"image_size": 64, "recon_loss": "l1", "adversarial": dict(ADVERSARIAL_DEFAULTS)}

    def validate(self):
        if self.config.recon_loss not in RECON_KINDS:
            raise ValueError(f"config.recon_loss={self.config.recon_loss!r}: expected one of {RECON_KINDS}")
        self.model.check("config.model")
        s, f = int(self.config.image_size), self.model.downsample_factor
        if s % f:
            conv = "conv" in (self.model.encoder, self.model.decoder)
            why = (f"config.model.ch_mult has {len(self.model.ch_mult)} levels" if conv
                   else "config.model.patch_size")
            raise ValueError(f"config.image_size={s} is not divisible by the downsampling factor f={f} ({why})")
        self._validate_adversarial()

    def _validate_adversarial(self):
        adv = self.config.adversarial
        if adv.weight < 0:
            raise ValueError(f"config.adversarial.weight={adv.weight}: must be >= 0 (0 = off)")
        if adv.start_step < 0:
            raise ValueError(f"config.adversarial.start_step={adv.start_step}: must be >= 0")
        if adv.disc_layers < 1:
            raise ValueError(f"config.adversarial.disc_layers={adv.disc_layers}: must be >= 1")
        if adv.disc_norm_groups < 1 or adv.disc_channels % adv.disc_norm_groups:
            raise ValueError(f"config.adversarial.disc_channels={adv.disc_channels} is not divisible by "
                             f"config.adversarial.disc_norm_groups={adv.disc_norm_groups}")

    def dummy_batch(self, batch_size):
        s = int(self.config.image_size)
        return {"image": np.zeros((batch_size, s, s, 3), np.float32)}

    def init(self, rng, batch):
        variables = dict(self.model.init({"params": rng}, batch["image"], train=False))
        if self.disc is not None:
            disc = self.disc.init({"params": jax.random.fold_in(rng, 1)}, batch["image"])["params"]
            variables["params"] = {**variables["params"], DISC: disc}
        return variables

    # -- training -------------------------------------------------------------------------------------------------
    def loss(self, params, state, batch, rngs, step):
        images = batch["image"]
        (recon, aux), new_state = self.model.apply({"params": generator_params(params), **state}, images, train=True,
                                                   rngs=rngs, mutable=list(self.mutable))
        total, metrics = vqvae_loss(images, recon, aux, self.config.recon_loss)
        if self.disc is not None:
            adv, adv_metrics = adversarial_loss(self.disc_logits, params[DISC], images, recon, self.adv_weight,
                                                adversarial_gate(step, self.adv_start))
            total = total + adv
            metrics.update(adv_metrics)
        metrics["psnr"] = jnp.mean(image_metrics.psnr(images, jnp.clip(recon, -1.0, 1.0)))
        return total, (metrics, {**state, **new_state})

    def disc_logits(self, disc_params, images):
        """Discriminator: params['disc'], float[B, H, W, 3] -> float32[B, h', w'] patch logits."""
        return self.disc.apply({"params": disc_params}, images)

    # -- tokenizer API --------------------------------------------------------------------------------------------
    def _tokenizer_vars(self, variables):
        return {**variables, "params": generator_params(variables["params"])}

    def encode(self, variables, images):
        """float[B, H, W, 3] in [-1, 1] -> int32[B, H/f, W/f]."""
        return self.model.apply(self._tokenizer_vars(variables), images, method=VQVAE.encode)

    def decode(self, variables, codes):
        """int[B, h, w] -> float32[B, h*f, w*f, 3], clipped to [-1, 1]."""
        return jnp.clip(self.model.apply(self._tokenizer_vars(variables), codes, method=VQVAE.decode), -1.0, 1.0)

    def reconstruct(self, variables, images):
        """float[B, H, W, 3] -> float32[B, H, W, 3] in [-1, 1] (one forward pass, same as decode(encode(x)))."""
        recon, _ = self.model.apply(self._tokenizer_vars(variables), images, train=False)
        return jnp.clip(recon, -1.0, 1.0)

    def predict_fns(self):
        return {"encode": self.encode, "decode": self.decode, "reconstruct": self.reconstruct}
