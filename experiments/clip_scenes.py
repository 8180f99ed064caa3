r"""CLIP (symmetric softmax loss) on the built-in `scenes` captions, on CPU: experiments/siglip_scenes.py with the loss
swapped, and CLIP's inits (t = 1/0.07 clamped at 100, no bias); the same tower and hard negatives (`:baseline`
for neither). Not measured at the default budget with this recipe.

    vlmjax-train --config experiments/clip_scenes.py --workdir workdirs/clip_scenes
    vlmjax-train --config experiments/clip_scenes.py:runlocal --workdir /tmp/clip_scenes   # seconds, smoke test
"""
from . import siglip_scenes
from .common import parse_arg


def get_config(arg=None):
    parse_arg(arg, tuple(v for v in siglip_scenes.VARIANTS if v != "softmax"), __file__, combine=True)
    return siglip_scenes.get_config("softmax" + (f",{arg}" if arg else ""))
