"""`train/data_wait_frac`: the share of a logging interval the loop spent waiting for its next batch, and the one-line
input-bound warning above 20%. A source that sleeps per record must read as input-bound; the in-memory one as less.
Only the part of a fetch after the previous step completed counts (dispatch is asynchronous): `InputWait` against a
simulated device."""
import threading
import time

import jax
import pytest

import fake_data
from test_core import tiny_config
from vlmjax.data import pipeline
from vlmjax.core.input_wait import InputWait
from vlmjax.core.loop import train
from vlmjax.core.metrics import read_metrics

SLEEP_S = 0.03  # per record: 16 records a batch = 0.48 s a batch, against a tiny step of a few ms (long enough
# that a loaded machine, whose step may take 10x longer, still reads > 0.8)


class _SlowRecords:
    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        time.sleep(SLEEP_S)
        return self.records[i]


@pipeline.register_source("slow")
def _slow_source(cfg, split):
    return _SlowRecords(fake_data.make_examples(256 if split == "train" else 64, 0))


def _wait_fracs(workdir, name, capsys):
    cfg = tiny_config(**{"data.name": name, "total_steps": 9, "log_every_steps": 3, "mesh.data": 1,
                         "data.worker_count": 0})
    train(cfg, str(workdir), devices=jax.devices()[:1])
    out = capsys.readouterr().out
    return [r["train/data_wait_frac"] for r in read_metrics(str(workdir)) if "train/data_wait_frac" in r], out


def test_a_slow_source_reads_as_input_bound_and_warns_once(tmp_path, capsys):
    slow, out = _wait_fracs(tmp_path / "slow", "slow:x", capsys)
    # The first interval is partly served by what the reader prefetched while the step compiled; once that buffer
    # is drained the loop waits nearly all the time.
    assert len(slow) == 3 and min(slow[1:]) > 0.8, slow
    assert out.count("warning: input-bound") == 1
    fast, out = _wait_fracs(tmp_path / "fast", "fake:clean", capsys)
    assert max(fast[1:]) < min(slow[1:]), (fast, slow)  # decoding 16 small PNGs still outlasts this tiny step


class _Step:
    """A dispatched step whose outputs become ready when `finish()` is called (the device's completion)."""

    def __init__(self):
        self.event = threading.Event()

    def block_until_ready(self):
        self.event.wait()
        return self

    def finish(self):
        self.event.set()
        time.sleep(0.02)  # let the watcher thread record the completion time


def test_input_wait_charges_only_the_fetch_after_the_previous_step_completed():
    w = InputWait()
    try:
        # Step 1 computes through the whole fetch of batch 2: the device never waited.
        s1 = _Step()
        w.dispatched(1, s1)
        t0 = time.perf_counter()
        time.sleep(0.05)  # reading batch 2
        t1 = time.perf_counter()
        s1.finish()  # the read ended before step 1 did
        w.fetched(2, t0, t1)
        assert w.take() == 0.0
        # Step 2 completes at once; the fetch of batch 3 goes on for 0.2 s after it: charged ~0.2 s, not the 0.25 s
        # that timing next() alone would count.
        s2 = _Step()
        w.dispatched(2, s2)
        t0 = time.perf_counter()
        time.sleep(0.05)
        s2.finish()
        t_done = time.perf_counter()
        time.sleep(0.2)
        t1 = time.perf_counter()
        w.fetched(3, t0, t1)
        waited = w.take()
        assert t1 - t_done - 0.03 <= waited <= t1 - t0 - 0.03, (waited, t1 - t0, t1 - t_done)
        # Device prefetch 2 batches deep: batch 5 is read (while step 3 runs) before step 4 is dispatched; it is
        # charged once step 4 is, against step 4's completion: here it was ready long before, so nothing.
        s3 = _Step()
        w.dispatched(3, s3)
        w.fetched(4, time.perf_counter(), time.perf_counter())
        t0 = time.perf_counter()
        w.fetched(5, t0, t0 + 0.01)
        s3.finish()
        assert w.take() == 0.0
        s4 = _Step()
        w.dispatched(4, s4)
        s4.finish()
        assert w.take() == 0.0
    finally:
        w.close()
    first = InputWait()
    try:  # a fetch with no step launched before it (the run's first) counts whole
        first.fetched(9, 1.0, 1.5)
        assert first.take() == pytest.approx(0.5)
    finally:
        first.close()
