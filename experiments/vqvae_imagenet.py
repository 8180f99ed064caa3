r"""Pod-scale VQ-VAE tokenizer on ImageNet 256: f = 16 (16x16 codes), 16384 l2-normalised 8-dim codes.

    vlmjax-train --config experiments/vqvae_imagenet.py --workdir gs://BUCKET/vqvae_imagenet --distributed=auto
    vlmjax-train --config experiments/vqvae_imagenet.py:runlocal --workdir /tmp/vqvae_imagenet_local  # CPU, ~1 min

The quantizer follows ViT-VQGAN / LlamaGen's recipe against codebook collapse at 16k codes: the encoder output
(z_channels wide) is projected to 8 dimensions, l2-normalised together with the codes, and searched there; unused
codes are also restarted from encoder outputs every 2000 steps. The conv stack is taming's VQGAN f16
(ch 128, ch_mult 1-1-2-2-4, 2 ResBlocks per level). There is no adversarial or perceptual loss in this framework
yet, so expect blurrier reconstructions (higher rFID) than VQGAN/LlamaGen at equal PSNR.

Needs `imagenet2012` prepared for tfds in `data_dir` (manual download). Batch 256 over a data-parallel mesh: the
codebook is replicated, the conv kernels' output channels follow `conv_out -> tensor` if a tensor axis is set.
"""
import ml_collections

from .common import keep, parse_arg

IMAGE = 256


def _train_pp(size):
    # Random crops covering >= 80% of the image, then a flip: the augmentation of LlamaGen's tokenizer training.
    return [dict(op="decode", key="image"),
            dict(op="random_resized_crop", key="image", size=size, scale=(0.8, 1.0), ratio=(3 / 4, 4 / 3)),
            dict(op="flip_lr", key="image"), dict(op="value_range", key="image", vmin=-1, vmax=1),
            keep("image")]


def _eval_pp(size):
    # scale = ratio = 1: the largest central square (random_resized_crop's fall-back, deterministic), resized.
    return [dict(op="decode", key="image"),
            dict(op="random_resized_crop", key="image", size=size, scale=(1.0, 1.0), ratio=(1.0, 1.0)),
            dict(op="value_range", key="image", vmin=-1, vmax=1), keep("image")]


def get_config(arg=None):
    arg = parse_arg(arg, ("runlocal",), __file__)
    c = ml_collections.ConfigDict()
    c.task = "vqvae"
    c.image_size = IMAGE
    c.recon_loss = "l1"
    c.seed = 0
    c.total_steps = 300_000
    c.batch_size = 256
    c.log_every_steps = 100

    c.data = dict(name="imagenet2012", split="train", data_dir="gs://BUCKET/tensorflow_datasets",
                  preprocess=_train_pp(IMAGE), worker_count=16)
    c.evals = dict(
        recon=dict(type="recon", num_images=16, data=dict(split="validation", preprocess=_eval_pp(IMAGE),
                                                          max_examples=10_000)),
        codebook=dict(type="codebook", data=dict(split="validation", preprocess=_eval_pp(IMAGE))))
    c.eval = dict(every_steps=10_000, batch_size=512)

    c.model = dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=256, norm_groups=32, dropout=0.0,
                   num_codes=16384, code_dim=8, l2_normalize=True, project=True, commitment_cost=0.25,
                   restart_unused=True, restart_window=2000, dtype="bfloat16", param_dtype="float32")
    c.optimizer = dict(name="adamw", lr=1e-4, b1=0.9, b2=0.95, weight_decay=0.05, clip_norm=1.0)
    c.schedule = dict(name="cosine", warmup_steps=5000, end_lr_frac=0.1)
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.checkpoint = dict(every_steps=5000, keep=3)

    if arg == "runlocal":
        # Same family (f16, 16384 l2-normalised 8-dim codes) on the built-in `scenes/tiny` (32 px -> 2x2 codes).
        c.data = dict(name="scenes/tiny", data_dir="data/tfds", split="train", preprocess=_train_pp(32))
        for name in ("recon", "codebook"):
            c.evals[name].data = dict(split="test", preprocess=_eval_pp(32), max_examples=64)
        c.evals.recon.num_images = 4
        c.image_size = 32
        c.total_steps, c.batch_size, c.log_every_steps = 10, 8, 5
        c.eval = dict(every_steps=10, batch_size=32)
        c.model.update(dict(ch=8, num_res_blocks=1, z_channels=16, norm_groups=4, restart_window=5,
                            dtype="float32"))
        c.optimizer.lr = 1e-3
        c.schedule.warmup_steps = 2
        c.checkpoint = dict(every_steps=10, keep=1)
    return c
