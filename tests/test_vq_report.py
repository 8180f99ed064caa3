"""benchmarks/vq_report.py: runs resume from the runs file, mean ± std over seeds against hand values in the table
and plot, and one real run at toy size (validation and test metrics, the seed-0 reconstructions kept)."""
import argparse
import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import vq_report as vr  # noqa: E402


def fake_row(variant, k, seed, usage):
    row = {"variant": variant, "num_codes": k, "seed": seed, "steps": 300, "seconds": 1.0}
    row.update({m: usage for m in vr.METRICS})
    row.update({f"validation/{m}": usage for m in ("usage", "codes_used", "perplexity", "psnr", "ssim")})
    return row


def test_runs_resume_from_the_runs_file(tmp_path, monkeypatch):
    trained = []
    monkeypatch.setattr(vr, "run_one", lambda v, k, seed, args, wd: trained.append((v, k, seed)) or
                        fake_row(v, k, seed, 0.5))
    args = argparse.Namespace(seeds=[0], steps=300, workdir=str(tmp_path), runs_file=str(tmp_path / "runs.jsonl"))
    first = vr.run_all(args, {"commit": "a" * 40, "dirty": False})
    assert len(trained) == 8 and [(r["variant"], r["num_codes"]) for r in first][:2] == [("plain", 512),
                                                                                       ("plain", 4096)]
    args.seeds = [0, 1]
    again = vr.run_all(args, {"commit": "b" * 40, "dirty": False})
    assert len(trained) == 16 and again[:8] == first and {r["commit"][0] for r in again} == {"a", "b"}


def test_table_and_plot_give_mean_and_std_over_seeds(tmp_path):
    rows = [fake_row(v, k, s, u) for v in vr.VARIANTS for k in vr.SIZES for s, u in ((0, 0.2), (1, 0.4), (2, 0.9))]
    st = vr.summary(rows)[("ema", 4096)]
    assert st["n"] == 3 and st["usage"][0] == pytest.approx(0.5) and st["usage"][1] == pytest.approx(math.sqrt(0.13))
    result = {"rows": rows, "seeds": [0, 1, 2], "command": "python benchmarks/vq_report.py"}
    md = tmp_path / "vqvae.md"
    vr.write_markdown(result, {}, str(md), "p.png", "g.png")
    assert f"| ema | 4096 | 50.0 ± {100 * math.sqrt(0.13):.1f} |" in md.read_text()
    pytest.importorskip("matplotlib")
    vr.bar_chart(rows, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_one_real_run(scenes_tiny_dir, tmp_path):
    args = argparse.Namespace(steps=2, data_dir=scenes_tiny_dir)
    row = vr.run_one("restart", 512, 0, args, str(tmp_path / "run"))
    assert 0 < row["usage"] <= 1 and 0 < row["validation/usage"] <= 1 and row["psnr"] > 0
    assert row["seed"] == 0 and (tmp_path / "run" / "recons.png").exists()
