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


def _experiment(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                      f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


siglip_scenes, vit_scenes = _experiment("siglip_scenes"), _experiment("vit_scenes")


def get_config(arg=None):
    c = siglip_scenes.get_config(arg)
    runlocal = "runlocal" in (arg or "")
    # The vit_scenes model (default, or its :runlocal variant), so that its weights load.
    image = vit_scenes.get_config("runlocal" if runlocal else None).model.to_dict()
    image.pop("num_classes", None)
    c.model = {**c.model.to_dict(), "image": image, "out_dim": [0, image["width"]]}
    c.init_from = dict(workdir="/tmp/vit_scenes" if runlocal else "workdirs/vit_scenes",
                       include=r"img/.*", rewrite=[(r"^img/", "")])
    c.optimizer.freeze = r"img/.*"
    return c
