"""Test set-up: 8 simulated CPU devices, set before jax is imported anywhere."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import fcntl  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

# Compiled executables are cached on disk and shared by the test workers and the subprocesses tests start.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


@pytest.fixture(scope="session")
def scenes_tiny_dir(tmp_path_factory):
    """data_dir holding the built `scenes/tiny` dataset, built once per test run (shared by xdist workers)."""
    import hashlib

    import vlmjax.data.scenes as scenes_module
    from vlmjax.data.sources import scenes as builder_module

    # Keyed on the generator's and the builder's source: a changed generator never reads a stale build.
    digest = hashlib.sha1(b"".join(open(m.__file__, "rb").read() for m in (scenes_module, builder_module))
                          ).hexdigest()[:12]
    root = tmp_path_factory.getbasetemp().parent / f"scenes_tiny_{digest}"
    root.mkdir(exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / ".built").exists():
            subprocess.run([sys.executable, "-m", "vlmjax.data.scenes", "--data_dir", str(root), "--config", "tiny"],
                           check=True, capture_output=True)
            (root / ".built").touch()
    return str(root)


@pytest.fixture(scope="session")
def scenes_tiny_tokenizer(scenes_tiny_dir, tmp_path_factory):
    """A sentencepiece model trained on `scenes/tiny`'s texts (the experiments' default vocabulary size)."""
    from vlmjax.data.tokenizer import dataset_texts, train_from_texts

    out = tmp_path_factory.mktemp("tok") / "scenes_spm.model"
    return train_from_texts(dataset_texts(scenes_tiny_dir, "scenes/tiny", max_examples=2000), out).path
