"""`python -m vlmjax.cli` is `vlmjax-train`."""
from vlmjax.cli.train import run

run()
