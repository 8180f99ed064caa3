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
def acc_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("acc")
    phases = "siglip_pod,siglip_torch_eager,siglip_pod_bf16_params,prefixlm_hf_init,prefixlm_ours,prefixlm_torch_eager"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "accelerator_step.py"), "--size", "tiny",
                           "--cpu", "--rounds", "1", "--steps", "1", "--phases", phases, "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def result(acc_dir):
    with open(acc_dir / "accelerator_step_cpu.json") as f:
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


def test_device_report_writes_the_runs_figures(acc_dir, result, tmp_path):
    """benchmarks/device_report.py on this run's $OUT (plus a flag trial and an input-pipeline JSON): every row's
    examples/s reaches the doc block, the JSONs are copied with the checkout's commit, the hand-written rest of the
    page is kept."""
    import shutil

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import device_report

    run = tmp_path / "out"
    shutil.copytree(acc_dir, run)
    (run / "xla_flag_a").mkdir()
    shutil.copy(run / "accelerator_step_cpu.json", run / "xla_flag_a" / "accelerator_step_cpu.json")
    shutil.copy(os.path.join(ROOT, "benchmarks", "results", "input_pipeline.json"), run / "input_pipeline.json")
    doc = tmp_path / "accelerator.md"
    doc.write_text("# Speed\n\nby hand\n\n<!-- device-run:begin -->\nold\n<!-- device-run:end -->\n\ntail\n")
    device_report.main(["--results", str(run), "--dest", str(tmp_path / "results"), "--doc", str(doc)])
    text = doc.read_text()
    assert text.startswith("# Speed\n\nby hand\n") and text.endswith("\ntail\n") and "\nold\n" not in text
    for part in ("siglip", "prefixlm"):
        for name, row in result[part]["rows"].items():
            assert f"| {name} | {row['examples_per_s']:.1f} |" in text
    assert "| `xla_flag_a` | " in text and "| 1.000 |" in text  # the same JSON as the main run: ratio 1
    assert "| demo_pipeline_examples_per_s_2_cores |" in text
    for name in ("accelerator_step_cpu", "accelerator_flags_cpu", "input_pipeline_cpu"):
        with open(tmp_path / "results" / f"{name}.json") as f:
            assert len(json.load(f)["commit_stamped"]) == 40
