"""Before a run resumes in a workdir: may it, with this config? And is a failed restore damage or something else?

A workdir's `config.json` is the config its checkpoints were written with. A re-run compares it key by key with the
new resolved config, before anything is compiled or written:

- `FREE` keys change how the same computation is laid out, logged or saved, never what it computes: they may change.
- `WITH_FLAG` keys change the trajectory from here on but neither the state's structure nor the order of the data
  (learning rate, schedule, total_steps, evaluation, ...): allowed with `--allow_config_change`; the old config.json
  is then kept as `config.step<N>.json`.
- anything else (model shapes, optimizer kind, batch size, data, seed, ...) is refused even with the flag: it cannot
  continue the run that wrote the checkpoints. Use a new workdir (with `config.init_from.workdir` to start from its
  weights).

For `WITH_FLAG_IF_NONZERO` keys a 0 switches a whole optimizer transform off (clipping, weight decay, momentum,
adafactor's first moment, lr_mults): a change that keeps the value non-zero (or zero) is allowed with the flag, a
change to or from zero changes the optimizer state's structure and is refused.

A restore that fails is damage only when the data cannot be read (truncated or missing files, a missing item, bad
JSON, tensorstore DATA_LOSS / NOT_FOUND / OUT_OF_RANGE): `is_unreadable`. Everything else is an error to report.
"""
import json
import os
import re

import jax
import ml_collections

from vlmjax.core import config as config_lib
from vlmjax.core.optim import param_path

# data.worker_count is free: a restored iterator state rebuilds the pipeline with the worker count it was saved
# with (vlmjax.data.pipeline), so the stream goes on unchanged whatever the new config asks for. read_features
# only narrows which features are read, never their order or values. (data.read_threads: a key of older configs.)
FREE = ("mesh", "sharding_rules", "checkpoint", "log_every_steps", "debug", "wandb", "profile", "compilation_cache_dir",
        "data.read_threads", "data.prefetch_buffer", "data.device_prefetch", "data.worker_count", "data.read_features",
        "data.on_corrupt_record")
WITH_FLAG = ("total_steps", "nan_policy", "eval", "evals", "init_from", "schedule", "data.data_dir",
             "optimizer.lr", "optimizer.b2", "optimizer.eps", "optimizer.wd_mask", "optimizer.grad_accum_steps",
             "model.dtype", "model.remat_policy")
WITH_FLAG_IF_NONZERO = ("optimizer.clip_norm", "optimizer.weight_decay", "optimizer.momentum", "optimizer.b1",
                        "optimizer.lr_mults")

# Why a refused key cannot change, by its first component.
REASONS = {"model": "parameter shapes", "optimizer": "optimizer state", "task": "model and loss",
           "seed": "initialisation and data order", "batch_size": "data order", "data": "data order",
           "num_classes": "parameter shapes", "image_size": "parameter shapes"}


class ConfigChangeError(ValueError):
    """The new config may not resume the workdir's checkpoints (a ValueError: the CLI exits 2 with the message)."""


class StateMismatchError(ValueError):
    """The checkpoint holds a train state of another structure than the one this config builds."""


def _matches(key: str, prefixes) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _model_leaf(key: str, names) -> bool:
    """model.<...>.dtype etc.: a compute-only setting of the model or of one of its towers."""
    return key.startswith("model.") and key.rsplit(".", 1)[-1] in names


def _component_key(key: str) -> str:
    """'data.mixture.<component>.<key>' -> 'data.<key>' (a mixture component's keys change as config.data's do);
    any other key unchanged."""
    parts = key.split(".")
    return ".".join(["data"] + parts[3:]) if len(parts) > 3 and parts[:2] == ["data", "mixture"] else key


def classify(key: str, old, new) -> str:
    """'free', 'flag' or 'refused' for a change of `key` (dotted, without 'config.') from `old` to `new`."""
    key = _component_key(key)
    if _matches(key, FREE):
        return "free"
    if _matches(key, WITH_FLAG) or _model_leaf(key, ("dtype", "remat_policy")):
        return "flag"
    if _matches(key, WITH_FLAG_IF_NONZERO):
        return "flag" if bool(old) == bool(new) else "refused"
    return "refused"


