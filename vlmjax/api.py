"""The Python API: a trained run as a model object with its family's verbs.

    import vlmjax
    m = vlmjax.load("workdirs/vit_scenes")            # config.json + the latest checkpoint (params, model state)
    m.classify("a.png")                               # [('red circle', 0.97)]  (top_k=1 by default)
    m = vlmjax.load("workdirs/siglip_scenes")
    m.zeroshot([img1, img2], ["red circle", "blue square"])   # float32[2, 2] probabilities
    m.embed_images(img1), m.embed_texts(["a red circle"])     # float32[N, D], L2-normalised

Images are file paths, PIL images or numpy arrays (uint8 [H, W, 3]; see vlmjax.image_input.to_uint8_rgb), one or a
list; any size: each goes through the run's evaluation image preprocessing and, where that leaves another size, a
resize to the run's `image_size`. Verbs returning arrays always keep the batch axis (N = 1 for one image);
`classify` and `answer` return one result for one image and a list for a list.

Families (`config.task`): classification -> Classifier (`classify`, `probabilities`), contrastive -> TwoTowerModel
(`embed_images`, `embed_texts`, `zeroshot`), vqvae -> ImageTokenizer (`encode`, `decode`), prefixlm -> PrefixLM
(`answer`, and `generate` for VQ-image runs). The CLIs (vlmjax-zeroshot, vlmjax-predict, vlmjax-vq) call this.
"""
import os

import numpy as np

from vlmjax import image_input

FAMILIES = {}  # config.task -> model class, filled by `_family`


def _family(task_name: str):
    def deco(cls):
        FAMILIES[task_name] = cls
        cls.family = task_name
        return cls
    return deco


def load_run_config(workdir: str):
    """The experiment config a trained workdir saved (`config.json`), its relative paths resolved against the
    directory the run was launched from (vlmjax/core/run_paths.py), so that it loads from any directory."""
    import json

    import ml_collections

    from vlmjax.core.run_paths import absolute_paths, launch_dir

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"--workdir {workdir!r}: no config.json (not a vlmjax run directory?)")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    return absolute_paths(config, launch_dir(workdir, config))


def load_run(workdir: str, tasks=None, keys=("params", "model_state"), step: int = None, where: str = "--workdir"):
    """(task, variables, step) of a trained workdir: its config.json resolved against the task's defaults and the
    checkpoint `step` (default: latest) as host numpy `{'params': ..., **model_state}` (never the optimizer state).
    The one "load a trained run" of the API and every CLI.

    `tasks`: the `config.task` values the caller accepts (ValueError naming the workdir otherwise)."""
    from vlmjax.tasks import get_task_class
    from vlmjax.core import config as config_lib
    from vlmjax.core.checkpoint import read_variables

    raw = load_run_config(workdir)
    name = raw.get("task", "")
    if tasks is not None and name not in tasks:
        raise ValueError(f"{where} {workdir!r}: config.task={name!r}, not a {' or '.join(tasks)} run")
    task_cls = get_task_class(name)
    task = task_cls(config_lib.resolve(raw, task_cls.config_defaults()))
    step, state = read_variables(workdir, keys, step, where=where)
    return task, {"params": state["params"], **state.get("model_state", {})}, step


def load(path: str, step: int = None):
    """The run in `path` as its family's model object (see the module docstring): a `vlmjax-train` workdir
    (checkpoint `step`, default: the latest) or a folder written by `vlmjax-export --format hf_siglip` (towers) or
    `--format hf_paligemma` (a prefix-LM)."""
    if os.path.isfile(os.path.join(path, EXPORT_CONFIG)):
        return _load_export(path)
    name = load_run_config(path).get("task", "")
    if name not in FAMILIES:
        raise ValueError(f"workdir {path!r}: config.task={name!r} has no Python API; expected one of "
                         f"{', '.join(sorted(FAMILIES))}")
    return FAMILIES[name](*load_run(path, (name,), step=step, where="workdir"), workdir=path)


# What `vlmjax-export` adds to a HF folder that holds a whole model so that `load` can rebuild the run from it: the
# run's resolved config and its SentencePiece model (HF's own files stay untouched). The format of each family's
# whole-model folder (hf_gemma holds the LM alone; .npz files are no folders):
EXPORT_CONFIG, EXPORT_TOKENIZER = "vlmjax_config.json", "vlmjax_spm.model"
EXPORT_FORMATS = {"contrastive": "hf_siglip", "prefixlm": "hf_paligemma"}


