"""docs/data.md's routes for a user's own data: a tfds TFRecord dataset converted to ArrayRecord, and a folder of
images + captions packed into webdataset tars."""
import glob
import io
import json
import os
import shutil
import subprocess

import ml_collections
import numpy as np
import pytest
from PIL import Image

from vlmjax.data import to_array_record
from vlmjax.data.pipeline import make_source


def _to_tfrecord(version_dir):
    """Rewrites a tfds ArrayRecord dataset as the TFRecord dataset tfds would have written (TensorFlow's writer)."""
    import tensorflow as tf
    from array_record.python.array_record_module import ArrayRecordReader

    for shard in glob.glob(os.path.join(version_dir, "*.array_record-*")):
        reader = ArrayRecordReader(shard)
        records = reader.read_all()
        reader.close()
        with tf.io.TFRecordWriter(shard.replace(".array_record-", ".tfrecord-")) as w:
            for r in records:
                w.write(r)
        os.remove(shard)
    info_path = os.path.join(version_dir, "dataset_info.json")
    with open(info_path) as f:
        info = json.load(f)
    info["fileFormat"] = "tfrecord"
    with open(info_path, "w") as f:
        json.dump(info, f)


def test_tfrecord_dataset_named_then_converted(scenes_tiny_dir, tmp_path):
    data_dir = tmp_path / "tfds"
    shutil.copytree(os.path.join(scenes_tiny_dir, "scenes"), data_dir / "scenes")
    (version_dir,) = glob.glob(str(data_dir / "scenes/tiny/*"))
    _to_tfrecord(version_dir)
    cfg = ml_collections.ConfigDict(dict(name="scenes/tiny", data_dir=str(data_dir)))
    with pytest.raises(FileNotFoundError) as e:
        make_source(cfg, "test")
    assert f"`python -m vlmjax.data.to_array_record --dataset_dir {version_dir}`" in str(e.value)

    to_array_record.main(["--dataset_dir", version_dir, "--delete_tfrecord"])
    assert not glob.glob(os.path.join(version_dir, "*.tfrecord-*"))
    got = make_source(cfg, "test")
    want = make_source(ml_collections.ConfigDict(dict(name="scenes/tiny", data_dir=scenes_tiny_dir)), "test")
    assert len(got) == len(want) == 512
    for i in (0, 1, 255, 511):
        assert got[i]["image"] == want[i]["image"] and got[i]["label"] == want[i]["label"]


def test_corrupt_tfrecord_named(tmp_path):
    (tmp_path / "dataset_info.json").write_text("{}")
    shard = tmp_path / "x-train.tfrecord-00000-of-00001"
    shard.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00" + b"\x00" * 4 + b"hello" + b"\x00" * 4)
    with pytest.raises(ValueError, match="x-train.tfrecord-00000-of-00001: corrupt record length"):
        to_array_record.convert(str(tmp_path))


def test_image_folder_with_captions_as_webdataset(tmp_path):
    # The layout docs/data.md starts from: photos/<name>.jpg with its caption in photos/<name>.txt.
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)).save(buf, format="JPEG")
        (folder / f"img{i}.jpg").write_bytes(buf.getvalue())
        (folder / f"img{i}.txt").write_text(f"a photo number {i}\n")
    (tmp_path / "shards").mkdir()
    # docs/data.md's command, verbatim but for the paths.
    subprocess.run(f"cd {folder} && ls | sort | split -l 4 - {tmp_path}/list_ && n=0 && for l in {tmp_path}/list_*; "
                   f"do tar cf {tmp_path}/shards/$(printf %05d $n).tar -T $l; n=$((n+1)); done",
                   shell=True, check=True)
    assert sorted(os.listdir(tmp_path / "shards")) == ["00000.tar", "00001.tar", "00002.tar"]
    source = make_source(ml_collections.ConfigDict(dict(name=f"webdataset:{tmp_path}/shards/*.tar", data_dir="")),
                         "train")
    seen = {}
    for i in range(len(source)):
        ex = source[i]
        seen[ex["key"]] = (ex["caption"], ex["height"])
    assert seen == {f"img{i}": (f"a photo number {i}", 20 + i) for i in range(5)}
