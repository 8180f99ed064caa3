r"""CLIP (symmetric softmax loss) on the built-in `scenes` captions, on CPU: experiments/siglip_scenes.py with the loss
swapped, and CLIP's inits (t = 1/0.07 clamped at 100, no bias); the same tower and hard negatives (`:baseline`
for neither). Not measured at the default budget with this recipe.

    vlmjax-train --config experiments/clip_scenes.py --workdir workdirs/clip_scenes
    vlmjax-train --config experiments/clip_scenes.py:runlocal --workdir /tmp/clip_scenes   # seconds, smoke test
"""
import importlib.util
import os

from vlmjax.core.variants import check_variant

_spec = importlib.util.spec_from_file_location(
    "siglip_scenes", os.path.join(os.path.dirname(os.path.abspath(__file__)), "siglip_scenes.py"))
siglip_scenes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(siglip_scenes)


def get_config(arg=None):
    check_variant(arg, tuple(v for v in siglip_scenes.VARIANTS if v != "softmax"), __file__, combine=True)
    return siglip_scenes.get_config("softmax" + (f",{arg}" if arg else ""))
