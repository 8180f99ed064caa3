"""benchmarks/input_pipeline.py in its --quick mode (the device run's) at toy sizes on CPU, so the script a GPU
session runs cannot rot: every part writes its figures and the targets are judged only where they apply."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_run_writes_every_figure(scenes_tiny_dir, tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "input_pipeline.py"), "--quick", "--config",
           "vit_scenes:runlocal", "--data_dir", scenes_tiny_dir, "--min_batches", "4", "--steps", "2",
           "--jpeg_batch", "16", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "input_pipeline.json").read_text())
    assert res["host"]["cores"] >= 1 and res["auto_worker_count"] == 0  # a CPU-only host: no worker processes
    demo, jpeg = res["demo"], res["jpeg"]
    assert demo["source"].startswith("tfds scenes/tiny") and "reading ['image', 'label']" in demo["source"]
    assert all(r > 0 and w > 0 for r, w in demo["reference_pairs_before_and_now_w0"])
    row = demo["workers"]["0"]
    for variant in ("host_value_range", "device_value_range", "raw_uint8"):
        assert row[variant]["pipeline_examples_per_s"] > 0 and row[variant]["ratio_pipeline_over_step"] > 0
    for variant in ("host_value_range", "device_value_range"):
        assert demo[f"step_{variant}"]["train_step_examples_per_s"] > 0
        assert row[variant]["end_to_end_examples_per_s"] > 0
    assert all(r["uint8_examples_per_s"] > 0 for r in jpeg["workers"].values())
    most = max(jpeg["workers"], key=int)  # the float32 figure: at the largest worker count, measured last
    assert jpeg["workers"][most]["float32_host_value_range_examples_per_s"] > 0
    summary = res["summary"]
    assert summary["demo_pipeline_examples_per_s_2_cores"]["applies"] == (res["host"]["cores"] == 2)
    assert not summary["demo_pipeline_over_step_h200"]["applies"]
    assert not summary["jpeg_224_examples_per_s_16_cores"]["applies"]
