"""Input pipelines: random-access sources (tfds ArrayRecord, ...) read with grain, host-sharded, checkpointable.

Train: a globally shuffled, infinitely repeated stream (reshuffled each epoch); each process takes
`dataset[process_index::process_count]`, preprocesses with a per-example RNG derived from (seed, index) so every
example is a pure function of the seed and its position, and batches its share inside the grain pipeline: a batch
holds exactly `batch_size` kept examples. With `worker_count` W > 0 the decode, preprocessing and batching run in W
worker processes (grain `mp_prefetch`); worker i builds whole batches from every W-th example of the process's share
and the batches are taken from the workers in turn, so the stream is a pure function of (seed, W). The iterator
state (grain's per-worker positions, W, and the drop counters) is a small dict saved with each checkpoint, so a
resumed run neither repeats nor skips an example; restoring a state saved with another W rebuilds the pipeline with
the saved W. `worker_count=-1` picks W from the host (`auto_worker_count`). Without workers the same batches are
built in this process, optionally `prefetch_buffer` batches ahead in a thread.

Mixtures: `source` may be a list of `Component`s (a name, a source, its preprocessing, a weight): each is shuffled,
repeated and host-sharded as above with its own seed (derived from the seed and its name), and grain interleaves
them in fixed proportions (`MapDataset.mix`: of every sum-of-weights examples, each component gives its weight's
worth, in the same places every time), so the stream stays a pure function of the seed and resumes exactly. Each
batch still reads its records in one batched read per component. `check_mixture` compares the components' examples
before anything compiles; their drop reasons are counted as `<component>/<reason>`.

Bad records: an op raising `DropExample(reason)` (corrupt image, empty caption, the web-data filters) removes the
example from the stream; each reason is counted and reported as `data/dropped/<reason>` in the train metrics.
A record the source cannot read (a corrupt ArrayRecord chunk) is dropped as `corrupt_record` with
`on_corrupt_record='skip'`, and stops the run naming its shard file with 'stop' (`batching._CheckedReads`).

Eval: one ordered pass over the split, padded to whole batches; `_valid` marks real rows.
"""
import collections
import dataclasses
import warnings
import zlib
from typing import Any, Callable, Iterator, Optional, Sequence

import grain
import numpy as np

from vlmjax.data.batching import (DROP_KEY, IndexedBatches, auto_worker_count, checked_reads,
                                   shared_memory_room, stack_rows)
from vlmjax.data.op_registry import DropExample
from vlmjax.data.sources import tfds as tfds_source
from vlmjax.data.sources import webdataset

VALID_KEY = "_valid"

# Dataset names 'prefix:...' -> factory fn(cfg, split) -> random-access source; any other name is a tfds dataset.
_SOURCES = {"webdataset": webdataset.source}


def register_source(prefix: str):
    """Register a factory `fn(cfg, split) -> random-access source` for dataset names `prefix:...`."""

    def deco(fn):
        _SOURCES[prefix] = fn
        return fn

    return deco


def make_source(cfg, split: str, features: Optional[Sequence[str]] = None):
    """Random-access source for `cfg.name` (a tfds name, or 'prefix:...' for a registered source). `features`:
    the record fields the preprocessing reads (`Task.read_features`), which a tfds source alone deserialises when
    `cfg.read_features` is unset (None: all)."""
    prefix = cfg.name.split(":", 1)[0] if ":" in cfg.name else None
    if prefix in _SOURCES:
        return _SOURCES[prefix](cfg, split)
    return tfds_source.source(cfg, split, features)


def _safe(preprocess: Callable, component: str = "") -> Callable:
    prefix = f"{component}/" if component else ""

    def fn(example, rng):
        if isinstance(example, dict) and DROP_KEY in example:  # a record the source could not read ('skip')
            return {DROP_KEY: prefix + example[DROP_KEY]}
        try:
            return preprocess(example, rng)
        except DropExample as e:
            return {DROP_KEY: prefix + e.reason}

    return fn


@dataclasses.dataclass(frozen=True)
class Component:
    """One dataset of a training mixture: its records, their preprocessing `fn(example, rng) -> example`, and its
    share of the stream (weight / the sum of the weights)."""
    name: str
    source: Any
    preprocess: Callable
    weight: float = 1.0


