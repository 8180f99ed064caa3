"""Random-access sources (`len(source)`, `source[i] -> example dict`) that the input pipeline reads.

tfds.py: tfds datasets stored as ArrayRecord, with the built-in `scenes` builder (scenes.py) resolved by its class;
webdataset.py: img2dataset tar shards. `vlmjax.data.pipeline.make_source` picks one from `config.data.name`.
"""
