"""`vlmjax-eval`: run an experiment's evaluators on a trained workdir's latest checkpoint.

    vlmjax-eval --workdir workdirs/vit_scenes                      # the config saved with the run
    vlmjax-eval --workdir workdirs/vit_scenes --split test         # the one test read of a final recipe
    vlmjax-eval --workdir W --config vit_scenes --config.evals.classification.data.split=train

Prints `eval/<evaluator>/<metric>=value` lines; `--json` also writes them to `<workdir>/eval_<step>.json`
(`eval_<step>_<split>.json` with `--split`).
Library logs stay at WARNING; `-v` (`--verbosity=1`) shows their INFO lines.
"""
import json
import os
import sys

from absl import flags

from vlmjax.cli import app

PROG = "vlmjax-eval"
FLAGS = app.new_flags()
flags.DEFINE_string("workdir", None, "A trained run's workdir.", flag_values=FLAGS)
flags.DEFINE_string("config", None, "Experiment name or file[:variant]; default: <workdir>/config.json.",
                    flag_values=FLAGS)
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).", flag_values=FLAGS)
flags.DEFINE_bool("json", False, "Write the metrics to <workdir>/eval_<step>.json.", flag_values=FLAGS)
flags.DEFINE_string("split", None, "Every evaluator reads this split (e.g. test); default: each evaluator's own "
                    "(the `scenes` experiments' periodic evaluations read validation).", flag_values=FLAGS)


def with_split(config, split: str):
    """`config` with every evaluator's `data.split` set to `split` (a copy; `config` is unchanged)."""
    config = config.copy_and_resolve_references()
    for name in config.get("evals", {}) or {}:
        config.evals[name].data.split = split
    return config


def run_config(workdir: str, spec: str = None):
    """The experiment config to evaluate `workdir` with: `spec` (an experiment) if given, else the run's own."""
    from vlmjax.api import load_run_config
    from vlmjax.core import config as config_lib

    return config_lib.load_experiment(spec) if spec else load_run_config(workdir)


def eval_devices(mesh_cfg, devices):
    """The devices a run's mesh asks for: all of them if an axis is -1, else the first prod(sizes).

    A run trained with a fixed mesh (e.g. `mesh.data=1` on one device) is evaluated on the same number of devices
    here, even when the process has more; checkpoints restore onto any mesh, so an override changes only speed.
    """
    import math

    import jax

    from vlmjax.core.config import defaults
    from vlmjax.core.mesh import MESH_AXES

    default = defaults().mesh  # an unresolved config may leave axes out
    sizes = [int(mesh_cfg.get(a, default[a])) for a in MESH_AXES]
    if -1 in sizes or jax.process_count() > 1:  # multi-host: every process's devices take part
        return devices
    n = math.prod(sizes)
    if n > len(devices):
        desc = ", ".join(f"{a}={s}" for a, s in zip(MESH_AXES, sizes))
        raise ValueError(f"config.mesh ({desc}) needs {n} devices but there are {len(devices)}; evaluate on another "
                         f"mesh, e.g. --config.mesh.data=-1 --config.mesh.fsdp=1 --config.mesh.tensor=1")
    return devices[:n]


def evaluate_workdir(workdir: str, config, step: int = None, devices=None) -> tuple:
    """(step, {metric: value}) for the checkpoint `step` (latest by default) of `workdir`, on `devices`
    (default: those `config.mesh` asks for, see eval_devices; any mesh works, checkpoints restore onto it)."""
    import jax

    from vlmjax.core.checkpoint import Checkpointer
    from vlmjax.core.loop import Trainer

    if devices is None:
        devices = eval_devices(config.mesh, jax.devices())
    trainer = Trainer(config, workdir, devices, open_data="eval")  # the train split stays closed
    ckpt = Checkpointer(workdir, 1, None, async_save=False)
    step = ckpt.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"--workdir {workdir!r}: no checkpoint to evaluate")
    state, _ = ckpt.restore(step, trainer.abstract_state)
    ckpt.close()
    with jax.set_mesh(trainer.mesh):
        return step, trainer.evaluate(state, step, only=True)


def eval_main(overrides) -> int:
    from vlmjax.tasks import get_task_class
    from vlmjax.core import config as config_lib

    F = FLAGS
    config = run_config(F.workdir, F.config)
    defaults = get_task_class(config.get("task", "")).config_defaults()
    config = config_lib.apply_overrides(config, overrides, defaults)
    if F.split:
        config = with_split(config, F.split)
    step, metrics = evaluate_workdir(F.workdir, config, F.step)
    for k, v in sorted(metrics.items()):
        print(f"{k}={v:.6g}")
    if F.json:
        with open(os.path.join(F.workdir, f"eval_{step}{'_' + F.split if F.split else ''}.json"), "w") as f:
            json.dump({"step": step, **metrics}, f, indent=2)
    return 0


def main(argv=None) -> int:
    from vlmjax.core.config import split_overrides

    argv, overrides = split_overrides(list(sys.argv[1:] if argv is None else argv))
    return app.run(PROG, __doc__, FLAGS, lambda _: eval_main(overrides), argv, required=("workdir",))


def run():
    sys.exit(main())


if __name__ == "__main__":
    run()
