"""The command-line tools (`vlmjax-train`, `-eval`, `-zeroshot`, `-vq`, `-predict`, `-export`): thin wrappers over
the core (training, evaluation) and the Python API (`vlmjax.load`)."""
