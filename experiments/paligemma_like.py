r"""PaliGemma-like prefix-LM at pod scale: So400m/14-class ViT at 224 px (256 image tokens), linear projector,
Gemma-2B-class decoder (width 2048, 18 layers, MQA, head_dim 256, GeGLU 16384, ~2B parameters without the
embedding), bf16 compute with float32 master weights, FSDP over the pod.

    vlmjax-train --config experiments/paligemma_like.py --workdir gs://BUCKET/paligemma_like --distributed=auto
    vlmjax-train --config experiments/paligemma_like.py:chat --workdir gs://BUCKET/paligemma_like_chat ...
    vlmjax-train --config experiments/paligemma_like.py --workdir /tmp/x --dry_run --num_devices 256 --target tpu_v5p
    vlmjax-train --config experiments/paligemma_like.py:runlocal --workdir /tmp/paligemma_like   # CPU, minutes

Stage 1 (default) captions web images with PaliGemma's prompt "caption en" (webdataset shards, e.g. CC12M), the
ViT taken from a SigLIP So400m run through init_from ('^vit/' -> the contrastive run's 'img/' tower); stage 2
(`chat`) fine-tunes on QA chats chained from stage 1. The tokenizer must carry the chat symbols (<|user|>,
<|assistant|>, <|end|>, <|boi|>, <|eoi|>), e.g. one trained with `python -m vlmjax.data.tokenizer`; the vocabulary
is padded to a multiple of 256 so the head splits over the tensor axis.
"""
import ml_collections

from .common import image_pp, keep, parse_arg

IMAGE = 224
TEXT_LEN = 128
TRAIN_KEYS = ["image", "tokens", "input_mask", "mask_ar", "mask_loss"]


def train_image_pp(size):
    return [dict(op="decode", key="image"), dict(op="random_resized_crop", key="image", size=size, scale=(0.9, 1.0)),
            dict(op="value_range", key="image", vmin=-1, vmax=1)]


def model(vit_width=1152, vit_depth=27, vit_mlp=4304, vit_heads=16, patch=14, lm_width=2048, lm_depth=18,
          lm_heads=8, head_dim=256, lm_mlp=16384, vocab=256_000, scan=True):
    return dict(
        vit=dict(patch_size=(patch, patch), width=vit_width, depth=vit_depth, mlp_dim=vit_mlp, num_heads=vit_heads,
                 posemb="learn", remat_policy="dots_no_batch", scan_layers=scan, dtype="bfloat16"),
        lm=dict(vocab_size=vocab, width=lm_width, depth=lm_depth, num_heads=lm_heads, num_kv_heads=1,
                head_dim=head_dim, mlp_dim=lm_mlp, mlp_activation="gelu", remat_policy="dots_no_batch",
                scan_layers=scan, dtype="bfloat16", param_dtype="float32"),
        projector="linear", feature_layer=-1)


def get_config(arg=None):
    arg = parse_arg(arg, ("pretrain", "chat", "runlocal"), __file__) or "pretrain"
    c = ml_collections.ConfigDict()
    c.task = "prefixlm"
    c.tokenizer = "gs://BUCKET/tokenizers/chat_spm.model"
    c.image_input = "continuous"
    c.image_size = IMAGE
    c.text_len = TEXT_LEN
    c.seed = 0
    c.loss_normalize = "per_token"
    c.z_loss = 1e-4
    c.log_every_steps = 100
    c.model = model()
    c.mesh = dict(data=-1, fsdp=16, tensor=1)
    c.optimizer = dict(name="adamw", lr=1e-4, b1=0.9, b2=0.99, weight_decay=1e-4, clip_norm=1.0)
    c.schedule = dict(name="cosine", warmup_steps=2000, end_lr_frac=0.0)
    c.checkpoint = dict(every_steps=2000, keep=3)
    c.eval = dict(every_steps=10_000, batch_size=1024)
    if arg in ("pretrain", "runlocal"):
        c.total_steps, c.batch_size = 200_000, 1024
        c.data = dict(name="webdataset:gs://BUCKET/cc12m/{00000..01242}.tar", split="train", worker_count=32,
                      preprocess=train_image_pp(IMAGE) + [
                          dict(op="chat_caption", max_len=TEXT_LEN, key="caption", prompt="caption en"),
                          keep(*TRAIN_KEYS)])
        c.evals = dict(perplexity=dict(type="perplexity", data=dict(
            split="train[-10000:]", preprocess=image_pp(IMAGE, draft=True) + [
                dict(op="chat_caption", max_len=TEXT_LEN, key="caption", prompt="caption en"),
                keep(*TRAIN_KEYS)])))
        # The image tower from a SigLIP So400m/14 run (experiments with task 'contrastive', tower at 'img/').
        c.init_from = dict(workdir="gs://BUCKET/siglip_so400m", include="^vit/.*",
                           rewrite=[("^vit/", "img/")])
        # LLaVA-style alternative with a pretrained LM: train only the projector first.
        # c.optimizer.freeze = "^(?!proj/).*"
    else:  # chat
        c.total_steps, c.batch_size = 20_000, 256
        # Any tfds dataset with `questions` / `answers` lists per image (VQAv2, GQA converted to chats).
        c.data = dict(name="vqa_chats", data_dir="gs://BUCKET/tensorflow_datasets", split="train", worker_count=32,
                      preprocess=train_image_pp(IMAGE) + [dict(op="chat_qa", max_len=TEXT_LEN),
                                                          keep(*TRAIN_KEYS)])
        c.evals = dict()
        c.init_from = dict(workdir="gs://BUCKET/paligemma_like", include=".*")
        c.optimizer.lr = 1e-5

    if arg == "runlocal":  # the same family, shrunk, on the built-in scenes/tiny
        c.tokenizer = "data/tfds/scenes_spm.model"
        c.image_size, c.text_len = 56, 32  # patch 14 -> 4x4 tokens
        c.model = model(32, 2, 64, 2, 14, 64, 2, 2, 32, 128, vocab=512, scan=True)
        c.model.vit.dtype = c.model.lm.dtype = "float32"
        c.mesh = dict(data=-1, fsdp=1, tensor=1)
        c.data = dict(name="scenes/tiny", data_dir="data/tfds", split="train", preprocess=image_pp(56) + [
            dict(op="chat_caption", max_len=c.text_len, key="captions", prompt="caption en"),
            keep(*TRAIN_KEYS)])
        c.evals = dict(perplexity=dict(type="perplexity", data=dict(split="test", max_examples=64,
                                                                    preprocess=c.data.preprocess)))
        c.init_from = dict(workdir="", include=".*")
        c.total_steps, c.batch_size, c.log_every_steps = 10, 16, 5
        c.eval = dict(every_steps=10, batch_size=32)
        c.schedule.warmup_steps = 2
        c.optimizer.lr = 1e-3
        c.checkpoint = dict(every_steps=10, keep=1)
    return c
