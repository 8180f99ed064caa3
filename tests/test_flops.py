"""FLOPs from XLA's cost analysis against an analytic count; the dry run report; the CPU peak used for MFU."""
import jax
import jax.numpy as jnp
import pytest

from test_core import tiny_config
from vlmjax.models.vit import ViT
from vlmjax.train.dry_run import dry_run
from vlmjax.train.flops import cost_of, measured_cpu_peak


def vit_forward_flops(image, patch, width, depth, mlp, classes, batch):
    """Matmul FLOPs (2 per multiply-add) of one ViT forward pass."""
    n = (image // patch) ** 2
    per_block = 2 * n * width * width * 4 + 2 * 2 * n * n * width + 2 * 2 * n * width * mlp
    return batch * (2 * n * patch * patch * 3 * width + depth * per_block + 2 * width * classes)


def test_vit_forward_flops_match_analytic_count():
    model = ViT(patch_size=(4, 4), width=64, depth=3, num_heads=4, mlp_dim=256, num_classes=10)
    x = jnp.zeros((8, 32, 32, 3))
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    compiled = jax.jit(lambda p, x: model.apply(p, x)[0]).lower(params, x).compile()
    want = vit_forward_flops(32, 4, 64, 3, 256, 10, 8)
    got = cost_of(compiled)["flops"]
    # XLA also counts the elementwise work (softmax, layer norms, gelu, adds): a few percent on top of the matmuls.
    assert want <= got <= 1.15 * want, (got, want)


def test_train_step_flops_are_about_three_forwards():
    cfg = tiny_config(**{"model.width": 64, "model.depth": 3, "model.num_heads": 4, "model.mlp_dim": 256,
                         "batch_size": 16})
    report = dry_run(cfg)  # mesh (8,1,1): each device runs 1/8 of the batch
    fwd = vit_forward_flops(16, 4, 64, 3, 256, 4, 16)
    ratio = report["flops_per_step_per_device"] * report["num_devices"] / fwd
    # Backward costs two forwards in matmuls; Adam (~10 FLOPs per parameter), layer norms, softmax and gelu add
    # up to ~25% at this tiny width (16 tokens of width 64).
    assert 3.0 <= ratio <= 3.9, ratio


def test_dry_run_reports_and_catches_unsharded_params(capsys):
    cfg = tiny_config(**{"mesh.data": 2, "mesh.fsdp": 4})
    report = dry_run(cfg, target="tpu_v5e")
    out = capsys.readouterr().out
    assert "parameter shardings:" in out and "encoder/block00/attn/query_kernel" in out
    assert "fits on tpu_v5e" in out
    assert report["unsharded_param_fraction"] < 0.5
    cfg = tiny_config(**{"sharding_rules": [["batch", ["data", "fsdp"]]]})  # nothing maps params to mesh axes
    with pytest.raises(ValueError, match="of parameter bytes are unsharded"):
        dry_run(cfg, max_unsharded_fraction=0.5)


def test_measured_cpu_peak_is_plausible():
    peak = measured_cpu_peak(256)
    assert 1e8 < peak < 1e13  # between 0.1 GFLOP/s and 10 TFLOP/s for one CPU device
