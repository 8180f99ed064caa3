"""docs/data.md's routes for a user's own data: a tfds TFRecord dataset converted to ArrayRecord, and a folder of
images + captions packed into webdataset tars."""
import glob
import io
import json
import os
import re
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from vlmjax.data import to_array_record
from vlmjax.data.pipeline import make_source

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def _doc_block(marker):
    """The shell block of docs/data.md whose first line is `marker`."""
    text = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "data.md")).read()
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        if block.startswith(marker):
            return block
    raise AssertionError(f"docs/data.md has no ```sh block starting with {marker!r}")


def test_docs_folder_to_siglip_run(tmp_path, monkeypatch):
    """docs/data.md's commands, as written: pack a folder of images + captions, train a tokenizer on the captions,
    then experiments/siglip_webdataset.py:runlocal on the shards (in-process; same config as the command line)."""
    import jax

    from vlmjax.core.config import load_with_overrides
    from vlmjax.core.loop import Trainer

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    for i in range(40):
        name = list(colours)[i % 2]
        img = rng.integers(0, 40, (24 + i % 5, 40, 3), dtype=np.uint8)
        img[6:18, 10:30] = colours[name]
        Image.fromarray(img).save(photos / f"p{i:03d}.png")
        (photos / f"p{i:03d}.txt").write_text(f"a {name} box on a dark background")
    block = _doc_block("# images + captions -> shards")
    bin_dir = os.path.dirname(sys.executable)
    out = subprocess.run(["bash", "-c", "set -e\n" + block], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"]}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "shards")) == ["00000.tar"]
    assert (tmp_path / "my_spm.model").exists()

    monkeypatch.chdir(tmp_path)  # the command's relative paths: shards/*.tar, my_spm.model
    config = load_with_overrides(os.path.join(ROOT, "experiments/siglip_webdataset.py:runlocal"), [
        ("data.name", "webdataset:shards/*.tar"), ("tokenizer", "my_spm.model"), ("total_steps", "4"),
        ("checkpoint.async_save", "false")])
    trainer = Trainer(config, str(tmp_path / "run"), devices=jax.devices()[:1])
    final = trainer.run()
    assert np.isfinite(final["train/loss"]) and 0 <= final["eval/retrieval/img2txt_r@1"] <= 1
    # The retrieval evaluator reads webdataset's one caption per image as one caption (not its characters).
    data = trainer.evaluators["retrieval"].data
    example = make_source(data, data.split)[0]
    ex = trainer.evaluators["retrieval"].example_fn(trainer.task.preprocess_fn(data, train=False)(example,
                                                                                   np.random.default_rng(0)))
    tok = trainer.task.tokenizer()
    ids = tok.encode(example["caption"]) + [tok.eos_id]
    np.testing.assert_array_equal(ex["captions"][0, :len(ids)], ids)
    assert ex["captions_valid"].tolist() == [True]
