"""Dry run of every pod config on the 8 simulated CPU devices of conftest.py (issue 6, "Must show": dry-run of each
pod config on 8 simulated devices prints its report).

What runs: each experiment of `benchmarks/pod_configs.py`'s POD_CONFIGS (siglip_b16, clip_b32, vqvae_imagenet,
paligemma_like: the experiments sized for a pod; the others are the CPU-sized scenes configs) at its full pod size
-- widths, depths, vocabularies, image size, text length and global batch as in the file -- through the CLI's own
path: `config.load_with_overrides` then `dry_run.dry_run`, which `vlmjax-train --dry_run` calls. Two sets of
overrides, and nothing else:
  * `pod_configs.local_overrides`: a SentencePiece model trained here from a few sentences, with the pod text
    vocabulary pinned (the embedding and logits keep their pod shapes), and no evaluators (their files are in
    buckets; the dry run compiles only the train step). benchmarks/scale_report.py uses the same overrides.
  * the mesh (data, fsdp, tensor) = (2, 2, 2) instead of the file's. The files' meshes are written for a pod:
    siglip/clip/vqvae are data-parallel (on 8 devices (8, 1, 1), where every parameter is replicated by design and
    no sharding rule is exercised), and paligemma's fsdp=16 does not fit 8 devices. On (2, 2, 2) every axis has
    size 2, so each rule that maps a parameter dimension to fsdp or tensor really splits it.
The `paligemma_like.py:chat` stage has the same model as the default stage and is not compiled separately. The
`--target` memory check is not exercised here (tests/test_flops.py does): on 8 devices these global batches need
100-300 GiB of temporaries per device.

Checked on the printed report (and the returned dict it is printed from): per-device memory lines for parameters
(float32, split by at most fsdp x tensor), optimizer (Adam's two float32 moments, sharded like the parameters) and
temporaries; FLOPs per step per device between an analytic lower bound and 1.5x it (see `flops_lower_bound`); every
parameter listed with its shape and sharding, the shapes adding up to the parameter count; every parameter of 1 MiB
or more split over at least 2 devices; the unsharded fraction below the CLI's default threshold (0.5).

Cost: compiling the train step is all of it (loading, tracing and lowering take ~3 s). The depth and the batch do not
change it -- the layers are scanned, so XLA compiles one block -- measured for SigLIP B/16: 43 CPU-s at 12 layers,
38 CPU-s at 2 layers; the VQ-VAE's unscanned conv stack: 75 CPU-s, 51 with one ResBlock per level, 62 at 64 px. So
there is no cheaper variant worth running instead, and the default `make test` runs the full configs. Measured
cold on this loaded 2-core machine (CPU seconds): SigLIP B/16 43, CLIP B/32 35, VQ-VAE ImageNet 75,
PaliGemma-like 35; this file alone: 192 CPU-s, 6 min of wall time. The persistent compilation cache (.jax_cache,
set by conftest.py) brings a re-run of the file down to ~37 CPU-s (about 1 min of wall time; the VQ-VAE's is
the longest).
"""
import math
import os
import re
import sys

import pytest

from vlmjax.core.config import load_with_overrides, split_overrides
from vlmjax.core.dry_run import dry_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from pod_configs import POD_CONFIGS, local_overrides  # noqa: E402

