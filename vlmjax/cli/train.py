"""`vlmjax-train` / `python -m vlmjax.cli`: train an experiment.

    vlmjax-train --config experiments/vit_scenes.py --workdir /tmp/vit_scenes
    vlmjax-train --config experiments/vit_scenes.py:runlocal --workdir /tmp/w --config.optimizer.lr=1e-3

Re-running with the same workdir resumes from its latest checkpoint; with a changed config only if the change is
safe (`--allow_config_change` for total_steps, lr, evals, ...; see vlmjax/core/restore_check.py), else exit 2.
Library logs (absl, orbax, tfds) stay at WARNING; `-v` (`--verbosity=1`) shows their INFO lines.
"""
import os
import sys

from absl import app, flags

from vlmjax.cli import app as cli_setup

_CONFIG = flags.DEFINE_string("config", None, "Experiment file, e.g. experiments/vit_scenes.py[:arg]; "
                              "override any key with --config.<key>=<value>.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics.jsonl, TensorBoard events go.")
_COORD = flags.DEFINE_string("coordinator_address", "", "host:port of process 0, for multi-process runs.")
_NPROC = flags.DEFINE_integer("num_processes", 0, "Number of processes (with --coordinator_address).")
_PID = flags.DEFINE_integer("process_id", -1, "This process's index (with --coordinator_address).")
_DRY = flags.DEFINE_bool("dry_run", False, "Compile the train step and report memory/FLOPs/shardings; no training.")
_NDEV = flags.DEFINE_integer("num_devices", 0, "With --dry_run: simulate this many CPU devices.")
_TARGET = flags.DEFINE_string("target", "", "With --dry_run: chip to check memory against (tpu_v5p, h100, ...).")
_MAXUNSH = flags.DEFINE_float("max_unsharded_fraction", 0.5, "With --dry_run: fail above this fraction of parameter "
                               "bytes held whole by every device (meshes with an fsdp or tensor axis).")
_ALLOW = flags.DEFINE_bool("allow_config_change", False, "Resume a workdir although config keys that leave the "
                           "train state's structure and the data order alone (total_steps, optimizer.lr, schedule, "
                           "evals, ...) changed; see vlmjax/core/restore_check.py. Others are refused regardless.")
_DIST = flags.DEFINE_enum("distributed", "", ["", "auto"], "'auto': let jax detect a TPU pod or SLURM cluster.")


def _main(argv):
    del argv
    cli_setup.quiet_logging()
    from vlmjax.data.batching import CorruptRecordError
    from vlmjax.core import config as config_lib
    from vlmjax.core import distributed
    from vlmjax.core.checkpoint import CheckpointWriteError
    from vlmjax.core.loop import train

    distributed.initialize(_COORD.value, _NPROC.value, _PID.value, _DIST.value)
    try:
        config = config_lib.load_with_overrides(_CONFIG.value, _OVERRIDES)
        if _DRY.value:
            from vlmjax.core.dry_run import dry_run

            dry_run(config, _TARGET.value, _MAXUNSH.value)
            return
        metrics = train(config, _WORKDIR.value, allow_config_change=_ALLOW.value)
    except (ValueError, FileNotFoundError, KeyError, FloatingPointError, CheckpointWriteError, CorruptRecordError) as e:
        # Configuration, data and checkpoint-write errors carry a message naming the key/file: print it, not a
        # traceback.
        if os.environ.get("VLMJAX_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    final = {k: v for k, v in metrics.items() if k.startswith("eval/")}
    if final:
        print("final eval: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(final.items())))


_OVERRIDES = []


def run():
    from vlmjax.core.config import split_overrides

    argv, overrides = split_overrides(sys.argv)
    _OVERRIDES[:] = overrides
    for i, a in enumerate(argv):  # simulated devices must be requested before jax starts its backend
        n = a.split("=", 1)[1] if a.startswith("--num_devices=") else (
            argv[i + 1] if a == "--num_devices" and i + 1 < len(argv) else None)
        if n:
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                       f" --xla_force_host_platform_device_count={int(n)}").strip()
    argv = cli_setup.prepare(argv, __name__, __doc__)
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(_main, argv=argv)


if __name__ == "__main__":
    run()
