"""Input pipelines: random-access sources (tfds ArrayRecord, ...) read with grain, host-sharded, checkpointable.

Train: a globally shuffled, infinitely repeated stream (reshuffled each epoch); each process takes
`dataset[process_index::process_count]`, preprocesses with a per-example RNG derived from (seed, index) so the
stream is a pure function of the seed and the position, and batches its share. The iterator state (a position
and the drop counters) is a small dict that is saved with each checkpoint, so a resumed run neither repeats nor
skips an example.

Bad records: an op raising `DropExample(reason)` (corrupt image, empty caption, the web-data filters) removes the
example from the stream; each reason is counted and reported as `data/dropped/<reason>` in the train metrics.

Eval: one ordered pass over the split, padded to whole batches; `_valid` marks real rows.
"""
import collections
from typing import Callable, Iterator, Optional

import grain
import numpy as np

from vlmjax.data.ops import DropExample

DROP_KEY = "_dropped"
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
        return tfds.data_source(cfg.name, split=split, data_dir=cfg.data_dir or None, download=False,
                                decoders={"image": tfds.decode.SkipDecoding()} if cfg.get("skip_decode", True)
                                else None)
    except Exception as e:  # tfds raises several types; the user needs the key and the path
        raise FileNotFoundError(
            f"config.data.name={cfg.name!r} split {split!r}: dataset not found in data_dir={cfg.data_dir!r} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Build the built-in one with "
            f"`make data` or `python -m vlmjax.data.scenes --data_dir {cfg.data_dir}`.") from None


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
        try:
            return preprocess(example, rng)
        except DropExample as e:
            return {DROP_KEY: e.reason}

    return fn


def _stack(rows, where: str) -> dict:
    out = {}
    for k in rows[0]:
        try:
            out[k] = np.stack([r[k] for r in rows])
        except ValueError as e:
            shapes = sorted({np.shape(r[k]) for r in rows})
            raise ValueError(f"{where}: feature {k!r} has different shapes across examples {shapes}; "
                             f"add a resize/pad op to config.data.preprocess ({e})") from None
    return out


class TrainIterator:
    """Iterator of host-local batches (dict of numpy arrays) with `get_state`/`set_state` and drop counters."""

    def __init__(self, source, preprocess: Callable, *, batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1, worker_count: int = 0, shuffle: bool = True, name: str = "train",
                 read_threads: int = 1, prefetch_buffer: int = 16):
        ds = grain.MapDataset.source(source).seed(seed)
        if shuffle:
            ds = ds.shuffle()
        ds = ds.repeat()[process_index::process_count]
        ds = ds.random_map(_safe(preprocess))
        # grain's default (16 threads, a 500-element buffer) polls every buffered future on each element while
        # holding the GIL: 2.5x fewer examples/s than one reader thread with a short buffer on 2 cores
        # (benchmarks/input_pipeline.py).
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_buffer))
        if worker_count > 0:
            it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
        self._it = iter(it)
        self._batch = batch_size
        self._name = name
        self.dropped = collections.Counter()

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        rows = []
        while len(rows) < self._batch:
            ex = next(self._it)
            if DROP_KEY in ex:
                self.dropped[ex[DROP_KEY]] += 1
                continue
            rows.append(ex)
        return _stack(rows, self._name)

    def get_state(self) -> dict:
        return {"grain": self._it.get_state(), "dropped": dict(self.dropped)}

    def set_state(self, state: dict):
        self._it.set_state(state["grain"])
        self.dropped = collections.Counter(state.get("dropped", {}))

    def drop_metrics(self) -> dict:
        return {f"data/dropped/{k}": float(v) for k, v in sorted(self.dropped.items())}


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
        batch = _stack(rows, "eval")
        batch[VALID_KEY] = np.asarray(valid)
        yield batch


def jax_free_zeros(example: dict) -> dict:
    return {k: np.zeros_like(np.asarray(v)) for k, v in example.items()}
