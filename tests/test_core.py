"""Trainer core: sharding invariance, determinism, optimizer features, iterator state, bad data, validation."""
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import fake_data
from vlmjax.data.pipeline import TrainIterator
from vlmjax.core.config import set_dotted
from vlmjax.core.loop import Trainer, train
from vlmjax.core.metrics import read_metrics

PP = [dict(op="decode", key="image"), dict(op="value_range", key="image", vmin=-1, vmax=1),
      dict(op="keep", keys=["image", "label"])]


def tiny_config(**over):
    c = ml_collections.ConfigDict()
    c.task = "classification"
    c.num_classes = fake_data.NUM_CLASSES
    c.image_size = fake_data.SIZE
    c.total_steps = 20
    c.batch_size = 16
    c.log_every_steps = 1
    c.data = dict(name="fake:clean", preprocess=PP)
    c.evals = dict(test=dict(type="classification", data=dict(split="test", preprocess=PP)))
    c.eval = dict(every_steps=0, batch_size=32)
    c.model = dict(patch_size=(4, 4), width=32, depth=2, num_heads=2, mlp_dim=64)
    c.optimizer = dict(lr=3e-3)
    c.schedule = dict(warmup_steps=3)
    c.checkpoint = dict(every_steps=1000, async_save=False)
    set_dotted(c, over)
    return c


def losses(workdir):
    return np.array([r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r])


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("one"))
    final = train(tiny_config(**{"mesh.data": 1}), wd, devices=jax.devices()[:1])
    return wd, final


@pytest.mark.parametrize("mesh", [(8, 1, 1), (2, 2, 2), (1, 4, 2)])
def test_sharding_invariance(one_device_run, tmp_path, mesh):
    ref = losses(one_device_run[0])
    assert len(ref) == 20
    cfg = tiny_config(**{"mesh.data": mesh[0], "mesh.fsdp": mesh[1], "mesh.tensor": mesh[2]})
    final = train(cfg, str(tmp_path))
    got = losses(str(tmp_path))
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert final["eval/test/accuracy"] == pytest.approx(one_device_run[1]["eval/test/accuracy"])
    # The gradients too, not only the losses: their global norm at every step (a gradient all-reduced over the
    # wrong axis, or not at all, changes it; the loss is the same mean either way at step 1).
    norms = lambda wd: [r["train/grad_norm"] for r in read_metrics(wd) if "train/grad_norm" in r]  # noqa: E731
    assert len(norms(str(tmp_path))) == 20
    np.testing.assert_allclose(norms(str(tmp_path)), norms(one_device_run[0]), rtol=1e-4)


def test_learns_and_is_deterministic(one_device_run, tmp_path):
    ref = losses(one_device_run[0])
    # The label is a flat colour patch (chance 25%, initial loss ln 4 from the zero-initialised head): 20 steps
    # must cut the loss by more than a quarter and classify the held-out split almost perfectly.
    assert ref[0] == pytest.approx(np.log(fake_data.NUM_CLASSES), rel=1e-4)
    assert ref[-3:].mean() < 0.75 * ref[0], ref
    assert one_device_run[1]["eval/test/accuracy"] >= 0.9
    train(tiny_config(**{"mesh.data": 1}), str(tmp_path), devices=jax.devices()[:1])
    np.testing.assert_array_equal(losses(str(tmp_path)), ref)


def test_freeze_and_lr_mults(tmp_path):
    cfg = tiny_config(**{"total_steps": 3, "optimizer.freeze": r"encoder/block00/.*",
                         "optimizer.lr_mults": ((r"encoder/block01/.*", 0.0), (r".*", 1.0))})
    t = Trainer(cfg, str(tmp_path))
    before = jax.device_get(t.init_state()["params"])
    t.run()
    after = jax.device_get(t.state["params"])
    flat_b = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(before)[0]}
    for path, v in jax.tree_util.tree_flatten_with_path(after)[0]:
        name = jax.tree_util.keystr(path)
        frozen = "'block00'" in name or "'block01'" in name
        assert np.array_equal(v, flat_b[name]) == frozen, name


def _ids(it, n):
    return [b["id"].tolist() for b in (next(it) for _ in range(n))]


