"""benchmarks/accelerator_step.py at toy sizes on CPU, so the script a GPU session runs cannot rot: its rows exist,
the FLOPs our trainer counts on the jaxpr equal the benchmark's analytic formulas, and our SigLIP and prefix-LM
steps start from the same losses as HF transformers' SiglipModel and PaliGemma on the same weights and batch."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("acc")
    phases = "siglip_pod,siglip_torch_eager,siglip_pod_bf16_params,prefixlm_hf_init,prefixlm_ours,prefixlm_torch_eager"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "accelerator_step.py"), "--size", "tiny",
                           "--cpu", "--rounds", "1", "--steps", "1", "--phases", phases, "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "accelerator_step_cpu.json") as f:
        return json.load(f)


def test_every_requested_phase_ran(result):
    assert result["errors"] == {}
    assert "pod" in result["siglip"]["rows"] and "ours_pod" in result["prefixlm"]["rows"]
    for row in list(result["siglip"]["rows"].values()) + list(result["prefixlm"]["rows"].values()):
        assert row["examples_per_s"] > 0 and row["model_flops_per_step"] > 0
    for row in (result["siglip"]["rows"]["pod"], result["prefixlm"]["rows"]["ours_pod"]):  # our rows' op profile
        profile = row["profile"]
        assert profile["steps"] == 3 and profile["op_ms"] > 0 and len(profile["ops"]) == 20
        assert any(name.startswith(("dot", "ynn_fusion", "convolution")) for name, _, _ in profile["ops"])


def test_trainer_flops_equal_the_analytic_counts(result):
    # The trainer's count (jaxpr, remat excluded) against the benchmark's closed-form formulas; the pod config
    # rematerialises, so its hardware count must be larger.
    pod = result["siglip"]["rows"]["pod"]
    assert pod["model_flops_per_step"] == pytest.approx(result["siglip"]["analytic_model_flops_per_step"], rel=1e-9)
    assert pod["hardware_flops_per_step"] > pod["model_flops_per_step"]
    plm = result["prefixlm"]["rows"]["ours_pod"]
    assert plm["model_flops_per_step"] == pytest.approx(result["prefixlm"]["analytic_model_flops_per_step"],
                                                        rel=1e-9)


def test_same_first_losses_as_hf_transformers(result):
    pytest.importorskip("transformers")
    losses = result["siglip"]["first_losses"]
    assert losses["pod"][0] == pytest.approx(losses["hf_torch_eager"][0], abs=1e-4)
    assert losses["pod"][1] == pytest.approx(losses["hf_torch_eager"][1], abs=1e-3)  # after one AdamW step each
    # the prefix-LM: HF PaliGemma's init imported into our VLM (pod settings: scanned, remat), the same masks
    plm = result["prefixlm"]["first_losses"]
    assert plm["ours_pod"][0] == pytest.approx(plm["hf_torch_eager"][0], abs=1e-4)
    assert plm["ours_pod"][1] == pytest.approx(plm["hf_torch_eager"][1], abs=1e-3)
    assert result["prefixlm"]["first_loss_diff_ours_vs_torch"] < 1e-4


def test_bf16_params_row_starts_where_the_pod_row_does(result):
    """`config.optimizer.param_dtype=bfloat16` on the pod settings: the same first loss up to the rounding of the
    imported matrices to bfloat16, and a larger state (a float32 master copy of every parameter beside the
    bfloat16 matrices)."""
    rows, losses = result["siglip"]["rows"], result["siglip"]["first_losses"]
    if "pod_bf16_params" not in rows:
        pytest.skip(result["skipped"].get("siglip_pod_bf16_params", "not run"))
    assert losses["pod_bf16_params"][0] == pytest.approx(losses["pod"][0], abs=2e-2)
    assert losses["pod_bf16_params"][0] != losses["pod"][0]
    pod, bf16 = rows["pod"]["memory_analysis"], rows["pod_bf16_params"]["memory_analysis"]
    assert bf16["argument_size_in_bytes"] > pod["argument_size_in_bytes"]
