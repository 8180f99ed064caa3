"""The `:variant` argument of an experiment file (`--config experiments/vit_scenes.py:runlocal`).

Every `experiments/*.py` `get_config(arg)` passes its argument through `check_variant`, so a typo
(`vit_scenes.py:runlocl`) fails with one message listing the known variants instead of silently training the
default configuration.
"""
import difflib
import os


def check_variant(arg, known, experiment: str, combine: bool = False):
    """Validates the experiment argument `arg` against the variant names `known`.

    `experiment` is the experiment file's `__file__` (named in the message). With `combine=False` the argument is
    one variant or empty: returns it (None when empty). With `combine=True` it is a comma-separated set
    (`baseline,softmax`): returns the set of names (empty when `arg` is empty). Raises ValueError naming the first
    unknown name, the closest known one and all of them.
    """
    given = [a for a in (arg or "").split(",") if a] if combine else ([arg] if arg else [])
    for name in given:
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            what = "a comma-separated subset of" if combine else "one of"
            raise ValueError(f"experiments/{os.path.basename(experiment)}:{arg}: unknown variant {name!r}{hint}; "
                             f"known variants: {what} {', '.join(known)}")
    return set(given) if combine else (arg or None)
