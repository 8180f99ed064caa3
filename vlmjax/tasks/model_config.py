"""Building flax modules from `config.model`, with unknown keys reported by name before anything compiles."""
import dataclasses

import jax.numpy as jnp

from vlmjax.names import did_you_mean

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def check_keys(cfg, allowed, where: str) -> None:
    """Raise ValueError naming the first key of `cfg` not in `allowed` (with a close match if there is one)."""
    for key in cfg.keys():
        if key not in allowed:
            raise ValueError(f"unknown key {where}.{key}{did_you_mean(key, allowed)}; known keys: "
                             f"{', '.join(sorted(allowed))}")


def build_module(cls, cfg, where: str = "config.model", **overrides):
    """`cls(**cfg, **overrides)` after checking every key is a field of the module; dtype names become dtypes."""
    fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    check_keys(cfg, fields, where)
    kwargs = dict(cfg)
    for k in ("dtype", "param_dtype"):
        if isinstance(kwargs.get(k), str):
            if kwargs[k] not in DTYPES:
                raise ValueError(f"{where}.{k}={kwargs[k]!r}: expected one of {', '.join(DTYPES)}")
            kwargs[k] = DTYPES[kwargs[k]]
    for k, v in kwargs.items():
        if isinstance(v, list):
            kwargs[k] = tuple(v)
    kwargs.update(overrides)
    return cls(**kwargs)
