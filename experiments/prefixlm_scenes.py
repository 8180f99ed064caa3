r"""Prefix-LM VLM on the built-in `scenes` dataset, on CPU: caption pretraining, then multi-turn QA chat.

    vlmjax-train --config experiments/vit_scenes.py --workdir workdirs/vit_scenes     # the image encoder (make demo)
    vlmjax-train --config experiments/prefixlm_scenes.py:pretrain --workdir workdirs/prefixlm_scenes_pretrain
    vlmjax-train --config experiments/prefixlm_scenes.py:chat --workdir workdirs/prefixlm_scenes_chat
    vlmjax-predict --workdir workdirs/prefixlm_scenes_chat --image a.png --prompt "what color is the circle?"
    vlmjax-train --config experiments/prefixlm_scenes.py:runlocal --workdir /tmp/prefixlm   # seconds, smoke test

Needs `make data` (the dataset and data/tfds/scenes_spm.model). Model: a hybrid ViT (conv stem, then 2x2 patches:
64 image tokens at 64 px) whose patch tokens, merged 2x2, go through a linear projector (PaliGemma) in front of a
Gemma-style decoder. Stage 1 (`pretrain`) starts the ViT from a vit_scenes run (as PaliGemma and LLaVA start from
a pretrained image encoder; `--config.init_from.workdir=''` trains it from scratch) and the LM from scratch, and
learns to caption ("caption" -> one of the three phrasings, which name every object's size, colour and shape and
their left-to-right order). Stage 2 (`chat`) starts from stage 1's parameters (init_from) and trains on the
question/answer pairs as multi-turn chats, loss on the assistant turns only. Nothing is frozen: the LM starts from
scratch; `config.optimizer.freeze` takes a regex (e.g. LLaVA stage 1: '^(?!proj/).*' trains only the projector).
The measured accuracy of this recipe is in docs/prefixlm.md.
"""
import ml_collections

from .common import EVAL_SPLIT, image_pp, keep, parse_arg

TYPES = ["color", "shape", "count", "relation"]
TRAIN_KEYS = ["image", "tokens", "input_mask", "mask_ar", "mask_loss"]
PROMPT_LEN = 24  # "<|user|> is the yellow triangle to the left of the purple cross?<|end|><|assistant|>" < 20


def pretrain_pp(text_len, size=None, generate_prob=0.0):
    keys = TRAIN_KEYS + (["image_last"] if generate_prob else [])
    return image_pp(size) + [dict(op="chat_caption", max_len=text_len, key="captions", prompt="caption",
                                  generate_prob=generate_prob), keep(*keys)]


def chat_pp(text_len, max_turns, size=None, shuffle=True):
    # Every turn of the image, in random order: each chat's first turn is exactly the single-turn eval format.
    return image_pp(size) + [dict(op="chat_qa", max_len=text_len, max_turns=max_turns, min_turns=max_turns,
                                  shuffle=shuffle),
                             keep(*TRAIN_KEYS)]


def vqa_pp(size=None):
    return image_pp(size) + [
        dict(op="chat_prompts", max_len=PROMPT_LEN, key="questions", max_prompts=8),
        dict(op="text_bytes", key="answers", max_items=8, max_chars=24, out="refs"),
        dict(op="list_index", key="question_types", values=TYPES, max_items=8, out="question_type"),
        keep("image", "prompts", "prompts_mask", "prompts_valid", "refs", "refs_valid", "question_type")]


def caption_pp(size=None):
    return image_pp(size) + [
        dict(op="chat_prompts", max_len=PROMPT_LEN, prompt="caption", max_prompts=1),
        dict(op="text_bytes", key="captions", max_items=3, max_chars=128, out="refs"),
        keep("image", "prompts", "prompts_mask", "prompts_valid", "refs", "refs_valid")]


def evals(stage, size=None, max_examples=0, text_len=32, max_turns=8):
    data = lambda pp: dict(split=EVAL_SPLIT, preprocess=pp, max_examples=max_examples)  # noqa: E731
    ev = dict(caption=dict(type="caption", max_new_tokens=28, data=data(caption_pp(size))))
    if stage == "pretrain":
        ev["perplexity"] = dict(type="perplexity", data=data(pretrain_pp(text_len, size)))
    else:
        ev["vqa"] = dict(type="vqa", max_new_tokens=4, question_types=TYPES, data=data(vqa_pp(size)))
        ev["perplexity"] = dict(type="perplexity", data=data(chat_pp(text_len, max_turns, size, shuffle=False)))
    return ev


