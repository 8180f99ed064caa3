"""The core config schema and its validation, run before anything compiles.

An experiment file only sets what differs from `defaults()`; validation reports the first problem with one message
that names the key: an unknown or misspelt key (with the closest known key), a wrong type, a mesh that does not fit
the devices, a batch that does not split over the data-parallel devices, a bad preprocessing op.
Free-form sections (`model`, `evals`) are checked by the task against the modules and evaluators it builds.
"""
import json
import math

import ml_collections

from vlmjax.core.mesh import DEFAULT_RULES, resolve_mesh_shape
from vlmjax.names import did_you_mean

FREE_FORM = ("model", "evals", "sharding_rules")


def defaults() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = ""
    c.seed = 0
    c.total_steps = 1000
    c.batch_size = 128
    c.log_every_steps = 50
    c.nan_policy = "stop"  # 'stop': fail with a message, last good checkpoint intact; 'skip': drop the step, count it
    c.model = ml_collections.ConfigDict()

    c.data = ml_collections.ConfigDict(dict(
        name="scenes/default", split="train", data_dir="data/tfds", preprocess=[], shuffle=True,
        # worker_count: processes for decode + preprocess + batching; -1: auto (0 on a CPU-only host, else from
        # the host's cores: vlmjax.data.pipeline.auto_worker_count). prefetch_buffer: batches a background thread
        # builds ahead while the step runs, without worker processes (0: none; -1: auto, 0 on a CPU-only host, else 2).
        # device_prefetch: global batches put on the mesh ahead of their step (-1: auto, 1 on an accelerator, 0 on
        # a CPU-only host; vlmjax/core/batch_feed.py).
        # device_preprocess: per-batch ops run inside the jitted train step (vlmjax.data.device_ops).
        # read_features: top-level tfds features to deserialize (empty: all), e.g. ['image', 'label'].
        # on_corrupt_record: a train record the source cannot read (a corrupt ArrayRecord chunk): 'stop' (default:
        # damaged storage is reported, not silently trained around; the error names the shard and record, and the
        # run resumes from its last checkpoint with 'skip') or 'skip' (dropped, counted as data/dropped/corrupt_record).
        # mixture: train on several datasets at once, {component: {weight, and any of name, split, data_dir,
        # preprocess, read_features}}; a key a component leaves out is config.data's (MIXTURE_SHARED keys are
        # the pipeline's, one for all). Empty: config.data alone. docs/data.md, "Training on a mixture".
        worker_count=-1, prefetch_buffer=-1, device_prefetch=-1, device_preprocess=[], read_features=[],
        on_corrupt_record="stop", mixture=ml_collections.ConfigDict()))

    c.eval = ml_collections.ConfigDict(dict(every_steps=500, batch_size=256))
    c.evals = ml_collections.ConfigDict()

    c.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, momentum=0.0, weight_decay=0.0,
        wd_mask=r".*(kernel|embedding)$", clip_norm=1.0, freeze="", lr_mults=(), grad_accum_steps=1,
        # "bfloat16": the matrices param_dtype_mask selects are kept in bfloat16 between steps and the optimizer
        # updates float32 master copies of every parameter (core/optim.py, docs/scale.md); "": the model's dtype.
        param_dtype="", param_dtype_mask=r".*(kernel|embedding)$"))
    c.schedule = ml_collections.ConfigDict(dict(name="cosine", warmup_steps=0, end_lr_frac=0.0, timescale=10_000))

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.sharding_rules = [list(r) for r in DEFAULT_RULES]

    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=3, async_save=True))
    c.init_from = ml_collections.ConfigDict(dict(workdir="", path="", format="", include=".*", rewrite=[]))
    c.debug = ml_collections.ConfigDict(dict(sleep_per_step=0.0))
    # A jax.profiler trace of steps start_step .. start_step + steps - 1 into dir (default <workdir>/profile); 0: off.
    c.profile = ml_collections.ConfigDict(dict(start_step=0, steps=5, dir=""))
    # jax's persistent compilation cache for vlmjax-train: "auto" = <workdir>/jax_cache unless the process has one
    # (JAX_COMPILATION_CACHE_DIR), "" = off, else a directory (core/compile_cache.py).
    c.compilation_cache_dir = "auto"
    # Weights & Biases: off while `project` is empty; `name` defaults to the workdir's name (core/metrics.py).
    c.wandb = ml_collections.ConfigDict(dict(project="", entity="", name="", mode=""))
    return c