def component_seed(seed: int, name: str) -> int:
    """The seed of mixture component `name`: distinct per name, so two components never shuffle or augment alike."""
    return int(np.random.SeedSequence([int(seed) % 2 ** 32, zlib.crc32(name.encode())]).generate_state(1)[0])


def first_kept(source, preprocess: Callable, seed: int, limit: int) -> Optional[dict]:
    """The preprocessed example of the first of records 0 .. limit - 1 that preprocessing keeps (record g with the
    rng of (seed, g), as eval_batches preprocesses it); None if it drops them all."""
    for g in range(min(limit, len(source))):
        try:
            return preprocess(source[g], np.random.default_rng([seed, g]))
        except DropExample:
            continue
    return None


def _describe(example: dict) -> dict:
    return {k: f"{np.asarray(v).dtype}{list(np.shape(v))}" for k, v in sorted(example.items())}


def check_mixture(components: Sequence[Component], seed: int = 0) -> None:
    """Raises ValueError naming the component and the feature when the components' examples do not batch together
    (other features, shapes or dtypes than the first component's), judged on each one's first kept record."""
    first, want = None, None
    for c in components:
        ex = first_kept(c.source, c.preprocess, seed, limit=64)
        if ex is None:
            continue  # every record tried was dropped: its drop counters will say why
        got = _describe(ex)
        if want is None:
            first, want = c.name, got
            continue
        diff = sorted(set(got) ^ set(want)) or [k for k in want if got[k] != want[k]]
        if diff:
            k = diff[0]
            raise ValueError(f"config.data.mixture.{c.name}: its examples cannot be batched with "
                             f"config.data.mixture.{first}'s: feature {k!r} is {got.get(k, 'missing')} there and "
                             f"{want.get(k, 'missing')} in {first!r} (features {sorted(got)} vs {sorted(want)}); "
                             f"give every component a preprocess that keeps the same features and shapes")


def _absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; a program that never ran absl.app (vlmjax's CLIs use argparse)
    has not parsed them."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class TrainIterator:
    """Iterator of host-local batches (dict of numpy arrays [batch_size, ...]) with `get_state`/`set_state` and
    drop counters. `worker_count` -1 resolves with `auto_worker_count(-1, backend)` (backend: jax's, of the devices
    the batches feed). Worker processes start on the first `next`/`set_state`/`get_state`."""

    def __init__(self, source, preprocess: Optional[Callable] = None, *, batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1, worker_count: int = 0, shuffle: bool = True,
                 name: str = "train", prefetch_buffer: int = -1, worker_buffer: int = 2, backend: str = "cpu",
                 on_corrupt_record: str = "stop"):
        """`source` with `preprocess`, or a list of `Component`s (a mixture; `preprocess` None)."""
        mixture = isinstance(source, (list, tuple)) and bool(source) and isinstance(source[0], Component)
        if mixture == (preprocess is not None):  # (a plain source may itself be a list of records)
            raise ValueError("TrainIterator: give a source and its preprocess, or a list of Components alone")
        parts = []
        for c in (source if mixture else [Component("", source, preprocess)]):
            ds = grain.MapDataset.source(checked_reads(c.source, on_corrupt_record, f"{name} {c.name}".strip()))
            ds = ds.seed(component_seed(seed, c.name) if mixture else seed)
            if shuffle:
                ds = ds.shuffle()
            ds = ds.repeat()[process_index::process_count]
            parts.append(ds.random_map(_safe(c.preprocess, c.name if mixture else "")))
        self._examples = grain.MapDataset.mix(parts, [c.weight for c in source]) if mixture else parts[0]
        if prefetch_buffer < -1:
            raise ValueError(f"config.data.prefetch_buffer={prefetch_buffer}: expected -1 (auto), 0 (no background "
                             f"thread) or a positive number of batches")
        # auto: none on a CPU-only host, where the step itself keeps every core busy and a thread building batches
        # beside it slows the two together (docs/data.md); 2 batches ahead of an accelerator
        prefetch_buffer = (0 if backend == "cpu" else 2) if prefetch_buffer == -1 else prefetch_buffer
        self._batch, self._name, self._worker_buffer, self._prefetch = batch_size, name, worker_buffer, prefetch_buffer
        self.worker_count = auto_worker_count(worker_count, backend)
        self._it = None
        self.dropped = collections.Counter()

    def _iterator(self):
        if self._it is None:
            # Every batch's records are read in one batched read (`IndexedBatches`): ArrayRecord reads many records
            # per call far cheaper than one at a time, and grain's per-element reader costs more again (docs/data.md,
            # "Input pipeline speed"). Batch k holds the next kept examples of `self._examples` in order.
            ds = IndexedBatches(self._examples, self._batch, self._name)
            if self.worker_count > 0:
                _absl_flags_parsed()
                if not shared_memory_room():  # every array is pickled, none goes through /dev/shm
                    ds = grain.experimental.WithOptionsIterDataset(
                        ds, grain.experimental.DatasetOptions(min_shm_size=1 << 62))
                ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.worker_count,
                                                                 per_worker_buffer_size=self._worker_buffer))
            elif self._prefetch:
                # One thread builds the next batches while the step runs (it releases the GIL); the state it
                # reports is that of the last batch handed out, so a checkpoint never skips a prefetched one.
                ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=self._prefetch)
            self._it = iter(ds)
        return self._it

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = next(self._iterator())
        self.dropped.update(batch.pop(DROP_KEY))
        return batch

    def get_state(self) -> dict:
        """{'grain': grain's state, 'dropped': {reason: count}, 'worker_count': W} (JSON-serialisable)."""
        return {"grain": self._iterator().get_state(), "dropped": dict(self.dropped),
                "worker_count": self.worker_count}

    def set_state(self, state: dict):
        saved = int(state.get("worker_count", 0))  # states written before worker processes existed: 0
        if saved != self.worker_count:
            warnings.warn(f"{self._name} data: the checkpoint's input state was written with worker_count={saved}, "
                          f"not {self.worker_count}; resuming with {saved} worker processes so the stream continues "
                          f"exactly")
            self.close()
            self.worker_count = saved
        self._iterator().set_state(state["grain"])
        self.dropped = collections.Counter(state.get("dropped", {}))

    def drop_metrics(self) -> dict:
        return {f"data/dropped/{k}": float(v) for k, v in sorted(self.dropped.items())}

    def close(self) -> None:
        """Stops the worker processes (also done when the iterator is garbage collected)."""
        if self._it is not None and hasattr(self._it, "close"):
            self._it.close()
        self._it = None


