"""Train batches built inside the grain pipeline, in this process or in worker processes, and how many workers.

A batch holds exactly `batch_size` kept examples: examples an op dropped (marked with DROP_KEY by the pipeline) are
skipped and counted into the batch's DROP_KEY entry, a {reason: count} dict the TrainIterator adds up. Worker
processes (grain `mp_prefetch`) each build whole batches from their slice and hand them over in shared memory.
"""
import collections
import functools
import multiprocessing
import os
import shutil
import sys
from typing import Callable, Optional

import grain
import numpy as np

DROP_KEY = "_dropped"


def stack_rows(rows, where: str, make_batch=None) -> dict:
    """dict of [len(rows), ...] arrays; `make_batch` (grain's, into shared memory) when given."""
    if make_batch is not None:
        try:
            return make_batch(rows)
        except ValueError:
            pass  # shapes differ: the loop below names the feature
    out = {}
    for k in rows[0]:
        try:
            out[k] = np.stack([r[k] for r in rows])
        except ValueError as e:
            shapes = sorted({np.shape(r[k]) for r in rows})
            raise ValueError(f"{where}: feature {k!r} has different shapes across examples {shapes}; "
                             f"add a resize/pad op to config.data.preprocess ({e})") from None
    return out


# Launchers' count of processes on this host (SLURM: one per GPU; torchrun; Open MPI).
_LOCAL_PROCESS_VARS = ("SLURM_NTASKS_PER_NODE", "LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE")


