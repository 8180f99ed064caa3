"""benchmarks/prefixlm_report.py: arms resume from the runs file, statistics paired by seed against hand values,
and every arm's two stage configs build their task (image input, attention, seeds, validation + test evals)."""
import argparse
import json
import math
import os
import sys

import pytest

from test_prefixlm_task import tok_path  # noqa: F401  (fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import prefixlm_report as pr  # noqa: E402


def study_args(**over):
    args = dict(scale=0.04, vqvae_steps=300, pretrain_steps=250, chat_steps=350, eval_images=16, seeds=[0],
                arms=list(pr.ARMS), data_dir="", workdir="")
    return argparse.Namespace(**{**args, **over})


def fake_row(arm, seed, vqa):
    row = {"arm": arm, "seed": seed}
    for split in ("validation", "test"):
        row.update({f"{split}/{m}": vqa for m in pr.METRICS})
    return row


def test_arms_resume_from_the_runs_file(tmp_path, monkeypatch):
    trained = []
    monkeypatch.setattr(pr, "train_arm", lambda arm, seed, args: trained.append((arm, seed)) or
                        fake_row(arm, seed, 0.5))
    runs = str(tmp_path / "runs.jsonl")
    first = pr.run_arms(study_args(), {"commit": "a" * 40, "dirty": False}, runs)
    assert trained == [(a, 0) for a in pr.ARMS] and all(r["commit"] == "a" * 40 for r in first)
    again = pr.run_arms(study_args(seeds=[0, 1]), {"commit": "b" * 40, "dirty": False}, runs)
    assert trained[4:] == [(a, 1) for a in pr.ARMS]  # seed 0 read back, seed 1 trained
    assert again[:4] == first and {r["commit"][0] for r in again} == {"a", "b"}
    pr.run_arms(study_args(scale=0.08), {"commit": "a" * 40, "dirty": False}, runs)  # other settings: retrained
    assert len(trained) == 12 and len(pr.read_runs(runs)) == 12


def test_statistics_are_paired_by_seed():
    rows = [fake_row("continuous", 0, 0.50), fake_row("continuous", 1, 0.60), fake_row("continuous", 2, 0.70),
            fake_row("vq", 0, 0.40), fake_row("vq", 1, 0.45), fake_row("vq", 2, 0.65)]
    mean, std, n = pr.paired(rows, "vq", "continuous", "vqa/accuracy")
    assert n == 3 and mean == pytest.approx(-0.1) and std == pytest.approx(math.sqrt(0.0025 + 0.0025 + 0.0) /
                                                                           math.sqrt(2))
    s = pr.arm_stats(rows)["vq"]
    assert s["n"] == 3 and s["vqa/accuracy"][0] == pytest.approx(0.5)
    assert pr.paired(rows[:3], "vq", "continuous", "vqa/accuracy") is None
    result = {"settings": vars(study_args()), "blind": {"all": 0.3, **{t: 0.3 for t in pr.TYPES}},
              "seeds": [0, 1, 2], "arm_commits": ["c" * 40], "command": "python benchmarks/prefixlm_report.py"}
    text = pr.markdown(rows, result)
    assert "VQ codes vs continuous ViT: VQA -10.0 ± 5.0 points" in text and "(n=3)" in text


@pytest.mark.parametrize("arm", list(pr.ARMS))
def test_every_arms_stages_build_their_task(arm, scenes_tiny_dir, tok_path, tmp_path):  # noqa: F811
    from vlmjax.core import config as config_lib
    from vlmjax.tasks.prefixlm import PrefixLMTask

    vq_dir = tmp_path / "vqvae"
    vq_dir.mkdir()
    with open(vq_dir / "config.json", "w") as f:
        json.dump({"model": pr.vqvae_config(0, study_args()).model.to_dict()}, f)
    for stage in ("pretrain", "chat"):
        c = pr.arm_config(stage, arm, 7, study_args(data_dir=scenes_tiny_dir), str(vq_dir), "/pre")
        c.tokenizer = tok_path
        c = config_lib.resolve(c, PrefixLMTask.config_defaults())
        task = PrefixLMTask(c)
        task.validate()
        name = "caption" if stage == "pretrain" else "vqa"
        assert {n: e.data.split for n, e in c.evals.items()} == {name: "validation", f"{name}_test": "test"}
        assert c.evals[f"{name}_test"].quiet and not c.evals[name].get("quiet", False)  # test: not printed
        assert c.seed == 7 and c.init_from.workdir == ("" if stage == "pretrain" else "/pre")
        assert task.model.image_input == {"continuous": "continuous", "causal": "continuous"}.get(arm, arm)
        assert c.attention == ("causal" if arm == "causal" else "prefix")
        if arm in pr.FROZEN_VQ:
            assert task.vq_grid == (8, 8)  # 64 image tokens, as the continuous arms' 8 x 8 patches


def test_plot_draws_every_arm(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [fake_row(a, s, 0.4 + 0.1 * s) for a in pr.ARMS for s in (0, 1)]
    pr.plot(rows, str(tmp_path / "report.png"))
    from PIL import Image

    assert Image.open(tmp_path / "report.png").size[0] > 500
