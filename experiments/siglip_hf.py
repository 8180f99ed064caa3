r"""SigLIP from a local HF folder (`SiglipModel`: config.json + safetensors/bin + spiece.model): evaluate it, or
fine-tune it. Nothing is downloaded at run time.

    # once, where there is network: the folder as the hub has it
    hf download google/siglip-base-patch16-224 --local-dir models/siglip-base-patch16-224  # or huggingface-cli
    # zero-shot CIFAR-100 (+ ImageNet when data/imagenet_class_names.txt exists) of the imported weights
    vlmjax-train --config siglip_hf:models/siglip-base-patch16-224 --workdir workdirs/siglip_hf_eval
    # fine-tune on coco_captions from the imported weights, t and b
    vlmjax-train --config siglip_hf:models/siglip-base-patch16-224,finetune --workdir workdirs/siglip_hf_ft
    # CPU smoke test: the same on scenes/tiny (needs `make data`; a small HF folder keeps it quick)
    vlmjax-train --config siglip_hf:/path/to/folder,runlocal --workdir /tmp/siglip_hf

The argument is a comma-separated set: at most one folder (any part with a '/' or naming an existing folder; `~`
is expanded; default `models/siglip-base-patch16-224`) and the variants `finetune`, `runlocal`. The folder's
config.json (read as plain json, no transformers import) sets the architecture: widths, depths, heads, MLP sizes,
patch and image size, vocabulary and text length (`max_position_embeddings`), through
`vlmjax.models.siglip_hf.siglip_model_config`, which refuses what our modules do not implement. Without a folder
argument and without the default folder the config is that of google/siglip-base-patch16-224, and the run fails
naming `config.init_from.path`. Weights come through `config.init_from` (path = the folder, format 'hf_siglip'),
the tokenizer is the folder's `spiece.model`.

Evaluation only (the default) is `total_steps=0`: the core evaluates the imported weights, logs them at step 0
and writes them as a step-0 checkpoint, so the workdir is a vlmjax run (`vlmjax-eval`, `vlmjax-zeroshot`,
`vlmjax.load`); no train data is opened.

Text goes through the `tokenize` op as HF's SiglipTokenizer prepares it: canonicalised (punctuation removed, lower
case, whitespace collapsed), eos appended (kept when a text is cut), padded with eos (`</s>`, id 1, what SigLIP was trained with:
the text tower has no padding mask and pools at the last position, so the pad id matters); the ids equal HF's
(tests/test_siglip_hf_experiment.py). Images are resized bicubic (Pillow's) and mapped to [-1, 1], as HF's
Pillow image processor (`SiglipImageProcessorPil`) does: the pixels equal its output to 1e-6 (tested; HF's
torchvision backend, its default where torchvision is installed, resizes with torchvision's bicubic: not compared). Given the same token ids and pixels, the imported model's embeddings equal HF's.
"""
import json
import os

import ml_collections

from vlmjax.models.siglip_hf import siglip_model_config

from .common import image_pp, keep, parse_arg

VARIANTS = ("finetune", "runlocal")
DEFAULT_FOLDER = "models/siglip-base-patch16-224"
IMAGENET_NAMES = "data/imagenet_class_names.txt"  # one human-readable name per line (tfds has WordNet ids)
# config.json of google/siglip-base-patch16-224, for a config built before the folder exists.
BASE_PATCH16_224 = {
    "vision_config": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                          image_size=224, patch_size=16),
    "text_config": dict(vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                        num_attention_heads=12, max_position_embeddings=64),
}


def split_arg(arg):
    """`--config siglip_hf:ARG` -> (folder or None, set of variants). A part that is not a variant name is the
    folder when it has a '/' or names an existing folder; any other part is an unknown variant (parse_arg's one
    message)."""
    parts = [a for a in (arg or "").split(",") if a]
    folders = [p for p in parts if p not in VARIANTS and ("/" in p or os.path.isdir(os.path.expanduser(p)))]
    if len(folders) > 1:
        raise ValueError(f"experiments/siglip_hf.py:{arg}: {len(folders)} folders given ({', '.join(folders)}); "
                         f"expected one HF SigLIP folder")
    variants = parse_arg(",".join(p for p in parts if p not in folders), VARIANTS, __file__, combine=True)
    return (os.path.expanduser(folders[0]) if folders else None), variants


