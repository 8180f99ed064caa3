"""`train/data_wait_frac`: the share of a logging interval the loop spent waiting for its next batch, and the one-line
input-bound warning above 20%. A source that sleeps per record must read as input-bound; the in-memory one as less."""
import time

import jax

import fake_data
from test_core import tiny_config
from vlmjax.data import pipeline
from vlmjax.core.loop import train
from vlmjax.core.metrics import read_metrics

SLEEP_S = 0.01  # per record: 16 records a batch = 0.16 s a batch, against a tiny step of a few ms


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
