"""benchmarks/sigmoid_vs_softmax.py: a study longer than one sitting resumes from its runs file (arms with the same
settings are not trained again), the plateau statistic against a hand count, and one real arm at toy size, whose
t and b must move further than the base learning rate allows (the study's learning-rate multiplier reaches them)."""
import argparse
import json
import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import sigmoid_vs_softmax as svs  # noqa: E402


def study_args(**over):
    args = dict(steps=8, batches=[16, 32], seeds=[0], eval_examples=64, val_evals=4, tb_lr_mult=100.0,
                dataset="scenes/tiny", data_dir="", tokenizer="", long=[], pilot=[], losses=list(svs.LOSSES),
                workers=-1)
    return argparse.Namespace(**{**args, **over})


def fake_curve(steps, values):
    return [{"step": (i + 1) * steps // len(values), "img2txt_r1": v, "txt2img_r1": v, "zeroshot": v}
            for i, v in enumerate(values)]


def test_arms_resume_from_the_runs_file(tmp_path, monkeypatch):
    trained = []

    def fake_train_arm(loss, batch, steps, seed, args):
        trained.append((loss, batch, seed))
        return {"loss": loss, "batch": batch, "seed": seed, "steps": steps, "seconds": 1.0,
                "validation_curve": fake_curve(steps, [0.1, 0.2, 0.3, 0.4]), "zeroshot": 0.5,
                "img2txt_r1": 0.4, "txt2img_r1": 0.4, "temperature": 10.0, "bias": -10.0}

    monkeypatch.setattr(svs, "train_arm", fake_train_arm)
    runs = tmp_path / "runs.jsonl"
    source = {"commit": "a" * 40, "dirty": False}
    first = svs.run_arms(study_args(), source, str(runs))
    assert len(trained) == 4 and [(r["batch"], r["loss"]) for r in first] == [
        (16, "sigmoid"), (16, "softmax"), (32, "sigmoid"), (32, "softmax")]
    assert all(r["commit"] == "a" * 40 and r["cpus"] >= 1 and r["cpu"] for r in first)
    # a later sitting, at another commit: nothing is trained again, and each arm keeps the commit it ran at
    again = svs.run_arms(study_args(), {"commit": "b" * 40, "dirty": False}, str(runs))
    assert len(trained) == 4 and again == first
    # a run killed while writing leaves a truncated line: skipped; a new seed trains only its own arms
    with open(runs, "a") as f:
        f.write('{"loss": "sig')
    more = svs.run_arms(study_args(seeds=[0, 1]), {"commit": "b" * 40, "dirty": False}, str(runs))
    assert len(trained) == 8 and sorted({r["commit"][0] for r in more}) == ["a", "b"]
    # other settings (more steps) are another study: every arm trains
    svs.run_arms(study_args(steps=16), source, str(runs))
    assert len(trained) == 12
    assert len(svs.read_runs(str(runs))) == 12
    # a `--long` arm (one batch at more steps) trains only its own arms, after the grid's, which are all found
    longer = svs.run_arms(study_args(long=[(16, 32)]), source, str(runs))
    assert trained[12:] == [("sigmoid", 16, 0), ("softmax", 16, 0)]
    assert [(r["batch"], r["steps"]) for r in longer] == [(16, 8)] * 2 + [(32, 8)] * 2 + [(16, 32)] * 2
    # `--losses`: a sitting trains one loss's arm; the other loss's is left for the next sitting, which finds this one
    svs.run_arms(study_args(long=[(16, 64)], losses=["softmax"]), source, str(runs))
    assert trained[14:] == [("softmax", 16, 0)]
    svs.run_arms(study_args(long=[(16, 64)]), source, str(runs))
    assert trained[15:] == [("sigmoid", 16, 0)]
    # `--pilot`: a budget run with fewer seeds is read, never trained, whatever seeds the command names
    piloted = svs.run_arms(study_args(seeds=[0, 1], pilot=[(16, 64)]), source, str(runs))
    assert len(trained) == 16 and [(r["steps"], r["seed"]) for r in piloted[-2:]] == [(64, 0), (64, 0)]
    with pytest.raises(SystemExit, match="--pilot 16:128"):
        svs.run_arms(study_args(pilot=[(16, 128)]), source, str(runs))


def test_the_committed_runs_file_resumes_the_reported_study(monkeypatch):
    """The command that wrote benchmarks/results/sigmoid_vs_softmax.json finds every arm it reports in the committed
    runs file (a fresh checkout trains none of them again), equal to the reported rows and in the same order; the
    default command (the equal-steps grid) finds its complete batches too."""
    def no_training(*a):
        raise AssertionError(f"arm {a[:3]} would be trained again")

    monkeypatch.setattr(svs, "train_arm", no_training)
    with open(os.path.join(ROOT, "benchmarks", "results", "sigmoid_vs_softmax.json")) as f:
        reported = json.load(f)
    argv = reported["command"].split()
    assert argv[:2] == ["python", "benchmarks/sigmoid_vs_softmax.py"]
    args = svs.parse_args(argv[2:])
    rows = svs.run_arms(args, {"commit": "x" * 40, "dirty": False}, args.runs_file)
    assert rows == reported["runs"]

    args = svs.parse_args([])
    done = svs.equal_steps(svs.read_runs(args.runs_file), args.steps)  # the `--long` pilots are other arms
    per_batch = len(svs.LOSSES) * len(args.seeds)
    complete = [b for b in sorted({r["batch"] for r in done}) if sum(r["batch"] == b for r in done) == per_batch]
    assert complete, "no batch size is complete in the runs file"
    args.batches = complete
    grid = svs.run_arms(args, {"commit": "x" * 40, "dirty": False}, args.runs_file)
    assert grid == [r for r in reported["runs"] if r["batch"] in complete and r["steps"] == args.steps]
    assert svs.parse_args(["--long", "32:38400"]).long == [(32, 38400)]
    assert svs.parse_args(["--pilot", "32:9600", "32:38400"]).pilot == [(32, 9600), (32, 38400)]
    with pytest.raises(SystemExit):
        svs.parse_args(["--long", "32"])
    assert svs.parse_args(["--losses", "sigmoid", "--no_report"]).losses == ["sigmoid"]
    with pytest.raises(SystemExit):  # a report needs both losses
        svs.parse_args(["--losses", "sigmoid"])


def test_last_quarter_gain_reads_the_evaluation_at_three_quarters():
    curve = fake_curve(800, [0.1, 0.2, 0.3, 0.35, 0.38, 0.40, 0.41, 0.415])  # steps 100..800
    assert svs.last_quarter_gain(curve, 800) == pytest.approx(0.415 - 0.40)  # 0.40 is step 600
    assert svs.last_quarter_gain(fake_curve(400, [0.1, 0.2, 0.3, 0.4]), 400) == pytest.approx(0.1)


def test_budget_gain_pairs_seeds_with_the_next_shorter_budget():
    def row(steps, seed, end, loss="sigmoid"):
        return {"loss": loss, "batch": 32, "steps": steps, "seed": seed,
                "validation_curve": fake_curve(steps, [0.0, end])}
    rows = [row(100, 0, 0.5), row(100, 1, 0.6), row(100, 2, 0.9), row(400, 0, 0.7), row(400, 1, 0.65),
            row(200, 0, 0.6), row(800, 3, 0.99), row(400, 0, 0.1, loss="softmax")]
    # 400 steps: the next-shorter budget is 200 (not 100), and only seed 0 ran at both: 0.7 - 0.6
    gain, shorter = svs.budget_gain(rows, "sigmoid", 32, 400)
    assert shorter == 200 and gain == pytest.approx(0.1)
    # 200 vs 100: seed 0 only (seeds 1 and 2 never ran at 200)
    assert svs.budget_gain(rows, "sigmoid", 32, 200) == (pytest.approx(0.1), 100)
    assert svs.budget_gain(rows, "sigmoid", 32, 100) is None  # the shortest
    assert svs.budget_gain(rows, "sigmoid", 32, 800) is None  # no seed in common with 400
    assert svs.budget_gain(rows, "softmax", 32, 400) is None  # the other loss has no shorter run


def test_arms_statistics_over_seeds():
    rows = [{"loss": "sigmoid", "batch": 32, "steps": 4, "zeroshot": z, "img2txt_r1": 0.2, "txt2img_r1": 0.4,
             "temperature": 10.0, "bias": -9.0, "validation_curve": fake_curve(4, [0.1, 0.2, 0.3, 0.4])}
            for z in (0.1, 0.3, 0.8)]
    s = svs.arms(rows)[("sigmoid", 32, 4)]
    assert s["zeroshot"][0] == pytest.approx(0.4) and s["zeroshot"][1] == pytest.approx(math.sqrt(0.13))
    assert s["n"] == 3 and s["last_quarter_gain"][0] == pytest.approx(0.1)


def test_one_real_arm_moves_t_and_b(scenes_tiny_dir, tmp_path):
    from vlmjax.data.tokenizer import dataset_texts, train_from_texts

    tok = train_from_texts(dataset_texts(scenes_tiny_dir, "scenes/tiny", max_examples=500),
                           str(tmp_path / "spm.model")).path
    args = study_args(steps=4, eval_examples=32, data_dir=scenes_tiny_dir, tokenizer=tok)
    row = svs.train_arm("sigmoid", 8, 4, 0, args)
    assert [c["step"] for c in row["validation_curve"]] == [1, 2, 3, 4]
    assert all(0 <= row[m] <= 1 for m in ("zeroshot", "img2txt_r1", "txt2img_r1"))
    # Adam moves a parameter by at most ~lr per step: 4 steps at the base lr (2e-3) cannot move b by 0.05
    assert abs(row["bias"] + 10.0) > 0.05 or abs(math.log(row["temperature"]) - math.log(10.0)) > 0.05
    json.dumps(row)  # the runs file stores it as one JSON line


def test_report_of_a_study_with_some_batches_done():
    """A sitting's report covers the batches finished so far: the text names their range, and each batch's
    sigmoid-minus-softmax line matches the seeds' means."""
    rows = [{"loss": loss, "batch": b, "seed": s, "steps": 8, "zeroshot": z + 0.01 * s, "img2txt_r1": r,
             "txt2img_r1": r + 0.1, "temperature": 10.0, "bias": -9.0 if loss == "sigmoid" else None,
             "validation_curve": fake_curve(8, [0.1, 0.2, 0.3, 0.4])}
            for b, (zs, zx, rs, rx) in ((32, (0.50, 0.40, 0.30, 0.35)), (128, (0.60, 0.62, 0.45, 0.40)))
            for loss, z, r in (("sigmoid", zs, rs), ("softmax", zx, rx)) for s in (0, 1)]
    md = svs.markdown(rows, {"steps": 8, "seeds": [0, 1], "eval_examples": 64, "commit": "c" * 40,
                             "command": "python benchmarks/sigmoid_vs_softmax.py"})
    assert "batch 32 sees 256 examples, 128 sees 1024" in md and "512" not in md
    assert md.count("| sigmoid |") == 2 and md.count("| softmax |") == 2
    assert "- batch 32, 8 steps: sigmoid +10.0 points zero-shot, -5.0 points mean R@1 vs softmax." in md
    assert "- batch 128, 8 steps: sigmoid -2.0 points zero-shot, +5.0 points mean R@1 vs softmax." in md
    assert "trained longer" not in md
    # `--long` arms: a table of their own, outside the equal-steps text and gaps
    longer = [{**r, "steps": 32, "zeroshot": r["zeroshot"] + (0.2 if r["loss"] == "softmax" else 0.0)}
              for r in rows if r["batch"] == 32]
    md = svs.markdown(rows + longer, {"steps": 8, "seeds": [0, 1], "eval_examples": 64, "commit": "c" * 40,
                                      "command": "python benchmarks/sigmoid_vs_softmax.py --long 32:32"})
    assert "batch 32 sees 256 examples, 128 sees 1024" in md and "trained longer" in md
    assert md.count("| sigmoid |") == 3 and md.count("| sigmoid | 32 | 32 |") == 1
    assert "- batch 32, 8 steps: sigmoid +10.0 points zero-shot" in md
    assert "- batch 32, 32 steps: sigmoid -10.0 points zero-shot, -5.0 points mean R@1 vs softmax." in md
    # the longer arms' gain over the 8-step runs, paired by seed: the same curve end (0.4) at both budgets
    assert md.count("| +0.000 (vs 8) |") == 2


def test_validation_summary_reads_no_test_metric():
    rows = [{"loss": "sigmoid", "batch": 32, "steps": st, "seed": s, "zeroshot": 0.777, "img2txt_r1": 0.777,
             "txt2img_r1": 0.777, "validation_curve": fake_curve(st, [0.2, 0.5 + 0.1 * s + st / 1000])}
            for st in (100, 200) for s in (0, 1)]
    md = svs.validation_summary(rows)
    assert "0.777" not in md
    # 200 steps: final val R@1 0.7 / 0.8 (mean 0.75), last quarter from 0.2; +0.1 over the 100-step runs
    assert "| sigmoid | 32 | 200 | 0,1 | 0.750 | 0.750 | +0.550 | +0.100 (vs 100) |" in md


def budget_rows():
    def row(loss, batch, steps, seed):
        return {"loss": loss, "batch": batch, "steps": steps, "seed": seed, "zeroshot": 0.3, "img2txt_r1": 0.5,
                "txt2img_r1": 0.6, "temperature": 10.0, "bias": None,
                "validation_curve": fake_curve(steps, [0.1, 0.2, 0.3, 0.4])}
    rows = [row(loss, b, 8, s) for loss in svs.LOSSES for b in (16, 32) for s in (0, 1)]
    rows += [row(loss, 16, 32, s) for loss in svs.LOSSES for s in (0, 1)]  # batch 16 trained longer, both seeds
    rows += [row(loss, 16, 64, 0) for loss in svs.LOSSES]  # a one-seed pilot: not final
    rows += [row("sigmoid", 32, 32, s) for s in (0, 1)]  # one loss only: not final
    return rows


def test_final_budgets_need_every_seed_of_both_losses():
    rows = budget_rows()
    assert svs.final_budgets(rows, [0, 1]) == {16: 32, 32: 8}
    assert svs.final_budgets(rows, [0]) == {16: 64, 32: 8}


def test_plot_draws_the_final_budget_row(tmp_path, monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")  # `make test` installs without the [bench] extra
    import matplotlib.figure

    saved, savefig = [], matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: (saved.append(fig), savefig(fig, *a, **k)))
    svs.plot(budget_rows(), str(tmp_path / "p.png"), 8, [0, 1])
    assert (tmp_path / "p.png").stat().st_size > 0
    (fig,) = saved
    first, second = fig.axes[:len(svs.METRICS)], fig.axes[len(svs.METRICS):]
    assert len(second) == len(svs.METRICS)
    assert [t.get_text() for t in first[0].get_xticklabels()] == ["16", "32"]
    # the second row of panels: each batch at its final budget, the steps under the batch size
    assert [t.get_text() for t in second[0].get_xticklabels()] == ["16\n32", "32\n8"]