MESH = {"data": 2, "fsdp": 2, "tensor": 2}
MAX_UNSHARDED = 0.5  # the CLI's default --max_unsharded_fraction
GIB = 2 ** 30


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A small SentencePiece model with the chat symbols: the dry run only opens it (the pod vocabulary is pinned)."""
    from vlmjax.data.tokenizer import train_from_texts

    words = "a the red blue green large small circle square triangle on plain background one two three".split()
    texts = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(8)) for i in range(400)]
    return train_from_texts(texts, str(tmp_path_factory.mktemp("tok") / "spm.model")).path


def flops_lower_bound(config, shapes: dict, num_devices: int) -> float:
    """Matmul FLOPs per device of one train step counted from the parameter shapes alone.

    A kernel applied once per position costs 2 FLOPs per parameter per position forward and 2 + 2 backward (input
    and weight gradients), so 6 per parameter per position; everything else (attention scores, the LM's logits,
    patch embedding, heads, norms, Adam, remat's recomputation) only adds. Counted: transformers: the kernels of
    each scanned stack times the tokens of that tower (image patches, +1 class token for pool_type 'tok'; text
    length; for the prefix-LM's decoder, image tokens + text); the VQ-VAE: every conv/dense kernel times the output
    positions of its level (level i of the encoder/decoder at image / 2^i, its downsample at image / 2^(i+1),
    anything else at the code grid, image / 2^(levels-1)). The result is divided by the devices: each computes at
    least its share.
    """
    c, m = config, config.model
    if c.task == "contrastive":
        patches = (c.image_size // m.image.patch_size[0]) ** 2 + (m.image.get("pool_type") == "tok")
        tokens = {"img/encoder/blocks/": patches, "txt/encoder/blocks/": c.text_len}
    elif c.task == "prefixlm":
        patches = (c.image_size // m.vit.patch_size[0]) ** 2
        tokens = {"vit/encoder/blocks/": patches, "lm/blocks/": patches + c.text_len}
    elif c.task == "vqvae":
        tokens = None
    else:
        raise AssertionError(f"no FLOPs bound for task {c.task!r}")
    per_example = 0
    for path, shape in shapes.items():
        if not path.endswith("kernel"):
            continue
        if tokens is not None:
            per_example += sum(math.prod(shape) * n for prefix, n in tokens.items() if path.startswith(prefix))
        else:
            level = re.match(r"(enc/down|dec/up)(\d+)_(block|downsample|upsample)", path)
            side = (c.image_size // 2 ** (int(level.group(2)) + (level.group(3) == "downsample")) if level
                    else c.image_size // 2 ** (len(m.ch_mult) - 1))
            per_example += math.prod(shape) * side * side
    assert per_example > 0, "no kernel matched: parameter paths changed?"
    return 6 * per_example * c.batch_size / num_devices


@pytest.mark.parametrize("experiment", sorted(POD_CONFIGS), ids=lambda p: os.path.basename(p)[:-3])
def test_pod_config_dry_run_report(experiment, tokenizer, capsys):
    overrides = local_overrides(experiment, tokenizer) + [f"--config.mesh.{k}={v}" for k, v in MESH.items()]
    config = load_with_overrides(os.path.join(ROOT, experiment), split_overrides(overrides)[1])
    report = dry_run(config, max_unsharded_fraction=MAX_UNSHARDED)
    out = capsys.readouterr().out
    n, ndev = report["num_params"], report["num_devices"]
    assert ndev == 8 and report["mesh"] == MESH
    assert f"dry run: 8 devices, mesh {MESH}" in out

    # Per-device memory, as printed.
    mem = re.search(r"per device: params ([\d.]+) GiB, optimizer ([\d.]+) GiB, model state ([\d.]+) GiB, "
                    r"temporaries ([\d.]+) GiB, total ([\d.]+) GiB", out)
    assert mem, out[:2000]
    params_gib, opt_gib, _, temp_gib, total_gib = map(float, mem.groups())
    b = report["per_device_bytes"]
    assert params_gib == pytest.approx(b["params"] / GIB, abs=1e-3)
    assert opt_gib == pytest.approx(b["optimizer"] / GIB, abs=1e-3)
    assert temp_gib == pytest.approx(b["temp_size_in_bytes"] / GIB, abs=1e-3) and temp_gib > 0
    assert total_gib == pytest.approx(b["total"] / GIB, abs=1e-3) and b["total"] >= b["params"] + b["optimizer"]
    # float32 master weights, split at most fsdp x tensor ways (the data axis replicates them) ...
    assert 4 * n / (MESH["fsdp"] * MESH["tensor"]) <= b["params"] <= 4 * n
    # ... and AdamW's mu and nu in float32, sharded like the parameters (plus a step count).
    assert b["optimizer"] == pytest.approx(2 * b["params"], rel=1e-3)

    # FLOPs per step per device: printed, and within [bound, 1.5 bound]. The measured ratios are 1.04-1.25
    # (attention, logits, heads, remat); counting a scanned stack twice (step_flops' loop correction applied twice)
    # would give ~2x, dropping it (XLA's raw count of one loop iteration) ~0.1-0.3x.
    flops = report["flops_per_step_per_device"]
    assert f"FLOPs per step per device: {flops:.4g}" in out

    # Every parameter listed with its shape and sharding.
    table = out.split("parameter shardings:\n", 1)[1].splitlines()
    rows = [re.match(r"^  (\S+)\s+(\([\d, ]*\))\s+(P\(.*\))$", line) for line in table]
    assert all(rows), [line for line, r in zip(table, rows) if not r][:5]
    shapes = {r.group(1): tuple(int(d) for d in re.findall(r"\d+", r.group(2))) for r in rows}
    assert {r.group(1): r.group(3) for r in rows} == report["param_shardings"]
    assert sum(math.prod(s) for s in shapes.values()) == n

    bound = flops_lower_bound(config, shapes, ndev)
    assert bound <= flops <= 1.5 * bound, (flops, bound, flops / bound)

    # Sharding: on (2, 2, 2) a spec naming any mesh axis splits the parameter; every large one must be split.
    big_replicated = [p for p, s in shapes.items()
                      if 4 * math.prod(s) >= 2 ** 20 and "'" not in report["param_shardings"][p]]
    assert not big_replicated, big_replicated
    frac = report["unsharded_param_fraction"]
    assert f"unsharded parameter bytes: {100 * frac:.1f}%\n" in out
    assert frac < MAX_UNSHARDED
