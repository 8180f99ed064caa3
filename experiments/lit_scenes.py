r"""LiT on `scenes`: the image tower is the ViT of a finished `vit_scenes` run, locked; only the text tower (and t, b)
learn to match it with the sigmoid loss.

    vlmjax-train --config experiments/vit_scenes.py --workdir workdirs/vit_scenes          # the image tower
    vlmjax-train --config experiments/lit_scenes.py --workdir workdirs/lit_scenes \
        --config.init_from.workdir=workdirs/vit_scenes
    # smoke test (seconds):
    vlmjax-train --config experiments/vit_scenes.py:runlocal --workdir /tmp/vit_scenes
    vlmjax-train --config experiments/lit_scenes.py:runlocal --workdir /tmp/lit_scenes

How the tower is taken: `init_from.include` selects our `img/...` parameters and `rewrite` maps each to the
classifier's top-level name (`img/encoder/block00/...` -> `encoder/block00/...`); the classifier's `head` is left
behind (our image tower has no projection: out_dim [0, D] puts the only head on the text side, so the locked
features are exactly the classifier's pre-logits). `optimizer.freeze` keeps every `img/` parameter bitwise fixed
(no optimizer state is even kept for them).
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "siglip_scenes", os.path.join(os.path.dirname(os.path.abspath(__file__)), "siglip_scenes.py"))
siglip_scenes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(siglip_scenes)


def get_config(arg=None):
    c = siglip_scenes.get_config(arg)
    runlocal = "runlocal" in (arg or "")
    # Must equal the vit_scenes model (default, or its :runlocal variant) for the shapes to load.
    if runlocal:
        image = dict(patch_size=(8, 8), width=32, depth=2, num_heads=2, mlp_dim=64, pool_type="gap")
    else:
        image = dict(patch_size=(8, 8), width=96, depth=4, num_heads=3, mlp_dim=384, pool_type="gap")
    c.model = {**c.model.to_dict(), "image": image, "out_dim": [0, image["width"]]}
    c.init_from = dict(workdir="/tmp/vit_scenes" if runlocal else "workdirs/vit_scenes",
                       include=r"img/.*", rewrite=[(r"^img/", "")])
    c.optimizer.freeze = r"img/.*"
    return c
