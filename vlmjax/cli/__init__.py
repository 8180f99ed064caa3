"""The command-line tools (`vlmjax-train`, `-eval`, `-zeroshot`, `-vq`, `-predict`, `-export`): thin wrappers over
the core (training, evaluation) and the Python API (`vlmjax.load`, `vlmjax.api.load_run`).

One framework for all six (app.py): absl flags in each CLI's own flag set, `--help` listing them, `-v` for library
logs, and one error wrapper (one `error:` line, exit code 2). Each module's `main(argv) -> exit code` runs
in-process; `run()` is its console script.
"""