# config.data keys that describe the whole train stream, so a mixture component cannot set its own.
MIXTURE_SHARED = ("shuffle", "worker_count", "prefetch_buffer", "device_prefetch", "device_preprocess",
                  "on_corrupt_record", "mixture")

EVAL_DATA_DEFAULTS = dict(name="", split="test", data_dir="", preprocess=[], batch_size=0, max_examples=0)


def _type_ok(default, value) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    if isinstance(default, (dict, ml_collections.ConfigDict)):  # `--config.evals={}` on the command line
        return isinstance(value, (dict, ml_collections.ConfigDict))
    return isinstance(value, type(default))


def _unknown(where, key, known):
    return ValueError(f"unknown key {where}.{key}{did_you_mean(key, known)}; known keys: {', '.join(sorted(known))}")


def check_against(cfg, schema, where: str) -> None:
    """Every key of `cfg` exists in `schema` with a compatible type; recurse into sub-dicts."""
    for key in cfg.keys():
        if key not in schema:
            raise _unknown(where, key, schema.keys())
        value, default = cfg[key], schema[key]
        if key in FREE_FORM and where == "config":
            continue
        if key == "mixture" and where == "config.data":
            _check_mixture(value, schema)
            continue
        if isinstance(default, (dict, ml_collections.ConfigDict)):
            if not isinstance(value, (dict, ml_collections.ConfigDict)):
                raise ValueError(f"{where}.{key}: expected a dict of settings, got {type(value).__name__}")
            check_against(value, default, f"{where}.{key}")
        elif not _type_ok(default, value):
            raise ValueError(f"{where}.{key}={value!r}: wrong type {type(value).__name__}, "
                             f"expected {type(default).__name__} (like the default {default!r})")


def _component_schema(data) -> dict:
    """The keys a mixture component may set, with their defaults (so their types): `data`'s per-dataset keys and
    `weight`."""
    return {**{k: data[k] for k in data.keys() if k not in MIXTURE_SHARED}, "weight": 1.0}


def _check_mixture(mixture, data_schema) -> None:
    """Each component of `config.data.mixture` is a dict with a positive `weight` and only per-dataset keys."""
    if not isinstance(mixture, (dict, ml_collections.ConfigDict)):
        raise ValueError(f"config.data.mixture: expected a dict {{component: {{weight, name, ...}}}}, got "
                         f"{type(mixture).__name__}")
    schema = _component_schema(data_schema)
    for name in mixture.keys():
        where, comp = f"config.data.mixture.{name}", mixture[name]
        if not isinstance(comp, (dict, ml_collections.ConfigDict)):
            raise ValueError(f"{where}: expected a dict of settings (weight, name, split, preprocess, ...), got "
                             f"{type(comp).__name__}")
        shared = [k for k in comp.keys() if k in MIXTURE_SHARED]
        if shared:
            raise ValueError(f"{where}.{shared[0]}: set for the whole train stream, as config.data.{shared[0]}, "
                             f"not per component")
        check_against(comp, schema, where)
        weight = comp.get("weight", None)
        if weight is None or not weight > 0:
            raise ValueError(f"{where}.weight={weight!r}: every component needs a weight > 0 (its share of the "
                             f"train examples is weight / the sum of the weights)")