def _host_cores() -> int:
    """Cores this process may use: its CPU affinity (a launcher that binds CPUs per task leaves each its own), or,
    when the whole machine is visible, the machine's cores split over the launcher's processes on this host."""
    machine = os.cpu_count() or 1
    mine = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else machine
    if mine < machine:
        return mine
    for var in _LOCAL_PROCESS_VARS:
        value = os.environ.get(var, "").split("(")[0]  # SLURM may write e.g. '8(x2)'
        if value.isdigit() and int(value) > 0:
            return max(1, machine // int(value))
    return machine


def auto_worker_count(requested: int, backend: str, cpu_count: Optional[int] = None) -> int:
    """Worker processes for `config.data.worker_count`: `requested` if >= 0; for -1 (auto): 0 on a CPU-only host
    (`backend == 'cpu'`: its cores run the train step; docs/scale.md's input-pipeline section), else
    min(cores - 2, 32) (one core each for the main process and the device feeding), at least 1. `cpu_count`
    defaults to this process's share of the host (`_host_cores`)."""
    if requested >= 0:
        return int(requested)
    if requested != -1:
        raise ValueError(f"config.data.worker_count={requested}: expected -1 (auto), 0 (no worker processes) or a "
                         f"positive number of worker processes")
    if backend == "cpu":
        return 0
    return max(1, min((_host_cores() if cpu_count is None else cpu_count) - 2, 32))


def check_not_importing_main(what: str) -> None:
    """Raises, naming the fix, when `what` runs while this process is a worker importing the parent's main script.

    Grain starts worker processes with `spawn`: each re-imports the script that launched training. A script that
    calls `train` at top level, without `if __name__ == "__main__":`, makes every worker start a second training
    in the same workdir before failing deep inside multiprocessing; this stops the worker before it touches
    anything, with the one line that says what to change."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise RuntimeError(
            f"{what} was called while a data worker process (config.data.worker_count > 0, started with 'spawn') "
            f"was importing the main script {sys.argv[0]!r}: put the call under "
            f"`if __name__ == \"__main__\":` (or use config.data.worker_count=0)")


ON_CORRUPT_RECORD = ("stop", "skip")
CORRUPT_RECORD = "corrupt_record"  # the drop reason of a record the source could not read


class CorruptRecordError(RuntimeError):
    """A record of the train source could not be read (config.data.on_corrupt_record='stop')."""


def _record_location(source, index: int) -> str:
    """Where record `index` is stored: the shard file and the record's position in it for an ArrayRecord source
    (tfds' `data_source` is array_record's ArrayRecordDataSource; its index-to-shard mapping is private, array_record
    is pinned), else ''."""
    while hasattr(source, "data_source"):
        source = source.data_source
    try:
        shard, position = source._reader_idx_and_position(index)
        return f"shard {source._read_instructions[shard].filename}, record {position} of that shard"
    except Exception:  # another kind of source: the dataset index alone
        return ""


class _CheckedReads:
    """The source as the train pipeline reads it: a record that cannot be read (array_record raises RuntimeError
    'Corrupted Riegeli/records file: chunk data hash mismatch ...' for a damaged chunk; OSError for a failed read)
    becomes an example marked dropped (DROP_KEY) as CORRUPT_RECORD with on_corrupt='skip', and stops the run with
    CorruptRecordError naming the shard file and the record with 'stop'."""

    def __init__(self, source, on_corrupt: str, name: str):
        if on_corrupt not in ON_CORRUPT_RECORD:
            raise ValueError(f"config.data.on_corrupt_record={on_corrupt!r}: expected one of {ON_CORRUPT_RECORD}")
        self._source, self._on_corrupt, self._name = source, on_corrupt, name

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index):
        try:
            return self._source[index]
        except (RuntimeError, OSError) as e:
            if self._on_corrupt == "skip":
                return {DROP_KEY: CORRUPT_RECORD}
            where = _record_location(self._source, index)
            raise CorruptRecordError(
                f"{self._name} data: record {index} of {len(self._source)} cannot be read"
                f"{' (' + where + ')' if where else ''}: {type(e).__name__}: {e}. Replace the shard, or set "
                f"config.data.on_corrupt_record='skip' to drop unreadable records (counted as "
                f"data/dropped/{CORRUPT_RECORD}) and resume.") from e


class _BatchedReads(_CheckedReads):
    """A source with tfds' `__getitems__`, shown to grain as one that reads many records per call (`_getitems`):
    ArrayRecord reads a batch of records far cheaper per record than one at a time (docs/scale.md). A batch with
    an unreadable record is read again one record at a time, to find it."""

    def _getitems(self, indices):
        read = getattr(self._source, "_getitems", None) or self._source.__getitems__
        try:
            return read(list(indices))
        except (RuntimeError, OSError):
            return [self[i] for i in indices]


def _kept_batch(pull: Callable[[int], list], batch_size: int, name: str, make_batch) -> dict:
    """A batch of exactly `batch_size` kept examples, pulling `pull(n)` -> n more examples as needed; examples marked
    dropped (DROP_KEY) are skipped and counted into the batch's DROP_KEY entry, a {reason: count} dict."""
    rows, dropped = [], collections.Counter()
    while len(rows) < batch_size:
        for ex in pull(batch_size - len(rows)):
            if DROP_KEY in ex:
                dropped[ex[DROP_KEY]] += 1
            else:
                rows.append(ex)
    batch = stack_rows(rows, name, make_batch)
    batch[DROP_KEY] = dict(dropped)
    return batch


def shared_memory_room(need: int = 1 << 30) -> bool:
    """Whether /dev/shm has room for the workers' batches in flight; containers often mount a 64 MiB one, and then
    batches are pickled through the workers' pipes instead."""
    try:
        return shutil.disk_usage("/dev/shm").free >= need
    except OSError:
        return False


def _shared_memory_batcher():
    # grain's own batching into shared memory (what `.batch()` does under mp_prefetch); grain is pinned.
    from grain._src.python.dataset.transformations.batch import make_batch

    return functools.partial(make_batch, output_to_shared_memory=True)


class IndexedBatches(grain.IterDataset):
    """`_kept_batch`es read from a MapDataset of examples in order, each batch's records in one batched read (in
    this process, or in every worker process). State {'next_index': position}, as grain's own reader's. Under mp_prefetch,
    grain gives worker i `examples[i::W]` (`set_slice`) and batches cross processes in shared memory."""

    def __init__(self, examples, batch_size: int, name: str):
        super().__init__(examples)
        self._batch_size, self._name, self._shared_memory = batch_size, name, False

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        if sequential_slice:
            raise ValueError("sequential_slice is not supported")
        self._parents = (self._parent.slice(sl),)

    def enable_shared_memory_output(self) -> None:
        self._shared_memory = True

    def __iter__(self):
        return _IndexedBatchesIterator(self._parent, self._batch_size, self._name,
                                       _shared_memory_batcher() if self._shared_memory else None)


class _IndexedBatchesIterator(grain.DatasetIterator):
    def __init__(self, examples, batch_size: int, name: str, make_batch):
        super().__init__()
        self._examples, self._batch_size, self._name, self._make_batch = examples, batch_size, name, make_batch
        self._next = 0

    def _pull(self, n: int) -> list:
        out = self._examples._getitems(list(range(self._next, self._next + n)))  # one batched read; grain pinned
        self._next += n
        return out

    def __next__(self) -> dict:
        return _kept_batch(self._pull, self._batch_size, self._name, self._make_batch)

    def get_state(self):
        return {"next_index": self._next}

    def set_state(self, state):
        self._next = int(state["next_index"])


def checked_reads(source, on_corrupt: str = "stop", name: str = "train"):
    """`source` with unreadable records handled by `on_corrupt` (`_CheckedReads`), shown to grain as a batched-read
    source when it has tfds' `__getitems__`."""
    batched = hasattr(source, "__getitems__") or hasattr(source, "_getitems")
    return (_BatchedReads if batched else _CheckedReads)(source, on_corrupt, name)
