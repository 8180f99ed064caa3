"""vlmjax: a JAX/Flax training framework for vision-language models.

`vlmjax.load(workdir)` returns a trained run as a model object (vlmjax/api.py); it is imported on first use, so
`import vlmjax` stays cheap (no jax).
"""

__all__ = ["load"]


def __getattr__(name):
    if name == "load":
        from vlmjax.api import load

        return load
    raise AttributeError(f"module 'vlmjax' has no attribute {name!r}")