def mixture_components(data_cfg) -> list:
    """[(component name, weight, data config)]: each component of `data_cfg.mixture` with the keys it leaves out
    taken from `data_cfg` (and `mixture` emptied); [('', 1.0, data_cfg)] without a mixture."""
    mixture = data_cfg.get("mixture", None) or {}
    if not mixture:
        return [("", 1.0, data_cfg)]
    out = []
    for name in mixture.keys():
        comp = ml_collections.ConfigDict(data_cfg.to_dict())
        with comp.unlocked():
            comp.mixture = ml_collections.ConfigDict()
            for k in mixture[name].keys():
                if k != "weight":
                    comp[k] = mixture[name][k]
        out.append((name, float(mixture[name].weight), comp))
    return out


def resolve(config, task_defaults: dict = None) -> ml_collections.ConfigDict:
    """Validated copy of `config` with every default filled in."""
    schema = defaults()
    for k, v in (task_defaults or {}).items():
        schema[k] = v
    check_against(config, schema, "config")
    merged = schema
    _deep_update(merged, config)
    for name, ev in merged.evals.items():
        check_against(ev, {"type": "", "every_steps": 0, "data": EVAL_DATA_DEFAULTS,
                           **{k: ev[k] for k in ev.keys() if k not in ("type", "every_steps", "data")}},
                      f"config.evals.{name}")
        data = ml_collections.ConfigDict(dict(EVAL_DATA_DEFAULTS))
        _deep_update(data, ev.get("data", {}))
        with ev.unlocked():
            ev.data = data
            if "every_steps" not in ev:
                ev.every_steps = merged.eval.every_steps
    return merged


def _deep_update(dst, src):
    with dst.unlocked():
        for k in src.keys():
            v = src[k]
            if isinstance(v, (dict, ml_collections.ConfigDict)) and isinstance(dst.get(k), ml_collections.ConfigDict) \
                    and k not in ("model",):
                _deep_update(dst[k], v)
            else:
                dst[k] = v


def fill_eval_data(config) -> None:
    """Eval data settings left empty take the train data's name and data_dir and `config.eval.batch_size`.

    Done after command-line overrides, so `--config.data.data_dir=...` reaches the evaluators too."""
    for ev in config.evals.values():
        with ev.data.unlocked():
            ev.data.name = ev.data.name or config.data.name
            ev.data.data_dir = ev.data.data_dir or config.data.data_dir
            ev.data.batch_size = ev.data.batch_size or config.eval.batch_size


def check_runtime(config, num_devices: int, process_count: int = 1) -> tuple:
    """Mesh and batch checks against the devices; returns the resolved mesh shape."""
    if config.batch_size < 1:
        raise ValueError(f"config.batch_size={config.batch_size}: must be >= 1")
    if config.optimizer.lr < 0:
        raise ValueError(f"config.optimizer.lr={config.optimizer.lr}: must be >= 0 (a negative lr ascends the loss)")
    shape = resolve_mesh_shape(config.mesh, num_devices)
    dp = shape[0] * shape[1]
    accum = int(config.optimizer.grad_accum_steps)
    if accum < 1:
        raise ValueError(f"config.optimizer.grad_accum_steps={accum}: must be >= 1")
    if config.batch_size % (dp * accum):
        raise ValueError(
            f"config.batch_size={config.batch_size} is not divisible by the data-parallel size {dp} "
            f"(mesh data={shape[0]} x fsdp={shape[1]})" + (f" x grad_accum_steps={accum}" if accum > 1 else ""))
    if config.batch_size % process_count:
        raise ValueError(f"config.batch_size={config.batch_size} is not divisible by the {process_count} processes")
    for name, ev in config.evals.items():  # one that dp does not divide is padded (eval_batch_size)
        if ev.data.batch_size < 1:
            raise ValueError(f"config.evals.{name}.data.batch_size={ev.data.batch_size}: must be >= 1")
    if int(config.data.get("device_prefetch", -1)) < -1:
        raise ValueError(f"config.data.device_prefetch={config.data.device_prefetch}: expected -1 (auto) or the "
                         f"number of batches to put on the devices ahead of their step (0: none)")
    if config.nan_policy not in ("stop", "skip"):
        raise ValueError(f"config.nan_policy={config.nan_policy!r}: expected 'stop' or 'skip'")
    if config.profile.start_step < 0 or config.profile.steps < 1:
        raise ValueError(f"config.profile: start_step={config.profile.start_step} (>= 0; 0: no trace) and "
                         f"steps={config.profile.steps} (>= 1) traces steps start_step .. start_step + steps - 1")
    if config.total_steps < 0:
        raise ValueError(f"config.total_steps={config.total_steps}: must be >= 0 (0: evaluate the initial or "
                         f"imported weights, train nothing)")
    return shape