def read_hf_config(folder: str) -> dict:
    """The parsed `<folder>/config.json` of a HF SiglipModel; ValueError naming the file when it is missing."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        what = "no such folder" if not os.path.isdir(folder) else "no config.json in it"
        raise ValueError(f"experiments/siglip_hf.py: {path!r} not found ({what}); expected a HF SiglipModel "
                         f"folder (config.json, model.safetensors, spiece.model)")
    with open(path) as f:
        return json.load(f)


def preprocess(size, text_len, caption_key="captions/text"):
    txt = [dict(op="choice", key=caption_key, out="text"), dict(op="tokenize", max_len=text_len, key="text",
                                                                   pad_id="eos", canonicalize=True, keep_eos=True)]
    return image_pp(size, method="bicubic"), txt


def get_config(arg=None):
    folder, variants = split_arg(arg)
    finetune, runlocal = "finetune" in variants, "runlocal" in variants
    given = folder is not None
    folder = folder or DEFAULT_FOLDER
    hf = read_hf_config(folder) if given or os.path.isfile(os.path.join(folder, "config.json")) else BASE_PATCH16_224
    spec = siglip_model_config(hf)

    c = ml_collections.ConfigDict()
    c.task = "contrastive"
    c.loss = "sigmoid"
    c.loss_impl = "ring"
    c.tokenizer = os.path.join(folder, "spiece.model")
    c.image_size = spec["image_size"]
    c.text_len = spec["text_len"]
    c.init_from = dict(path=folder, format="hf_siglip")
    c.model = spec["model"]
    for tower in (c.model.image, c.model.text):
        tower.update(scan_layers=True, dtype="bfloat16" if finetune else "float32")
        if finetune:
            tower.remat_policy = "dots_no_batch"

    img, txt = preprocess(c.image_size, c.text_len)
    c.data = dict(name="coco_captions", split="train", data_dir="data/tfds", worker_count=16,
                  preprocess=img + txt + [keep("image", "text", "text_mask")])
    keep_label = [keep("image", "label")]
    c.evals = dict(cifar100=dict(type="zeroshot", data=dict(name="cifar100", split="test",
                                                            preprocess=img + keep_label)))
    if os.path.isfile(IMAGENET_NAMES):
        c.evals.imagenet = dict(type="zeroshot", class_names=IMAGENET_NAMES, data=dict(
            name="imagenet2012", split="validation", preprocess=img + keep_label))
    c.eval = dict(every_steps=500, batch_size=1024)
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.total_steps, c.batch_size, c.log_every_steps = 0, 256, 1  # evaluation only (module docstring)
    c.optimizer = dict(name="adamw", lr=1e-5, b2=0.95, weight_decay=1e-4, clip_norm=1.0)
    c.schedule = dict(name="cosine", warmup_steps=0)
    c.checkpoint = dict(every_steps=1000, keep=3)

    if finetune:  # a small lr from the imported weights, t and b: SigLIP's fine-tuning recipe, shortened
        c.total_steps, c.batch_size, c.log_every_steps = 2000, 1024, 50
        c.schedule.warmup_steps = 200
        c.evals.coco = dict(type="retrieval", caption_key="captions/text", max_captions=5, data=dict(
            name="coco_captions", split="test", preprocess=img + [keep("image", "captions/text")]))

    if runlocal:  # the same pipeline on scenes/tiny, at the checkpoint's own architecture and image size
        img, txt = preprocess(c.image_size, c.text_len, caption_key="captions")
        c.data = dict(name="scenes/tiny", split="train", data_dir="data/tfds",
                      preprocess=img + txt + [keep("image", "text", "text_mask")])
        c.evals = dict(zeroshot=dict(type="zeroshot", data=dict(split="test", max_examples=64,
                                                                preprocess=img + keep_label)))
        if finetune:
            c.evals.retrieval = dict(type="retrieval", max_captions=3, data=dict(
                split="test", max_examples=64, preprocess=img + [keep("image", "captions")]))
            c.total_steps, c.schedule.warmup_steps = 10, 2
        c.batch_size, c.log_every_steps = 16, 5
        c.eval = dict(every_steps=10, batch_size=32)
        c.checkpoint.every_steps = 10
    return c
