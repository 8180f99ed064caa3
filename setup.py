"""Metadata and dependencies: pyproject.toml. Here only the package list, which maps the repository's experiments/
folder to the package vlmjax.experiments (`vlmjax-train --config siglip_b16` finds it once installed)."""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["vlmjax", "vlmjax.*"]) + ["vlmjax.experiments"],
      package_dir={"vlmjax.experiments": "experiments"})
