"""Contrastive image-text training: SigLIP (`config.loss='sigmoid'`), CLIP (`'softmax'`) and LiT (a locked tower).

Batch: `image` float[B, H, W, 3], `text` int32[B, L] and `text_mask` int32[B, L] (the `tokenize` op's outputs,
L = `config.text_len`). Top-level keys: `tokenizer` (SentencePiece path, required), `text_len`, `image_size`,
`loss`, `loss_impl` ('dense' | 'all_gather' | 'ring'; '' = 'ring' when the batch is sharded over several devices,
else 'dense' — all three give the same loss and gradients, the ring never holds more than a local x local block of
logits), `hard_negative_weight` (> 0: the batch also carries `text_neg`, `text_neg_mask`, `text_neg_valid` -- one
caption false for its image, int32[B, L], or K of them, int32[B, K, L] (the op's `num`), from the
`hard_negative_caption` op then `tokenize` -- and the loss adds
`losses.contrastive.hard_negative_loss` times this weight), `hard_negative_loss` ('sigmoid' | 'pairwise'; '' =
'sigmoid' for the sigmoid loss, 'pairwise' for softmax). `config.model`: `image` (ViT keys), `text`
(TextTransformer keys; vocab_size defaults to the tokenizer's), `out_dim` (projection dim: int, or [image, text]
with 0 = no head on that tower), `temperature_init`, `bias_init` (None: no bias), `temperature_max` (0: no clamp).

Evaluators (`config.evals.<name>.type`):
  zeroshot   classify the images of a split by their nearest class embedding: the mean of the normalised text
             embeddings of `templates` (default: a CLIP-style ensemble) filled with `class_names` (a list, a text
             file with one name per line, or by default the dataset's ClassLabel names of `label_key`).
             `aggregate='max'` scores each class by its best template instead of the mean embedding (for large
             template sets that spell out a caption grammar, where averaging blurs the structure).
             Instead of templates, `class_prompts` gives per-class prompt lists {class name: [prompts]}: a JSON
             file (as CuPL publishes them) or "module:function" (e.g. `vlmjax.data.scenes:
             captions_by_main_class`, the scenes grammar's whole caption space).
             Metrics `accuracy` (top-1) and `top5`.
  retrieval  every image against all of its captions (`caption_key`, up to `max_captions` per image; nested tfds
             features are addressed as 'captions/text'). Metrics img2txt_r@{1,5,10}, txt2img_r@{1,5,10}.
             Captions with identical tokens are one answer, correct for every image that came with one of them;
             other exact ties count in the query's favour (vlmjax/tasks/retrieval_metrics.py).
"""
import importlib
import json
import math
import os

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from vlmjax.losses.contrastive import BATCH_AXES, LOSSES, hard_negative_loss, make_loss_fn
from vlmjax.models.text import TextTransformer
from vlmjax.models.two_towers import TwoTowers
from vlmjax.models.vit import ViT
from vlmjax.tasks import retrieval_metrics as rm
from vlmjax.tasks.base import Evaluator, Task
from vlmjax.tasks.model_config import build_module, check_keys

LOSS_IMPLS = ("", "dense", "all_gather", "ring")
NEG_KEYS = ("text_neg", "text_neg_mask", "text_neg_valid")
MODEL_KEYS = ("image", "text", "out_dim", "temperature_init", "bias_init", "temperature_max")
EVAL_KEYS = {"zeroshot": ("type", "every_steps", "data", "class_names", "templates", "class_prompts", "label_key",
                          "aggregate"),
             "retrieval": ("type", "every_steps", "data", "caption_key", "max_captions")}


