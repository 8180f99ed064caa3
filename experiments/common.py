"""What several experiments share: the `:variant` parser, image preprocessing and tower sizes.

`parse_arg` is the one check of an experiment's argument (big_vision's `parse_arg` is the model): a typo
(`vit_scenes.py:runlocl`) fails with one message listing the known variants instead of silently training the
default configuration.
"""
import os

from vlmjax.names import did_you_mean

# Transformer sizes (width, depth, heads, MLP) the towers of several experiments share.
VIT_B = dict(width=768, depth=12, num_heads=12, mlp_dim=3072)  # ViT-B, and SigLIP B's text tower
TINY = dict(width=32, depth=2, num_heads=2, mlp_dim=64)  # `:runlocal` smoke-test towers
# vit_scenes' hybrid ViT on 64 px scenes: 4x4 patchify + 3 residual 3x3 convs (64 channels), then 2x2 patches
# (64 tokens, as a plain /8 ViT), MAP pooling. siglip_scenes' image tower is the same.
SCENES_HYBRID_VIT = dict(patch_size=(2, 2), width=96, depth=2, num_heads=3, mlp_dim=384, pool_type="map",
                         stem_channels=64, stem_patch=4, stem_blocks=3)
# The split the `scenes` experiments' periodic evaluations read: every step count, recipe and prompt set is chosen
# there. The test split is read once per final recipe: `vlmjax-eval --workdir W --split test`.
EVAL_SPLIT = "validation"


def parse_arg(arg, known, experiment: str, combine: bool = False):
    """Validates the experiment argument `arg` (`--config NAME:arg`) against the variant names `known`.

    `experiment` is the experiment module's `__file__` (named in the message). With `combine=False` the argument
    is one variant or empty: returns it (None when empty). With `combine=True` it is a comma-separated set
    (`baseline,softmax`): returns the set of names (empty when `arg` is empty). Raises ValueError
    "experiments/<file>:<arg>: unknown variant 'x' (did you mean 'y'?); known variants: one of a, b".
    """
    given = [a for a in (arg or "").split(",") if a] if combine else ([arg] if arg else [])
    for name in given:
        if name not in known:
            what = "a comma-separated subset of" if combine else "one of"
            raise ValueError(f"experiments/{os.path.basename(experiment)}:{arg}: unknown variant {name!r}"
                             f"{did_you_mean(name, known)}; known variants: {what} {', '.join(known)}")
    return set(given) if combine else (arg or None)


def image_pp(size=None, key: str = "image", method: str = "bilinear", draft: bool = False) -> list:
    """Evaluation image ops: decode, a resize to `size` (an int or (h, w); none when falsy) by `method`, values to
    [-1, 1]. `draft`: large JPEGs decoded at a reduced scale still >= `size` (the decode op's `draft_size`)."""
    pp = [dict(op="decode", key=key, **({"draft_size": size} if draft and size else {}))]
    if size:
        pp.append(dict(op="resize", key=key, size=size, **({} if method == "bilinear" else {"method": method})))
    return pp + [dict(op="value_range", key=key, vmin=-1, vmax=1)]


def keep(*keys) -> dict:
    """The last preprocess op of most pipelines: drop every feature but `keys`."""
    return dict(op="keep", keys=list(keys))
