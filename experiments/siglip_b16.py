r"""SigLIP B/16 (sigmoid loss, 224 px, text length 64) on real image-text data; zero-shot ImageNet and CIFAR-100,
10- and 25-shot linear probes on CIFAR-100, COCO retrieval.

    # pod: tfds datasets prepared as ArrayRecord under DATA (gs:// or local), a 32k SentencePiece model at TOK
    vlmjax-train --config experiments/siglip_b16.py --workdir gs://bucket/siglip_b16 --distributed auto \
        --config.data.data_dir=DATA --config.tokenizer=TOK
    # CPU smoke test on scenes/tiny (seconds; needs `make data`):
    vlmjax-train --config experiments/siglip_b16.py:runlocal --workdir /tmp/siglip_b16

Architecture as big_vision's SigLIP B/16: ViT-B/16 with a MAP head and no image projection; a 12-layer width-768
text transformer, bidirectional over the padded sequence (no padding mask), pooled at the last position, then a
linear head to 768; t = 10, b = -10. Train data is tfds `coco_captions` (one random caption of the 5 per image);
for web-scale pairs use the tar-shard source instead, e.g.
`--config.data.name='webdataset:/data/cc12m/{00000..01242}.tar'` with the ALIGN filters in the preprocess
(captions then come as `txt`, not `captions/text`). The ImageNet label names of tfds are WordNet ids, so the
zero-shot evaluator reads human-readable names (one per line, in label order, e.g. CLIP's list) from
`imagenet_class_names`; a missing file fails before anything compiles.
"""
import ml_collections

from .common import TINY, VIT_B, image_pp, keep, parse_arg

TEXT_LEN = 64


def preprocess(size, text_len, caption_key="captions/text"):
    img = image_pp(size, draft=True)  # COCO's ~640x480 JPEGs decode at half scale
    txt = [dict(op="choice", key=caption_key, out="text"), dict(op="tokenize", max_len=text_len, key="text")]
    return img, txt


def get_config(arg=None):
    runlocal = parse_arg(arg, ("runlocal",), __file__) == "runlocal"
    c = ml_collections.ConfigDict()
    c.task = "contrastive"
    c.loss = "sigmoid"
    c.loss_impl = "ring"  # chunked: no device holds more than a local x local block of logits
    c.tokenizer = "tokenizers/c4_en.model"  # a 32k SentencePiece model (big_vision uses T5's c4_en)
    c.image_size = 224
    c.text_len = TEXT_LEN
    c.total_steps = 20_000
    c.batch_size = 16_384  # the SigLIP paper: the sigmoid loss saturates around 32k; 16k is within 1 point
    c.log_every_steps = 50

    img, txt = preprocess(c.image_size, c.text_len)
    c.data = dict(name="coco_captions", split="train", data_dir="data/tfds", worker_count=16,
                  preprocess=img + txt + [keep("image", "text", "text_mask")])
    keep_label = [keep("image", "label")]
    c.evals = dict(
        imagenet=dict(type="zeroshot", class_names="data/imagenet_class_names.txt",
                      data=dict(name="imagenet2012", split="validation", preprocess=img + keep_label)),
        cifar100=dict(type="zeroshot", data=dict(name="cifar100", split="test", preprocess=img + keep_label)),
        # linear probes on the image embedding from 10 and 25 train images per class (big_vision's fewshot_lsr)
        cifar100_fewshot=dict(type="fewshot", shots=(10, 25),
                              data=dict(name="cifar100", split="test", preprocess=img + keep_label)),
        coco=dict(type="retrieval", caption_key="captions/text", max_captions=5,
                  data=dict(name="coco_captions", split="test",
                            preprocess=img + [keep("image", "captions/text")])))
    c.eval = dict(every_steps=2000, batch_size=1024)

    c.model = dict(
        image=dict(patch_size=(16, 16), **VIT_B, pool_type="map", posemb="learn", scan_layers=True,
                   remat_policy="dots_no_batch", dtype="bfloat16"),
        text=dict(**VIT_B, pool_type="last", mask_padding=False,
                  scan_layers=True, remat_policy="dots_no_batch", dtype="bfloat16"),
        out_dim=[0, 768], temperature_init=10.0, bias_init=-10.0)
    c.optimizer = dict(name="adamw", lr=1e-3, b2=0.95, weight_decay=1e-4, clip_norm=1.0)
    c.schedule = dict(name="cosine", warmup_steps=1000)
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.checkpoint = dict(every_steps=1000, keep=3)

    if runlocal:  # same structure (MAP head, last-token text pooling, length 64), tiny widths, scenes/tiny
        c.tokenizer = "data/tfds/scenes_spm.model"
        c.image_size = 32
        img, txt = preprocess(c.image_size, c.text_len, caption_key="captions")
        c.data = dict(name="scenes/tiny", split="train", data_dir="data/tfds",
                      preprocess=img + txt + [keep("image", "text", "text_mask")])
        c.evals = dict(
            zeroshot=dict(type="zeroshot", data=dict(split="test", max_examples=128, preprocess=img + keep_label)),
            fewshot=dict(type="fewshot", shots=(1, 2), train_data=dict(max_examples=256),
                         data=dict(split="test", max_examples=128, preprocess=img + keep_label)),
            retrieval=dict(type="retrieval", max_captions=3, data=dict(
                split="test", max_examples=128, preprocess=img + [keep("image", "captions")])))
        c.eval = dict(every_steps=10, batch_size=64)
        c.total_steps, c.batch_size, c.log_every_steps = 10, 32, 5
        for tower in (c.model.image, c.model.text):
            tower.update(**TINY, dtype="float32", remat_policy="none")
        c.model.image.patch_size = (8, 8)
        c.model.out_dim = [0, 32]
        c.schedule.warmup_steps = 2
        c.checkpoint.every_steps = 10
    return c
