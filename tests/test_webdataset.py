"""webdataset tar-shard source (img2dataset layout) and the ALIGN noisy-pair filters, on shards the test writes."""
import io
import pickle
import tarfile

import ml_collections
import numpy as np
import pytest
from PIL import Image

from vlmjax.data import filters, ops, pipeline
from vlmjax.data.ops import DropExample
from vlmjax.data.sources import webdataset


def _jpeg(w, h, seed):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=50)
    return buf.getvalue()


def write_shard(path, samples):
    """samples: list of (key, {ext: bytes or str}) written in order, as img2dataset does."""
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for ext, data in files.items():
                data = data.encode() if isinstance(data, str) else data
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _simple(start, n, size=(32, 24)):
    return [(f"{i:05d}", {"jpg": _jpeg(*size, i), "txt": f"caption number {i}", "json": f'{{"key": "{i:05d}"}}'})
            for i in range(start, start + n)]


def test_random_access_glob_comma_brace_and_split(tmp_path):
    write_shard(tmp_path / "00000.tar", _simple(0, 5))
    write_shard(tmp_path / "00001.tar", _simple(5, 4, size=(20, 30)))
    shards = webdataset.expand_shards(str(tmp_path / "*.tar"))
    assert shards == webdataset.expand_shards(f"{tmp_path}/0000{{0..1}}.tar")
    assert shards == webdataset.expand_shards(f"{tmp_path}/00000.tar, {tmp_path}/00001.tar")

    assert "webdataset" in pipeline._SOURCES  # registered on import
    data_cfg = ml_collections.ConfigDict(dict(name=f"webdataset:{tmp_path}/*.tar", data_dir=""))
    src = pipeline.make_source(data_cfg, "train")
    assert len(src) == 9
    for i in [7, 0, 4, 8, 5]:  # out of order, across shards
        ex = src[i]
        assert ex["key"] == f"{i:05d}" and ex["caption"] == f"caption number {i}"
        assert ex["json"] == f'{{"key": "{i:05d}"}}' and ex["caption_count"] == 1
        assert (ex["width"], ex["height"]) == ((32, 24) if i < 5 else (20, 30))
        assert ex["image"] == _jpeg(*((32, 24) if i < 5 else (20, 30)), i)  # the exact member bytes
    tail = pipeline.make_source(data_cfg, "train[-3:]")
    assert [tail[j]["key"] for j in range(len(tail))] == ["00006", "00007", "00008"]
    clone = pickle.loads(pickle.dumps(src))  # grain worker processes get a pickled copy
    assert clone[6]["caption"] == "caption number 6"


def test_samples_without_image_skipped_missing_caption_empty(tmp_path):
    write_shard(tmp_path / "a.tar", [("x/001", {"jpg": _jpeg(8, 8, 0)}), ("x/002", {"txt": "orphan caption"}),
                                     ("x/003", {"png": _jpeg(8, 8, 1), "txt": " padded  "})])
    src = webdataset.WebDatasetSource([str(tmp_path / "a.tar")])
    assert len(src) == 2
    assert src[0]["caption"] == "" and src[0]["json"] == "" and src[0]["key"] == "x/001"
    assert src[1]["caption"] == "padded"
    with pytest.raises(DropExample, match="empty_caption"):  # the tokenize op drops it, counted like any other
        ops.get_preprocess_fn([{"op": "tokenize", "max_len": 4, "key": "caption"}], tokenizer=object())(
            src[0], np.random.default_rng(0))


