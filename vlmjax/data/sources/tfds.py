"""tfds datasets stored as ArrayRecord as random-access sources, and the one place that resolves a dataset name.

`builder(name, data_dir)` is `tfds.builder` that resolves the built-in datasets (`BUILT_IN`: `scenes`) by their
class, so no caller depends on a module having been imported for its registration. `source(cfg, split)` is the
source of `config.data` (`name`, `data_dir`, `skip_decode`, `read_features`); a missing dataset is reported with the
command that builds it (`scenes`) or converts it (a TFRecord dataset).
"""
import glob
import os

import tensorflow_datasets as tfds

from vlmjax.data.sources import scenes
from vlmjax.data.sources.example_decoder import compile_decoder

BUILT_IN = {"scenes": scenes.Scenes}  # name -> builder class, for datasets vlmjax generates itself


def builder(name: str, data_dir=None) -> tfds.core.DatasetBuilder:
    """The tfds builder of `name` ('dataset', 'dataset/config', with ':version'), reading from `data_dir`."""
    dataset, kwargs = tfds.core.naming.parse_builder_name_kwargs(name)
    if dataset.name in BUILT_IN:
        return BUILT_IN[dataset.name](data_dir=data_dir, **kwargs)
    return tfds.builder(name, data_dir=data_dir)


def source(cfg, split: str, needed=None):
    """Random-access source of split `split` of the tfds dataset `cfg.name` in `cfg.data_dir`.

    Encoded images stay bytes for the `decode` op (`cfg.skip_decode`, default True); an image stored as a raw array
    (scenes/raw) is read as one. `cfg.read_features` (a list) deserialises only those features; else `needed`
    (what the preprocessing reads, `op_registry.features_read`; names the dataset lacks are left to the op that
    asks for them to report) or, when None, all. Records are read raw and deserialised by the direct decoder
    (example_decoder.py) when it covers the features read, else by tfds' own deserialiser (`SelectedFeatures`)."""
    try:
        ds = builder(cfg.name, cfg.data_dir or None)
        skip = {k: tfds.decode.SkipDecoding() for k, f in ds.info.features.items()
                if isinstance(f, tfds.features.Image)} if cfg.get("skip_decode", True) else {}
        wanted = list(cfg.get("read_features", None) or [])
        if not wanted and needed is not None:  # 'captions/text' (flattened) needs 'captions'; 'image/id' is one
            wanted = [k for k in ds.info.features if any(n == k or n.startswith(k + "/") for n in needed)]
        raw = ds.as_data_source(split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    except Exception as e:  # tfds raises several types; the user needs the key and the path
        raise FileNotFoundError(
            f"config.data.name={cfg.name!r} split {split!r}: dataset not found in data_dir={cfg.data_dir!r} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). {_build_hint(cfg)}") from None
    features = ds.info.features
    wanted = wanted or list(features)  # all of them, through the direct decoder
    missing = [k for k in wanted if k not in features]
    if missing:
        raise ValueError(f"config.data.read_features={wanted}: {cfg.name!r} has no feature {missing[0]!r}; it has "
                         f"{sorted(features)}")
    return SelectedFeatures(raw, tfds.features.FeaturesDict({k: features[k] for k in wanted}),
                            {k: v for k, v in skip.items() if k in wanted})


def _tfrecord_dir(cfg):
    """The version folder of `cfg.name` in its data_dir when the dataset is there as TFRecord shards, else None."""
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


class SelectedFeatures:
    """A tfds source deserializing the features `features` (a FeaturesDict: all of the dataset's, or those of
    `config.data.read_features`) of each raw record, by the direct decoder where it covers them (docs/data.md has
    the cost)."""

    def __init__(self, raw_source, features, decoders):
        self._raw, self._features, self._decoders = raw_source, features, decoders or None
        self.data_source = raw_source  # as tfds' sources: where a record is stored (batching._record_location)
        # tfds' own deserialiser only for feature types the direct one does not cover (example_decoder.py)
        self._fast = compile_decoder(features, skip_decoding=set(decoders or ()))

    def __len__(self) -> int:
        return len(self._raw)

    def _decode(self, record):
        if self._fast is not None:
            return self._fast(record)
        return self._features.deserialize_example_np(record, decoders=self._decoders)

    def __getitem__(self, index):
        return self._decode(self._raw[index])

    def __getitems__(self, indices):
        getitems = getattr(self._raw, "__getitems__", None)  # tfds' sources read a batch at once; a list does not
        records = getitems(indices) if getitems else [self._raw[i] for i in indices]
        return [self._decode(r) for r in records]
