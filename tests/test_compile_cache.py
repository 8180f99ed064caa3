"""vlmjax-train's persistent compilation cache: a second run of the same step reads it instead of compiling, and a
cache directory the process already has is kept."""
import os
import subprocess
import sys

import jax

from vlmjax.core import compile_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(workdir, data_dir, cache, env):
    cmd = [sys.executable, "-m", "vlmjax.cli", "--config", "experiments/vit_scenes.py:runlocal",
           f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", "--config.total_steps=2",
           "--config.eval.every_steps=0", "--config.evals={}", f"--config.compilation_cache_dir={cache}"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout + out.stderr


def test_second_run_reads_the_train_step_from_the_cache(scenes_tiny_dir, tmp_path):
    # the suite's own shared cache (conftest) must not answer for this one; cache even sub-second compiles
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    first = _train(tmp_path / "a", scenes_tiny_dir, "auto", env)
    cache = tmp_path / "a" / "jax_cache"
    assert f"compilation cache: {cache}" in first
    assert "train step: compiled in" in first and "(persistent cache hit)" not in first
    assert len(os.listdir(cache)) > 0
    second = _train(tmp_path / "b", scenes_tiny_dir, str(cache), env)  # another run, the same step
    assert "(persistent cache hit)" in second, second[-2000:]


def test_a_cache_the_process_already_has_is_kept_and_empty_turns_it_off(tmp_path):
    current = jax.config.jax_compilation_cache_dir  # conftest's shared test cache
    assert current
    assert compile_cache.enable("auto", str(tmp_path)) == current
    assert compile_cache.enable(str(tmp_path / "other"), str(tmp_path)) == current
    assert jax.config.jax_compilation_cache_dir == current
    # (this process's cache is already in use, so the setting is only read back here, then restored)
    jax.config.update("jax_compilation_cache_dir", None)
    try:
        assert compile_cache.enable("", str(tmp_path)) == ""
        assert not jax.config.jax_compilation_cache_dir
        assert compile_cache.enable("auto", str(tmp_path)) == str(tmp_path / "jax_cache")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "jax_cache")
    finally:
        jax.config.update("jax_compilation_cache_dir", current)
