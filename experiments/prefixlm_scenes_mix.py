r"""Prefix-LM VLM on `scenes` in one stage: a training mixture of captioning and multi-turn QA chat.

    vlmjax-train --config experiments/vit_scenes.py --workdir workdirs/vit_scenes     # the image encoder (make demo)
    vlmjax-train --config experiments/prefixlm_scenes_mix.py --workdir workdirs/prefixlm_scenes_mix
    vlmjax-predict --workdir workdirs/prefixlm_scenes_mix --image a.png --prompt "what color is the circle?"
    vlmjax-train --config experiments/prefixlm_scenes_mix.py:runlocal --workdir /tmp/prefixlm_mix   # seconds

The model, optimizer and evaluators of `prefixlm_scenes:chat`; the data of both its stages at once, as PaliGemma
trains one model on a mixture of tasks (`config.data.mixture`, docs/data.md): 1 caption example ("caption" -> a
caption) for every 3 chats, each padded to the chat's 112 tokens, for 1700 steps: the two-stage recipe's 500
caption + 1200 chat steps, its first measured length, with about as many examples of each kind (27k caption and
82k chat examples here, 32k and 77k there). The ViT starts from a vit_scenes run, the LM from scratch, at the
caption stage's lr and warm-up. Measured against the two stages in docs/prefixlm.md.
"""
from .common import parse_arg
from .prefixlm_scenes import chat_pp, get_config as two_stage, pretrain_pp


def get_config(arg=None):
    runlocal = parse_arg(arg, ("runlocal",), __file__) == "runlocal"
    c = two_stage("runlocal" if runlocal else "chat")  # runlocal: scenes/tiny, a tiny model, no init_from
    c.data.preprocess = chat_pp(c.text_len, max_turns=3 if runlocal else 8)
    c.data.mixture = dict(caption=dict(weight=1.0, preprocess=pretrain_pp(c.text_len)), chat=dict(weight=3.0))
    if not runlocal:  # the caption stage's schedule and start, for both stages' steps
        c.total_steps = 1700
        c.optimizer.lr, c.schedule.warmup_steps = 1e-3, 100
        c.init_from = dict(workdir="workdirs/vit_scenes", include=r"vit/.*", rewrite=[(r"^vit/", "")])
    return c