def eval_batches(source, preprocess: Callable, *, batch_size: int, process_index: int = 0, process_count: int = 1,
                 max_examples: Optional[int] = None, seed: int = 0) -> Iterator[dict]:
    """One ordered pass over `source`: host-local batches padded to `batch_size`, `_valid` bool[b] marks real rows.

    Every process yields the same number of batches (collectives need that); dropped records become padding.
    """
    n = len(source) if max_examples is None else min(len(source), int(max_examples))
    per_host = -(-n // process_count)
    num_batches = -(-per_host // batch_size)
    # Padding rows copy the shapes of the first record (in global order) that preprocesses: every host finds the
    # same one, so a host whose own first rows are all dropped (a selective eval filter) still yields each batch.
    template = first_kept(source, preprocess, seed, limit=n)
    if template is None:
        return  # nothing in the split survives preprocessing, on any host
    template = jax_free_zeros(template)
    read = getattr(source, "__getitems__", None)  # one batched read per batch (ArrayRecord: far cheaper per record)
    for b in range(num_batches):
        positions = range(b * batch_size, (b + 1) * batch_size)  # this host's rows of batch b
        dataset_rows = [process_index + process_count * i for i in positions]
        wanted = [g for i, g in zip(positions, dataset_rows) if i < per_host and g < n]
        records = dict(zip(wanted, read(wanted) if read and wanted else [source[g] for g in wanted]))
        rows, valid = [], []
        for g in dataset_rows:
            ex = None
            if g in records:
                try:
                    ex = preprocess(records[g], np.random.default_rng([seed, g]))
                except DropExample:
                    ex = None
            rows.append(ex)
            valid.append(ex is not None)
        rows = [template if ex is None else ex for ex in rows]
        batch = stack_rows(rows, "eval")
        batch[VALID_KEY] = np.asarray(valid)
        yield batch


def jax_free_zeros(example: dict) -> dict:
    return {k: np.zeros_like(np.asarray(v)) for k, v in example.items()}
