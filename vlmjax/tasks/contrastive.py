"""Contrastive image-text training: SigLIP (`config.loss='sigmoid'`), CLIP (`'softmax'`) and LiT (a locked tower).

Batch: `image` float[B, H, W, 3], `text` int32[B, L] and `text_mask` int32[B, L] (the `tokenize` op's outputs,
L = `config.text_len`). Top-level keys: `tokenizer` (SentencePiece path, required), `text_len`, `image_size`,
`loss`, `loss_impl` ('dense' | 'all_gather' | 'ring'; '' = 'ring' when the batch is sharded over several devices,
else 'dense' — all three give the same loss and gradients, the ring never holds more than a local x local block of
logits), `hard_negative_weight` (> 0: the batch also carries `text_neg`, `text_neg_mask`, `text_neg_valid` -- one
caption false for its image, int32[B, L], or K of them, int32[B, K, L] (the op's `num`), from the
`hard_negative_caption` op then `tokenize` -- and the loss adds
`losses.contrastive.hard_negative_loss` times this weight), `hard_negative_loss` ('sigmoid' | 'pairwise'; '' =
'sigmoid' for the sigmoid loss, 'pairwise' for softmax), `presence_weight` (> 0: the batch also carries
`mention`/`mention_mask` int32[B, L], a text true for its image, and `mention_neg`/`mention_neg_mask` int32[B, K, L]
with `mention_neg_valid` int32[B, K], texts false for it -- e.g. the `scene_object_mention` op with prob 1 -- and the
loss adds `losses.contrastive.presence_loss` times this weight), `presence_batch` (True: each image is also scored
against every other image's mention, labelled from `mention_id` int32[B] and `mention_present` int32[B, P] -- the
op's `present_slots` -- so the term ranks the batch's images by presence). `config.model`: `image` (ViT keys), `text`
(TextTransformer keys; vocab_size defaults to the tokenizer's), `out_dim` (projection dim: int, or [image, text]
with 0 = no head on that tower), `temperature_init`, `bias_init` (None: no bias), `temperature_max` (0: no clamp).

Evaluators (`config.evals.<name>.type`): zeroshot, retrieval, zeroshot_multilabel (vlmjax/evaluators/). Predict fns
`embed_image(variables, images) -> float[B, D]`, `embed_text(variables, ids, mask) -> float[B, D]`.
"""
import math

import numpy as np

from vlmjax.losses.contrastive import LOSSES, hard_negative_loss, make_loss_fn, presence_loss
from vlmjax.models.text import TextTransformer
from vlmjax.models.two_towers import TwoTowers
from vlmjax.models.vit import ViT
from vlmjax.tasks.base import Task
from vlmjax.tasks.model_config import build_module, check_keys
from vlmjax.tasks.text_inputs import data_op, flatten_features, load_tokenizer

LOSS_IMPLS = ("", "dense", "all_gather", "ring")
NEG_KEYS = ("text_neg", "text_neg_mask", "text_neg_valid")
PRESENCE_KEYS = ("mention", "mention_mask", "mention_neg", "mention_neg_mask", "mention_neg_valid")
PRESENCE_BATCH_KEYS = ("mention_id", "mention_present")
MODEL_KEYS = ("image", "text", "out_dim", "temperature_init", "bias_init", "temperature_max")
TOKENIZER_MISSING = ("config.tokenizer={!r}: no SentencePiece model at that path. Train one with `python -m "
                     "vlmjax.data.tokenizer --data_dir DIR --dataset scenes/default --out DIR/scenes_spm.model` "
                     "(`make data` does it) and set --config.tokenizer to it.")


def out_dims(value) -> tuple:
    """config.model.out_dim (int | [img, txt] | None) -> (img, txt) projection widths, None = no head."""
    dims = (value, value) if value is None or isinstance(value, int) else tuple(value)
    if len(dims) != 2:
        raise ValueError(f"config.model.out_dim={value!r}: expected an int or [image_dim, text_dim]")
    return tuple(int(d) or None if d is not None else None for d in dims)


def _dummy_texts(name: str, shape: tuple, valid: bool = True) -> dict:
    """Zero token ids int32[*shape] under `name`, an all-ones `<name>_mask`, and `<name>_valid` int32[*shape[:-1]]
    when `valid`: a batch entry of the layout the tokenize op (and a negatives op) gives."""
    out = {name: np.zeros(shape, np.int32), f"{name}_mask": np.ones(shape, np.int32)}
    return {**out, f"{name}_valid": np.ones(shape[:-1], np.int32)} if valid else out


