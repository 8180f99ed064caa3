"""tfds records deserialised without tfds' generic machinery, for the common feature types, with tfds' exact output.

tfds' `FeaturesDict.deserialize_example_np` flattens, dispatches and re-nests every feature of every record in
Python (what that costs, against this: docs/scale.md, `benchmarks/record_decode.py`). `compile_decoder` builds,
once per source, one small function per feature that reads the
`tf.train.Example` proto directly. It covers what image-text datasets hold: `Tensor`/`ClassLabel`/`Text` scalars and
static-shape tensors (raw or bytes/zlib-encoded), `Sequence` of those scalars or of dicts of them (a scene's
objects), and an `Image` left encoded (`SkipDecoding`). For anything else it returns None and the caller keeps
tfds' path. Its output equals tfds' value for value and type for type (`tests/test_example_decoder.py` compares
every feature of the `scenes` configs).
"""
import zlib
from typing import Callable, Optional

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

_F = tfds.features
_PLAIN = (_F.Tensor, _F.ClassLabel, _F.Text)  # exact types: subclasses (Image, Video, ...) decode differently


def _values(feature, key: str):
    """The proto's value list, looked up in the order tfds does."""
    if feature.HasField("int64_list"):
        return feature.int64_list.value
    if feature.HasField("float_list"):
        return feature.float_list.value
    if feature.HasField("bytes_list"):
        return feature.bytes_list.value
    raise AttributeError(f"cannot convert {key!r} from proto to NumPy")


def _plain(f) -> bool:
    return (type(f) in _PLAIN and not getattr(f, "_optional", False) and np.dtype(f.np_dtype) != np.uint64
            and not (type(f) is _F.Text and f.encoder is not None))


def _scalar_or_tensor(f, key: str) -> Optional[Callable]:
    """proto Feature -> tfds' value of the top-level feature `f` (rank 0), or None if not covered."""
    dtype, shape = np.dtype(f.np_dtype), tuple(f.shape)
    if None in shape:
        return None
    if getattr(f, "_encoded_to_bytes", False):
        zlib_encoded = f._encoding == tfds.features.Encoding.ZLIB

        def encoded(feature):
            data = np.array(_values(feature, key), dtype=object).item()
            return np.frombuffer(zlib.decompress(data) if zlib_encoded else data, dtype=dtype).reshape(shape)
        return encoded
    if not shape:
        return lambda feature: np.array(_values(feature, key), dtype=dtype).item()
    return lambda feature: np.array(_values(feature, key), dtype=dtype).reshape(shape)


def _scalar_sequence(f, key: str) -> Optional[Callable]:
    """proto Feature -> tfds' list of np scalars, for a variable-length `Sequence` of rank-0 plain features."""
    if not (type(f) is _F.Sequence and f._length is None and _plain(f.feature) and not tuple(f.feature.shape)
            and not getattr(f.feature, "_encoded_to_bytes", False)):
        return None
    dtype = np.dtype(f.feature.np_dtype)
    return lambda feature: list(np.array(_values(feature, key), dtype=dtype))


def _part(f, key: str, skip_decoding: bool) -> Optional[Callable]:
    """fmap (the proto's feature map) -> tfds' value of the top-level feature `f`, or None if not covered."""
    if type(f) is _F.Image:  # left encoded for the `decode` op: the stored bytes
        if not skip_decoding:
            return None
        return lambda fmap: np.array(_values(_get(fmap, key), key), dtype=object).item()
    if skip_decoding:
        return None
    one = _scalar_or_tensor(f, key) if _plain(f) else _scalar_sequence(f, key)
    if one is not None:
        return lambda fmap: one(_get(fmap, key))
    if type(f) is _F.Sequence and f._length is None and type(f.feature) is _F.FeaturesDict:
        # a sequence of dicts (e.g. a scene's objects) is stored flat, one list per field: 'objects/color', ...
        fields = {name: (f"{key}/{name}", _scalar_sequence(_F.Sequence(sub), f"{key}/{name}"))
                  for name, sub in f.feature.items()}
        if any(fn is None for _, fn in fields.values()):
            return None
        return lambda fmap: {name: fn(_get(fmap, k)) for name, (k, fn) in fields.items()}
    return None


def _get(fmap, key: str):
    if key not in fmap:
        raise KeyError(f"Malformed input: {key} is not in the record's features {sorted(fmap)}")
    return fmap[key]


def compile_decoder(features, skip_decoding=()) -> Optional[Callable[[bytes], dict]]:
    """serialized tf.train.Example -> {name: value}, equal to `features.deserialize_example_np(record, decoders=
    {name: SkipDecoding() for name in skip_decoding})`; None when a feature of `features` (a FeaturesDict) is of a
    type not covered here."""
    parts = {}
    for key, f in features.items():
        part = _part(f, key, key in skip_decoding)
        if part is None:
            return None
        parts[key] = part

    def decode(record) -> dict:
        fmap = tf_example_pb2.Example.FromString(record).features.feature
        return {key: part(fmap) for key, part in parts.items()}

    return decode
