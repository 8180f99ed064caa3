"""A persistent XLA compilation cache for training runs (`config.compilation_cache_dir`).

A resumed run (after a preemption, a crash, a changed schedule length) compiles the same train step again, a cost
that grows with the model and with unrolled layers; with jax's persistent cache the second compile is a read. `auto` (the default) puts it in `<workdir>/jax_cache`, which lives
as long as the run's checkpoints do (also on gs://, which jax's cache can use) and so survives a preempted VM; a
cache directory the process already has (`JAX_COMPILATION_CACHE_DIR`, or set by the caller) is kept. Only
`vlmjax-train` enables it, before anything compiles: jax reads the setting at its first compilation.
"""
import os

import jax

_EVENTS = {"/jax/compilation_cache/cache_hits": "hits", "/jax/compilation_cache/cache_misses": "misses"}
_counts = {"hits": 0, "misses": 0}


def _count(event: str, **kwargs) -> None:
    if event in _EVENTS:
        _counts[_EVENTS[event]] += 1


jax.monitoring.register_event_listener(_count)  # once, at import: counts() sees every lookup of the process


def enable(setting: str, workdir: str) -> str:
    """Point jax's persistent compilation cache at `setting` ('auto': `<workdir>/jax_cache`; '': leave jax as it
    is; else a directory) unless the process already has one. Returns the directory in use ('' if none)."""
    current = jax.config.jax_compilation_cache_dir
    if current or not setting:
        return current or ""
    path = os.path.join(workdir, "jax_cache") if setting == "auto" else setting
    jax.config.update("jax_compilation_cache_dir", path)
    return path


def counts() -> dict:
    """{'hits': n, 'misses': m}: persistent-cache lookups of this process so far (a missed program is stored only
    when it took longer than jax_persistent_cache_min_compile_time_secs to compile)."""
    return dict(_counts)