def build_two_towers(model_cfg, vocab_size: int) -> TwoTowers:
    """TwoTowers from `config.model`, every key checked against the module that takes it."""
    check_keys(model_cfg, MODEL_KEYS, "config.model")
    img_dim, txt_dim = out_dims(model_cfg.get("out_dim", None))
    text_cfg = dict(model_cfg.get("text", {}))
    if text_cfg.get("vocab_size", vocab_size) < vocab_size:
        raise ValueError(f"config.model.text.vocab_size={text_cfg['vocab_size']} is smaller than the tokenizer's "
                         f"vocabulary ({vocab_size})")
    text_cfg.setdefault("vocab_size", vocab_size)
    img = build_module(ViT, model_cfg.get("image", {}), "config.model.image", num_classes=img_dim,
                       head_zeroinit=False)
    txt = build_module(TextTransformer, text_cfg, "config.model.text", num_classes=txt_dim)
    rest = {k: model_cfg[k] for k in ("temperature_init", "bias_init", "temperature_max") if k in model_cfg}
    return TwoTowers(img=img, txt=txt, **rest)


class ContrastiveTask(Task):
    eval_kinds = ("zeroshot", "retrieval", "zeroshot_multilabel", "fewshot")

    def __init__(self, config):
        super().__init__(config)
        self._tok = None
        self.model = build_two_towers(config.model, self.tokenizer().vocab_size)

    @classmethod
    def config_defaults(cls):
        return {"tokenizer": "", "text_len": 16, "image_size": 64, "loss": "sigmoid", "loss_impl": "",
                "hard_negative_weight": 0.0, "hard_negative_loss": "", "presence_weight": 0.0,
                "presence_batch": False}

    # -- set-up ---------------------------------------------------------------------------------------------------
    def tokenizer(self):
        if self._tok is None:
            self._tok = load_tokenizer(self.config.tokenizer, TOKENIZER_MISSING.format(self.config.tokenizer))
        return self._tok

    def validate(self):
        c = self.config
        if c.loss not in LOSSES:
            raise ValueError(f"config.loss={c.loss!r}: expected one of {', '.join(sorted(LOSSES))}")
        if c.loss_impl not in LOSS_IMPLS:
            raise ValueError(f"config.loss_impl={c.loss_impl!r}: expected 'dense', 'all_gather', 'ring' or '' (auto)")
        if int(c.text_len) < 1:
            raise ValueError(f"config.text_len={c.text_len}: must be >= 1")
        if float(c.hard_negative_weight) < 0:
            raise ValueError(f"config.hard_negative_weight={c.hard_negative_weight}: must be >= 0")
        if float(c.presence_weight) < 0:
            raise ValueError(f"config.presence_weight={c.presence_weight}: must be >= 0")
        if c.presence_batch and not float(c.presence_weight):
            raise ValueError("config.presence_batch=True needs config.presence_weight > 0 (it extends that term)")
        if c.hard_negative_loss not in ("", "sigmoid", "pairwise"):
            raise ValueError(f"config.hard_negative_loss={c.hard_negative_loss!r}: expected 'sigmoid', 'pairwise' "
                             f"or ''")

    def preprocess_fn(self, data_cfg, train: bool):
        from vlmjax.data.ops import get_preprocess_fn

        ops = get_preprocess_fn(data_cfg.preprocess, tokenizer=self.tokenizer())
        return lambda example, rng: ops(flatten_features(example), rng)

    def text_tokenize_fn(self):
        """The training data's `tokenize` op (its eos/bos/pad_id/canonicalize/keep_eos settings) applied to key
        'text': host fn(example, rng)."""
        from vlmjax.data.ops import get_preprocess_fn

        spec = {"op": "tokenize", "max_len": int(self.config.text_len)}
        same = ("eos", "bos", "pad_id", "canonicalize", "keep_eos")
        spec.update({k: v for k, v in data_op(self.config.data, "tokenize").items() if k in same})
        return get_preprocess_fn([dict(spec, key="text", out="text")], tokenizer=self.tokenizer())

    def _train_keys(self):
        return (("image", "text", "text_mask") + (NEG_KEYS if self.config.hard_negative_weight else ())
                + (PRESENCE_KEYS if self.config.presence_weight else ())
                + (PRESENCE_BATCH_KEYS if self.config.presence_batch else ()))

    def dummy_batch(self, batch_size):
        s, n = int(self.config.image_size), int(self.config.text_len)
        batch = {"image": np.zeros((batch_size, s, s, 3), np.float32), "text": np.zeros((batch_size, n), np.int32),
                 "text_mask": np.ones((batch_size, n), np.int32)}
        if self.config.hard_negative_weight:
            k = self._negatives_per_example("hard_negative_caption")
            batch.update(_dummy_texts("text_neg", (batch_size, n) if k == 1 else (batch_size, k, n)))
        if self.config.presence_weight:
            k = self._negatives_per_example("scene_object_mention")
            batch.update(_dummy_texts("mention", (batch_size, n), valid=False))
            batch.update(_dummy_texts("mention_neg", (batch_size, k, n)))
        if self.config.presence_batch:
            slots = int(data_op(self.config.data, "scene_object_mention").get("present_slots", 1))
            batch.update(mention_id=np.zeros((batch_size,), np.int32),
                         mention_present=np.zeros((batch_size, slots), np.int32))
        return batch

    def _negatives_per_example(self, op: str) -> int:
        """`num` of the data's `op` (1 without one): the K of its negatives, int32[B, K, L]."""
        return int(data_op(self.config.data, op).get("num", 1))

    def init(self, rng, batch):
        return self.model.init({"params": rng}, batch["image"], batch["text"], batch["text_mask"], train=False)

    def check_batch(self, batch, where):
        missing = [k for k in self._train_keys() if k not in batch]
        if missing:
            neg = ("; with config.hard_negative_weight > 0 also `text_neg` (op 'hard_negative_caption', then "
                   "'tokenize' with key 'text_neg') and keep `text_neg_valid`"
                   if self.config.hard_negative_weight else "")
            neg += ("; with config.presence_weight > 0 also `mention` and `mention_neg` (op 'scene_object_mention' "
                    "with prob 1, text='mention', neg='mention_neg', then 'tokenize' of both) and keep "
                    "`mention_neg_valid`" if self.config.presence_weight else "")
            neg += ("; with config.presence_batch also `mention_id` and `mention_present` (the op's present_slots "
                    "> 0)" if self.config.presence_batch else "")
            raise ValueError(f"{where}: no {missing} in the batch (it has {sorted(batch)}); config.data.preprocess "
                             f"must produce `image` and a tokenized `text` (op 'tokenize' with key/out 'text'){neg}")
        for k in ("text", "text_neg", "mention", "mention_neg"):
            if k in batch and batch[k].shape[-1] != int(self.config.text_len):
                raise ValueError(f"{where}: {k} has length {batch[k].shape[-1]} but config.text_len="
                                 f"{self.config.text_len}; make the tokenize op's max_len equal to it")

    # -- training -------------------------------------------------------------------------------------------------
    def loss_fn(self):
        """The configured loss implementation for the mesh being traced under (jax.set_mesh), the batch split over
        `self.batch_axes` (set by the core)."""
        import jax

        mesh = jax.sharding.get_abstract_mesh()
        axes = tuple(a for a in self.batch_axes if not mesh.empty and a in mesh.shape)
        n = math.prod(mesh.shape[a] for a in axes) if axes else 1
        impl = self.config.loss_impl or ("ring" if n > 1 else "dense")
        return make_loss_fn(self.config.loss, impl, None if impl == "dense" else mesh,
                            **({"batch_axes": axes} if axes else {}))

    def loss(self, params, state, batch, rngs, step):
        zimg, ztxt, out = self.model.apply({"params": params, **state}, batch["image"], batch["text"],
                                           batch["text_mask"], train=True, rngs=rngs)
        loss, metrics = self.loss_fn()(zimg, ztxt, out["log_temperature"], out.get("bias"))
        weight = float(self.config.hard_negative_weight)
        if weight:
            zneg = self._embed_texts(params, state, batch["text_neg"], batch["text_neg_mask"], rngs)
            kind = self.config.hard_negative_loss or ("sigmoid" if self.config.loss == "sigmoid" else "pairwise")
            neg_loss, neg_metrics = hard_negative_loss(kind, zimg, ztxt, zneg, out["log_temperature"],
                                                       out.get("bias"), batch["text_neg_valid"])
            metrics = {**metrics, **neg_metrics, "batch_loss": loss, "hard_neg_loss": neg_loss}
            loss = loss + weight * neg_loss
        if self.config.presence_weight:
            zpos = self._embed_texts(params, state, batch["mention"], batch["mention_mask"], rngs)
            zabs = self._embed_texts(params, state, batch["mention_neg"], batch["mention_neg_mask"], rngs)
            ids = ((batch["mention_id"], batch["mention_present"]) if self.config.presence_batch else (None, None))
            p_loss, p_metrics = presence_loss(zimg, zpos, zabs, out["log_temperature"], out.get("bias"),
                                              batch["mention_neg_valid"], *ids)
            metrics = {"batch_loss": loss, **metrics, **p_metrics, "presence_loss": p_loss}
            loss = loss + float(self.config.presence_weight) * p_loss
        metrics = {**metrics, "temperature": out["temperature"]}
        if "bias" in out:
            metrics["bias"] = out["bias"]
        return loss, (metrics, state)

    def _embed_texts(self, params, state, ids, mask, rngs):
        """int32[..., L] ids and mask -> float[..., D] text embeddings (training mode), any leading shape."""
        _, z, _ = self.model.apply({"params": params, **state}, text=ids.reshape(-1, ids.shape[-1]),
                                   text_mask=mask.reshape(-1, ids.shape[-1]), train=True, rngs=rngs)
        return z.reshape(*ids.shape[:-1], z.shape[-1])

    # -- inference ----------------------------------------------------------------------------------------------
    def embed_image(self, variables, images):
        """float[B, H, W, 3] -> float[B, D] (L2-normalised)."""
        return self.model.apply(variables, images=images)[0]

    def embed_text(self, variables, ids, mask):
        """int32[B, L] ids and mask -> float[B, D] (L2-normalised)."""
        return self.model.apply(variables, text=ids, text_mask=mask)[1]

    def predict_fns(self):
        # Bound methods: equal across calls, so the core's jit caches keyed on them hit.
        return {"embed_image": self.embed_image, "embed_text": self.embed_text, "image_features": self.embed_image}
