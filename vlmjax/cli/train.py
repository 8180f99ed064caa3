"""`vlmjax-train` / `python -m vlmjax.cli`: train an experiment.

    vlmjax-train --config vit_scenes --workdir /tmp/vit_scenes      # an experiment by name (vlmjax.experiments)
    vlmjax-train --config experiments/vit_scenes.py:runlocal --workdir /tmp/w --config.optimizer.lr=1e-3

`--config` is an experiment's name or file, with an optional `:variant` (`runlocal`: a seconds-long smoke test);
`--config.<key>=<value>` overrides any key. Re-running with the same workdir resumes from its latest checkpoint;
with a changed config only if the change is safe (`--allow_config_change` for total_steps, lr, evals, ...; see
vlmjax/core/restore_check.py), else exit 2. Bad input (an unknown key or variant, batch_size <= 0, lr < 0, a
missing file) is one `error:` line and exit code 2, before anything compiles. Library logs (absl, orbax, tfds)
stay at WARNING; `-v` (`--verbosity=1`) shows their INFO lines.
"""
import os
import sys

from absl import flags

from vlmjax.cli import app

PROG = "vlmjax-train"
FLAGS = app.new_flags()
flags.DEFINE_string("config", None, "Experiment name or file, e.g. vit_scenes or experiments/vit_scenes.py, with an "
                    "optional :variant; override any key with --config.<key>=<value>.", flag_values=FLAGS)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics.jsonl, TensorBoard events go.", flag_values=FLAGS)
flags.DEFINE_string("coordinator_address", "", "host:port of process 0, for multi-process runs.", flag_values=FLAGS)
flags.DEFINE_integer("num_processes", 0, "Number of processes (with --coordinator_address).", flag_values=FLAGS)
flags.DEFINE_integer("process_id", -1, "This process's index (with --coordinator_address).", flag_values=FLAGS)
flags.DEFINE_bool("dry_run", False, "Compile the train step and report memory/FLOPs/shardings; no training.",
                  flag_values=FLAGS)
flags.DEFINE_integer("num_devices", 0, "With --dry_run: simulate this many CPU devices.", flag_values=FLAGS)
flags.DEFINE_string("target", "", "With --dry_run: chip to check memory against (tpu_v5p, h100, ...).",
                    flag_values=FLAGS)
flags.DEFINE_float("max_unsharded_fraction", 0.5, "With --dry_run: fail above this fraction of parameter bytes "
                   "held whole by every device (meshes with an fsdp or tensor axis).", flag_values=FLAGS)
flags.DEFINE_bool("allow_config_change", False, "Resume a workdir although config keys that leave the train "
                  "state's structure and the data order alone (total_steps, optimizer.lr, schedule, evals, ...) "
                  "changed; see vlmjax/core/restore_check.py. Others are refused regardless.", flag_values=FLAGS)
flags.DEFINE_enum("distributed", "", ["", "auto"], "'auto': let jax detect a TPU pod or SLURM cluster.",
                  flag_values=FLAGS)


def _simulated_devices(argv) -> None:
    """`--num_devices N`: simulated CPU devices must be requested before jax starts its backend."""
    for i, a in enumerate(argv):
        n = a.split("=", 1)[1] if a.startswith("--num_devices=") else (
            argv[i + 1] if a == "--num_devices" and i + 1 < len(argv) else None)
        if n:
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                       f" --xla_force_host_platform_device_count={int(n)}").strip()


def train_main(overrides) -> int:
    """Loads the experiment with its overrides (every check before compiling), then dry-runs or trains."""
    from vlmjax.core import compile_cache, config as config_lib
    from vlmjax.core import distributed
    from vlmjax.core.loop import train
    from vlmjax.core.metrics import log

    F = FLAGS
    distributed.initialize(F.coordinator_address, F.num_processes, F.process_id, F.distributed)
    config = config_lib.load_with_overrides(F.config, overrides)
    if F.dry_run:
        from vlmjax.core.dry_run import dry_run

        dry_run(config, F.target, F.max_unsharded_fraction)
        return 0
    cache = compile_cache.enable(config.compilation_cache_dir, F.workdir)  # before anything compiles
    if cache:
        log(f"compilation cache: {cache}")
    metrics = train(config, F.workdir, allow_config_change=F.allow_config_change)
    final = {k: v for k, v in metrics.items() if k.startswith("eval/")}
    if final:
        print("final eval: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(final.items())))
    return 0


def main(argv=None) -> int:
    from vlmjax.core.config import split_overrides

    argv, overrides = split_overrides(list(sys.argv[1:] if argv is None else argv))
    _simulated_devices(argv)
    return app.run(PROG, __doc__, FLAGS, lambda _: train_main(overrides), argv, required=("config", "workdir"))


def run():
    sys.exit(main())


if __name__ == "__main__":
    run()
