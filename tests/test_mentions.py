"""scene_object_mention: the partial caption names an object of the scene; its negatives name none."""
import numpy as np
import pytest

from vlmjax.data import ops
from vlmjax.data.scenes import COLORS, SHAPES, SIZES, render_scene


def _objects(objs):
    return {"color": [COLORS.index(o["color"]) for o in objs], "shape": [SHAPES.index(o["shape"]) for o in objs],
            "size": [SIZES.index(o["size"]) for o in objs]}


def _phrases(objs):
    return {f"a {o['size']} {o['color']} {o['shape']}" for o in objs}


def test_mention_is_present_and_negatives_absent_one_word_away():
    fn = ops.get_preprocess_fn([dict(op="scene_object_mention", prob=1.0, num=6, avoid=["red square"])])
    seen_multi = 0
    for seed in range(60):
        _, objs = render_scene(seed, 64)
        ex = fn({"objects": _objects(objs), "text": "full caption", "text_neg": ["x"] * 6,
                 "text_neg_valid": np.ones(6, np.int32)}, np.random.default_rng(seed))
        present = _phrases(objs)
        assert ex["text"] in present
        seen_multi += len(objs) > 1
        words = ex["text"].split()
        for neg, ok in zip(ex["text_neg"], ex["text_neg_valid"]):
            if not ok:
                assert neg == ex["text"]
                continue
            assert neg not in present and "red square" not in neg
            assert sum(a != b for a, b in zip(neg.split(), words)) == 1  # one attribute changed
        assert ex["text_neg_valid"].sum() == 6  # 9 one-word edits, at most 2 taken by the other objects + 1 avoided
    assert seen_multi > 20


def test_mention_prob_zero_leaves_the_caption_and_draws_are_a_function_of_the_rng():
    _, objs = render_scene(3, 64)
    ex = {"objects": _objects(objs), "text": "full caption"}
    never = ops.get_preprocess_fn([dict(op="scene_object_mention", prob=0.0, num=2)])
    assert never(dict(ex), np.random.default_rng(0))["text"] == "full caption"
    flat = {f"objects/{k}": v for k, v in ex["objects"].items()} | {"text": "full caption"}  # the grain layout
    always = ops.get_preprocess_fn([dict(op="scene_object_mention", prob=1.0, num=2)])
    assert always(flat, np.random.default_rng(0))["text"] == always(dict(ex), np.random.default_rng(0))["text"]
    half = ops.get_preprocess_fn([dict(op="scene_object_mention", prob=0.5, num=2)])
    outs = [half(dict(ex), np.random.default_rng(s))["text"] for s in range(200)]
    assert outs == [half(dict(ex), np.random.default_rng(s))["text"] for s in range(200)]
    assert 60 < sum(t != "full caption" for t in outs) < 140


def test_mention_ids_say_which_phrases_each_scene_holds():
    # `present_slots`: the mention's id and the ids of every object phrase of its scene, so a batch can tell which
    # other scenes a mention is true for; ids equal exactly when the phrases do, and in every process alike
    import subprocess
    import sys
    fn = ops.get_preprocess_fn([dict(op="scene_object_mention", prob=1.0, num=2, present_slots=3,
                                     text="mention", neg="mention_neg")])
    exs, phrase_sets = [], []
    for seed in range(40):
        _, objs = render_scene(seed, 64)
        exs.append(fn({"objects": _objects(objs)}, np.random.default_rng(seed)))
        phrase_sets.append(_phrases(objs))
        assert exs[-1]["mention_present"].shape == (3,) and exs[-1]["mention_id"] in exs[-1]["mention_present"]
        assert (exs[-1]["mention_present"] == -1).sum() == 3 - len(phrase_sets[-1])
    for ex in exs:
        for other, phrases in zip(exs, phrase_sets):
            assert (ex["mention_id"] in other["mention_present"]) == (ex["mention"] in phrases)
    from vlmjax.data.filters import caption_hash

    assert exs[0]["mention_id"] == caption_hash(exs[0]["mention"]) % (1 << 31)
    code = f"from vlmjax.data.mentions import text_id; print(text_id({exs[0]['mention']!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout
    assert int(out) == exs[0]["mention_id"]


def test_unsized_mentions_are_true_of_either_size_and_their_negatives_of_neither():
    # `unsized`: some mentions leave out the size ("a red circle"); such a text is true of a scene holding that
    # colour-shape pair at any size, so the present ids hold both phrases of each object
    fn = ops.get_preprocess_fn([dict(op="scene_object_mention", prob=1.0, num=6, present_slots=6, unsized=0.5,
                                     text="mention", neg="mention_neg", avoid=["red square"])])
    exs, truths = [], []
    for seed in range(60):
        _, objs = render_scene(seed, 64)
        ex = fn({"objects": _objects(objs)}, np.random.default_rng(seed))
        pairs = {f"a {o['color']} {o['shape']}" for o in objs}
        exs.append(ex)
        truths.append(_phrases(objs) | pairs)
        words = ex["mention"].split()
        if len(words) == 3:  # unsized: its negatives are colour-shape pairs the scene lacks, one word away
            assert ex["mention"] in pairs
            for neg, ok in zip(ex["mention_neg"], ex["mention_neg_valid"]):
                if ok:
                    assert len(neg.split()) == 3 and neg not in pairs and neg != "a red square"
                    assert sum(a != b for a, b in zip(neg.split(), words)) == 1
        else:
            assert ex["mention"] in _phrases(objs)
        assert (ex["mention_present"] >= 0).sum() == 2 * len(objs)
    assert 15 < sum(len(e["mention"].split()) == 3 for e in exs) < 45
    for ex in exs:
        for other, truth in zip(exs, truths):
            assert (ex["mention_id"] in other["mention_present"]) == (ex["mention"] in truth)
    # at 0 no extra rng draw: the mentions are those of a run without the option
    plain = ops.get_preprocess_fn([dict(op="scene_object_mention", prob=1.0, num=6)])
    zero = ops.get_preprocess_fn([dict(op="scene_object_mention", prob=1.0, num=6, unsized=0.0)])
    _, objs = render_scene(5, 64)
    a, b = (f({"objects": _objects(objs)}, np.random.default_rng(1)) for f in (plain, zero))
    assert a["text"] == b["text"] and a["text_neg"] == b["text_neg"]


@pytest.mark.parametrize("kwargs", [dict(prob=1.5, num=2), dict(prob=0.5, num=0), dict(prob=0.5, num=2, avoid="red square"),
                                    dict(prob=0.5, num=2, present_slots=3), dict(prob=1.0, num=2, unsized=2.0)])
def test_mention_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="scene_object_mention"):
        ops.get_preprocess_fn([dict(op="scene_object_mention", **kwargs)])
