r"""SigLIP on your own image-text pairs in webdataset tar shards (docs/data.md: from a folder of images + captions).

    python -m vlmjax.data.tokenizer --text_file captions.txt --out my_spm.model
    vlmjax-train --config experiments/siglip_webdataset.py --workdir workdirs/my_siglip \
        --config.data.name='webdataset:shards/*.tar' --config.tokenizer=my_spm.model
    vlmjax-train --config experiments/siglip_webdataset.py:runlocal ...   # tiny towers, 32 px, 20 steps

Every sample but the last 1000 of the shards trains (`data.split='train[:-1000]'`); image <-> caption retrieval runs
on those 1000 (`evals.retrieval.data.split`; change both for another hold-out). Images of any size are resized to
`image_size` squares. The default towers (ViT 16x16 patches at 128 px, width 384, 6 layers each) are a starting
point for a few hundred thousand pairs on one accelerator, not a measured recipe.
"""
import ml_collections

from .common import image_pp, keep, parse_arg

HELD_OUT = 1000


def preprocess(size, text_len):
    img = image_pp(size)
    txt = [dict(op="tokenize", max_len=text_len, key="caption", out="text"),
           keep("image", "text", "text_mask")]
    return img, txt


def get_config(arg=None):
    runlocal = parse_arg(arg, ("runlocal",), __file__) == "runlocal"
    held = 16 if runlocal else HELD_OUT
    c = ml_collections.ConfigDict()
    c.task = "contrastive"
    c.loss = "sigmoid"
    c.tokenizer = "my_spm.model"  # e.g. python -m vlmjax.data.tokenizer --text_file captions.txt --out my_spm.model
    c.image_size = 32 if runlocal else 128
    c.text_len = 32
    c.total_steps = 20 if runlocal else 10_000
    c.batch_size = 8 if runlocal else 256
    c.log_every_steps = 5 if runlocal else 100

    img, txt = preprocess(c.image_size, c.text_len)
    c.data = dict(name="webdataset:shards/*.tar", split=f"train[:-{held}]", preprocess=img + txt)
    c.evals = dict(retrieval=dict(type="retrieval", caption_key="caption", max_captions=1, data=dict(
        split=f"train[-{held}:]", preprocess=img + [keep("image", "caption")])))
    c.eval = dict(every_steps=c.total_steps if runlocal else 1000, batch_size=16 if runlocal else 500)

    width, depth, mlp = (32, 1, 64) if runlocal else (384, 6, 1536)
    heads = 2 if runlocal else 6
    c.model = dict(
        image=dict(patch_size=(8, 8) if runlocal else (16, 16), width=width, depth=depth, num_heads=heads,
                   mlp_dim=mlp, pool_type="map"),
        text=dict(width=width, depth=depth, num_heads=heads, mlp_dim=mlp, pool_type="eos"),
        out_dim=width, temperature_init=10.0, bias_init=-10.0)
    c.optimizer = dict(name="adamw", lr=1e-3, weight_decay=1e-4, clip_norm=1.0)
    c.schedule = dict(name="cosine", warmup_steps=2 if runlocal else 500)
    c.checkpoint = dict(every_steps=c.total_steps if runlocal else 1000, keep=2)
    return c