@pytest.mark.parametrize("prefetch", [0, 2])
def test_iterator_state_resumes_exactly_and_shards_disjointly(prefetch):
    """With `prefetch` batches built ahead by a thread, the state read after 7 batches is still that of the 7th
    (the thread has read further), and the stream is the same as without the thread."""
    src = fake_data.make_examples(40, seed=3)
    pre = lambda ex, rng: {"id": ex["id"], "r": rng.random()}  # noqa: E731
    full = TrainIterator(src, pre, batch_size=8, seed=7)
    ref = [next(full) for _ in range(12)]  # 96 examples: crosses two epoch boundaries
    it = TrainIterator(src, pre, batch_size=8, seed=7, prefetch_buffer=prefetch)
    for want in ref[:7]:
        np.testing.assert_array_equal(next(it)["r"], want["r"])
    if prefetch:
        time.sleep(0.2)  # the thread fills its buffer beyond the 7th batch
    state = it.get_state()
    assert state["grain"] == {"next_index": 56}
    resumed = TrainIterator(src, pre, batch_size=8, seed=7, prefetch_buffer=prefetch)
    resumed.set_state(state)
    for want in ref[7:]:
        got = next(resumed)
        np.testing.assert_array_equal(got["id"], want["id"])
        np.testing.assert_array_equal(got["r"], want["r"])  # per-example randomness resumes too
    ids = np.concatenate([b["id"] for b in ref])
    assert sorted(ids[:40]) == list(range(40))  # each epoch is a permutation: no repeat, no skip
    assert sorted(ids[40:80]) == list(range(40))
    assert not np.array_equal(ids[:40], ids[40:80])  # reshuffled per epoch
    a = TrainIterator(src, pre, batch_size=4, seed=7, process_index=0, process_count=2)
    b = TrainIterator(src, pre, batch_size=4, seed=7, process_index=1, process_count=2)
    ia, ib = sum(_ids(a, 5), []), sum(_ids(b, 5), [])
    assert not set(ia) & set(ib) and len(set(ia) | set(ib)) == 40


def test_bad_records_are_skipped_and_counted(tmp_path):
    from vlmjax.data.ops import DropExample, get_preprocess_fn

    decode = get_preprocess_fn([dict(op="decode", key="image")])

    def pre(ex, rng):
        if not ex["caption"].strip():
            raise DropExample("empty_caption")
        return {"id": ex["id"], "image": decode(ex, rng)["image"]}

    src = fake_data.make_examples(40, seed=3, bad=True)
    it = TrainIterator(src, pre, batch_size=19, seed=0)
    ids = np.concatenate([next(it)["id"] for _ in range(2)])  # exactly one epoch of the 38 good records
    assert sorted(ids) == sorted(set(range(40)) - {fake_data.BAD_IMAGE_INDEX, fake_data.EMPTY_CAPTION_INDEX})
    assert it.drop_metrics() == {"data/dropped/corrupt_image": 1.0, "data/dropped/empty_caption": 1.0}

    # Through the trainer: 17 steps x 16 > 256 records, so the corrupt one was met (and skipped) at least once.
    final = train(tiny_config(**{"data.name": "fake:bad", "total_steps": 17}), str(tmp_path))
    assert final["data/dropped/corrupt_image"] >= 1.0


VALIDATION_CASES = [
    ({"optimizer.lrr": 1e-3}, "unknown key config.optimizer.lrr (did you mean 'lr'?)"),
    ({"model.widht": 32}, "unknown key config.model.widht (did you mean 'width'?)"),
    ({"batch_sise": 16}, "unknown key config.batch_sise (did you mean 'batch_size'?)"),
    ({"batch_size": "16"}, "config.batch_size='16': wrong type str"),
    ({"mesh.data": 3}, "config.mesh (data=3, fsdp=1, tensor=1): axis sizes multiply to 3, but there are 8 devices"),
    ({"batch_size": 12}, "config.batch_size=12 is not divisible by the data-parallel size 8"),
    ({"evals.test.data.preprocess": [dict(op="resise", size=8)]}, "config.evals.test.data.preprocess"),
    ({"data.name": "scenes/default", "data.data_dir": "/nonexistent/tfds"},
     "config.data.name='scenes/default' split 'train': dataset not found in data_dir='/nonexistent/tfds'"),
]


