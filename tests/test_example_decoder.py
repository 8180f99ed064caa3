"""The direct tfds record decoder gives tfds' own output, value for value and type for type, or declines."""
import io

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from vlmjax.data.pipeline import make_source
from vlmjax.data.sources.example_decoder import compile_decoder

F = tfds.features


def assert_identical(got, want, where="record"):
    """Equal values of the same Python/NumPy types (dtype, shape, writeability), recursively."""
    assert type(got) is type(want), f"{where}: {type(got)} != {type(want)}"
    if isinstance(want, dict):
        assert sorted(got) == sorted(want), where
        for k in want:
            assert_identical(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_identical(g, w, f"{where}[{i}]")
    elif isinstance(want, np.ndarray):
        assert (got.dtype, got.shape, got.flags.writeable) == (want.dtype, want.shape, want.flags.writeable), where
        np.testing.assert_array_equal(got, want, err_msg=where)
    elif isinstance(want, np.generic):
        assert got.dtype == want.dtype and got == want, where
    else:
        assert got == want, where


def _png(rng) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


COVERED = F.FeaturesDict({
    "image": F.Image(shape=(None, None, 3)),
    "raw": F.Tensor(shape=(4, 5, 3), dtype=np.uint8),
    "zlib": F.Tensor(shape=(3, 2), dtype=np.float32, encoding="zlib"),
    "bytes": F.Tensor(shape=(6,), dtype=np.int16, encoding="bytes"),
    "vector": F.Tensor(shape=(5,), dtype=np.int32),
    "count": np.int32,
    "score": np.float32,
    "label": F.ClassLabel(num_classes=7),
    "text": F.Text(),
    "captions": F.Sequence(F.Text()),
    "labels": F.Sequence(F.ClassLabel(num_classes=7)),
    "xs": F.Sequence(np.float32),
    "objects": F.Sequence({"x": np.float32, "color": F.ClassLabel(num_classes=3), "name": F.Text()}),
})


def _example(rng, n: int) -> dict:
    return {"image": _png(rng), "raw": rng.integers(0, 256, (4, 5, 3), dtype=np.uint8),
            "zlib": rng.normal(size=(3, 2)).astype(np.float32), "bytes": rng.integers(-99, 99, 6).astype(np.int16),
            "vector": rng.integers(-5, 5, 5).astype(np.int32), "count": int(rng.integers(0, 9)),
            "score": float(rng.normal()), "label": int(rng.integers(0, 7)), "text": f"caption {n}",
            "captions": [f"c{i}" for i in range(n)], "labels": list(rng.integers(0, 7, n)),
            "xs": list(rng.normal(size=n).astype(np.float32)),
            "objects": {"x": list(rng.normal(size=n).astype(np.float32)), "color": list(rng.integers(0, 3, n)),
                        "name": [f"o{i}" for i in range(n)]}}


@pytest.mark.parametrize("n", [0, 1, 3])  # empty, single and longer sequences
def test_every_covered_type_decodes_as_tfds_does(n):
    rng = np.random.default_rng(n)
    record = COVERED.serialize_example(_example(rng, n))
    skip = {"image": tfds.decode.SkipDecoding()}
    fast = compile_decoder(COVERED, skip_decoding={"image"})
    assert fast is not None
    assert_identical(fast(record), COVERED.deserialize_example_np(record, decoders=skip))


@pytest.mark.parametrize("features,skip", [
    ({"image": F.Image(shape=(None, None, 3))}, ()),  # decoding an image stays tfds' (PIL / OpenCV)
    ({"objects": F.Sequence({"box": F.Tensor(shape=(4,), dtype=np.float32)})}, ()),  # dicts of non-scalars
    ({"pair": F.Sequence(np.int32, length=2)}, ()),  # a fixed-length sequence
    ({"opt": F.Tensor(shape=(2,), dtype=np.int32, optional=True)}, ()),
    ({"big": F.Tensor(shape=(2,), dtype=np.uint64)}, ()),  # stored bit-cast in int64
    ({"ragged": F.Tensor(shape=(None, None), dtype=np.int32)}, ()),
    ({"label": F.ClassLabel(num_classes=3)}, ("label",)),  # a decoder other than the image's
])
def test_other_types_are_left_to_tfds(features, skip):
    assert compile_decoder(F.FeaturesDict(features), skip_decoding=set(skip)) is None


def test_a_record_missing_a_feature_names_it():
    record = F.FeaturesDict({"count": np.int32}).serialize_example({"count": 3})
    with pytest.raises(KeyError, match="label is not in"):
        compile_decoder(F.FeaturesDict({"count": np.int32, "label": np.int32}))(record)


def test_scenes_sources_use_it_with_tfds_values(scenes_tiny_dir):
    """Every feature of `scenes`, read by the direct decoder (all of them, and some through
    `config.data.read_features`), against tfds' own deserialisation of the same records."""
    from vlmjax.data.sources.tfds import builder

    cfg = ml_collections.ConfigDict(dict(name="scenes/tiny", data_dir=scenes_tiny_dir, read_features=[]))
    ds = builder(cfg.name, scenes_tiny_dir)
    tfds_source = ds.as_data_source(split="validation", decoders={"image": tfds.decode.SkipDecoding()})
    full = make_source(cfg, "validation")
    assert full._fast is not None
    indices = [0, 5, len(full) - 1]
    for wanted in ([], ["image", "objects"], ["label", "captions"]):
        cfg.read_features = wanted
        for got, i in zip(make_source(cfg, "validation").__getitems__(indices), indices):
            want = tfds_source[i]
            assert_identical(got, {k: want[k] for k in wanted or want}, f"record {i}")