def eval_batch_size(batch_size: int, data_parallel: int, process_count: int = 1) -> int:
    """An eval batch size rounded up to a multiple of the data-parallel size (and of the processes, which each read
    an equal share): the extra rows are padding marked invalid (`_valid`), so no metric changes."""
    m = math.lcm(int(data_parallel), int(process_count))
    return -(-int(batch_size) // m) * m


def set_dotted(config, over: dict):
    """Sets {'optimizer.lr': 1e-3, ...} on `config` in place, creating missing sections; a value replaces the old
    one whatever its type (validation, not this, judges types). For code that builds configs: tests, benchmarks.
    Returns `config`."""
    with config.unlocked():
        for key, value in over.items():
            node = config
            *path, last = key.split(".")
            for part in path:
                if part not in node:
                    node[part] = ml_collections.ConfigDict()
                node = node[part]
            if last in node:
                del node[last]
            node[last] = value
    return config


EXPERIMENTS = "vlmjax.experiments"  # the repository's experiments/ folder, installed under this name (setup.py)


def experiments_package():
    """The package vlmjax.experiments: installed (setup.py maps the repository's experiments/ folder there), or, in
    a checkout used without installing it (PYTHONPATH=., as on a device machine), that folder next to the vlmjax
    package, registered under the same name so that its modules import each other relatively."""
    import importlib
    import importlib.util
    import os
    import sys

    try:
        return importlib.import_module(EXPERIMENTS)
    except ModuleNotFoundError as e:
        folder = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                              "experiments")
        if e.name != EXPERIMENTS or not os.path.isfile(os.path.join(folder, "__init__.py")):
            raise
    spec = importlib.util.spec_from_file_location(EXPERIMENTS, os.path.join(folder, "__init__.py"),
                                                  submodule_search_locations=[folder])
    package = importlib.util.module_from_spec(spec)
    sys.modules[EXPERIMENTS] = package
    spec.loader.exec_module(package)
    return package


def experiment_names() -> list:
    """The experiments `--config NAME[:arg]` can name: the modules of vlmjax.experiments (but `common`)."""
    import pkgutil

    return sorted(m.name for m in pkgutil.iter_modules(experiments_package().__path__) if m.name != "common")


def experiment_module(spec: str):
    """The module of an experiment: a name (`siglip_b16`) in vlmjax.experiments, or a path to a .py file.

    A file of the experiments folder itself (`experiments/siglip_b16.py`) is imported as its package's module, so
    that its relative imports (`from .common import ...`) work; any other file (a user's own experiment) is loaded
    on its own and may import `vlmjax.experiments.common` by its absolute name."""
    import importlib
    import importlib.util
    import os

    from vlmjax.names import unknown

    if not spec.endswith(".py") and os.sep not in spec and "/" not in spec:
        names = experiment_names()
        if spec not in names:
            raise unknown("experiment", spec, names, f"--config {spec!r}")
        return importlib.import_module(f"{EXPERIMENTS}.{spec}")
    if not os.path.isfile(spec):
        raise FileNotFoundError(f"--config {spec!r}: no experiment file {spec!r}")
    folder = os.path.realpath(os.path.dirname(os.path.abspath(spec)))
    if folder in {os.path.realpath(p) for p in experiments_package().__path__}:
        return importlib.import_module(f"{EXPERIMENTS}.{os.path.basename(spec)[:-3]}")
    name = "vlmjax_user_experiment_" + os.path.basename(spec)[:-3]
    module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(name, spec))
    module.__spec__.loader.exec_module(module)
    return module


