"""Input pipelines: random-access sources (tfds ArrayRecord, ...) read with grain, host-sharded, checkpointable.

Train: a globally shuffled, infinitely repeated stream (reshuffled each epoch); each process takes
`dataset[process_index::process_count]`, preprocesses with a per-example RNG derived from (seed, index) so every
example is a pure function of the seed and its position, and batches its share inside the grain pipeline: a batch
holds exactly `batch_size` kept examples. With `worker_count` W > 0 the decode, preprocessing and batching run in W
worker processes (grain `mp_prefetch`); worker i builds whole batches from every W-th example of the process's share
and the batches are taken from the workers in turn, so the stream is a pure function of (seed, W). The iterator
state (grain's per-worker positions, W, and the drop counters) is a small dict saved with each checkpoint, so a
resumed run neither repeats nor skips an example; restoring a state saved with another W rebuilds the pipeline with
the saved W. `worker_count=-1` picks W from the host (`auto_worker_count`).

Bad records: an op raising `DropExample(reason)` (corrupt image, empty caption, the web-data filters) removes the
example from the stream; each reason is counted and reported as `data/dropped/<reason>` in the train metrics.
A record the source cannot read (a corrupt ArrayRecord chunk) is dropped as `corrupt_record` with
`on_corrupt_record='skip'`, and stops the run naming its shard file with 'stop' (`batching._CheckedReads`).

Eval: one ordered pass over the split, padded to whole batches; `_valid` marks real rows.
"""
import collections
import os
import warnings
from typing import Callable, Iterator, Optional

import grain
import numpy as np

from vlmjax.data.batching import (DROP_KEY, IndexedBatches, KeptBatches, auto_worker_count, checked_reads,
                                   shared_memory_room, stack_rows)
from vlmjax.data.ops import DropExample

VALID_KEY = "_valid"

_SOURCES = {}
# Sources registered on import of their module, loaded only when a dataset name asks for them.
_LAZY_SOURCES = {"webdataset": "vlmjax.data.webdataset"}


def register_source(prefix: str):
    """Register a factory `fn(cfg, split) -> random-access source` for dataset names `prefix:...`."""

    def deco(fn):
        _SOURCES[prefix] = fn
        return fn

    return deco


