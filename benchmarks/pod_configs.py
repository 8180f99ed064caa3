"""The experiments sized for a pod, and what their dry run needs on a machine without the pod's files.

Used by benchmarks/scale_report.py and tests/test_dry_run_pods.py (the core's dry run knows no experiment).
The tokenizers and evaluation files live in buckets: the tasks open the tokenizer when they are built and the
evaluators open their files (ImageNet class names, ...) when the config is validated, although the dry run reads
no data and compiles only the train step. So the tokenizer points at a local SentencePiece model with the text
vocabulary pinned to the pod's size (the embedding and logits keep their pod shapes whatever the local model's
size), and the evaluators go.
"""

POD_CONFIGS = {
    # big_vision's c4_en SentencePiece model has 32k pieces; clip_b32.py inherits siglip_b16.py's tokenizer.
    "experiments/siglip_b16.py": ("--config.tokenizer={tokenizer}", "--config.model.text.vocab_size=32000"),
    "experiments/clip_b32.py": ("--config.tokenizer={tokenizer}", "--config.model.text.vocab_size=32000"),
    "experiments/vqvae_imagenet.py": (),  # no tokenizer
    "experiments/paligemma_like.py": ("--config.tokenizer={tokenizer}",),  # sets its LM vocabulary (256k) itself
}


def local_overrides(config_path: str, tokenizer: str) -> list:
    """`--config.<key>=<value>` flags that let `config_path` (a key of POD_CONFIGS) dry-run here; `tokenizer` is a
    local SentencePiece model (e.g. data/tfds/scenes_spm.model from `make data`)."""
    return [o.format(tokenizer=tokenizer) for o in POD_CONFIGS[config_path]] + ["--config.evals={}"]
