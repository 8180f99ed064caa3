"""Evaluators: one module per kind, and the one registry that builds `config.evals.<name>` into an Evaluator.

Each kind's module defines `KEYS` (its config keys besides `type`, `every_steps`, `data`, `quiet`) and
`build(task, cfg, where) -> Evaluator`, built over the task's `predict_fns()`. A task names the kinds it offers in
`Task.eval_kinds`. The Trainer builds the evaluators once, right after `task.validate()` and before anything
compiles (`validate_and_build`), and keeps them.
"""
import importlib
from typing import Dict

from vlmjax.evaluators.base import COMMON_KEYS, Evaluator
from vlmjax.names import did_you_mean
from vlmjax.tasks.model_config import check_keys

# `config.evals.<name>.type` -> the module under vlmjax/evaluators/ that builds it.
KINDS = {"classification": "classification", "zeroshot": "zeroshot", "zeroshot_multilabel": "multilabel",
         "retrieval": "retrieval", "vqa": "vqa", "caption": "caption", "perplexity": "perplexity", "recon": "recon",
         "codebook": "codebook", "fewshot": "fewshot"}


def _module(kind: str):
    return importlib.import_module(f"vlmjax.evaluators.{KINDS[kind]}")


def build_evaluator(task, cfg, where: str) -> Evaluator:
    """`cfg` = config.evals.<name> (at `where`) -> its Evaluator; ValueError naming the key on a bad type or key."""
    kind = cfg.get("type", "")
    offered = tuple(task.eval_kinds)
    if kind not in offered or kind not in KINDS:
        raise ValueError(f"{where}.type={kind!r}: this task offers {', '.join(offered)}{did_you_mean(kind, offered)}")
    module = _module(kind)
    check_keys(cfg, COMMON_KEYS + tuple(module.KEYS), where)
    return module.build(task, cfg, where)


def build_evaluators(task, evals=None) -> Dict[str, Evaluator]:
    """{name: Evaluator} for `evals` (default: the task's config.evals), in config order."""
    evals = task.config.evals if evals is None else evals
    return {name: build_evaluator(task, cfg, f"config.evals.{name}") for name, cfg in evals.items()}


def validate_and_build(task) -> Dict[str, Evaluator]:
    """The one validation pass of a task's config: `task.validate()`, then every evaluator built (files read,
    prompts made) and returned for the caller to keep."""
    task.validate()
    return build_evaluators(task)
