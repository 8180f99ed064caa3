r"""CLIP B/32 (symmetric softmax loss, 224 px, text length 64) on real image-text data; zero-shot ImageNet, CIFAR-100.

    vlmjax-train --config experiments/clip_b32.py --workdir gs://bucket/clip_b32 --distributed auto \
        --config.data.data_dir=DATA --config.tokenizer=TOK
    vlmjax-train --config experiments/clip_b32.py:runlocal --workdir /tmp/clip_b32   # CPU smoke test, scenes/tiny

Architecture as OpenAI / open_clip ViT-B/32: ViT-B/32 pooled at a class token with a linear projection to 512; a
12-layer width-512 causal text transformer pooled at the EOS token, projection to 512; t = 1/0.07 clamped at
100, no bias. Optimizer as open_clip's LAION runs (AdamW lr 5e-4, b2 0.98, eps 1e-6, wd 0.2). Data, evaluators
and the web-data switch (`webdataset:<glob>`) as in experiments/siglip_b16.py; CLIP's 77-token context is cut
to 64 here (scenes and COCO captions fit).
"""
from . import siglip_b16
from .common import TINY, VIT_B, parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, ("runlocal",), __file__)
    c = siglip_b16.get_config(arg)
    runlocal = arg == "runlocal"
    c.loss = "softmax"
    c.batch_size = 32 if runlocal else 32_768
    common = dict(scan_layers=not runlocal, remat_policy="none" if runlocal else "dots_no_batch",
                  dtype="float32" if runlocal else "bfloat16")
    if runlocal:
        image = dict(patch_size=(8, 8), **TINY, pool_type="tok", **common)
        text = dict(**TINY, pool_type="eos", causal=True, **common)
        out_dim = 32
    else:
        image = dict(patch_size=(32, 32), **VIT_B, pool_type="tok", **common)
        text = dict(width=512, depth=12, num_heads=8, mlp_dim=2048, pool_type="eos", causal=True, **common)
        out_dim = 512
    c.model = dict(image=image, text=text, out_dim=out_dim, temperature_init=1 / 0.07, bias_init=None,
                   temperature_max=100.0)
    if not runlocal:
        c.optimizer = dict(name="adamw", lr=5e-4, b2=0.98, eps=1e-6, weight_decay=0.2, clip_norm=1.0)
        c.schedule = dict(name="cosine", warmup_steps=2000)
    return c
