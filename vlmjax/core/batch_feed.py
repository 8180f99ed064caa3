"""Train batches placed on the mesh ahead of the step that consumes them (`config.data.device_prefetch`).

The loop dispatches step s and, while it runs, reads and transfers the batches of steps s+1 .. s+depth, so the host
to device copy never sits between two steps, and a step that the loop waits on (a log step's metrics, an evaluation,
a checkpoint) is followed at once by the next one instead of by a batch read. With depth 0 the batch of step s is
read just before s is dispatched (while s-1 runs: dispatch is asynchronous).

The input pipeline is then `depth` batches ahead of the training. A checkpoint at step s must hold the pipeline's
state after the batch of step s, not after the ones already read for later steps (a resume would skip them), so
every batch carries the state recorded when it was read. The drop counters logged at step s may include the drops
of the prefetched batches; those in the checkpoint do not. An error reading a batch ahead (a bad record, a failed
check) is raised when its step takes it, so the steps before it finish and are checkpointed as without prefetch.
"""
import collections
import time


class BatchFeed:
    """`take(step)` -> (global batch, pipeline state after it) for `step`; `fill(step)` after dispatching `step`
    reads ahead, up to `depth` batches and never past `last_step`."""

    def __init__(self, train_iter, to_device, check, input_wait, depth: int, last_step: int):
        self._it, self._to_device, self._check, self._wait = train_iter, to_device, check, input_wait
        self.depth, self._last = int(depth), int(last_step)
        self._queue = collections.deque()

    def _read(self, step: int) -> None:
        t = time.perf_counter()
        batch = next(self._it)
        self._wait.fetched(step, t, time.perf_counter())
        self._check(batch, f"train batch at step {step}")
        self._queue.append((self._to_device(batch), self._it.get_state()))

    def take(self, step: int):
        if not self._queue:
            self._read(step)
        item = self._queue.popleft()
        if isinstance(item, BaseException):  # raised where that step would have read it, not a step earlier
            raise item
        return item

    def fill(self, step: int) -> None:
        while len(self._queue) < self.depth and step + len(self._queue) < self._last:
            if self._queue and isinstance(self._queue[-1], BaseException):
                return
            try:
                self._read(step + 1 + len(self._queue))
            except Exception as e:  # noqa: BLE001 - a bad batch ahead must not stop the step running now
                self._queue.append(e)


def device_prefetch(setting: int, backend: str) -> int:
    """Batches to read ahead: `setting`, or for -1 (auto) 1 on an accelerator and 0 on a CPU-only host (where the
    device is the host's memory and the cores that would read ahead are the ones running the step)."""
    if setting >= 0:
        return int(setting)
    return 0 if backend == "cpu" else 1