@pytest.mark.parametrize("over,message", VALIDATION_CASES)
def test_validation_messages(tmp_path, over, message):
    cfg = tiny_config(**over)
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        Trainer(cfg, str(tmp_path))
    assert message in str(e.value)


@pytest.mark.parametrize("variant", [{"model.remat_policy": "full"}, {"model.remat_policy": "dots"},
                                     {"model.scan_layers": True}, {"model.dtype": "bfloat16"}])
def test_remat_scan_and_mixed_precision(one_device_run, tmp_path, variant):
    """The option reaches the train step the trainer runs (its trace, its parameters); what each option computes is
    checked against the plain model with the same weights in test_vit_options.py."""
    from test_vit_options import REMAT, eqns

    cfg = tiny_config(**{"mesh.data": 1, "total_steps": 5, **variant})
    t = Trainer(cfg, str(tmp_path), devices=jax.devices()[:1])
    t.run()
    got, ref = losses(str(tmp_path)), losses(one_device_run[0])[:5]
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(t.state["params"]))  # master weights stay float32
    with jax.set_mesh(t.mesh):
        step = list(eqns(jax.make_jaxpr(t.train_step_fn(jit=False))(t.state, t._dummy())))
    names = [e.primitive.name for e in step]
    assert any(n in REMAT for n in names) == ("model.remat_policy" in variant)
    assert ("scan" in names) == ("model.scan_layers" in variant)
    if "model.scan_layers" in variant:
        assert set(t.state["params"]["encoder"]) == {"blocks", "ln_final"}
        assert [e.params["length"] for e in step if e.primitive.name == "scan"][0] == cfg.model.depth
    bf16_dots = [e for e in step if e.primitive.name == "dot_general" and e.invars[0].aval.dtype == jnp.bfloat16]
    assert bool(bf16_dots) == ("model.dtype" in variant)
    if "model.dtype" in variant:
        np.testing.assert_allclose(got, ref, rtol=2e-2)  # bf16 activations: ~3 significant digits
    elif "model.scan_layers" in variant:
        # Scanned blocks draw their initial parameters differently; the start (ln C from the zero head) is equal
        # and the run learns.
        assert got[0] == pytest.approx(ref[0], rel=1e-6) and got[-1] < got[0]
    else:
        np.testing.assert_allclose(got, ref, rtol=1e-5)  # remat recomputes, it does not change the maths


def test_total_steps_zero_evaluates_the_initial_weights_without_train_data(one_device_run, tmp_path, monkeypatch):
    """total_steps=0 with init_from: the evaluation of the copied weights equals the source run's final one, a
    step-0 checkpoint holds exactly those weights, and the train split is never opened."""
    from vlmjax.core import loop, split_runtime
    from vlmjax.core.checkpoint import load_params_numpy

    opened, make_source = [], loop.make_source
    for module in (loop, split_runtime):  # the train split opens in the loop, the eval splits in split_runtime
        monkeypatch.setattr(module, "make_source", lambda data, split, *features: opened.append(split)
                            or make_source(data, split, *features))
    src, src_final = one_device_run
    wd = str(tmp_path / "eval_only")
    cfg = tiny_config(**{"mesh.data": 1, "total_steps": 0, "init_from.workdir": src})
    final = train(cfg, wd, devices=jax.devices()[:1])
    assert opened == ["test"]
    assert final["eval/test/accuracy"] == pytest.approx(src_final["eval/test/accuracy"])
    assert final["eval/test/loss"] == pytest.approx(src_final["eval/test/loss"], rel=1e-6)
    assert [r["step"] for r in read_metrics(wd)] == [0]
    jax.tree.map(np.testing.assert_array_equal, load_params_numpy(wd), load_params_numpy(src))
    again = train(cfg, wd, devices=jax.devices()[:1])  # re-running re-evaluates the checkpoint
    assert again["eval/test/loss"] == pytest.approx(final["eval/test/loss"], rel=1e-6)
    with pytest.raises(ValueError, match=r"config.total_steps=-1: must be >= 0"):
        Trainer(tiny_config(total_steps=-1), str(tmp_path / "neg"), open_data=False)