def save_export_config(config, out_dir: str) -> list:
    """Writes the run's `config` (its `tokenizer` pointing at the copy) and a copy of its tokenizer to `out_dir`;
    returns the written paths."""
    import json
    import shutil

    from vlmjax.core.config import to_json

    paths = [os.path.join(out_dir, EXPORT_CONFIG), os.path.join(out_dir, EXPORT_TOKENIZER)]
    shutil.copyfile(os.path.expanduser(config.tokenizer), paths[1])
    cfg = json.loads(to_json(config))
    cfg["tokenizer"] = EXPORT_TOKENIZER
    with open(paths[0], "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    return paths


def _param_shapes(task) -> dict:
    """{parameter path: shape} of `task`'s model, traced (nothing is allocated or compiled)."""
    import jax
    from flax import linen as nn

    from vlmjax.core.optim import param_path

    params = nn.unbox(jax.eval_shape(task.init, jax.random.key(0), task.dummy_batch(1))["params"])
    return {param_path(p): tuple(leaf.shape) for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def _load_export(folder: str):
    """The run of an exported hf_siglip / hf_paligemma folder: its weights through the HF importer, in the layout
    (scanned blocks or not) of the run's own modules."""
    import json

    import ml_collections

    from vlmjax.models import foreign
    from vlmjax.tasks import get_task_class
    from vlmjax.core import config as config_lib

    with open(os.path.join(folder, EXPORT_CONFIG)) as f:
        raw = ml_collections.ConfigDict(json.load(f))
    raw.tokenizer = os.path.join(folder, EXPORT_TOKENIZER)
    if raw.get("task") not in EXPORT_FORMATS:
        raise ValueError(f"{folder!r}: {EXPORT_CONFIG} has config.task={raw.get('task')!r}; vlmjax.load opens "
                         f"exports of {', '.join(f'{t} runs ({f})' for t, f in EXPORT_FORMATS.items())}")
    task_cls = get_task_class(raw.task)
    task = task_cls(config_lib.resolve(raw, task_cls.config_defaults()))
    params = foreign.load(EXPORT_FORMATS[raw.task], folder, _param_shapes(task))
    return FAMILIES[raw.task](task, {"params": params}, workdir=folder)


class RunModel:
    """A trained run: `task` (its vlmjax task), `variables` (host numpy), `config`, `step`, `workdir`."""

    family = ""
    BATCH = 64  # images per device call

    def __init__(self, task, variables, step=None, workdir: str = ""):
        self.task, self.variables, self.step, self.workdir = task, variables, step, workdir
        self.config = task.config
        self._fns = {}

    def __repr__(self):
        return f"{type(self).__name__}(workdir={self.workdir!r}, step={self.step})"

    def _jit(self, name, fn, **kw):
        import jax

        if name not in self._fns:
            self._fns[name] = jax.jit(fn, **kw)
        return self._fns[name]

    def preprocess(self, images, eval_name: str = "") -> tuple:
        """(float32[N, S, S, 3], was_single): images through the evaluator `eval_name`'s image ops (default: the
        first evaluator that has some), then resized to config.image_size if they are not at it."""
        key = ("preprocess", eval_name)
        if key not in self._fns:
            specs = image_input.image_specs(self.config, eval_name)
            self._fns[key] = image_input.preprocess_fn(specs, int(self.config.get("image_size", 0) or 0))
        return image_input.image_batch(images, self._fns[key])

    def _in_batches(self, fn, x: np.ndarray) -> np.ndarray:
        """fn(variables, float32[b, ...]) over x[N, ...] in batches of at most BATCH, each padded to a power of two
        (a handful of compiled shapes, bounded memory); returns the N rows of the outputs, concatenated."""
        out = []
        for start in range(0, len(x), self.BATCH):
            part = x[start:start + self.BATCH]
            size = 1 << (len(part) - 1).bit_length()
            padded = np.concatenate([part, np.zeros((size - len(part),) + part.shape[1:], part.dtype)])
            out.append(np.asarray(fn(self.variables, padded))[:len(part)])
        return np.concatenate(out)


@_family("classification")
class Classifier(RunModel):
    """`classify(images, top_k)` -> label names and probabilities; `probabilities(images)` -> float32[N, C]."""

    def __init__(self, task, variables, step=None, workdir: str = "", label_names=None):
        super().__init__(task, variables, step, workdir)
        self._label_names = list(label_names) if label_names is not None else None

    @property
    def label_names(self) -> list:
        """The training data's ClassLabel names (tfds `label` feature), or '0', '1', ... when it has none."""
        if self._label_names is None:
            from vlmjax.evaluators.zeroshot import dataset_class_names

            n = int(self.config.num_classes)
            try:
                names = dataset_class_names(self.config.data, "label")
            except ValueError:
                names = []
            self._label_names = names if len(names) == n else [str(i) for i in range(n)]
        return self._label_names

    def probabilities(self, images) -> np.ndarray:
        """images -> float32[N, C] softmax probabilities (class order: label_names)."""
        import jax

        x, _ = self.preprocess(images)
        logits_fn = self.task.predict_fns()["logits"]
        probs = self._jit("probs", lambda v, im: jax.nn.softmax(logits_fn(v, im).astype("float32")))
        return self._in_batches(probs, x)

    def classify(self, images, top_k: int = 1):
        """[(label name, probability), ...] of the top_k classes, best first: one list per image (one list for
        one image)."""
        items, single = image_input.as_image_list(images)
        probs = self.probabilities(items)
        out = [[(self.label_names[i], float(p[i])) for i in np.argsort(-p, kind="stable")[:top_k]] for p in probs]
        return out[0] if single else out


@_family("contrastive")
class TwoTowerModel(RunModel):
    """SigLIP / CLIP / LiT: `embed_images`, `embed_texts` (L2-normalised float32[N, D]) and `zeroshot`."""

    def _mesh(self):
        import jax

        from vlmjax.core.mesh import make_mesh

        if "mesh" not in self._fns:
            self._fns["mesh"] = make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
        return self._fns["mesh"]

    def embed_images(self, images, eval_name: str = "") -> np.ndarray:
        """images -> float32[N, D] (the image tower's L2-normalised embeddings)."""
        x, _ = self.preprocess(images, eval_name)
        fn = self._jit("images", lambda v, im: self.task.model.apply(v, images=im)[0])
        return self._in_batches(fn, x).astype(np.float32)

    def embed_texts(self, texts) -> np.ndarray:
        """str or list of N str -> float32[N, D] (tokenized like the training text)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        from vlmjax.core.runtime import Runtime
        from vlmjax.evaluators.zeroshot import embed_texts

        return embed_texts(self.task, self.variables, texts, Runtime.for_mesh(self._mesh()))

    def zeroshot(self, images, labels, eval_name: str = "") -> np.ndarray:
        """images, C label strings -> float32[N, C] probabilities.

        Each label is embedded through the prompts of the run's zero-shot evaluator `eval_name` (default: the first
        one; a CLIP-style template ensemble if it has none) and scored the way it aggregates them ('mean' or
        'max'). Sigmoid-loss runs: sigmoid(t * cos + b) per label (independent, as in SigLIP's demo);
        softmax-loss runs: softmax over the labels of t * cos.
        """
        labels = [labels] if isinstance(labels, str) else list(labels)
        prompts, aggregate = label_prompts(self.config, labels, eval_name)
        eval_name = eval_name or next((k for k, ev in self.config.evals.items() if ev.type == "zeroshot"), "")
        x, _ = self.preprocess(images, eval_name)
        return zeroshot_probabilities(self.task, self.variables, x, prompts, aggregate, self._mesh())

    def prompts(self, labels, eval_name: str = "") -> tuple:
        """([C] prompt lists, 'mean' | 'max') for `labels` under the zero-shot evaluator `eval_name`."""
        return label_prompts(self.config, labels, eval_name)


def zeroshot_eval(config, eval_name: str = ""):
    """A contrastive run's zero-shot evaluator config `eval_name` (default: the first; None if it has none)."""
    evals = {k: ev for k, ev in config.evals.items() if ev.type == "zeroshot"}
    if eval_name and eval_name not in evals:
        raise ValueError(f"--eval {eval_name!r}: the run's zero-shot evaluators are {sorted(evals) or 'none'}")
    return evals[eval_name] if eval_name else next(iter(evals.values()), None)


def label_prompts(config, labels, eval_name: str = "") -> tuple:
    """([C] prompt lists, aggregation 'mean' | 'max') for `labels` under the zero-shot evaluator `eval_name` (its
    templates, or its `class_prompts` table, which must hold every label)."""
    import ml_collections

    from vlmjax.evaluators.zeroshot import zeroshot_prompts

    ev = zeroshot_eval(config, eval_name)
    return zeroshot_prompts(ev if ev is not None else ml_collections.ConfigDict(), labels,
                            f"--eval {eval_name or 'default'}")


def zeroshot_probabilities(task, variables, images, prompts, aggregate: str = "mean", mesh=None) -> np.ndarray:
    """Preprocessed images float32[N, H, W, 3], C prompt lists -> float32[N, C] (see TwoTowerModel.zeroshot)."""
    import jax

    from vlmjax.evaluators.retrieval_metrics import class_scores
    from vlmjax.core.mesh import make_mesh
    from vlmjax.core.runtime import Runtime
    from vlmjax.evaluators.zeroshot import class_embeddings

    mesh = mesh or make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    zimg, _, out = jax.jit(lambda v, x: task.model.apply(v, images=x))(variables, images)
    classes = class_embeddings(task, variables, prompts, Runtime.for_mesh(mesh), aggregate)
    logits = float(out["temperature"]) * class_scores(np.asarray(zimg), classes)
    if task.config.loss == "sigmoid":
        return (1 / (1 + np.exp(-(logits + float(out.get("bias", 0.0)))))).astype(np.float32)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


@_family("vqvae")
class ImageTokenizer(RunModel):
    """A VQ-VAE: `encode(images)` -> int32[N, h, w] codes, `decode(codes)` -> uint8[N, H, W, 3].

    Images keep their size (their sides must be divisible by the downsampling factor `f`; a batch shares one
    size) and are mapped to [-1, 1] like training's `value_range` op."""

    def encode(self, images) -> np.ndarray:
        from vlmjax.data import ops

        to_range = ops.value_range(-1.0, 1.0)
        items = [image_input.to_uint8_rgb(im) for im in image_input.as_image_list(images)[0]]
        if len({im.shape for im in items}) > 1:
            raise ValueError(f"images have different sizes {sorted({im.shape[:2] for im in items})}; encode them in "
                             f"separate calls")
        x, _ = image_input.image_batch(items, lambda im: to_range({"image": im}, None)["image"])
        f = self.task.model.downsample_factor
        if x.shape[1] % f or x.shape[2] % f:
            raise ValueError(f"image size {x.shape[1:3]} is not divisible by the model's f={f}")
        return np.asarray(self._jit("encode", self.task.encode)(self.variables, x))

    def decode(self, codes) -> np.ndarray:
        from vlmjax.losses.image_metrics import to_uint8

        codes = np.asarray(codes)
        codes = codes[None] if codes.ndim == 2 else codes
        k = self.task.model.num_codes
        if codes.ndim != 3 or not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"codes: expected integers [h, w] or [N, h, w], got {codes.dtype}{list(codes.shape)}")
        if codes.size and (codes.min() < 0 or codes.max() >= k):
            raise ValueError(f"codes must lie in [0, {k}), got [{codes.min()}, {codes.max()}]")
        return np.asarray(to_uint8(self._jit("decode", self.task.decode)(self.variables, codes.astype(np.int32))))


@_family("prefixlm")
class PrefixLM(RunModel):
    """A prefix-LM VLM: `answer(images, prompts)` -> text; `generate(captions)` -> uint8 images (VQ runs)."""

    def answer(self, images, prompts, max_new_tokens: int = 32):
        """Greedy answers (stopping at `<|end|>`) to `prompts` (one string for all images, or one per image), in
        the chat template the run was trained with: a str for one image, a list for a list."""
        x, single = self.preprocess(images)
        prompts = [prompts] * len(x) if isinstance(prompts, str) else list(prompts)
        if len(prompts) != len(x):
            raise ValueError(f"{len(prompts)} prompts for {len(x)} images")
        from vlmjax.tasks.chat_prompts import answer_texts

        out = answer_texts(self.task, self.variables, x, prompts, max_new_tokens)
        return out[0] if single else out

    def generate(self, captions, seed: int = 0, cfg_scale: float = 3.0, temperature: float = 1.0,
                 top_k: int = None) -> np.ndarray:
        """str or list of N captions -> uint8[N, H, W, 3] images sampled from a VQ-image run's LM."""
        if not getattr(self.task, "vq", False):
            raise ValueError(f"workdir {self.workdir!r}: config.image_input={self.config.image_input!r}; generating "
                             f"images needs a VQ-image run (image_input='vq')")
        captions = [captions] if isinstance(captions, str) else list(captions)
        from vlmjax.tasks.chat_prompts import generate_images

        return generate_images(self.task, self.variables, captions, seed=seed, cfg_scale=cfg_scale,
                               temperature=temperature, top_k=top_k)
