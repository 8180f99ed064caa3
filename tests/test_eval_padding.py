"""Eval batches that the data-parallel size does not divide are padded, not refused, and change no metric."""
import jax
import numpy as np
import pytest

from test_core import tiny_config
from vlmjax.core.config import eval_batch_size
from vlmjax.core.loop import Trainer


def test_eval_batch_size_rounds_up():
    assert eval_batch_size(250, 8) == 256
    assert eval_batch_size(256, 8) == 256
    assert eval_batch_size(3, 1) == 3
    assert eval_batch_size(6, 4, process_count=3) == 12  # every process reads an equal share


def test_padded_eval_equals_one_device(tmp_path, capsys):
    # 50 of the 64 test examples: 1 device reads batches of 10 (5, none padded); 8 devices read batches of 16
    # (4, the last with 14 padding rows) that must not count, in accuracy or in loss.
    over = {"eval.batch_size": 10, "evals.test.data.max_examples": 50}
    one = Trainer(tiny_config(**{"mesh.data": 1}, **over), str(tmp_path / "one"), devices=jax.devices()[:1])
    assert "padded" not in capsys.readouterr().out
    eight = Trainer(tiny_config(**over), str(tmp_path / "eight"))
    out = capsys.readouterr().out
    assert out.count("config.evals.test.data.batch_size=10 is padded to 16") == 1, out
    assert "data-parallel size 8" in out

    # Random weights everywhere, the zero-initialised head included, so predictions differ between examples.
    params = jax.device_get(one.init_state()["params"])
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda p: (p + rng.normal(0, 0.5, p.shape)).astype(p.dtype), params)
    state = {"params": params, "model_state": {}}

    with jax.set_mesh(one.mesh):
        want = one.evaluate(jax.device_put(state, {"params": one.state_shardings["params"], "model_state": {}}),
                            0, only=True)
    with jax.set_mesh(eight.mesh):
        got = eight.evaluate(jax.device_put(state, {"params": eight.state_shardings["params"], "model_state": {}}),
                             0, only=True)
        n = len(eight.predict_all(eight.evaluators["test"].predict, state, eight.config.evals.test.data)["correct"])
    assert n == 50
    assert 0.05 < want["eval/test/accuracy"] < 0.95  # not a constant prediction that padding could not disturb
    assert got["eval/test/accuracy"] == pytest.approx(want["eval/test/accuracy"], abs=1e-9)
    assert got["eval/test/loss"] == pytest.approx(want["eval/test/loss"], rel=1e-5)


def test_eval_batch_below_one_named(tmp_path):
    with pytest.raises(ValueError, match=r"config.evals.test.data.batch_size=-4: must be >= 1"):
        Trainer(tiny_config(**{"evals.test.data.batch_size": -4}), str(tmp_path), open_data=False)
