"""Training mixtures (`config.data.mixture`): proportions, per-component streams, host shards, drops, resume
with worker processes, the checks before anything compiles, and a trainer run that resumes bit-exactly."""
import json
import os
import shutil

import ml_collections
import numpy as np
import pytest

import fake_data  # noqa: F401  registers the fake:<kind> sources the trainer test reads
from vlmjax.core import config as config_lib
from vlmjax.data.ops import DropExample
from vlmjax.data.pipeline import Component, TrainIterator, check_mixture

A_BAD = 7  # a record of component 'a' that its preprocessing drops


def _source(offset: int, n: int = 40):
    return [{"id": np.int64(offset + i)} for i in range(n)]


def _pre(ex, rng):
    if ex["id"] == A_BAD:
        raise DropExample("bad_record")
    return {"id": ex["id"], "r": rng.random()}


def _ids(it, n):
    return np.concatenate([next(it)["id"] for _ in range(n)])


def _mixture(weights=(1, 3)):
    return [Component("a", _source(0), _pre, weights[0]), Component("b", _source(1000), _pre, weights[1])]


def test_proportions_component_streams_and_host_shards():
    ids = _ids(TrainIterator(_mixture(), batch_size=4, seed=5), 10)
    from_a = ids[ids < 1000]
    # weights 1:3 take one example of 'a' in each 4 before drops: 10 of the first 40, less the dropped one if read
    assert len(from_a) == 10 - int(A_BAD in _ids(TrainIterator([Component("a", _source(0), lambda e, r: e)],
                                                                batch_size=10, seed=5), 1))
    # 'a' reads its records in the order it would read them alone: adding 'b' changes where, not which or when
    alone = _ids(TrainIterator([Component("a", _source(0), _pre)], batch_size=len(from_a), seed=5), 1)
    np.testing.assert_array_equal(from_a, alone)
    # two components never share a shuffle: the same records, seeded by name, come in different orders
    twin = _ids(TrainIterator([Component("a", _source(0), _pre), Component("b", _source(0), _pre)],
                              batch_size=38, seed=5), 2)
    assert not np.array_equal(twin[0::2][:19], twin[1::2][:19])
    # hosts split each component, and over an epoch of each their shares are disjoint
    hosts = [_ids(TrainIterator(_mixture((1, 1)), batch_size=4, seed=5, process_index=p, process_count=2), 9)
             for p in (0, 1)]
    assert not set(hosts[0].tolist()) & set(hosts[1].tolist())
    assert len(set(hosts[0].tolist()) | set(hosts[1].tolist())) == 72  # 40 + 40 records, less a's dropped one


def test_drops_are_counted_per_component_and_resume_with_workers():
    it = TrainIterator(_mixture((1, 1)), batch_size=4, seed=5, worker_count=2)
    head = [next(it) for _ in range(22)]  # past an epoch of 'a' (80 examples of the 1:1 mix) on the two workers
    state = json.loads(json.dumps(it.get_state()))
    tail = [next(it) for _ in range(5)]
    assert set(it.dropped) == {"a/bad_record"}
    assert A_BAD not in np.concatenate([b["id"] for b in head + tail])
    it.close()
    resumed = TrainIterator(_mixture((1, 1)), batch_size=4, seed=5, worker_count=2)
    resumed.set_state(state)
    for got, want in zip([next(resumed) for _ in range(5)], tail):
        np.testing.assert_array_equal(got["id"], want["id"])
        np.testing.assert_array_equal(got["r"], want["r"])
    resumed.close()


def test_check_mixture_names_the_component_and_feature():
    check_mixture(_mixture())
    wider = Component("wide", _source(0), lambda ex, rng: {"id": ex["id"], "r": np.zeros(3)})
    with pytest.raises(ValueError, match=r"config.data.mixture.wide: .* feature 'r' is float64\[3\] there and "
                                         r"float64\[\] in 'a'"):
        check_mixture(_mixture() + [wider])
    other = Component("other", _source(0), lambda ex, rng: {"id": ex["id"]})
    with pytest.raises(ValueError, match=r"mixture.other: .* feature 'r' is missing there"):
        check_mixture(_mixture() + [other])
    with pytest.raises(ValueError, match="a list of Components alone"):
        TrainIterator(_mixture(), _pre, batch_size=4, seed=0)


def _with_mixture(mixture: dict):
    c = ml_collections.ConfigDict({"task": "", "data": {"name": "scenes/default", "preprocess": [{"op": "keep",
                                                                                                   "keys": ["image"]}],
                                                         "mixture": mixture}})
    return c


@pytest.mark.parametrize("mixture, message", [
    ({"a": {"weight": 1.0, "worker_count": 2}}, r"mixture.a.worker_count: set for the whole train stream"),
    ({"a": {"name": "x"}}, r"mixture.a.weight=None: every component needs a weight > 0"),
    ({"a": {"weight": 0.0}}, r"mixture.a.weight=0.0"),
    ({"a": {"weight": 1.0, "splt": "train"}}, r"unknown key config.data.mixture.a.splt \(did you mean 'split'"),
    ({"a": {"weight": 1.0, "preprocess": "decode"}}, r"mixture.a.preprocess='decode': wrong type str"),
    ({"a": 1.0}, r"mixture.a: expected a dict of settings"),
])
def test_bad_mixture_configs_name_the_key(mixture, message):
    with pytest.raises(ValueError, match=message):
        config_lib.resolve(_with_mixture(mixture))


