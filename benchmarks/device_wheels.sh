#!/usr/bin/env bash
# Fills the ignored .whl/ with the cp312 wheels the lent GPU machine lacks (../shared/DEVICE.md, "What is there"),
# so that `run` can carry them to benchmarks/device_run.sh. Needs the package registry, not the device; idempotent.
#   bash benchmarks/device_wheels.sh && ls .whl
set -eu
cd "$(dirname "$0")/.."
mkdir -p .whl
PIP=${PIP:-.venv/bin/pip}
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any -d .whl \
  ml-collections==1.1.0 grain==0.2.18 array-record==0.8.6 tensorflow-datasets==4.9.10 flax==0.12.8 optax==0.2.8 \
  dm-tree immutabledict simple-parsing docstring-parser tensorflow-metadata termcolor toml portpicker
# promise publishes no wheel: build one (pure Python)
ls .whl/promise-2.3-*.whl > /dev/null 2>&1 || $PIP wheel -q --no-deps -w .whl promise==2.3
echo "$(ls .whl/*.whl | wc -l) wheels in .whl ($(du -sh .whl | cut -f1))"
