"""vlmjax: a JAX/Flax, TPU-first training framework for vision-language models."""
from setuptools import find_packages, setup

# Pinned to a set that resolves together (jax 0.10 / flax 0.12 / orbax 0.12 / tf 2.21 for tfds builders).
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorflow-datasets==4.9.10",
    "tensorflow-cpu==2.21.0",
    "grain==0.2.18",
    "array-record==0.8.6",
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    "chex==0.1.92",
    "tensorboard==2.21.0",
    "sentencepiece==0.2.3",
    "pillow==13.0.0",
    "numpy==2.4.6",
]

setup(
    name="vlmjax",
    version="0.1.0",
    description=__doc__,
    packages=find_packages(include=["vlmjax", "vlmjax.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    # torch + transformers only for the HF SigLIP parity test and the PyTorch speed benchmark (CPU wheel).
    # pycocoevalcap / dm-pix / scikit-image: reference implementations for tests/test_library_crosschecks.py.
    extras_require={"test": ["pytest==9.2.0", "pytest-xdist==3.8.0",
                             "pycocoevalcap==1.2", "dm-pix==0.4.5", "scikit-image==0.26.0"],
                    "hf": ["torch==2.13.0", "transformers==5.23.0", "safetensors==0.8.0"]},
    entry_points={
        "console_scripts": [
            "vlmjax-train=vlmjax.cli.train:run",
            "vlmjax-eval=vlmjax.cli.evaluate:run",
            "vlmjax-zeroshot=vlmjax.cli.zeroshot:run",
            "vlmjax-vq=vlmjax.cli.vq:run",
            "vlmjax-predict=vlmjax.cli.predict:run",
            "vlmjax-export=vlmjax.cli.export:run",
        ],
    },
)
