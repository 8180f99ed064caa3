r"""Prefix-LM VLM on `scenes` with VQ-VAE image tokens (Chameleon-style), on CPU: tokenizer, pretraining, chat.

    vlmjax-train --config experiments/prefixlm_vq_scenes.py:vqvae --workdir workdirs/prefixlm_vq_scenes_vqvae
    vlmjax-train --config experiments/prefixlm_vq_scenes.py:pretrain --workdir workdirs/prefixlm_vq_scenes_pretrain
    vlmjax-train --config experiments/prefixlm_vq_scenes.py:chat --workdir workdirs/prefixlm_vq_scenes_chat
    vlmjax-predict --workdir workdirs/prefixlm_vq_scenes_pretrain --generate "one shape: a large red circle" --out x.png
    vlmjax-train --config experiments/prefixlm_vq_scenes.py:runlocal --workdir /tmp/prefixlm_vq  # needs the vqvae stage

Images are resized to 32 px. Stage `vqvae` trains the image tokenizer (f4: 8x8 = 64 codes of 256, l2-normalised
8-dim codes with dead-code restarts); any vqvae run with the same image size works (`--config.vq_workdir`).
Its encoder, frozen, turns each image into `<|boi|> 64 codes <|eoi|>`, ids in their own range after the text
vocabulary, embedded by a separate table. `pretrain` mixes captioning (image first, bidirectional prefix, no loss
on the image) with generation (caption first, then the image tokens, causal and supervised with weight
`image_loss_weight`), dropping 10% of the generation captions to the null prompt for classifier-free guidance;
the caption evaluator draws a TensorBoard grid of images generated for fixed captions. `chat` fine-tunes on the
multi-turn QA chats like the continuous experiment (experiments/prefixlm_scenes.py), from `pretrain` (init_from).
"""
import ml_collections

from . import prefixlm_scenes as base
from .common import EVAL_SPLIT, image_pp, keep, parse_arg

SIZE = 32
GEN_CAPTIONS = ["one shape: a large red circle", "one shape: a small blue square",
                "a single large green triangle on a plain background", "one large yellow cross in the center",
                "two shapes: a large purple circle left of a small orange square",
                "a large red square to the left of a large blue circle"]


def vqvae_config(steps=1500, batch=64):
    c = ml_collections.ConfigDict()
    c.task = "vqvae"
    c.image_size = SIZE
    c.recon_loss = "l1"
    c.total_steps, c.batch_size, c.log_every_steps = steps, batch, 50
    pp = image_pp(SIZE) + [keep("image")]
    c.data = dict(name="scenes/default", split="train", preprocess=pp)
    c.evals = dict(recon=dict(type="recon", num_images=8, data=dict(split=EVAL_SPLIT, preprocess=pp, max_examples=512)),
                   codebook=dict(type="codebook", data=dict(split=EVAL_SPLIT, preprocess=pp, max_examples=512)))
    c.eval = dict(every_steps=0, batch_size=128)
    c.model = dict(ch=32, ch_mult=(1, 2, 4), num_res_blocks=1, z_channels=32, norm_groups=8, num_codes=256,
                   code_dim=8, l2_normalize=True, project=True, restart_unused=True, restart_window=100)
    c.optimizer = dict(name="adamw", lr=2e-3, b2=0.99, weight_decay=1e-4, clip_norm=1.0)
    c.schedule = dict(name="cosine", warmup_steps=100, end_lr_frac=0.05)
    c.checkpoint = dict(every_steps=500, keep=1)
    return c


def get_config(arg=None):
    stage = parse_arg(arg, ("vqvae", "pretrain", "chat", "runlocal"), __file__) or "pretrain"
    if stage == "vqvae":
        return vqvae_config()
    c = base.get_config(stage)
    c.image_input = "vq"
    c.vq_workdir = "workdirs/prefixlm_vq_scenes_vqvae"
    c.image_size = SIZE
    c.image_loss_weight = 1.0
    c.cfg_dropout = 0.1
    lm = base.model()["lm"]
    c.model = dict(lm=lm)
    with c.unlocked():
        for ev in c.evals.values():  # same data as the continuous run, resized to the tokenizer's 32 px
            pp = list(ev.data.preprocess)
            ev.data.preprocess = pp[:1] + [dict(op="resize", key="image", size=SIZE)] + pp[1:]
        if stage == "pretrain":
            c.data.preprocess = base.pretrain_pp(c.text_len, SIZE, generate_prob=0.3)
            c.evals.caption.gen_captions = GEN_CAPTIONS
            c.evals.caption.update(cfg_scale=3.0, temperature=1.0, top_k=32)
            c.init_from = dict(workdir="", include=".*", rewrite=[])  # no ViT here; the VQ-VAE is vq_workdir
        elif stage == "chat":
            c.data.preprocess = base.chat_pp(c.text_len, max_turns=8, size=SIZE)
            c.init_from.workdir = "workdirs/prefixlm_vq_scenes_pretrain"
        else:
            c.data.preprocess = base.chat_pp(c.text_len, max_turns=3, size=SIZE)
            c.model = dict(lm=base.model(32, 1, 32, 2)["lm"])
    return c
