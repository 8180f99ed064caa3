"""`type='zeroshot'`: classify the images of a split by their nearest class embedding (two-tower tasks).

A class embedding is the mean of the normalised text embeddings of `templates` (default: a CLIP-style ensemble)
filled with `class_names` (a list, a text file with one name per line, or by default the dataset's ClassLabel
names of `label_key`). `aggregate='max'` scores each class by its best template instead of the mean embedding (for
large template sets that spell out a caption grammar, where averaging blurs the structure). Instead of templates,
`class_prompts` gives per-class prompt lists {class name: [prompts]}: a JSON file (as CuPL publishes them) or
"module:function" (e.g. `vlmjax.data.scenes:captions_by_main_class`, the scenes grammar's whole caption space).
Metrics `accuracy` (top-1) and `top5`.

Uses the task's predict fns `embed_image(variables, images) -> float[B, D]` and `embed_text(variables, ids, mask)
-> float[B, D]`, and its `text_tokenize_fn()` (the training text's `tokenize` op).
"""
import importlib
import json
import os

import numpy as np

from vlmjax.evaluators import retrieval_metrics as rm
from vlmjax.evaluators.base import Evaluator
from vlmjax.tasks.text_inputs import tokenize_texts

KEYS = ("class_names", "templates", "class_prompts", "label_key", "aggregate")


def dataset_class_names(data_cfg, label_key: str) -> list:
    """ClassLabel names of a tfds dataset's `label_key` feature, '_' read as a space (cifar100's 'aquarium_fish')."""
    from vlmjax.data.sources import tfds  # tfds.builder that also resolves the built-in `scenes` by its class

    try:
        feature = tfds.builder(data_cfg.name, data_dir=data_cfg.data_dir or None).info.features[label_key]
        return [n.replace("_", " ") for n in feature.names]
    except Exception as e:  # tfds raises several types; the user needs the key
        raise ValueError(f"zero-shot on {data_cfg.name!r}: cannot read ClassLabel names of feature {label_key!r} "
                         f"({type(e).__name__}: {e}); set config.evals.<name>.class_names") from None


def _prompt_table(source, where: str) -> dict:
    """{class: [prompts]} from a JSON file or 'module:function'."""
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
    return table


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
    table = _prompt_table(source, where)
    missing = [c for c in class_names if not table.get(c)]
    if missing:
        raise ValueError(f"{where}.class_prompts={source!r} has no prompts for classes {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}")
    return [list(table[c]) for c in class_names], aggregate


def embed_texts(task, variables, texts, runtime, tokens=None) -> np.ndarray:
    """list of N str -> float32[N, D] text embeddings, run on the runtime's mesh; `tokens`: their (ids, mask) from
    `tokenize_texts`, if the caller has them."""
    ids, mask = tokens if tokens is not None else tokenize_texts(task.text_tokenize_fn(), texts)
    return runtime.predict_arrays(task.predict_fns()["embed_text"], variables, (ids, mask))


def class_embeddings(task, variables, prompts, runtime, aggregate: str = "mean", tokens=None):
    """[C] lists of prompts -> float[C, D] (aggregate 'mean': CLIP's ensemble) or a list of C float[T_c, D]
    ('max': `retrieval_metrics.class_scores` takes each class's best prompt). `tokens`: the flattened prompts'
    `tokenize_texts` output, for callers that embed the same prompts again."""
    emb = embed_texts(task, variables, [p for ps in prompts for p in ps], runtime, tokens=tokens)
    per_class = np.split(emb, np.cumsum([len(ps) for ps in prompts])[:-1])
    return rm.zeroshot_classifier(per_class) if aggregate == "mean" else per_class


class ZeroShotEvaluator(Evaluator):
    """Image embeddings of the split vs class embeddings built from each class's prompts."""

    def __init__(self, data, task, class_names, prompts, label_key, aggregate="mean"):
        super().__init__(data=data)
        self.task, self.class_names, self.prompts, self.label_key = task, class_names, prompts, label_key
        self.aggregate = aggregate
        self._tokens = None  # the flat prompts' (ids, mask): tokenized at the first eval, kept for the next ones
        embed_image = task.predict_fns()["embed_image"]

        def predict(variables, batch):
            return {"zimg": embed_image(variables, batch["image"]), "label": batch[label_key]}

        self.predict = predict

    def embed(self, variables, runtime) -> tuple:
        """(class embeddings as `class_embeddings` returns them, {'zimg': float[N, D], 'label': [N, ...]}) of the
        split's images, `label` being the batch's `label_key`."""
        if self._tokens is None:  # the scenes caption space is 300k prompts: seconds of tokenizing per eval
            self._tokens = tokenize_texts(self.task.text_tokenize_fn(), [p for ps in self.prompts for p in ps])
        classes = class_embeddings(self.task, variables, self.prompts, runtime, self.aggregate, self._tokens)
        return classes, runtime.predict_all(self.predict, variables, self.data)

    def run(self, variables, runtime):
        classes, out = self.embed(variables, runtime)
        acc = rm.zeroshot_accuracy(out["zimg"], classes, out["label"])
        return {"accuracy": acc["top1"], **({"top5": acc["top5"]} if "top5" in acc else {})}


def class_names_of(cfg, label_key: str) -> list:
    """`class_names` of a zero-shot config: its list, the lines of its text file, or the dataset's ClassLabel names."""
    names = cfg.get("class_names", None)
    if isinstance(names, str):
        with open(os.path.expanduser(names)) as f:
            names = [line.strip() for line in f if line.strip()]
    return list(names) if names else dataset_class_names(cfg.data, label_key)


def build(task, cfg, where: str) -> Evaluator:
    label_key = cfg.get("label_key", "label")
    names = class_names_of(cfg, label_key)
    prompts, aggregate = zeroshot_prompts(cfg, names, where)
    return ZeroShotEvaluator(cfg.data, task, names, prompts, label_key, aggregate)
