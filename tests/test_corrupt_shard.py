"""A corrupt ArrayRecord shard mid-epoch (config.data.on_corrupt_record): 'skip' drops and counts exactly the
unreadable records, 'stop' fails naming the shard file and the record, with and without worker processes, and a
training run stopped by one keeps what it wrote and resumes with 'skip'."""
import glob
import json
import os
import re
import shutil

import ml_collections
import numpy as np
import pytest

from vlmjax.data.batching import CorruptRecordError
from vlmjax.data.pipeline import TrainIterator, make_source

N = 4096  # records in scenes/tiny's train split (one shard)


@pytest.fixture(scope="module")
def corrupt(scenes_tiny_dir, tmp_path_factory):
    """(data_dir, shard path, the unreadable record indices, the labels of all records): scenes/tiny with 64 bytes
    in the middle of its train shard flipped (one zstd chunk's hash no longer matches)."""
    from array_record.python import array_record_data_source

    data_dir = str(tmp_path_factory.mktemp("corrupt"))
    shutil.copytree(os.path.join(scenes_tiny_dir, "scenes"), os.path.join(data_dir, "scenes"))
    (shard,) = glob.glob(os.path.join(data_dir, "scenes/tiny/*/scenes-train.array_record-*"))
    labels = np.array([ex["label"] for ex in _source(data_dir).__getitems__(list(range(N)))])
    data = bytearray(open(shard, "rb").read())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
    open(shard, "wb").write(data)
    raw = array_record_data_source.ArrayRecordDataSource([shard])
    bad = []
    for i in range(N):
        try:
            raw[i]
        except RuntimeError as e:  # what array_record raises for a damaged chunk
            assert "Corrupted Riegeli/records file" in str(e)
            bad.append(i)
    assert bad and N // 4 < bad[0] and bad[-1] < 3 * N // 4, bad  # a few records mid-shard: mid-epoch
    return data_dir, shard, bad, labels


def _source(data_dir):
    return make_source(ml_collections.ConfigDict(dict(name="scenes/tiny", data_dir=data_dir,
                                                      read_features=["label"])), "train")


def _pre(ex, rng):
    return {"label": ex["label"]}


def _divisor(n):
    """A batch size near 64 that divides n: the epoch's kept records end exactly on a batch."""
    return min((b for b in range(16, 257) if n % b == 0), key=lambda b: abs(b - 64))


def test_skip_drops_and_counts_exactly_the_unreadable_records(corrupt):
    data_dir, _, bad, labels = corrupt
    kept = N - len(bad)
    bs = _divisor(kept)
    it = TrainIterator(_source(data_dir), _pre, batch_size=bs, seed=0, shuffle=False, on_corrupt_record="skip")
    got = np.concatenate([next(it)["label"] for _ in range(kept // bs)])  # one epoch, in order
    np.testing.assert_array_equal(got, np.delete(labels, bad))  # every readable record, in order, once
    assert it.drop_metrics() == {"data/dropped/corrupt_record": float(len(bad))}
    assert json.loads(json.dumps(it.get_state()))["dropped"] == {"corrupt_record": len(bad)}  # checkpointed


def _stop_message(shard, bad):
    """The one error: the dataset's record, the shard file and the record in it, array_record's reason, the fix."""
    any_bad = "(" + "|".join(map(str, bad)) + ")"  # one shard: a dataset index is its index in the shard
    return (rf"train data: record {any_bad} of {N} cannot be read \(shard {re.escape(shard)}, record {any_bad} of "
            rf"that shard\): RuntimeError: Corrupted Riegeli.*on_corrupt_record='skip'")


@pytest.mark.parametrize("workers", [0, 2])
def test_stop_names_the_shard_and_record(corrupt, workers):
    data_dir, shard, bad, _ = corrupt
    it = TrainIterator(_source(data_dir), _pre, batch_size=64, seed=0, worker_count=workers)  # 'stop': default
    with pytest.raises(CorruptRecordError, match=_stop_message(shard, bad)):  # from a worker process too
        for _ in range(N // 64 + 2):  # past the end of the first (shuffled) epoch
            next(it)
    it.close()


def test_skip_with_workers(corrupt):
    data_dir, _, bad, _ = corrupt
    it = TrainIterator(_source(data_dir), _pre, batch_size=64, seed=0, shuffle=False, worker_count=2,
                       on_corrupt_record="skip")
    rounds = bad[-1] // 128 + 1  # worker w reads records w, w + 2, ...: each one's 64 kept a batch, past bad[-1]
    batches = [next(it) for _ in range(2 * rounds)]
    assert all(b["label"].shape == (64,) for b in batches)
    assert it.dropped == {"corrupt_record": len(bad)}
    it.close()


def test_training_stops_keeping_its_checkpoints_then_resumes_with_skip(corrupt, tmp_path, capsys):
    from test_core import tiny_config
    from vlmjax.core.loop import train
    from vlmjax.core.metrics import read_metrics

    data_dir, shard, bad, _ = corrupt
    bs = 256  # unshuffled: the first unreadable record is in step bad[0] // bs + 1
    step = bad[0] // bs + 1
    over = {"data.name": "scenes/tiny", "data.data_dir": data_dir, "data.shuffle": False, "num_classes": 24,
            "image_size": 32, "batch_size": bs, "total_steps": step + 1, "checkpoint.every_steps": 4,
            "checkpoint.async_save": True, "log_every_steps": 1, "model.patch_size": (8, 8)}
    wd = str(tmp_path)
    with pytest.raises(CorruptRecordError, match=_stop_message(shard, bad)):
        train(tiny_config(**over), wd)
    saved = sorted(int(d) for d in os.listdir(os.path.join(wd, "checkpoints")) if d.isdigit())
    assert saved[-1] == (step - 1) // 4 * 4  # every checkpoint before the bad step was committed
    assert [r["step"] for r in read_metrics(wd)] == list(range(1, step))  # and every metrics row
    assert not os.path.exists(os.path.join(wd, "checkpoints_corrupt"))

    capsys.readouterr()
    final = train(tiny_config(**over, **{"data.on_corrupt_record": "skip"}), wd)  # a free config change
    assert f"resumed from {os.path.join(wd, 'checkpoints')}/{saved[-1]}" in capsys.readouterr().out
    assert final["data/dropped/corrupt_record"] == len(bad)
