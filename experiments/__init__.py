"""The experiment configs: each module's `get_config(arg)` returns an ml_collections.ConfigDict for `vlmjax-train`.

    vlmjax-train --config vit_scenes:runlocal --workdir /tmp/w               # by name (also once pip-installed)
    vlmjax-train --config experiments/vit_scenes.py:runlocal --workdir /tmp/w  # by path, from the repository root

Installed, this folder is the package `vlmjax.experiments` (pyproject.toml maps it there), so experiments import
each other and `common` relatively (`from . import siglip_b16`, `from .common import parse_arg`). `arg` names a
variant (`runlocal`: a seconds-long CPU smoke test on `scenes/tiny`), or a comma-separated set of them where the
experiment combines variants; `common.parse_arg` rejects any other. Your own experiment file may live anywhere
(`--config path/to/mine.py:arg`) and import `vlmjax.experiments.common` for the shared pieces.
"""
