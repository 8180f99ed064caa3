r"""LiT on `scenes`: the image tower is the ViT of a finished `vit_scenes` run, locked; only the text tower (and t, b)
learn to match it with the sigmoid loss.

    vlmjax-train --config experiments/vit_scenes.py --workdir workdirs/vit_scenes          # the image tower
    vlmjax-train --config experiments/lit_scenes.py --workdir workdirs/lit_scenes \
        --config.init_from.workdir=workdirs/vit_scenes
    # smoke test (seconds):
    vlmjax-train --config experiments/vit_scenes.py:runlocal --workdir /tmp/vit_scenes
    vlmjax-train --config experiments/lit_scenes.py:runlocal --workdir /tmp/lit_scenes

Its measured zero-shot accuracy and retrieval, against siglip_scenes from scratch: docs/contrastive.md.

How the tower is taken: `init_from.include` selects our `img/...` parameters and `rewrite` maps each to the
classifier's top-level name (`img/encoder/block00/...` -> `encoder/block00/...`); the classifier's `head` is left
behind (our image tower has no projection: out_dim [0, D] puts the only head on the text side, so the locked
features are exactly the classifier's pre-logits). `optimizer.freeze` keeps every `img/` parameter bitwise fixed
(no optimizer state is even kept for them).
"""
from . import siglip_scenes, vit_scenes
from .common import parse_arg


def get_config(arg=None):
    parse_arg(arg, ("runlocal", "softmax"), __file__, combine=True)
    c = siglip_scenes.get_config(",".join(["baseline"] + ([arg] if arg else [])))  # no hard negatives
    runlocal = "runlocal" in (arg or "")
    # The vit_scenes model (default, or its :runlocal variant), so that its weights load.
    image = vit_scenes.get_config("runlocal" if runlocal else None).model.to_dict()
    image.pop("num_classes", None)
    c.model = {**c.model.to_dict(), "image": image, "out_dim": [0, image["width"]]}
    c.init_from = dict(workdir="/tmp/vit_scenes" if runlocal else "workdirs/vit_scenes",
                       include=r"img/.*", rewrite=[(r"^img/", "")])
    c.optimizer.freeze = r"img/.*"
    if not runlocal:
        c.total_steps, c.eval.every_steps, c.checkpoint.every_steps = 600, 300, 600
    return c