def test_unreadable_and_truncated_shards_name_the_file(tmp_path):
    bad = tmp_path / "broken.tar"
    bad.write_bytes(b"this is not a tar archive" * 100)
    with pytest.raises(ValueError, match=r"cannot read shard .*broken\.tar"):
        webdataset.WebDatasetSource([str(bad)])
    whole = tmp_path / "whole.tar"
    write_shard(whole, _simple(0, 3, size=(64, 64)))
    data = whole.read_bytes()
    first = webdataset.index_shard(str(whole))["samples"][0][2]  # [offset, size] of the first image
    member_end = -(-(first[0] + first[1]) // 512) * 512
    for cut in [len(data) // 2, member_end]:  # inside a member; exactly between two members
        (tmp_path / "cut.tar").write_bytes(data[:cut])
        with pytest.raises(ValueError, match=r"cannot read shard .*cut\.tar.*truncated"):
            webdataset.WebDatasetSource([str(tmp_path / "cut.tar")])
    with pytest.raises(FileNotFoundError, match="no shard matches"):
        webdataset.expand_shards(str(tmp_path / "nothing-*.tar"))


def test_index_cached_on_disk(tmp_path, monkeypatch):
    write_shard(tmp_path / "s.tar", _simple(0, 3))
    cache = tmp_path / "idx"
    webdataset._MEMORY_INDEX.clear()
    first = webdataset.WebDatasetSource([str(tmp_path / "s.tar")], cache_dir=str(cache))
    assert len(list(cache.iterdir())) == 1
    webdataset._MEMORY_INDEX.clear()
    monkeypatch.setattr(webdataset, "index_shard", lambda p: pytest.fail("re-scanned despite the disk index"))
    second = webdataset.WebDatasetSource([str(tmp_path / "s.tar")], cache_dir=str(cache))
    assert second[2] == first[2]


def _run(op, ex):
    return op(dict(ex), np.random.default_rng(0))


def test_filter_ops_each_reason_and_boundaries():
    # ALIGN (Jia et al. 2021, section 3): "keep only images whose shorter dimension is larger than 200 pixels and
    # aspect ratio is smaller than 3": 200 px and a ratio of exactly 3 are dropped.
    size = ops.OPS["filter_image_size"]()
    for w, h in [(201, 201), (201, 602), (602, 201), (1000, 400)]:
        ok = {"image": b"", "width": w, "height": h}
        assert _run(size, ok) == ok
    for (w, h), reason in [((200, 400), "small_image"), ((400, 200), "small_image"), ((200, 200), "small_image"),
                           ((201, 603), "aspect_ratio"), ((603, 201), "aspect_ratio"), ((300, 900), "aspect_ratio")]:
        with pytest.raises(DropExample, match=reason):
            _run(size, {"image": b"", "width": w, "height": h})
    # No size fields: the encoded header, or a decoded array's shape.
    with pytest.raises(DropExample, match="small_image"):
        _run(size, {"image": _jpeg(120, 300, 0)})
    assert _run(size, {"image": np.zeros((210, 400, 3), np.uint8)})["image"].shape == (210, 400, 3)
    with pytest.raises(DropExample, match="corrupt_image"):
        _run(size, {"image": b"not an image"})

    words = ops.OPS["filter_caption_words"]()
    assert _run(words, {"caption": "a red circle"})
    assert _run(words, {"caption": " ".join(["w"] * 20)})
    with pytest.raises(DropExample, match="short_caption"):
        _run(words, {"caption": "red  circle "})
    with pytest.raises(DropExample, match="long_caption"):
        _run(words, {"caption": " ".join(["w"] * 21)})

    freq = ops.OPS["filter_frequent_caption"]()
    assert _run(freq, {"caption_count": 10})
    with pytest.raises(DropExample, match="frequent_caption"):
        _run(freq, {"caption_count": 11})
    with pytest.raises(ValueError, match="no 'caption_count'.*CaptionCounts"):
        _run(freq, {"caption": "x"})
    with pytest.raises(ValueError, match=r"preprocess\[0\] \('filter_image_size'\).*min_side"):
        ops.validate_specs([{"op": "filter_image_size", "min_side": -1}])
    with pytest.raises(ValueError, match="unknown argument 'max_images'"):
        ops.validate_specs([{"op": "filter_frequent_caption", "max_images": 3}])


def test_caption_counts_wrapper_for_other_sources():
    src = [{"caption": c} for c in ["A dog", "a  DOG", "a cat", "a dog "]]
    wrapped = filters.CaptionCounts(src)
    assert [wrapped[i]["caption_count"] for i in range(4)] == [3, 3, 1, 3]


def test_align_filters_counts_reach_train_metrics(tmp_path):
    """Every ALIGN filter fires on the samples built to trip it, and TrainIterator reports each count."""
    good = lambda i: f"photo of object {i} on a table"  # noqa: E731
    shard_a, shard_b = [], []
    expected = {"small_image": 0, "aspect_ratio": 0, "short_caption": 0, "long_caption": 0, "frequent_caption": 0}

    def add(shard, i, size, caption, reason=None):
        shard.append((f"{i:05d}", {"jpg": _jpeg(*size, i), "txt": caption}))
        if reason:
            expected[reason] += 1

    add(shard_a, 0, (240, 210), good(0))
    add(shard_a, 1, (150, 300), good(1), "small_image")
    add(shard_a, 2, (640, 210), good(2), "aspect_ratio")
    add(shard_a, 3, (603, 201), good(3), "aspect_ratio")  # exactly 3: not smaller than 3
    add(shard_a, 6, (200, 300), good(6), "small_image")  # exactly 200: not larger than 200
    add(shard_a, 7, (602, 201), good(7))  # kept
    add(shard_a, 4, (220, 220), "sunset", "short_caption")
    add(shard_a, 5, (220, 220), " ".join(["word"] * 21), "long_caption")
    for j in range(11):  # 11 images share one alt-text (case/spacing varies): all dropped
        add(shard_a if j < 6 else shard_b, 10 + j, (210, 210),
            "Click To ENLARGE  image" if j % 2 else "click to enlarge image", "frequent_caption")
    for j in range(10):  # exactly 10 share this one: kept
        add(shard_b, 30 + j, (210, 210), "stock photo of a beach")
    add(shard_b, 50, (210, 230), good(50))  # last sample valid, so one epoch's drops are all counted
    write_shard(tmp_path / "a.tar", shard_a)
    write_shard(tmp_path / "b.tar", shard_b)
    kept = 3 + 10 + 1

    cfg = ml_collections.ConfigDict(dict(name=f"webdataset:{tmp_path}/a.tar,{tmp_path}/b.tar",
                                         data_dir=str(tmp_path / "cache")))
    src = pipeline.make_source(cfg, "train")
    assert len(src) == 8 + 11 + 10 + 1
    specs = [{"op": "align_filters"}, {"op": "decode"}, {"op": "resize", "size": 16},
             {"op": "keep", "keys": ["image", "caption"]}]
    ops.validate_specs(specs)
    it = pipeline.TrainIterator(src, ops.get_preprocess_fn(specs), batch_size=kept, seed=0, shuffle=False)
    batch = next(it)
    assert batch["image"].shape == (kept, 16, 16, 3)
    assert not any("enlarge" in str(c).lower() for c in batch["caption"])
    assert it.drop_metrics() == {f"data/dropped/{k}": float(v) for k, v in sorted(expected.items())}
    assert all(v > 0 for v in expected.values())
    # The counters travel with the iterator state (saved in checkpoints).
    it2 = pipeline.TrainIterator(src, ops.get_preprocess_fn(specs), batch_size=kept, seed=0, shuffle=False)
    it2.set_state(it.get_state())
    assert it2.drop_metrics() == it.drop_metrics()
