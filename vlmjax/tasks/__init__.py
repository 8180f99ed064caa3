"""Model families that plug into the trainer core. `config.task` names one of TASKS."""
import importlib

TASKS = {
    "classification": "vlmjax.tasks.classification:ClassificationTask",
    "contrastive": "vlmjax.tasks.contrastive:ContrastiveTask",
    "vqvae": "vlmjax.tasks.vqvae:VQVAETask",
    "prefixlm": "vlmjax.tasks.prefixlm:PrefixLMTask",
}


def get_task_class(name: str):
    if name not in TASKS:
        raise ValueError(f"config.task={name!r}: unknown task; expected one of {', '.join(sorted(TASKS))}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)
