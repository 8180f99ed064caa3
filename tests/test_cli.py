"""The one CLI framework (vlmjax/cli/app.py), in-process: every CLI's --help lists its own flags, a bad flag or
argument is one `error:` line and exit code 2 (VLMJAX_TRACEBACK=1 re-raises), and the console progress line."""
import pytest

from vlmjax.cli import app, evaluate, export, predict, train, vq, zeroshot
from vlmjax.core.metrics import Progress

CLIS = {"vlmjax-train": (train, ["--config:", "--[no]dry_run:"]), "vlmjax-eval": (evaluate, ["--[no]json:"]),
        "vlmjax-zeroshot": (zeroshot, ["--labels:"]), "vlmjax-predict": (predict, ["--prompt:", "--top_labels:"]),
        "vlmjax-export": (export, ["--format:", "--out:"]),
        "vlmjax-vq": (vq, ["vlmjax-vq encode:", "vlmjax-vq decode:", "--out:"])}


@pytest.mark.parametrize("prog", sorted(CLIS))
def test_help_lists_own_flags(prog, capsys):
    module, own = CLIS[prog]
    assert module.main(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in own + ["--workdir:", "-v,--verbosity:"]:
        assert flag in out, (flag, out)
    assert f"\n    {prog} " in out  # the module docstring's examples
    assert "--jax_" not in out and "--helpfull" not in out


@pytest.mark.parametrize("module,argv,message", [
    (evaluate, ["--workdir", "w", "--wrkdir=3"],
     "error: unknown flag '--wrkdir' (did you mean '--workdir'?); known flags: --config, --json, --split, --step, "
     "--verbosity, --workdir (see vlmjax-eval --help)"),
    (evaluate, [], "error: --workdir is required (see vlmjax-eval --help)"),
    (export, ["--workdir", "w", "--format", "onnx", "--out", "o"], "error: flag --format=onnx: value should be one of "
     "<hf_siglip|big_vision|hf_paligemma|hf_gemma|big_vision_paligemma>"),
    (predict, ["--workdir", "w", "stray"], "error: unexpected argument 'stray' (see vlmjax-predict --help)"),
    (vq, ["encod", "--workdir", "w"],
     "error: unknown command 'encod' (did you mean 'encode'?); known commands: decode, encode (see vlmjax-vq --help)"),
    (vq, ["decode", "--workdir", "w", "codes.npy"], "error: --out is required (see vlmjax-vq decode --help)"),
    (vq, ["encode", "--workdir", "w", "missing.png"], "error: image 'missing.png': no such file"),
    (train, ["--config", "vit_scnes", "--workdir", "w"],
     "error: --config 'vit_scnes': unknown experiment 'vit_scnes' (did you mean 'vit_scenes'?); known experiments: "),
    (zeroshot, ["--workdir", "nowhere", "--image", "a.png", "--labels", " , "],
     "error: --labels needs at least one label"),
])
def test_bad_flags_one_line_exit_2(module, argv, message, capsys):
    assert module.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err


def test_traceback_on_request(monkeypatch):
    monkeypatch.setenv("VLMJAX_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        evaluate.main(["--workdir", "/nonexistent/run"])


def test_only_user_errors_become_one_line():
    def bug():
        raise TypeError("a bug, not bad input")

    with pytest.raises(TypeError):
        app.guarded(bug)
    assert app.guarded(lambda: None) == 0


def test_progress_bar_only_on_a_terminal():
    metrics = {"train/loss": 1.5}
    assert Progress(600, 64, 0, tty=False).line(150, metrics, 2.0) == (
        "step 150/600 | loss 1.5000 | 2.00 steps/s | 128 ex/s | ETA 3m45s")
    assert Progress(600, 64, 0, tty=True).line(150, metrics, 2.0).startswith(
        "step 150/600 [#####...............]  25% | loss 1.5000")
