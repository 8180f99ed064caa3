r"""SigLIP (sigmoid loss) on the built-in `scenes` captions, on CPU; zero-shot on the main-object label.

    make data   # builds scenes/default and data/tfds/scenes_spm.model
    vlmjax-train --config experiments/siglip_scenes.py --workdir workdirs/siglip_scenes
    vlmjax-eval --workdir workdirs/siglip_scenes --split test   # training evaluates on validation; the one test read
    vlmjax-train --config experiments/siglip_scenes.py:runlocal --workdir /tmp/siglip_scenes   # seconds, smoke test
    vlmjax-zeroshot --workdir workdirs/siglip_scenes --image a.png --labels "red circle,blue square" \
        --eval caption_retrieval

Default: 2400 steps at batch 128 with vit_scenes' hybrid image tower plus CoordConv input channels and a fixed
sin-cos position embedding, K=6 NegCLIP-style hard-negative captions per image (shape, size, colour and side word
edits and swaps, and "colour shape" name swaps that only move the objects; a (K+1)-way pairwise term), and a
presence term across the batch: every image's mention of one of its objects ("a small red circle", or half the time
without its size, "a red circle") against 6 absent objects one word away, and every image against every other
image's mention, true when the mention names one of its own objects -- independent sigmoid pairs
(`losses.contrastive.presence_loss`, `config.presence_batch`, `scene_object_mention(unsized=0.5)`; each chosen on
validation multi-label mAP, docs/contrastive.md).
Evaluators: `zeroshot` (the four class-name `TEMPLATES`, main-object label), `zeroshot_1obj` (one-object images),
`multilabel` (mAP over every object present with the class name as the prompt, "a {}": the standard protocol),
`multilabel_sized` (the sized `OBJECT_TEMPLATES`, mean of their embeddings), `multilabel_max` (the sized prompts,
each class scored by its better one), `caption_retrieval` (each class scored by its best-matching caption among
every caption the generator can write with that class as the main object: closed-world retrieval over the caption
space, not zero-shot) and image <-> caption `retrieval`.
Variants: `:mentions` (instead of the presence term, a quarter of the training captions replaced by a mention, its
absent objects as hard negatives), `:no_mentions` (neither: the recipe before them), `:presence` (the presence
term on each image's own sized mention only), `:presence_batch` (the batch term with sized mentions only, and the
sized prompts in `multilabel`: the default before `unsized`), `:unsized` (the default; kept so the commands of its
results still run), `:no_order` (K=3 shape/size edits, no position inputs, no presence
term), `:baseline` (the plain SigLIP run with a smaller tower, no hard negatives), `:phrases` (whole object phrases
swapped), `:softmax` (CLIP's loss and inits, experiments/clip_scenes.py), `:runlocal` (a tiny smoke test without
hard negatives; add `hardneg` for K=3 ones, `presence`, `presence_batch` or `unsized` for the presence term), `:heldout`
(trains on `scenes/heldout`, whose train split never shows the 4 `HELDOUT_CLASSES`, with no hard negative or mention
naming them either; evaluators on validation, which has every class; combine as `heldout,runlocal`).
The measured accuracy of each, and of LiT (experiments/lit_scenes.py): docs/contrastive.md.
"""
import ml_collections

from vlmjax.data.scenes import CLASS_NAMES, COLORS, HELDOUT_CLASSES, OBJECT_NAME, SHAPES, SIZES
from .common import EVAL_SPLIT, SCENES_HYBRID_VIT, image_pp, keep, parse_arg

# Zero-shot prompts in the style of the captions. The label is the MAIN (largest, then leftmost) object; captions
# of multi-object scenes say "<main object> with <others> to its left/right", so "a large red circle with" names
# the main object the way the training text does. Generic photo templates work too, but score lower (the report).
TEMPLATES = ("a large {} with", "a small {} with", "one large {}", "one small {}")
# An object anywhere in the scene, as every caption names it (chosen for `multilabel` on validation among the
# candidates of benchmarks/prompt_sweep.py: benchmarks/results/prompt_sweep_multilabel_prompts.json).
OBJECT_TEMPLATES = ("a large {}", "a small {}")
# The default's `multilabel` prompt: the class name as it is, "a red circle" -- the phrase its size-free mentions
# train (`:presence_batch` and `:presence` prompt with OBJECT_TEMPLATES instead).
UNSIZED_TEMPLATES = ("a {}",)
# Every caption the scenes generator can write, under the class of its main object (~12k per class): each class
# scores its best-matching caption -- zero-shot as retrieval over the caption space. No label or test image is
# used; the captions come from the same `captions` function as the training text.
CAPTION_SPACE = "vlmjax.data.scenes:captions_by_main_class"


