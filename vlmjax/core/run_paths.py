"""A run's file paths, from any working directory.

A config's paths (`data.data_dir`, `tokenizer`, `init_from.workdir`, ...) are written as the user wrote them,
usually relative to the directory `vlmjax-train` was launched from; `config.json` keeps them that way, so that a
resume compares like with like. The trainer records that directory in `<workdir>/launch.json`, and every tool
that reads a run back (`vlmjax-eval`, `vlmjax.load`, `vlmjax-export`, ...) resolves the relative paths of its
config against it, so they work from any directory.
"""
import json
import os

LAUNCH_FILE = "launch.json"


def record_launch_dir(workdir: str) -> None:
    """Writes `<workdir>/launch.json`: {"cwd": the directory this process was launched from}."""
    with open(os.path.join(workdir, LAUNCH_FILE), "w") as f:
        json.dump({"cwd": os.getcwd()}, f)


def launch_dir(workdir: str, config=None):
    """The directory the run in `workdir` was launched from. A run that did not record it (written before
    launch.json existed): the nearest folder above the workdir holding `config`'s relative `data.data_dir` (runs
    kept under their project, `workdirs/<name>`), else None."""
    try:
        with open(os.path.join(workdir, LAUNCH_FILE)) as f:
            return json.load(f).get("cwd") or None
    except (OSError, ValueError):
        pass
    data_dir = (config or {}).get("data", {}).get("data_dir", "")
    if not _relative(data_dir):
        return None
    here = os.path.abspath(workdir)
    while os.path.dirname(here) != here:
        here = os.path.dirname(here)
        if os.path.isdir(os.path.join(here, data_dir)):
            return here
    return None


def _relative(path) -> bool:
    return isinstance(path, str) and bool(path) and not os.path.isabs(path) and "://" not in path \
        and not path.startswith("~")


def _against(base: str, path: str, pattern: bool = False) -> str:
    """`path` joined to `base` when that names something there (for a shard `pattern`: its folder)."""
    joined = os.path.join(base, path)
    return joined if os.path.exists(os.path.dirname(joined) if pattern else joined) else path


def _resolve_name(base: str, name):
    """`webdataset:<shards>`: each relative part of the comma list, resolved; any other dataset name unchanged."""
    if not isinstance(name, str) or not name.startswith("webdataset:"):
        return name
    parts = [p.strip() for p in name[len("webdataset:"):].split(",")]
    return "webdataset:" + ",".join(_against(base, p, pattern=True) if _relative(p) else p for p in parts)


def absolute_paths(config, base: str):
    """`config` (a ConfigDict, changed in place and returned) with its relative paths resolved against `base`:
    `data.data_dir`, `evals.*.data.data_dir`, `tokenizer`, `init_from.workdir`, `init_from.path`, and the shards
    of `webdataset:` dataset names. A path that names nothing under `base` is left as it was."""
    if not base:
        return config

    def fix(node, key):
        if key in node and _relative(node[key]):
            with node.unlocked():
                node[key] = _against(base, node[key])

    fix(config, "tokenizer")
    for section in [config.get("data")] + [ev.get("data") for ev in config.get("evals", {}).values()]:
        if section is not None:
            fix(section, "data_dir")
            if "name" in section:
                with section.unlocked():
                    section["name"] = _resolve_name(base, section["name"])
    if config.get("init_from") is not None:
        fix(config.init_from, "workdir")
        fix(config.init_from, "path")
    return config
