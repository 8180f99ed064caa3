"""What every absl CLI of vlmjax (`vlmjax-train`, `-eval`, `-zeroshot`) does around flag parsing.

- `--help` (exit 0) lists the CLI's own flags and its module docstring. absl's short help shows the key flags of
  the module named by `sys.argv[0]`, which for an installed console script (`.venv/bin/vlmjax-train`) is not the
  module that defined them, so it printed only `USAGE: vlmjax-train [flags]`; `--helpfull` still lists every
  library's flags.
- Logs are quiet: absl (orbax, tfds, grain) and TensorFlow's C++ logs stay at WARNING unless `--verbosity=1` (or
  `-v`, `-v 1`) asks for INFO; `--verbosity=2` and above give absl's debug levels. The CLIs' own lines (progress,
  evaluation results, warnings) are printed regardless.
"""
import os
import sys

from absl import flags, logging  # logging defines --verbosity

# The user's own setting, read before jax is imported: jax sets a default of its own (1: TensorFlow's INFO shows).
_USER_TF_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")


def prepare(argv, module_name: str, doc: str) -> list:
    """Before `app.run(main, argv=...)`: returns argv with a bare `-v` made `--verbosity=1`; makes `--help` show
    the flags `module_name` defined (and `--verbosity`) under `doc`; keeps TensorFlow's C++ INFO logs off unless
    verbosity was asked for."""
    argv = list(argv)
    for i, a in enumerate(argv):
        if a == "-v" and (i + 1 == len(argv) or not argv[i + 1].lstrip("-").isdigit()):
            argv[i] = "--verbosity=1"
    if _USER_TF_LEVEL is None and not any(a.startswith(("--verbosity", "-v")) for a in argv[1:]):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"  # before TensorFlow loads (tensorboard's writer imports it)
        # TensorFlow computes nothing in these CLIs (images decode with PIL, the step runs in jax); its oneDNN
        # kernels only print a notice on load, which TF_CPP_MIN_LOG_LEVEL does not silence.
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    F = flags.FLAGS
    F["verbosity"].help = ("Library logs (absl, orbax, tfds): WARNING by default; 1 (or a bare -v) shows INFO, "
                           "2 and above absl's debug levels.")
    for flag in F.get_key_flags_for_module(module_name) + [F["verbosity"]]:
        F.register_key_flag_for_module(sys.argv[0], flag)
    main = sys.modules.get("__main__")
    if main is not None and not getattr(main, "__doc__", None):
        main.__doc__ = doc  # absl's usage text is __main__'s docstring
    if any(a in ("-h", "--help", "-?", "--helpshort") for a in argv[1:]):
        from absl import app

        app.usage(shorthelp=True, writeto_stdout=True, exitcode=0)  # absl's own --help exits 1
    return argv


def quiet_logging(default: str = "warning") -> None:
    """In `main`, after flags are parsed: absl logs at `default` ('warning', 'error') unless `--verbosity` was given
    (absl itself turns an unset verbosity into INFO); `--verbosity=1` means INFO, N >= 2 absl's level N - 1."""
    flag = flags.FLAGS["verbosity"]
    if not flag.present:
        logging.set_verbosity(default)
    elif flag.value >= 1:
        logging.set_verbosity(flag.value - 1)
