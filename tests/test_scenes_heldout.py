"""`scenes` held-out compositions: the held-out colour-shape classes never reach the train split (objects, text,
multi-hot labels) and are all there in test; `multi_labels` is the multi-hot of the objects in every split."""
import re

import numpy as np
import pytest

from vlmjax.data import scenes as S
from vlmjax.data.sources.scenes import Scenes, ScenesConfig, build

HELDOUT_IDS = [S.CLASS_NAMES.index(c) for c in S.HELDOUT_CLASSES]


@pytest.fixture(scope="module")
def heldout_dir(tmp_path_factory):
    """A small `heldout` build (the registered configs are larger: this one takes seconds)."""
    data_dir = str(tmp_path_factory.mktemp("scenes_heldout"))
    config = ScenesConfig(name="heldout_small", image_size=32, num_train=400, num_validation=40, num_test=400,
                          heldout=S.HELDOUT_CLASSES)
    assert build(data_dir, config)[0]
    return data_dir, config


def _records(data_dir, config, split):
    src = Scenes(data_dir=data_dir, config=config).as_data_source(split=split)
    return [src[i] for i in range(len(src))]


def _texts(ex):
    return [t.decode() for k in ("captions", "questions", "answers") for t in ex[k]]


def _classes(ex):
    return {f"{S.COLORS[c]} {S.SHAPES[s]}" for c, s in zip(ex["objects"]["color"], ex["objects"]["shape"])}


def test_heldout_classes_are_spread_over_colours_and_shapes():
    colours, shapes = zip(*(c.split() for c in S.HELDOUT_CLASSES))
    assert len(S.HELDOUT_CLASSES) == 4 and len(set(colours)) == 4 and set(shapes) == set(S.SHAPES)
    assert all(c in S.CLASS_NAMES for c in S.HELDOUT_CLASSES)


def test_train_split_never_shows_or_names_a_heldout_class(heldout_dir):
    data_dir, config = heldout_dir
    train = _records(data_dir, config, "train")
    assert len(train) == 400
    names = re.compile(r"\b(?:" + "|".join(S.HELDOUT_CLASSES) + r")\b")
    retried = 0
    for i, ex in enumerate(train):
        assert not _classes(ex) & set(S.HELDOUT_CLASSES)
        assert not ex["multi_labels"][HELDOUT_IDS].any() and ex["label"] not in HELDOUT_IDS
        assert not [t for t in _texts(ex) if names.search(t)]
        seed = S.record_seed("train", i, 32, S.HELDOUT_CLASSES)
        retried += seed != S.example_seed("train", i)
        if i % 50 == 0:  # re-renderable from its seed
            assert [c.decode() for c in ex["captions"]] == S.make_example(seed, 32)["captions"]
    assert 50 < retried < 250  # about 3 in 10 first draws hold one of the 4 classes


def test_test_split_keeps_every_composition_and_the_heldout_singles_are_selectable(heldout_dir):
    data_dir, config = heldout_dir
    test = _records(data_dir, config, "test")
    for i in (0, 7, 399):  # the test split is the unrestricted generator's
        assert [c.decode() for c in test[i]["captions"]] == S.make_example(S.example_seed("test", i), 32)["captions"]
    present = set().union(*(_classes(ex) for ex in test))
    assert set(S.HELDOUT_CLASSES) <= present
    singles = [ex for ex in test if ex["num_objects"] == 1 and ex["label"] in HELDOUT_IDS]
    assert len(singles) >= 4  # ~1/3 of scenes hold one object, 1/6 of those a held-out class
    for ex in singles:
        assert _classes(ex) == {S.CLASS_NAMES[ex["label"]]}
    info = Scenes(data_dir=data_dir, config=config).info
    assert info.metadata["heldout_classes"] == list(S.HELDOUT_CLASSES)


@pytest.mark.parametrize("split", ["train", "test"])
def test_multi_labels_is_the_multi_hot_of_the_objects(heldout_dir, split):
    data_dir, config = heldout_dir
    for ex in _records(data_dir, config, split)[:100]:
        want = np.zeros(len(S.CLASS_NAMES), np.int32)
        want[[S.CLASS_NAMES.index(c) for c in _classes(ex)]] = 1
        np.testing.assert_array_equal(ex["multi_labels"], want)
        assert ex["multi_labels"].sum() == ex["num_objects"] and ex["multi_labels"][ex["label"]] == 1


def test_registered_heldout_configs_name_the_heldout_classes():
    for name in ("heldout", "tiny_heldout"):
        assert Scenes(config=name).builder_config.heldout == S.HELDOUT_CLASSES
    assert Scenes(config="default").builder_config.heldout == ()
    with pytest.raises(ValueError, match="heldout classes \\['pink blob'\\]"):
        Scenes(config=ScenesConfig(name="bad", heldout=("pink blob",)))