def _tfds_source(cfg, split):
    import tensorflow_datasets as tfds

    from vlmjax.data import scenes  # noqa: F401  (registers the built-in `scenes` builder)

    try:
        builder = tfds.builder(cfg.name, data_dir=cfg.data_dir or None)
        # Encoded images stay bytes for the `decode` op; an image stored as a raw array (scenes/raw) is read as one.
        skip = {k: tfds.decode.SkipDecoding() for k, f in builder.info.features.items()
                if isinstance(f, tfds.features.Image)} if cfg.get("skip_decode", True) else {}
        wanted = list(cfg.get("read_features", None) or [])
        if not wanted:
            return builder.as_data_source(split=split, decoders=skip or None)
        raw = builder.as_data_source(split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    except Exception as e:  # tfds raises several types; the user needs the key and the path
        raise FileNotFoundError(
            f"config.data.name={cfg.name!r} split {split!r}: dataset not found in data_dir={cfg.data_dir!r} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). {_build_hint(cfg)}") from None
    features = builder.info.features
    missing = [k for k in wanted if k not in features]
    if missing:
        raise ValueError(f"config.data.read_features={wanted}: {cfg.name!r} has no feature {missing[0]!r}; it has "
                         f"{sorted(features)}")
    return _SelectedFeatures(raw, tfds.features.FeaturesDict({k: features[k] for k in wanted}),
                             {k: v for k, v in skip.items() if k in wanted})


def _tfrecord_dir(cfg):
    """The version folder of `cfg.name` in its data_dir when the dataset is there as TFRecord shards, else None."""
    import glob

    root = os.path.join(os.path.expanduser(cfg.data_dir or "~/tensorflow_datasets"), *cfg.name.replace(":", "/")
                        .split("/"))
    found = sorted(glob.glob(os.path.join(root, "*.tfrecord-*-of-*")) +
                   glob.glob(os.path.join(root, "*", "*.tfrecord-*-of-*")))
    return os.path.dirname(found[-1]) if found else None


def _build_hint(cfg) -> str:
    """The command that builds a missing dataset (the built-in `scenes/<config>`), or converts one stored as
    TFRecord, or where to read for others."""
    tfrecord = _tfrecord_dir(cfg)
    if tfrecord:
        return (f"It is stored as TFRecord in {tfrecord}; grain reads ArrayRecord: convert it with "
                f"`python -m vlmjax.data.to_array_record --dataset_dir {tfrecord}`")
    name, _, config = cfg.name.partition("/")
    if name != "scenes":
        return ("Prepare it with tfds into that data_dir; a TFRecord dataset must be converted to ArrayRecord "
                "(docs/data.md)")
    config = config.split(":")[0] or "default"
    make = "`make data` or " if config in ("default", "tiny") else ""
    return f"Build it with {make}`python -m vlmjax.data.scenes --data_dir {cfg.data_dir} --config {config}`"


class _SelectedFeatures:
    """A tfds source deserializing only some features of each record (`config.data.read_features`): scenes
    records carry captions, questions and objects that a classifier never reads (3x the time of image + label)."""

    def __init__(self, raw_source, features, decoders):
        self._raw, self._features, self._decoders = raw_source, features, decoders or None
        self.data_source = raw_source  # as tfds' sources: where a record is stored (batching._record_location)

    def __len__(self) -> int:
        return len(self._raw)

    def _decode(self, record):
        return self._features.deserialize_example_np(record, decoders=self._decoders)

    def __getitem__(self, index):
        return self._decode(self._raw[index])

    def __getitems__(self, indices):
        return [self._decode(r) for r in self._raw.__getitems__(indices)]


def make_source(cfg, split: str):
    """Random-access source for `cfg.name` (a tfds name, or 'prefix:...' for a registered source)."""
    prefix = cfg.name.split(":", 1)[0] if ":" in cfg.name else None
    if prefix in _LAZY_SOURCES and prefix not in _SOURCES:
        import importlib

        importlib.import_module(_LAZY_SOURCES[prefix])
    if prefix in _SOURCES:
        return _SOURCES[prefix](cfg, split)
    return _tfds_source(cfg, split)


def _safe(preprocess: Callable) -> Callable:
    def fn(example, rng):
        if isinstance(example, dict) and DROP_KEY in example:  # a record the source could not read ('skip')
            return example
        try:
            return preprocess(example, rng)
        except DropExample as e:
            return {DROP_KEY: e.reason}

    return fn


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

    def __init__(self, source, preprocess: Callable, *, batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1, worker_count: int = 0, shuffle: bool = True, name: str = "train",
                 read_threads: int = 1, prefetch_buffer: int = 16, worker_buffer: int = 2, backend: str = "cpu",
                 on_corrupt_record: str = "stop"):
        ds = grain.MapDataset.source(checked_reads(source, on_corrupt_record, name)).seed(seed)
        if shuffle:
            ds = ds.shuffle()
        ds = ds.repeat()[process_index::process_count]
        self._examples = ds.random_map(_safe(preprocess))
        self._read = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_buffer)
        self._batch, self._name, self._worker_buffer = batch_size, name, worker_buffer
        self.worker_count = auto_worker_count(worker_count, backend)
        self._it = None
        self.dropped = collections.Counter()

    def _iterator(self):
        if self._it is None:
            # grain's default (16 threads, a 500-element buffer) polls every buffered future on each element while
            # holding the GIL: 2.5x fewer examples/s than one reader thread with a short buffer on 2 cores
            # (benchmarks/input_pipeline.py). Each worker process runs the same reader.
            if self.worker_count > 0:
                _absl_flags_parsed()
                ds = IndexedBatches(self._examples, self._batch, self._name)
                if not shared_memory_room():  # every array is pickled, none goes through /dev/shm
                    ds = grain.experimental.WithOptionsIterDataset(
                        ds, grain.experimental.DatasetOptions(min_shm_size=1 << 62))
                ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.worker_count,
                                                                 per_worker_buffer_size=self._worker_buffer))
            else:
                ds = KeptBatches(self._examples.to_iter_dataset(self._read), self._batch, self._name)
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
    template = None
    for b in range(num_batches):
        rows, valid = [], []
        for r in range(batch_size):
            i = b * batch_size + r
            g = process_index + process_count * i
            ex = None
            if i < per_host and g < n:
                try:
                    ex = preprocess(source[g], np.random.default_rng([seed, g]))
                except DropExample:
                    ex = None
            if ex is not None and template is None:
                template = jax_free_zeros(ex)
            rows.append(ex)
            valid.append(ex is not None)
        if template is None:
            continue  # nothing decodable yet on this host; no example lost
        rows = [template if ex is None else ex for ex in rows]
        batch = stack_rows(rows, "eval")
        batch[VALID_KEY] = np.asarray(valid)
        yield batch


def jax_free_zeros(example: dict) -> dict:
    return {k: np.zeros_like(np.asarray(v)) for k, v in example.items()}