def test_components_inherit_config_data_and_take_overrides():
    cfg = config_lib.resolve(_with_mixture({"cap": {"weight": 1.0, "split": "validation"},
                                            "qa": {"weight": 3.0, "name": "scenes/tiny"}}))
    comps = config_lib.mixture_components(cfg.data)
    assert [(n, w, d.name, d.split) for n, w, d in comps] == [
        ("cap", 1.0, "scenes/default", "validation"), ("qa", 3.0, "scenes/tiny", "train")]
    assert all(d.preprocess == cfg.data.preprocess and not d.mixture for _, _, d in comps)
    assert config_lib.mixture_components(config_lib.resolve(_with_mixture({})).data)[0][0] == ""
    # a key the component left to config.data can still be given it on the command line, parsed as that key
    over = config_lib.apply_overrides(cfg, [("data.mixture.qa.split", "validation"), ("data.mixture.cap.weight", "2")])
    assert over.data.mixture.qa.split == "validation" and over.data.mixture.cap.weight == 2.0
    with pytest.raises(ValueError, match="unknown key config.data.mixture.qa.shuffle"):
        config_lib.apply_overrides(cfg, [("data.mixture.qa.shuffle", "false")])
    # a component added on the command line; without its weight the config does not validate
    added = config_lib.apply_overrides(cfg, [("data.mixture.web.name", "webdataset:/x/{0..9}.tar"),
                                             ("data.mixture.web.weight", "0.5")])
    assert config_lib.mixture_components(config_lib.resolve(added).data)[2][:2] == ("web", 0.5)
    with pytest.raises(ValueError, match=r"mixture.web.weight=None"):
        config_lib.resolve(config_lib.apply_overrides(cfg, [("data.mixture.web.split", "validation")]))


def test_trainer_trains_a_mixture_and_resumes_bit_exact(tmp_path, capsys):
    """fake:clean (train) and fake:bad (its 64-record test split, a corrupt image among them) mixed 1:3, so six
    steps of 16 read all of the second: the drop is counted under its component, and a run
    whose last checkpoint is removed ends where the uninterrupted run ended."""
    import jax

    from test_core import PP, tiny_config
    from vlmjax.core.loop import train

    cfg = tiny_config(**{"mesh.data": 1, "total_steps": 6, "checkpoint.every_steps": 3,
                         "data.mixture": {"clean": {"weight": 1.0},
                                          "bad": {"weight": 3.0, "name": "fake:bad", "split": "test"}}})
    wd = str(tmp_path / "run")
    first = train(cfg, wd, devices=jax.devices()[:1])
    assert first["data/dropped/bad/corrupt_image"] == 1.0
    assert ("train data: a mixture of bad 75.0% (fake:bad test, 64 records), clean 25.0% (fake:clean train, 256 "
            "records)") in capsys.readouterr().out  # components in name order, as the config keeps them
    shutil.rmtree(os.path.join(wd, "checkpoints", "6"))
    again = train(cfg, wd, devices=jax.devices()[:1])
    assert "checkpoints/3 (step 3 done" in capsys.readouterr().out
    for k in ("train/loss", "train/grad_norm", "train/param_norm", "data/dropped/bad/corrupt_image"):
        assert again[k] == first[k], k

    small = [PP[0], dict(op="resize", size=8)] + PP[1:]
    broken = tiny_config(**{"data.mixture": {"clean": {"weight": 1.0}, "small": {"weight": 1.0, "preprocess": small}}})
    with pytest.raises(ValueError, match=r"mixture.small: .* feature 'image' is float32\[8, 8, 3\]"):
        train(broken, str(tmp_path / "broken"), devices=jax.devices()[:1])
    assert not os.path.exists(tmp_path / "broken" / "checkpoints")
    # a component whose dataset is not there: the message says which component, before anything compiles
    from vlmjax.core.loop import Trainer

    missing = tiny_config(**{"data.mixture": {"clean": {"weight": 1.0}, "web": {
        "weight": 1.0, "name": "no_such_dataset", "data_dir": str(tmp_path / "tfds")}}})
    with pytest.raises((ValueError, FileNotFoundError), match=r"^config.data.mixture.web: .*no_such_dataset"):
        Trainer(missing, str(tmp_path / "missing"), devices=jax.devices()[:1])


def test_resume_checks_a_components_keys_as_config_datas(tmp_path):
    """A component's read_features may change on resume, its data_dir with --allow_config_change, its weight,
    preprocess or split never (they change the stream); neither may the set of components."""
    from test_core import tiny_config
    from test_restore_guard import _workdir_with
    from vlmjax.core import restore_check
    from vlmjax.tasks import get_task_class

    defaults = get_task_class("classification").config_defaults()
    mix = {"a": {"weight": 1.0}, "b": {"weight": 3.0, "name": "fake:bad"}}

    def resolved(**over):
        return config_lib.resolve(tiny_config(**{"data.mixture": mix, **over}), defaults)

    wd = _workdir_with(tmp_path, resolved())
    check = lambda cfg, flag=False: restore_check.check_resume_config(  # noqa: E731
        wd, cfg, flag, log=lambda _: None, task_defaults=defaults)
    assert [k for k, _, _ in check(resolved(**{"data.mixture.b.read_features": ["image"]}))] == [
        "data.mixture.b.read_features"]
    with pytest.raises(restore_check.ConfigChangeError, match="Re-run with --allow_config_change"):
        check(resolved(**{"data.mixture.b.data_dir": "/elsewhere"}))
    for over in ({"data.mixture.b.weight": 2.0}, {"data.mixture.a.split": "test"}, {"data.mixture.c": {"weight": 1.0}}):
        with pytest.raises(restore_check.ConfigChangeError, match="cannot continue that run"):
            check(resolved(**over), True)