def model(vit_width=96, vit_depth=2, lm_width=128, lm_depth=3, projector="linear", token_merge=2, stem=64,
          stem_blocks=3):
    """stem > 0: the ViT's conv stem (4x4 patchify + `stem_blocks` residual 3x3 convs, `stem` channels) then 2x2
    patches, so 8x8 patches on the image either way (64 tokens at 64 px; token_merge 2 hands 16 of them to the LM).
    The default ViT is experiments/vit_scenes.py's, so that a vit_scenes run initialises it."""
    return dict(
        vit=dict(patch_size=(2, 2) if stem else (8, 8), width=vit_width, depth=vit_depth,
                 num_heads=max(vit_width // 32, 1), mlp_dim=4 * vit_width, stem_channels=stem,
                 stem_blocks=stem_blocks),
        lm=dict(width=lm_width, depth=lm_depth, num_heads=4, num_kv_heads=1, head_dim=lm_width // 4,
                mlp_dim=3 * lm_width),
        projector=projector, feature_layer=-1, token_merge=token_merge)


def get_config(arg=None):
    stage = parse_arg(arg, ("pretrain", "chat", "runlocal"), __file__) or "pretrain"
    c = ml_collections.ConfigDict()
    c.task = "prefixlm"
    c.tokenizer = "data/tfds/scenes_spm.model"
    c.image_input = "continuous"
    c.image_size = 64
    c.seed = 0
    c.log_every_steps = 50
    c.loss_normalize = "per_token"
    c.z_loss = 1e-4
    c.model = model()
    c.optimizer = dict(name="adamw", lr=1e-3, b2=0.98, weight_decay=1e-4, clip_norm=1.0)
    c.schedule = dict(name="cosine", warmup_steps=100, end_lr_frac=0.05)
    c.checkpoint = dict(every_steps=500, keep=1)
    c.eval = dict(every_steps=0, batch_size=128)

    if stage == "pretrain":
        c.text_len = 32
        c.total_steps, c.batch_size = 500, 64
        c.data = dict(name="scenes/default", split="train", preprocess=pretrain_pp(c.text_len))
        c.evals = evals("pretrain", max_examples=512, text_len=c.text_len)
        # The ViT of a vit_scenes run (PaliGemma and LLaVA start from a pretrained image encoder too); its
        # classifier and MAP head are not part of the VLM. init_from.workdir='' trains the ViT from scratch.
        c.init_from = dict(workdir="workdirs/vit_scenes", include=r"vit/.*", rewrite=[(r"^vit/", "")])
    else:
        c.text_len = 112  # up to 8 turns of ~13 tokens; turns that do not fit are dropped whole
        c.total_steps, c.batch_size = 2400, 64  # chosen over 1200 on validation (docs/prefixlm.md)
        c.data = dict(name="scenes/default", split="train", preprocess=chat_pp(c.text_len, max_turns=8))
        c.evals = evals("chat", text_len=c.text_len)
        c.evals.caption.data.max_examples = c.evals.perplexity.data.max_examples = 512
        c.init_from = dict(workdir="workdirs/prefixlm_scenes_pretrain", include=".*")
        c.optimizer.lr = 5e-4
        c.schedule.warmup_steps = 50

    if stage == "runlocal":  # chat format end to end on scenes/tiny, no init_from: seconds
        c.data.name = "scenes/tiny"
        c.image_size = 32
        c.text_len = 48
        c.data.preprocess = chat_pp(c.text_len, max_turns=3)
        c.evals = evals("chat", max_examples=32, text_len=c.text_len, max_turns=3)
        c.total_steps, c.batch_size, c.log_every_steps = 10, 8, 5
        c.eval.batch_size = 16
        c.model = model(32, 1, 32, 2, token_merge=1, stem=16, stem_blocks=1)
        c.init_from = dict(workdir="", include=".*")
        c.schedule.warmup_steps = 2
        c.checkpoint = dict(every_steps=10, keep=1)
    return c
