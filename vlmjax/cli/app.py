"""The one framework of the six vlmjax CLIs: absl flags, `--help`, `-v`, quiet logs and the one error wrapper.

- Each CLI defines its flags in its own `absl.flags.FlagValues` (`new_flags()`), not in absl's global FLAGS: the
  six modules import together, `main(argv)` runs in-process (the tests call it), and `--help` (exit 0) prints the
  CLI's module docstring and exactly its own flags plus `-v`; library flags never show.
- Logs are quiet: absl (orbax, tfds, grain) and TensorFlow's C++ logs stay at WARNING unless `--verbosity=1` (or
  `-v`, `-v 1`) asks for INFO; `--verbosity=2` and above give absl's debug levels. The CLIs' own lines (progress,
  evaluation results, warnings) are printed regardless.
- Errors a user can fix (a bad flag, config key, file or image; see `is_user_error`) end the CLI with one line
  `error: ...` on stderr and exit code 2, before anything compiles where the check allows; `VLMJAX_TRACEBACK=1`
  re-raises them with their traceback.
"""
import os
import sys

from absl import flags

from vlmjax.names import unknown

HELP = ("-h", "--help", "-?", "--helpshort", "--helpfull")
# The user's own setting, read before jax is imported: jax sets a default of its own (1: TensorFlow's INFO shows).
_USER_TF_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")


def new_flags() -> flags.FlagValues:
    """A CLI's own flag set, holding `-v/--verbosity`; define the CLI's flags with `flag_values=` it."""
    fv = flags.FlagValues()
    flags.DEFINE_integer("verbosity", 0, "Library logs (absl, orbax, tfds): WARNING by default; 1 (or a bare -v) "
                         "shows INFO, 2 and above absl's debug levels.", short_name="v", flag_values=fv)
    return fv


def help_text(doc: str, fv: flags.FlagValues = None, **sections) -> str:
    """The module docstring `doc`, then the flags of `fv` (absl's format), or of each FlagValues in `sections`
    under its title (the subcommands of `vlmjax-vq`)."""
    parts = [doc.strip(), ""]
    for title, flag_set in ([("flags", fv)] if fv is not None else []) + list(sections.items()):
        parts += [f"{title}:"] + _flag_lines(flag_set) + [""]
    return "\n".join(parts)


def _flag_lines(fv: flags.FlagValues) -> list:
    """absl's help lines of `fv`'s flags, without its per-module headers (the CLI's file, vlmjax.cli.app)."""
    lines = fv.get_help(prefix="", include_special_flags=False).splitlines()
    return ["  " + line for line in lines if line.startswith(" ") or line.startswith("-")]


def is_user_error(e: BaseException) -> bool:
    """Errors whose message names what to fix: configuration (ValueError, KeyError), files (OSError and its
    FileNotFoundError, a checkpoint that cannot be written), a NaN stop (FloatingPointError), a corrupt data record,
    a bad flag (absl's flags.Error)."""
    if isinstance(e, (ValueError, KeyError, OSError, FloatingPointError, flags.Error)):
        return True
    batching = sys.modules.get("vlmjax.data.batching")  # only loaded, hence only raised, once data was read
    return batching is not None and isinstance(e, batching.CorruptRecordError)


def _expand_v(argv: list) -> list:
    """A bare `-v` (not followed by a level) is `--verbosity=1`."""
    argv = list(argv)
    for i, a in enumerate(argv):
        if a == "-v" and (i + 1 == len(argv) or not argv[i + 1].lstrip("-").isdigit()):
            argv[i] = "--verbosity=1"
    return argv


def _quiet_tensorflow(argv: list) -> None:
    """Keeps TensorFlow's C++ INFO logs off (set before it loads: tensorboard's writer may import it) unless
    verbosity was asked for or the user set TF_CPP_MIN_LOG_LEVEL."""
    if _USER_TF_LEVEL is None and not any(a.startswith(("--verbosity", "-v")) for a in argv):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
        # TensorFlow computes nothing in these CLIs (images decode with PIL, the step runs in jax); its oneDNN
        # kernels only print a notice on load, which TF_CPP_MIN_LOG_LEVEL does not silence.
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def set_logging(fv: flags.FlagValues, default: str = "warning") -> None:
    """absl logs at `default` ('warning', 'error') unless `--verbosity` was given: 1 means INFO, N >= 2 absl's
    level N - 1."""
    from absl import logging

    if not flags.FLAGS.is_parsed():  # absl's handler formats like app.run's, without "logging before flag parsing"
        flags.FLAGS.mark_as_parsed()
    logging.use_absl_handler()
    if not fv["verbosity"].present:
        logging.set_verbosity(default)
    elif fv.verbosity >= 1:
        logging.set_verbosity(fv.verbosity - 1)


def parse(prog: str, fv: flags.FlagValues, argv, required=(), positional: bool = False) -> list:
    """Parses `argv` (without the program name) into `fv` (reset first, so a CLI runs in-process again);
    returns the positional arguments. Raises flags.Error for an unknown or malformed flag, a missing required
    one, or (positional=False) a stray argument."""
    fv.unparse_flags()
    try:
        rest = fv([prog] + _expand_v(argv))[1:]
    except flags.UnrecognizedFlagError as e:  # absl's own "Did you mean" -> the project's one message
        known = sorted(f"--{name}" for name in fv if len(name) > 1)
        raise flags.Error(f"{unknown('flag', '--' + e.flagname, known)} (see {prog} --help)") from None
    for name in required:
        if fv[name].value is None:
            raise flags.Error(f"--{name} is required (see {prog} --help)")
    if rest and not positional:
        raise flags.Error(f"unexpected argument {rest[0]!r} (see {prog} --help)")
    return rest


def run(prog: str, doc: str, fv: flags.FlagValues, main, argv=None, required=(), positional: bool = False,
        log_level: str = "warning") -> int:
    """The whole CLI: `--help` (exit 0), flag parsing, quiet logs, then `main(positional_args)`; returns its exit
    code (None counts as 0), or 2 with one `error: ...` line for a user error (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in HELP for a in argv):
        print(help_text(doc, fv))
        return 0
    _quiet_tensorflow(argv)

    def body():
        args = parse(prog, fv, argv, required, positional)
        set_logging(fv, log_level)
        return main(args)

    return guarded(body)


def guarded(fn) -> int:
    """fn()'s exit code (None counts as 0); a user error (is_user_error) prints one line `error: ...` to stderr
    and gives 2."""
    try:
        return fn() or 0
    except Exception as e:  # noqa: BLE001 -- only user errors are caught, the rest re-raised
        if not is_user_error(e) or os.environ.get("VLMJAX_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