def flatten_features(example: dict, prefix: str = "") -> dict:
    """Nested tfds features become 'parent/child' keys ({'captions': {'text': x}} -> {'captions/text': x})."""
    out = {}
    for k, v in example.items():
        if isinstance(v, dict):
            out.update(flatten_features(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def out_dims(value) -> tuple:
    """config.model.out_dim (int | [img, txt] | None) -> (img, txt) projection widths, None = no head."""
    dims = (value, value) if value is None or isinstance(value, int) else tuple(value)
    if len(dims) != 2:
        raise ValueError(f"config.model.out_dim={value!r}: expected an int or [image_dim, text_dim]")
    return tuple(int(d) or None if d is not None else None for d in dims)


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


def tokenize_texts(tokenize_fn, texts) -> tuple:
    """list of str -> (int32[N, L] ids, int32[N, L] mask) through the same `tokenize` op as the training captions."""
    rows = [tokenize_fn({"text": t}, None) for t in texts]
    return (np.stack([r["text"] for r in rows]).astype(np.int32),
            np.stack([r["text_mask"] for r in rows]).astype(np.int32))


def dataset_class_names(data_cfg, label_key: str) -> list:
    """ClassLabel names of a tfds dataset's `label_key` feature, '_' read as a space (cifar100's 'aquarium_fish')."""
    import tensorflow_datasets as tfds

    from vlmjax.data import scenes  # noqa: F401  (registers the built-in builder)

    try:
        feature = tfds.builder(data_cfg.name, data_dir=data_cfg.data_dir or None).info.features[label_key]
        return [n.replace("_", " ") for n in feature.names]
    except Exception as e:  # tfds raises several types; the user needs the key
        raise ValueError(f"zero-shot on {data_cfg.name!r}: cannot read ClassLabel names of feature {label_key!r} "
                         f"({type(e).__name__}: {e}); set config.evals.<name>.class_names") from None


def zeroshot_prompts(cfg, class_names, where: str) -> tuple:
    """([C] lists of prompts, aggregate 'mean' | 'max') of a zero-shot evaluator config: `templates` filled with each
    class name, or the per-class lists of `class_prompts` (a JSON file or "module:function" giving {class: [..]})."""
    aggregate = cfg.get("aggregate", "mean")
    if aggregate not in ("mean", "max"):
        raise ValueError(f"{where}.aggregate={aggregate!r}: expected 'mean' (CLIP's ensemble: the mean template "
                         f"embedding) or 'max' (each class scores its best template)")
    source = cfg.get("class_prompts", None)
    if not source:
        templates = list(cfg.get("templates", None) or rm.PROMPT_TEMPLATES)
        if any("{}" not in t for t in templates):
            raise ValueError(f"{where}.templates: every template needs a '{{}}' for the class name")
        return [[t.format(c) for t in templates] for c in class_names], aggregate
    if cfg.get("templates", None):
        raise ValueError(f"{where}: set templates or class_prompts, not both")
    try:
        if str(source).endswith(".json"):  # e.g. CuPL's published per-class prompt files
            with open(os.path.expanduser(source)) as f:
                table = json.load(f)
        else:
            module, _, fn = str(source).partition(":")
            table = getattr(importlib.import_module(module), fn)()
    except (ImportError, AttributeError, ValueError, OSError) as e:
        raise ValueError(f"{where}.class_prompts={source!r}: expected a JSON file or 'module:function' giving "
                         f"{{class name: [prompts]}} ({type(e).__name__}: {e})") from None
    if not isinstance(table, dict) or any(not isinstance(v, (list, tuple)) for v in table.values()):
        raise ValueError(f"{where}.class_prompts={source!r}: expected {{class name: [prompts]}}, got "
                         f"{type(table).__name__} {str(table)[:80]}")
    missing = [c for c in class_names if not table.get(c)]
    if missing:
        raise ValueError(f"{where}.class_prompts={source!r} has no prompts for classes {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}")
    return [list(table[c]) for c in class_names], aggregate


class ZeroShotEvaluator(Evaluator):
    """Image embeddings of the split vs class embeddings built from each class's prompts."""

    def __init__(self, data, task, class_names, prompts, label_key, aggregate="mean"):
        super().__init__(data=data)
        self.task, self.class_names, self.prompts, self.label_key = task, class_names, prompts, label_key
        self.aggregate = aggregate
        self._tokens = None  # the flat prompts' (ids, mask): tokenized at the first eval, kept for the next ones

        def predict(variables, batch):
            zimg, _, _ = task.model.apply(variables, images=batch["image"])
            return {"zimg": zimg, "label": batch[label_key]}

        self.predict = predict

    def run(self, variables, runtime):
        if self._tokens is None:  # the scenes caption space is 300k prompts: seconds of tokenizing per eval
            self._tokens = tokenize_texts(self.task._tokenize_fn(), [p for ps in self.prompts for p in ps])
        classes = self.task.class_embeddings(variables, self.prompts, runtime.mesh, self.aggregate, self._tokens)
        out = runtime.predict_all(self.predict, variables, self.data)
        acc = rm.zeroshot_accuracy(out["zimg"], classes, out["label"])
        return {"accuracy": acc["top1"], **({"top5": acc["top5"]} if "top5" in acc else {})}


def _retrieval_reduce(out) -> dict:
    valid = out["captions_valid"].astype(bool)  # [N, K]
    txt_to_img = np.nonzero(valid)[0]  # row-major: caption k of image i -> i
    # Captions the model sees identically (same tokens) are one answer; see retrieval_metrics on ties.
    tokens = np.concatenate([out["captions"], out["captions_mask"]], axis=-1)[valid]  # [M, 2L]
    groups = np.unique(tokens, axis=0, return_inverse=True)[1].reshape(-1) if len(tokens) else None
    return rm.retrieval_recall(out["zimg"], out["ztxt"][valid], txt_to_img, txt_groups=groups)


class ContrastiveTask(Task):
    def __init__(self, config):
        super().__init__(config)
        self._tok = None
        self.model = build_two_towers(config.model, self.tokenizer().vocab_size)
        self._text_fns = {}

    @classmethod
    def config_defaults(cls):
        return {"tokenizer": "", "text_len": 16, "image_size": 64, "loss": "sigmoid", "loss_impl": "",
                "hard_negative_weight": 0.0, "hard_negative_loss": ""}

    # -- set-up ---------------------------------------------------------------------------------------------------
    def tokenizer(self):
        if self._tok is None:
            from vlmjax.data.tokenizer import Tokenizer

            path = self.config.tokenizer
            if not path or not os.path.isfile(os.path.expanduser(path)):
                raise FileNotFoundError(
                    f"config.tokenizer={path!r}: no SentencePiece model at that path. Train one with `python -m "
                    f"vlmjax.data.tokenizer --data_dir DIR --dataset scenes/default --out DIR/scenes_spm.model` "
                    f"(`make data` does it) and set --config.tokenizer to it.")
            self._tok = Tokenizer(path)
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
        if c.hard_negative_loss not in ("", "sigmoid", "pairwise"):
            raise ValueError(f"config.hard_negative_loss={c.hard_negative_loss!r}: expected 'sigmoid', 'pairwise' "
                             f"or ''")
        self.evaluators()  # unknown evaluator types/keys and unreadable class names fail before anything compiles

    def preprocess_fn(self, data_cfg, train: bool):
        from vlmjax.data.ops import get_preprocess_fn

        ops = get_preprocess_fn(data_cfg.preprocess, tokenizer=self.tokenizer())
        captions = data_cfg.get("all_captions", None)  # set by the retrieval evaluator on its copy of the data config
        tokenize = self._tokenize_fn()

        def fn(example, rng):
            ex = ops(flatten_features(example), rng)
            if captions is not None:
                if captions.key not in ex:
                    raise KeyError(f"retrieval: the preprocessed example has no {captions.key!r} (it has "
                                   f"{sorted(ex)}); keep it in config.evals.<name>.data.preprocess")
                texts = ex.pop(captions.key)
                texts = [texts] if isinstance(texts, (str, bytes)) else list(texts)  # one caption (webdataset)
                texts = [t for t in texts[:captions.max] if as_text(t).strip()]
                ids, mask = tokenize_texts(tokenize, texts) if texts else (None, None)
                pad = captions.max - len(texts)
                shape = (captions.max, int(self.config.text_len))
                ex["captions"] = np.zeros(shape, np.int32) if ids is None else np.pad(ids, ((0, pad), (0, 0)))
                ex["captions_mask"] = np.zeros(shape, np.int32) if ids is None else np.pad(mask, ((0, pad), (0, 0)))
                ex["captions_valid"] = np.arange(captions.max) < len(texts)
            return ex

        return fn

    def _tokenize_fn(self):
        """The training data's `tokenize` op (same eos/bos settings) applied to key 'text'."""
        from vlmjax.data.ops import get_preprocess_fn

        spec = {"op": "tokenize", "max_len": int(self.config.text_len)}
        spec.update({k: v for k, v in self._data_op("tokenize").items() if k in ("eos", "bos")})
        return get_preprocess_fn([dict(spec, key="text", out="text")], tokenizer=self.tokenizer())

    def _train_keys(self):
        return ("image", "text", "text_mask") + (NEG_KEYS if self.config.hard_negative_weight else ())

    def dummy_batch(self, batch_size):
        s, n = int(self.config.image_size), int(self.config.text_len)
        batch = {"image": np.zeros((batch_size, s, s, 3), np.float32), "text": np.zeros((batch_size, n), np.int32),
                 "text_mask": np.ones((batch_size, n), np.int32)}
        if self.config.hard_negative_weight:
            k = self._negatives_per_example()
            shape = (batch_size, n) if k == 1 else (batch_size, k, n)
            batch.update(text_neg=np.zeros(shape, np.int32), text_neg_mask=np.ones(shape, np.int32),
                         text_neg_valid=np.ones(shape[:-1], np.int32))
        return batch

    def _negatives_per_example(self) -> int:
        """`num` of the data's hard_negative_caption op (1 without one): the K of text_neg int32[B, K, L]."""
        return int(self._data_op("hard_negative_caption").get("num", 1))

    def _data_op(self, name: str) -> dict:
        """The first spec of op `name` in config.data.preprocess ({} if there is none)."""
        for spec in self.config.data.preprocess:
            spec = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)
            if spec.get("op") == name:
                return spec
        return {}

    def init(self, rng, batch):
        return self.model.init({"params": rng}, batch["image"], batch["text"], batch["text_mask"], train=False)

    def check_batch(self, batch, where):
        missing = [k for k in self._train_keys() if k not in batch]
        if missing:
            neg = ("; with config.hard_negative_weight > 0 also `text_neg` (op 'hard_negative_caption', then "
                   "'tokenize' with key 'text_neg') and keep `text_neg_valid`"
                   if self.config.hard_negative_weight else "")
            raise ValueError(f"{where}: no {missing} in the batch (it has {sorted(batch)}); config.data.preprocess "
                             f"must produce `image` and a tokenized `text` (op 'tokenize' with key/out 'text'){neg}")
        for k in ("text", "text_neg"):
            if k in batch and batch[k].shape[-1] != int(self.config.text_len):
                raise ValueError(f"{where}: {k} has length {batch[k].shape[-1]} but config.text_len="
                                 f"{self.config.text_len}; make the tokenize op's max_len equal to it")

    # -- training -------------------------------------------------------------------------------------------------
    def loss_fn(self):
        """The configured loss implementation for the mesh being traced under (jax.set_mesh)."""
        mesh = jax.sharding.get_abstract_mesh()
        n = 1 if mesh.empty else math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.shape)
        impl = self.config.loss_impl or ("ring" if n > 1 else "dense")
        return make_loss_fn(self.config.loss, impl, None if impl == "dense" else mesh)

    def loss(self, params, state, batch, rngs, step):
        zimg, ztxt, out = self.model.apply({"params": params, **state}, batch["image"], batch["text"],
                                           batch["text_mask"], train=True, rngs=rngs)
        loss, metrics = self.loss_fn()(zimg, ztxt, out["log_temperature"], out.get("bias"))
        weight = float(self.config.hard_negative_weight)
        if weight:
            ids, mask = batch["text_neg"], batch["text_neg_mask"]  # int32[B, L] or [B, K, L]
            _, zneg, _ = self.model.apply({"params": params, **state}, text=ids.reshape(-1, ids.shape[-1]),
                                          text_mask=mask.reshape(-1, ids.shape[-1]), train=True, rngs=rngs)
            zneg = zneg.reshape(*ids.shape[:-1], zneg.shape[-1])
            kind = self.config.hard_negative_loss or ("sigmoid" if self.config.loss == "sigmoid" else "pairwise")
            neg_loss, neg_metrics = hard_negative_loss(kind, zimg, ztxt, zneg, out["log_temperature"],
                                                       out.get("bias"), batch["text_neg_valid"])
            metrics = {**metrics, **neg_metrics, "batch_loss": loss, "hard_neg_loss": neg_loss}
            loss = loss + weight * neg_loss
        metrics = {**metrics, "temperature": out["temperature"]}
        if "bias" in out:
            metrics["bias"] = out["bias"]
        return loss, (metrics, state)

    # -- evaluation / inference ----------------------------------------------------------------------------------
    def class_embeddings(self, variables, prompts, mesh, aggregate: str = "mean", tokens=None):
        """[C] lists of prompts -> float[C, D] (aggregate 'mean': CLIP's ensemble) or a list of C float[T_c, D]
        ('max': `retrieval_metrics.class_scores` takes each class's best prompt). `tokens`: the flattened prompts'
        `tokenize_texts` output, for callers that embed the same prompts again."""
        emb = self.embed_texts(variables, [p for ps in prompts for p in ps], mesh, tokens=tokens)
        per_class = np.split(emb, np.cumsum([len(ps) for ps in prompts])[:-1])
        return rm.zeroshot_classifier(per_class) if aggregate == "mean" else per_class

    def embed_texts(self, variables, texts, mesh, chunk: int = 256, tokens=None) -> np.ndarray:
        """list of N str -> float32[N, D] text embeddings (batch split over the mesh's data axes); `tokens`: their
        (ids, mask) from `tokenize_texts`, if the caller has them."""
        ids, mask = tokens if tokens is not None else tokenize_texts(self._tokenize_fn(), texts)
        dp = math.prod(mesh.shape[a] for a in BATCH_AXES)
        chunk = -(-min(chunk, len(texts)) // dp) * dp
        if mesh not in self._text_fns:
            fn = lambda v, i, m: self.model.apply(v, text=i, text_mask=m)[1]  # noqa: E731
            self._text_fns[mesh] = jax.jit(fn, out_shardings=NamedSharding(mesh, P()))
        sharding = NamedSharding(mesh, P(BATCH_AXES))
        out = []
        with jax.set_mesh(mesh):
            for start in range(0, len(texts), chunk):
                parts = [np.pad(a[start:start + chunk], ((0, chunk - len(a[start:start + chunk])), (0, 0)))
                         for a in (ids, mask)]
                args = [jax.make_array_from_callback(p.shape, sharding, lambda idx, p=p: p[idx]) for p in parts]
                out.append(np.asarray(self._text_fns[mesh](variables, *args)))
        return np.concatenate(out)[:len(texts)]

    def evaluators(self):
        evals = {}
        for name, cfg in self.config.evals.items():
            where = f"config.evals.{name}"
            if cfg.type not in EVAL_KEYS:
                raise ValueError(f"{where}.type={cfg.type!r}: this task offers {', '.join(EVAL_KEYS)}")
            check_keys(cfg, EVAL_KEYS[cfg.type], where)
            if cfg.type == "zeroshot":
                label_key = cfg.get("label_key", "label")
                names = cfg.get("class_names", None)
                if isinstance(names, str):
                    with open(os.path.expanduser(names)) as f:
                        names = [line.strip() for line in f if line.strip()]
                names = list(names) if names else dataset_class_names(cfg.data, label_key)
                prompts, aggregate = zeroshot_prompts(cfg, names, where)
                evals[name] = ZeroShotEvaluator(cfg.data, self, names, prompts, label_key, aggregate)
            else:
                data = ml_collections.ConfigDict(cfg.data.to_dict())
                data.all_captions = {"key": cfg.get("caption_key", "captions"),
                                     "max": int(cfg.get("max_captions", 5))}
                evals[name] = Evaluator(data=data, predict=self._predict_retrieval, reduce=_retrieval_reduce)
        return evals

    def _predict_retrieval(self, variables, batch):
        zimg, _, _ = self.model.apply(variables, images=batch["image"])
        b, k, n = batch["captions"].shape
        _, ztxt, _ = self.model.apply(variables, text=batch["captions"].reshape(b * k, n),
                                      text_mask=batch["captions_mask"].reshape(b * k, n))
        return {"zimg": zimg, "ztxt": ztxt.reshape(b, k, -1), "captions_valid": batch["captions_valid"],
                "captions": batch["captions"], "captions_mask": batch["captions_mask"]}

    def predict_fns(self):
        return {"embed_image": lambda v, images: self.model.apply(v, images=images)[0],
                "embed_text": lambda v, ids, mask: self.model.apply(v, text=ids, text_mask=mask)[1]}


def as_text(value) -> str:
    """A caption field value (bytes, np.bytes_, str) as str."""
    if isinstance(value, np.ndarray):
        value = value.item()
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)