# Hard-negative captions (NegCLIP-style, docs/contrastive.md): each caption with K edits that make it false --
# with `:no_order` K=3, a shape or size word replaced or two of them swapped (binding); with `:phrases` also two
# object phrases swapped (measured worse). Objects of a scene have distinct (colour, shape) pairs, so every such
# edit is false for its image.
NEGATIVE_GROUPS = [list(SHAPES), list(SIZES)]
OBJECT_PHRASE = rf"a (?:{'|'.join(SIZES)}) (?:{'|'.join(COLORS)}) (?:{'|'.join(SHAPES)})"
NUM_NEGATIVES = 3
# The default adds what teaches left/right (docs/contrastive.md; `:no_order` leaves it out): colour and side words,
# and "colour shape" names swapped with the sizes kept, which only moves the objects; K=6.
ORDER_GROUPS = NEGATIVE_GROUPS + [list(COLORS), ["left", "right"], ["top", "bottom"]]
# Mentions (vlmjax/data/mentions.py): a text naming one object of the scene alone ("a small blue square"). Full
# captions name every object only inside a sentence about the whole scene, and a tower trained on them alone ranks
# images by their main object (docs/contrastive.md). `:mentions` puts them in the batch as this share of the
# training captions (0.25: a design choice, not tuned); the default scores them in the presence term instead.
MENTION_PROB = 0.25
# The share of presence mentions without their size word ("a red circle", true of either size; 0.5: a design
# choice, not tuned). With sized mentions only, the class name itself is never trained as a phrase true of an
# image, so class-name prompts read the objects poorly (docs/contrastive.md).
UNSIZED_PROB = 0.5
TRAIN_KEYS = ["image", "text", "text_mask"]
MAX_OBJECTS = 3  # the most objects a scenes image holds (vlmjax/data/scenes.py)
ONE_OBJECT = dict(op="filter_values", key="num_objects", values=[1])


def text_pp(text_len, hard_negatives=False, phrases=False, order=False, mentions=False, presence=False,
            presence_batch=False, unsized=False):
    pp = [dict(op="choice", key="captions", out="text")]
    if hard_negatives:
        phrase = OBJECT_NAME if order else OBJECT_PHRASE if phrases else None
        num = 6 if order else NUM_NEGATIVES
        pp += [dict(op="hard_negative_caption", groups=ORDER_GROUPS if order else NEGATIVE_GROUPS, phrase=phrase,
                    num=num, key="text", out="text_neg")]
        if mentions:  # partial captions: one object named alone, absent objects as its negatives
            pp += [dict(op="scene_object_mention", prob=MENTION_PROB, num=num)]
        pp += [dict(op="tokenize", max_len=text_len, key="text_neg")]
    keys = TRAIN_KEYS + (["text_neg", "text_neg_mask", "text_neg_valid"] if hard_negatives else [])
    if presence:  # every image: one of its objects named alone against absent ones, in their own loss term
        opts = dict(present_slots=MAX_OBJECTS * (2 if unsized else 1)) if presence_batch else {}
        if unsized:
            opts["unsized"] = UNSIZED_PROB
        pp += [dict(op="scene_object_mention", prob=1.0, num=6, text="mention", neg="mention_neg", **opts),
               dict(op="tokenize", max_len=text_len, key="mention"),
               dict(op="tokenize", max_len=text_len, key="mention_neg")]
        keys += ["mention", "mention_mask", "mention_neg", "mention_neg_mask", "mention_neg_valid"]
        keys += ["mention_id", "mention_present"] if presence_batch else []
    return pp + [dict(op="tokenize", max_len=text_len, key="text"), keep(*keys)]


VARIANTS = ("runlocal", "baseline", "softmax", "hardneg", "no_order", "phrases", "heldout", "no_mentions", "presence",
            "mentions", "presence_batch", "unsized")


