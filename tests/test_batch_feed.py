"""Device prefetch (`config.data.device_prefetch`): batches read ahead of their step change nothing the run computes,
and a checkpoint holds the input position of the step it saves, not of the batches already read ahead."""
import os
import shutil

import jax
import numpy as np
import pytest

from test_core import losses, tiny_config
from vlmjax.core import restore_check
from vlmjax.core.batch_feed import BatchFeed, device_prefetch
from vlmjax.core.loop import Trainer, train

RUN = {"schedule.name": "constant", "schedule.warmup_steps": 0, "evals": {}, "mesh.data": 1,
       "checkpoint.every_steps": 3, "total_steps": 6}


class _Iter:
    """Yields 0, 1, 2, ...; its state is the count read so far."""

    def __init__(self):
        self.n = 0

    def __next__(self):
        self.n += 1
        return self.n - 1

    def get_state(self):
        return self.n


class _Wait:
    def __init__(self):
        self.steps = []

    def fetched(self, step, t0, t1):
        self.steps.append(step)


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_each_step_gets_its_batch_and_the_state_after_it(depth):
    it, wait = _Iter(), _Wait()
    feed = BatchFeed(it, lambda b: ("on device", b), lambda b, where: None, wait, depth, last_step=5)
    for step in range(1, 6):
        batch, state = feed.take(step)
        assert batch == ("on device", step - 1) and state == step  # the position right after this step's batch
        feed.fill(step)
        assert it.n == min(step + depth, 5)  # read ahead, never past the last step
    assert wait.steps == [1, 2, 3, 4, 5]  # each read charged to the step whose batch it is


def test_an_error_ahead_is_raised_at_its_own_step():
    it = _Iter()

    def check(batch, where):
        if batch == 3:
            raise ValueError(f"bad {where}")

    feed = BatchFeed(it, lambda b: b, check, _Wait(), 2, last_step=10)
    for step in (1, 2, 3):
        assert feed.take(step)[0] == step - 1
        feed.fill(step)  # reads batch 3 (the bad one) while step 2 runs: nothing raised yet
    with pytest.raises(ValueError, match="bad train batch at step 4"):
        feed.take(4)


def test_auto_depth():
    assert device_prefetch(-1, "cpu") == 0 and device_prefetch(-1, "gpu") == 1 and device_prefetch(-1, "tpu") == 1
    assert device_prefetch(2, "cpu") == 2


def test_bad_depth_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"config.data.device_prefetch=-2"):
        train(tiny_config(**RUN, **{"data.device_prefetch": -2}), str(tmp_path), devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("plain"))
    train(tiny_config(**RUN, **{"data.device_prefetch": 0}), wd, devices=jax.devices()[:1])
    return wd


def test_prefetch_changes_nothing_and_resumes_at_the_consumed_batch(plain_run, tmp_path):
    """Depth 2: the same losses bitwise as depth 0. Then the run loses its last checkpoint (as if killed after
    step 3's, its pipeline then 2 batches ahead) and resumes with depth 0: it must end bitwise like the
    uninterrupted run; a checkpoint that saved the read-ahead position would skip 2 batches."""
    ahead = str(tmp_path / "ahead")
    train(tiny_config(**RUN, **{"data.device_prefetch": 2}), ahead, devices=jax.devices()[:1])
    want = losses(plain_run)
    assert len(want) == 6 and len(set(want)) == 6
    np.testing.assert_array_equal(losses(ahead), want)

    shutil.rmtree(os.path.join(ahead, "checkpoints", "6"))
    assert restore_check.checkpoint_steps(ahead)[-1] == 3
    out = Trainer(tiny_config(**RUN, **{"data.device_prefetch": 0}), ahead, devices=jax.devices()[:1])
    out.run()
    np.testing.assert_array_equal(losses(ahead), want)  # steps 4-6 logged again, from the restored position
