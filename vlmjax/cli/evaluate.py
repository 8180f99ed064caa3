"""`vlmjax-eval`: run an experiment's evaluators on a trained workdir's latest checkpoint.

    vlmjax-eval --workdir workdirs/vit_scenes                      # the config saved with the run
    vlmjax-eval --workdir W --config experiments/vit_scenes.py --config.evals.test.data.split=validation

Prints `eval/<evaluator>/<metric>=value` lines; `--json` also writes them to `<workdir>/eval_<step>.json`.
Library logs stay at WARNING; `-v` (`--verbosity=1`) shows their INFO lines.
"""
import json
import os
import sys

from absl import app, flags

from vlmjax.cli import app as cli_setup


def _define_flags():
    """Defined when the CLI runs, not on import: other CLIs import this module's functions."""
    flags.DEFINE_string("workdir", None, "A trained run's workdir.")
    flags.DEFINE_string("config", None, "Experiment file[:arg]; default: <workdir>/config.json.")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
    flags.DEFINE_bool("json", False, "Write the metrics to <workdir>/eval_<step>.json.")


def load_run_config(workdir: str, spec: str = None):
    """The experiment config of a run: `spec` if given, else the resolved config.json saved in the workdir, its
    relative paths resolved against the directory the run was launched from (vlmjax/core/run_paths.py)."""
    import ml_collections

    from vlmjax.core import config as config_lib
    from vlmjax.core.run_paths import absolute_paths, launch_dir

    if spec:
        return config_lib.load_experiment(spec)
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"--workdir {workdir!r}: no config.json (not a vlmjax run directory?)")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    return absolute_paths(config, launch_dir(workdir, config))


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


def _main(argv):
    del argv
    cli_setup.quiet_logging()
    from vlmjax.tasks import get_task_class
    from vlmjax.core import config as config_lib

    try:
        F = flags.FLAGS
        config = load_run_config(F.workdir, F.config)
        defaults = get_task_class(config.get("task", "")).config_defaults()
        config = config_lib.apply_overrides(config, _OVERRIDES, defaults)
        step, metrics = evaluate_workdir(F.workdir, config, F.step)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for k, v in sorted(metrics.items()):
        print(f"{k}={v:.6g}")
    if F.json:
        with open(os.path.join(F.workdir, f"eval_{step}.json"), "w") as f:
            json.dump({"step": step, **metrics}, f, indent=2)


_OVERRIDES = []


def run():
    from vlmjax.core.config import split_overrides

    argv, overrides = split_overrides(sys.argv)
    _OVERRIDES[:] = overrides
    _define_flags()
    argv = cli_setup.prepare(argv, __name__, __doc__)
    flags.mark_flags_as_required(["workdir"])
    app.run(_main, argv=argv)


if __name__ == "__main__":
    run()