def get_config(arg=None):
    flags = parse_arg(arg, VARIANTS, __file__, combine=True)
    c = ml_collections.ConfigDict()
    c.task = "contrastive"
    c.tokenizer = "data/tfds/scenes_spm.model"
    c.loss = "softmax" if "softmax" in flags else "sigmoid"
    c.image_size = 64
    c.text_len = 24  # the longest scenes caption is 22 pieces + EOS
    c.seed = 0
    c.total_steps = 2400
    c.batch_size = 128
    # The recipe: hard negatives (pairwise (K+1)-way term) and vit_scenes' hybrid tower; `baseline` is the plain
    # SigLIP run with the smaller tower that these are measured against; `runlocal` turns them on only with `hardneg`.
    baseline, runlocal = "baseline" in flags, "runlocal" in flags
    hard_negatives = "hardneg" in flags or not (baseline or runlocal)
    order = hard_negatives and not ({"no_order", "phrases"} & flags) and not runlocal
    mentions = order and "mentions" in flags
    no_presence = bool({"mentions", "no_mentions"} & flags)
    presence = bool({"presence", "presence_batch", "unsized"} & flags) or (order and not no_presence)
    presence_batch = presence and "presence" not in flags
    # `:presence` and `:presence_batch` are the sized recipes before it; `:unsized` names the default
    unsized = presence_batch and ("unsized" in flags or "presence_batch" not in flags)
    if presence:
        c.presence_weight, c.presence_batch = 1.0, presence_batch
    if hard_negatives:
        c.hard_negative_weight, c.hard_negative_loss = 1.0, "pairwise"
    c.log_every_steps = 100

    img_pp = image_pp()
    # No flips or crops: captions state left/right relations and sizes.
    c.data = dict(name="scenes/default", split="train",
                  preprocess=img_pp + text_pp(c.text_len, hard_negatives, "phrases" in flags, order, mentions,
                                              presence, presence_batch, unsized))
    c.evals = dict(
        zeroshot=dict(type="zeroshot", templates=list(TEMPLATES),
                      data=dict(split=EVAL_SPLIT, preprocess=img_pp + [keep("image", "label")])),
        retrieval=dict(type="retrieval", max_captions=3,
                       data=dict(split=EVAL_SPLIT, preprocess=img_pp + [keep("image", "captions")])),
        # class names can answer these (the main-object label's "largest, then leftmost" rule is not in a name):
        # one-object images, and every object present (multi-label mAP)
        zeroshot_1obj=dict(type="zeroshot", templates=list(TEMPLATES),
                           data=dict(split=EVAL_SPLIT, preprocess=[ONE_OBJECT] + img_pp + [keep("image", "label")])),
        multilabel=dict(type="zeroshot_multilabel", templates=list(OBJECT_TEMPLATES),
                        data=dict(split=EVAL_SPLIT, preprocess=img_pp + [keep("image", "multi_labels")])))
    # the same prompts, each class scored by its better template instead of their mean: "a large X" or "a small X"
    # (chosen on validation for the presence recipes, docs/contrastive.md; the mean is the standard protocol)
    c.evals.multilabel_max = dict(c.evals.multilabel.to_dict(), aggregate="max")
    if unsized:  # the standard protocol with the class name as its prompt; the sized prompts' mean kept beside it
        c.evals.multilabel_sized = c.evals.multilabel.to_dict()
        c.evals.multilabel.templates = list(UNSIZED_TEMPLATES)
    if not (runlocal or "heldout" in flags):  # zero-shot as retrieval over the grammar's caption space (docs/contrastive.md)
        c.evals.caption_retrieval = dict(type="zeroshot", class_prompts=CAPTION_SPACE, aggregate="max",
                                        data=c.evals.zeroshot.data.to_dict(), every_steps=1200)  # 300k prompts
    c.eval = dict(every_steps=600, batch_size=250)

    # vit_scenes' hybrid ViT (4x4 patchify + 3 residual 3x3 convs, then 2x2 patches): the same tower with one stem
    # block and width 64 x 3 never learnt shape from captions (the baseline); this one learns it (docs/contrastive.md).
    image = dict(SCENES_HYBRID_VIT)
    if baseline or runlocal:  # (runlocal shrinks this one further below)
        image = dict(patch_size=(2, 2), width=64, depth=3, num_heads=2, mlp_dim=256, pool_type="map",
                     stem_channels=32, stem_patch=4)
    if order:  # a fixed position embedding and (x, y) input channels: position from step 0
        image.update(posemb="sincos2d", coord_channels=True)
    c.model = dict(
        image=image,
        text=dict(width=64, depth=2, num_heads=2, mlp_dim=256, pool_type="eos"),
        out_dim=64, temperature_init=10.0, bias_init=-10.0)
    c.optimizer = dict(name="adamw", lr=2e-3, weight_decay=1e-4, clip_norm=1.0)
    c.schedule = dict(name="cosine", warmup_steps=100)
    c.checkpoint = dict(every_steps=600, keep=1)

    if c.loss == "softmax":
        c.model.temperature_init, c.model.bias_init, c.model.temperature_max = 1 / 0.07, None, 100.0

    if runlocal:
        c.data.name = "scenes/tiny"
        c.image_size = 32
        c.total_steps, c.batch_size, c.log_every_steps = 20, 32, 5
        c.eval.every_steps, c.eval.batch_size = 20, 64
        for ev in c.evals.values():
            ev.data.name, ev.data.max_examples = "scenes/tiny", 128
        c.model.image.update(width=32, depth=1, mlp_dim=64, patch_size=(8, 8), stem_channels=0)
        c.model.text.update(width=32, depth=1, mlp_dim=64)
        c.model.out_dim = 32
        c.schedule.warmup_steps = 5
        c.checkpoint.every_steps = 20

    if "heldout" in flags:  # zero-shot to colour-shape pairs never seen (docs/contrastive.md)
        c.data.name = "scenes/tiny_heldout" if runlocal else "scenes/heldout"  # validation/test: every class
        for op in c.data.preprocess:
            if op["op"] in ("hard_negative_caption", "scene_object_mention"):
                op["avoid"] = list(HELDOUT_CLASSES)
        # zero-shot to the withheld pairs: their one-object images, classified among all 24 classes
        heldout_ids = [CLASS_NAMES.index(n) for n in HELDOUT_CLASSES]
        c.evals.heldout = dict(type="zeroshot", templates=list(TEMPLATES), data=dict(
            preprocess=[ONE_OBJECT, dict(op="filter_values", key="label", values=heldout_ids)] + img_pp
            + [keep("image", "label")]))
        for ev in c.evals.values():
            ev.data.split = "validation"
            if runlocal:
                ev.data.name = "scenes/tiny_heldout"
    return c
