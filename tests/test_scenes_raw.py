"""Reading `scenes` through the pipeline: raw uint8 images (no PNG decode), and only the features a run reads."""
import ml_collections
import numpy as np
import pytest

from vlmjax.data import scenes
from vlmjax.data.ops import get_preprocess_fn
from vlmjax.data.pipeline import make_source
from vlmjax.data.sources.scenes import build


def test_raw_config_reads_back_the_rendered_pixels(tmp_path, scenes_tiny_dir):
    assert build(str(tmp_path), "tiny_raw")[0]
    cfg = lambda name, d: ml_collections.ConfigDict(dict(name=name, data_dir=d))  # noqa: E731
    raw, png = make_source(cfg("scenes/tiny_raw", str(tmp_path)), "train"), make_source(
        cfg("scenes/tiny", scenes_tiny_dir), "train")
    assert len(raw) == len(png) == 4096
    decode = get_preprocess_fn([dict(op="decode", key="image")])
    for i in (0, 1, 4095):
        ex = raw[i]
        assert isinstance(ex["image"], np.ndarray) and ex["image"].dtype == np.uint8  # an array, not bytes
        want, objs = scenes.render_scene(scenes.example_seed("train", i), 32)
        np.testing.assert_array_equal(ex["image"], want)
        np.testing.assert_array_equal(decode(ex, None)["image"], decode(png[i], None)["image"])  # PNG's pixels
        assert ex["label"] == png[i]["label"] == scenes.label_of(objs[scenes.main_index(objs)])


def test_read_features_reads_only_those_features_with_the_same_values(scenes_tiny_dir):
    cfg = ml_collections.ConfigDict(dict(name="scenes/tiny", data_dir=scenes_tiny_dir, read_features=[]))
    full = make_source(cfg, "train")
    cfg.read_features = ["image", "label"]
    some = make_source(cfg, "train")
    assert len(some) == len(full)
    for i in (0, 7):
        assert sorted(some[i]) == ["image", "label"] and some[i]["image"] == full[i]["image"]  # PNG bytes
        assert some[i]["label"] == full[i]["label"]
    assert [ex["label"] for ex in some.__getitems__([3, 1])] == [full[3]["label"], full[1]["label"]]
    cfg.read_features = ["image", "labels"]
    with pytest.raises(ValueError, match=r"config.data.read_features=\['image', 'labels'\]: 'scenes/tiny' has no "
                                         r"feature 'labels'"):
        make_source(cfg, "train")