def flatten(tree, prefix: str = "") -> dict:
    """{'optimizer.lr': 0.001, ...} of a JSON-like config; lists are values."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


MISSING = "<unset>"


def config_changes(old: dict, new: dict) -> list:
    """[(key, old value, new value)] for every key whose value differs (MISSING where a side lacks it)."""
    a, b = flatten(old), flatten(new)
    return [(k, a.get(k, MISSING), b.get(k, MISSING)) for k in sorted(set(a) | set(b))
            if a.get(k, MISSING) != b.get(k, MISSING)]


def checkpoint_steps(workdir: str) -> list:
    """Committed checkpoint steps in `workdir/checkpoints` (orbax renames a step's folder to `<step>` when done)."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def _show(value) -> str:
    text = value if value is MISSING else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def check_resume_config(workdir: str, config, allow_change: bool, log=print, task_defaults: dict = None) -> list:
    """Raise ConfigChangeError unless `config` (the new resolved config) may resume `workdir`'s checkpoints.

    A key the old config.json lacks (added to the code since) counts as unchanged when the new config leaves it at
    its default (`task_defaults`: the task's own keys): new keys default to the old behaviour.
    Returns the changes that are allowed (free ones, and flagged ones under `allow_change`); when flagged ones are
    taken, the old config.json is copied to `config.step<N>.json` (N: latest checkpoint) so that no record is lost.
    """
    config_json = config_lib.to_json(config)
    defaults = flatten(json.loads(config_lib.to_json(config_lib.resolve(ml_collections.ConfigDict(),
                                                                         task_defaults))))
    steps = checkpoint_steps(workdir)
    path = os.path.join(workdir, "config.json")
    if not steps:
        return []
    if not os.path.exists(path):
        log(f"WARNING: {workdir} has checkpoints but no config.json to compare the config with; the checkpoint's "
            f"structure is still checked against this config")
        return []
    with open(path) as f:
        try:
            old = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigChangeError(f"{path}: not valid JSON ({e}); it records the config of the checkpoints in "
                                    f"{os.path.join(workdir, 'checkpoints')}, so it cannot be compared") from None
    changes = [(k, o, n) for k, o, n in config_changes(old, json.loads(config_json))
               if not (o is MISSING and k in defaults and defaults[k] == n)]
    kinds = {k: classify(k, o, n) for k, o, n in changes}
    refused = [c for c in changes if kinds[c[0]] == "refused"]
    flagged = [c for c in changes if kinds[c[0]] == "flag"]
    line = lambda cs: ", ".join(f"config.{k} ({_show(o)} -> {_show(n)})" for k, o, n in cs)  # noqa: E731
    where = f"{workdir} has checkpoints up to step {steps[-1]}"
    if refused:
        why = sorted({REASONS.get(k.split(".")[0], "the train state or the data order") for k, _, _ in refused})
        msg = (f"{where} written with another config; these keys change {', '.join(why)}, so a resume cannot "
               f"continue that run: {line(refused)}. Nothing was changed in the workdir. Use a new --workdir "
               f"(config.init_from.workdir={workdir} starts from its weights)")
        if flagged:
            msg += f". Also changed (allowed with --allow_config_change): {line(flagged)}"
        raise ConfigChangeError(msg)
    if flagged and not allow_change:
        raise ConfigChangeError(f"{where} written with another config: {line(flagged)}. Nothing was changed in "
                                f"the workdir. Re-run with --allow_config_change to resume with these settings, or "
                                f"use a new --workdir")
    if flagged and jax.process_index() == 0:
        kept = os.path.join(workdir, f"config.step{steps[-1]}.json")
        with open(kept, "w") as f:
            json.dump(old, f, indent=2, sort_keys=True)
        log(f"config changed with --allow_config_change: {line(flagged)}; the previous config is kept in {kept}")
    return [c for c in changes if kinds[c[0]] != "refused"]


def leaf_shapes(tree) -> dict:
    """{'params/img/embedding/kernel': shape} of a tree of arrays, ShapeDtypeStructs or orbax ArrayMetadata."""
    return {param_path(p): tuple(leaf.shape) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
            if hasattr(leaf, "shape")}


def state_mismatch(stored, wanted, limit: int = 6) -> list:
    """Lines naming the leaves whose path or shape differ between a checkpoint's metadata and the abstract state."""
    a, b = leaf_shapes(stored), leaf_shapes(wanted)
    order = lambda keys: sorted(keys, key=lambda k: (not k.startswith("params/"), k))  # noqa: E731 params first
    lines = [f"{k}: checkpoint {a[k]}, this config {b[k]}" for k in order(set(a) & set(b)) if a[k] != b[k]]
    lines += [f"{k}: only in the checkpoint {a[k]}" for k in order(set(a) - set(b))]
    lines += [f"{k}: only in this config {b[k]}" for k in order(set(b) - set(a))]
    return lines if len(lines) <= limit else lines[:limit] + [f"... {len(lines) - limit} more"]


# tensorstore reports unreadable bytes with these status codes; orbax names a missing item "was not found".
_UNREADABLE = re.compile(r"\b(DATA_LOSS|NOT_FOUND|OUT_OF_RANGE)\b|was not found in the checkpoint|"
                         r"Error (reading|decoding) ")


class UnreadableCheckpoint(Exception):
    """Raised by our own checks for damage orbax does not report itself (e.g. a missing _METADATA file)."""


def is_unreadable(e: BaseException) -> bool:
    """True when `e` (or an exception it came from) says that checkpoint bytes are missing or damaged."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, (UnreadableCheckpoint, FileNotFoundError, EOFError, json.JSONDecodeError)):
            return True
        if _UNREADABLE.search(str(e)):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False
