# vlmjax: `make demo` then `make test`. Everything runs inside .venv (created on first use).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= data/tfds
DEMO_WORKDIR ?= workdirs/vit_scenes_demo
PYTEST_ARGS ?= -n 2 --durations=25
export TF_CPP_MIN_LOG_LEVEL := 3

.PHONY: venv data demo test bench clean-demo

# pyproject.toml gives compatible ranges; constraints.txt pins the tested set, so CI installs the same versions.
# `data`: TensorFlow, for tfds builders and TFRecord -> ArrayRecord conversion (training itself never imports it).
$(VENV)/.installed: pyproject.toml setup.py constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test,data]'
	# HF parity test + PyTorch benchmark need torch (CPU wheel) and transformers; their absence only skips those.
	$(BIN)/pip install -q -c constraints.txt -e '.[hf]' || echo "warning: torch/transformers not installed; HF parity test will skip"
	touch $@

venv: $(VENV)/.installed

# Builds the `scenes` dataset (tfds, ArrayRecord; `tiny` for the experiments' `:runlocal` variants) and trains its
# SentencePiece tokenizer; all idempotent.
data: venv
	$(BIN)/python -m vlmjax.data.scenes --data_dir $(DATA_DIR) --config default
	$(BIN)/python -m vlmjax.data.scenes --data_dir $(DATA_DIR) --config tiny
	@test -f $(DATA_DIR)/scenes_spm.model || $(BIN)/python -m vlmjax.data.tokenizer --data_dir $(DATA_DIR) \
		--dataset scenes/default --out $(DATA_DIR)/scenes_spm.model

# Trains the default experiment on CPU and prints its validation metrics (a finished workdir just re-evaluates).
demo: data
	$(BIN)/vlmjax-train --config experiments/vit_scenes.py --workdir $(DEMO_WORKDIR)

test: venv
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) tests

# Input pipeline vs train step (demo, and 224 px JPEG decode at several worker counts): benchmarks/results/
# input_pipeline.json. `scenes/raw` (images as uint8 arrays) is its no-PNG-decode variant. record_decode.json: the
# direct tfds record decoder against tfds' own.
bench: data
	$(BIN)/pip install -q -c constraints.txt -e '.[bench]'  # matplotlib, for the reports' plots
	$(BIN)/python -m vlmjax.data.scenes --data_dir $(DATA_DIR) --config raw
	$(BIN)/python benchmarks/input_pipeline.py --data_dir $(DATA_DIR)
	$(BIN)/python benchmarks/record_decode.py --data_dir $(DATA_DIR)

clean-demo:
	rm -rf $(DEMO_WORKDIR)
