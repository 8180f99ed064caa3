"""`scenes/tiny_raw`: images stored as raw uint8 arrays read back through the train pipeline with no PNG decode."""
import ml_collections
import numpy as np

from vlmjax.data import scenes
from vlmjax.data.ops import get_preprocess_fn
from vlmjax.data.pipeline import make_source


def test_raw_config_reads_back_the_rendered_pixels(tmp_path, scenes_tiny_dir):
    assert scenes.build(str(tmp_path), "tiny_raw")[0]
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