def load_experiment(spec: str):
    """`NAME[:arg]` or `path/to/x.py[:arg]` -> the ConfigDict its `get_config(arg)` returns (experiment_module)."""
    path, _, arg = spec.partition(":")
    return experiment_module(path).get_config(arg or None)


def load_with_overrides(spec: str, overrides):
    """What `vlmjax-train --config SPEC --config.<key>=<value> ...` runs: the experiment merged with the defaults
    of its task and of the core, then the overrides (`[(key, value_text), ...]`, as split_overrides returns)."""
    from vlmjax.tasks import get_task_class

    config = load_experiment(spec)
    return apply_overrides(config, overrides, get_task_class(config.get("task", "")).config_defaults())


def _parse_value(text: str, like):
    import ast

    if isinstance(like, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"expected true/false, got {text!r}")
    if isinstance(like, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if like is None:
            return text
        raise ValueError(f"cannot parse {text!r} as {type(like).__name__}") from None
    if isinstance(like, float) and isinstance(value, int):
        value = float(value)
    return value


def apply_overrides(config, overrides, task_defaults: dict = None):
    """Apply `[('optimizer.lr', '1e-3'), ...]` to the config merged with the defaults (so any core key can be
    overridden); values are parsed to the type of the key they replace. Returns the merged config."""
    # Evaluators without their own every_steps follow config.eval.every_steps, also when it comes from the command
    # line (resolve() has already copied the experiment's value into them).
    inherits = [name for name, ev in config.get("evals", {}).items() if "every_steps" not in ev]
    merged = resolve(config, task_defaults)
    for key, text in overrides:
        node, parts = merged, key.split(".")
        for i, p in enumerate(parts[:-1]):
            if p not in node and parts[:i] == ["data", "mixture"] and len(parts) == 4:
                with node.unlocked():  # a new mixture component (validation asks for its weight)
                    node[p] = ml_collections.ConfigDict()
            if p not in node:
                raise _unknown("config" + "".join("." + q for q in parts[:i]), p, node.keys())
            node = node[p]
        last = parts[-1]
        # a mixture component may be given any key it may set, also one it left to config.data (parsed like it)
        component = _component_schema(merged.data) if parts[:2] == ["data", "mixture"] and len(parts) == 4 else {}
        if last not in node and last not in component and parts[0] not in FREE_FORM:
            raise _unknown("config" + "".join("." + q for q in parts[:-1]), last, node.keys())
        like = node[last] if last in node else component.get(last)
        try:
            value = _parse_value(text, like)
        except ValueError as e:
            raise ValueError(f"--config.{key}={text}: {e}") from None
        with node.unlocked():
            if last in node and value is not None and not _type_ok(like, value):
                raise ValueError(f"--config.{key}={text}: wrong type {type(value).__name__}, "
                                 f"expected {type(like).__name__}")
            if last in node:
                del node[last]
            node[last] = value
    keys = {key for key, _ in overrides}
    if "eval.every_steps" in keys:
        for name in inherits:
            if name in merged.evals and f"evals.{name}.every_steps" not in keys:
                merged.evals[name].every_steps = merged.eval.every_steps
    return merged


def split_overrides(argv):
    """Take `--config.<key>=<value>` (or `--config.<key> <value>`) out of argv: (rest, [(key, value), ...])."""
    rest, overrides, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--config."):
            key, eq, value = a[len("--config."):].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    raise SystemExit(f"error: {a} needs a value")
                value, i = argv[i + 1], i + 1
            overrides.append((key, value))
        else:
            rest.append(a)
        i += 1
    return rest, overrides


def to_json(config) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)
