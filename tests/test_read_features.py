"""A tfds source deserialises only the record fields the preprocessing can read (`op_registry.features_read`,
`Task.read_features`), and the examples that come out are the same as when it reads every field."""
import numpy as np

from vlmjax.core import config as config_lib
from vlmjax.data import ops  # noqa: F401  (registers every host op family)
from vlmjax.data.op_registry import OPS, DropExample, features_read, register
from vlmjax.data.pipeline import make_source
from vlmjax.tasks import get_task_class

IMAGE = [dict(op="decode"), dict(op="value_range", vmin=-1, vmax=1)]
NEED_A_RUN = {"prefixlm_vq_scenes"}  # its task opens a trained VQ-VAE's workdir; its preprocess is image + keep


def keep(*keys):
    return dict(op="keep", keys=list(keys))


def test_what_a_spec_list_reads(monkeypatch):
    assert features_read(IMAGE + [keep("image", "label")]) == ["image", "label"]
    assert features_read(IMAGE) is None  # no keep: every field reaches the batch
    assert features_read([dict(op="choice", key=["questions", "answers"], out=["q", "a"]),
                          dict(op="tokenize", max_len=8, key="q"), keep("image", "q", "q_mask")]) == \
        ["answers", "image", "q", "q_mask", "questions"]  # names no record has are left to the source to drop
    assert features_read([dict(op="rename", mapping={"caption": "text"}), keep("image", "text")]) == \
        ["caption", "image", "text"]
    assert features_read([dict(op="chat_qa", max_len=16), keep("tokens")]) == ["answers", "questions", "tokens"]
    assert features_read([keep("image", "captions/text")]) == ["captions/text", "image"]
    assert features_read([keep("image"), dict(op="decode")]) == ["image"]  # after the last keep nothing is read

    @register("_opaque_test_op")
    def opaque():  # declares no `reads`: it may read anything
        return lambda ex, rng: ex

    monkeypatch.setitem(OPS, "_opaque_test_op", opaque)
    assert features_read([dict(op="_opaque_test_op"), keep("image")]) is None
    assert features_read([keep("image", "label"), dict(op="_opaque_test_op")]) == ["image", "label"]


def _runlocal_configs(data_dir, tokenizer):
    """(name, resolved config, [(where, data config)]) of every `:runlocal` experiment that reads `scenes` only."""
    for name in config_lib.experiment_names():
        if name in NEED_A_RUN:
            continue
        try:
            config = config_lib.load_experiment(f"{name}:runlocal")
        except ValueError:  # no runlocal variant
            continue
        task_cls = get_task_class(config.task)
        config = config_lib.resolve(config, getattr(task_cls, "config_defaults", dict)())
        config.data.data_dir, config.tokenizer = data_dir, tokenizer
        config_lib.fill_eval_data(config)
        datas = [(f"data.mixture.{n}" if n else "data", d) for n, _, d in config_lib.mixture_components(config.data)]
        datas += [(f"evals.{k}.data", ev.data) for k, ev in config.evals.items()]
        if all(str(d.name).startswith("scenes/") for _, d in datas):
            yield name, config, datas


def _run(pre, record, seed):
    """The preprocessed example, or {'dropped': reason}."""
    try:
        return pre(record, np.random.default_rng(seed))
    except DropExample as e:
        return {"dropped": e.reason}


def _assert_same(got, want, where):
    assert sorted(got) == sorted(want), where
    for k in want:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=f"{where}: {k}")


def test_every_scenes_experiment_gets_the_same_examples(scenes_tiny_dir, scenes_tiny_tokenizer):
    """Every `:runlocal` experiment on `scenes`, its training and every evaluation data config: the task's
    preprocessing of records read with only the inferred fields equals that of records read whole."""
    narrowed = {}
    for name, config, datas in _runlocal_configs(scenes_tiny_dir, scenes_tiny_tokenizer):
        task = get_task_class(config.task)(config)
        for where, d in datas:
            features = task.read_features(d)
            whole, some = make_source(d, d.split), make_source(d, d.split, features)
            if features is not None:
                assert sorted(some[0]) == sorted(k for k in features if k in whole[0]), f"{name} {where}"
                narrowed[f"{name} {where}"] = len(some[0]) < len(whole[0])
            pre = task.preprocess_fn(d, train=where == "data")
            for i in range(6):
                _assert_same(_run(pre, some[i], i), _run(pre, whole[i], i), f"{name} {where} record {i}")
    assert narrowed["vit_scenes data"] and narrowed["siglip_scenes data"], narrowed
    assert sum(narrowed.values()) >= 10, narrowed
