"""Partial captions for `scenes`: a caption that names one object of the scene, with absent objects as negatives.

Every `scenes` caption names every object inside a sentence about the whole scene ("a large red circle with a small
blue square to its right"), so a text naming one object alone ("a small blue square") never occurs in training, and
a tower trained only on full captions ranks images by their main object (measured: docs/contrastive.md). Web
alt-text often names one thing in a picture; this op adds such text. With probability `prob` the example's caption is
replaced by the phrase of one of its objects, drawn uniformly, in the words the full captions use for it ("a small
blue square"); the `num` hard negatives become objects that are NOT in the scene, each one word away from the
mention (another colour, shape or size), so the pairwise hard-negative term teaches presence against absence. Class
labels are never used: the phrase comes from the scene's own object list, the same source as its captions.

Op:
  scene_object_mention(prob, num, key='objects', text='text', neg='text_neg', avoid=(), present_slots=0, unsized=0)
      objects {'color', 'shape', 'size'}: int[n] (the record's ClassLabel ids; nested, or flat keys
      'objects/color', ...) -> `text` (str) and, when it fires,
      `neg` (a list of `num` texts) and `<neg>_valid` int32[num]; otherwise the example is returned unchanged. Put
      it after `hard_negative_caption` (whose `num` must equal this one's) and before the `tokenize` ops. `avoid`:
      class names ("red square") that no negative may name -- a run that withholds them never shows them.
      `present_slots` > 0 (needs prob 1): also `<text>_id` int32 (a stable hash of the mention's text) and
      `<text>_present` int32[present_slots] (those of every object phrase of the scene, -1 padded), so a loss
      can tell which other images of a batch a mention is true for (`losses.contrastive.presence_loss`): text
      against text, with no class label.
      `unsized` in [0, 1]: the probability that the mention leaves out the size word ("a red circle", true of a red
      circle of either size), its negatives then absent colour-shape pairs one word away, also without a size. With
      `present_slots` the present ids then hold both phrases of every object, sized and not, so present_slots must
      be >= 2 x the objects of a scene. (No rng is drawn for it at 0: the draws of runs without it are unchanged.)
"""
from typing import Sequence

import numpy as np

from vlmjax.data.filters import caption_hash
from vlmjax.data.op_registry import Op, get, register
from vlmjax.data.scenes import COLORS, SHAPES, SIZES

_ATTRS = (("color", COLORS), ("shape", SHAPES), ("size", SIZES))


def phrase(size, color: str, shape: str) -> str:
    """The words a scenes caption uses for one object: 'a small red circle'; size None: 'a red circle'."""
    return f"a {color} {shape}" if size is None else f"a {size} {color} {shape}"


def absent_neighbours(objects, i: int, avoid: Sequence[str] = (), sized: bool = True) -> list:
    """Phrases one attribute away from object i (another colour, shape or size) that name no object of the scene;
    `sized=False`: phrases without a size ("a blue circle"), another colour or shape, whose colour-shape pair no
    object of the scene has.

    objects: {'color', 'shape', 'size'} -> int[n] ids into COLORS / SHAPES / SIZES. Sorted, so the draw below is a
    function of the rng alone.
    """
    named = _scene_names(objects)
    present = set(named) if sized else {(c, s, None) for c, s, _ in named}
    colour, shape, size = _names_of(objects, i)
    size = size if sized else None
    edits = ([(c, shape, size) for c in COLORS if c != colour] + [(colour, s, size) for s in SHAPES if s != shape]
             + ([(colour, shape, z) for z in SIZES if z != size] if sized else []))
    return sorted(phrase(z, c, s) for c, s, z in edits if (c, s, z) not in present and f"{c} {s}" not in avoid)


def text_id(text: str) -> int:
    """`filters.caption_hash` of `text` (the same in every process), folded into a non-negative int32."""
    return caption_hash(text) % (1 << 31)


def _scene_names(objects) -> list:
    """(colour, shape, size) words of every object of the scene."""
    return [_names_of(objects, j) for j in range(len(objects["color"]))]


def _names_of(objects, i: int) -> tuple:
    """(colour, shape, size) words of object i."""
    return tuple(names[int(objects[a][i])] for a, names in _ATTRS)


@register("scene_object_mention", reads=lambda a: [a["key"]])
def scene_object_mention(prob: float, num: int, key: str = "objects", text: str = "text", neg: str = "text_neg",
                         avoid: Sequence[str] = (), present_slots: int = 0, unsized: float = 0.0) -> Op:
    if not 0 <= prob <= 1:
        raise ValueError(f"scene_object_mention: prob must be in [0, 1], got {prob}")
    if not (isinstance(num, (int, np.integer)) and num >= 1):
        raise ValueError(f"scene_object_mention: num must be an int >= 1, got {num!r}")
    if isinstance(avoid, str):
        raise ValueError(f"scene_object_mention: avoid must be a list of class names, got {avoid!r}")
    if not 0 <= unsized <= 1:
        raise ValueError(f"scene_object_mention: unsized must be in [0, 1], got {unsized}")
    if present_slots and prob != 1:
        raise ValueError(f"scene_object_mention: present_slots={present_slots} needs prob=1 (every example a "
                         f"mention), got prob={prob}")
    avoid = tuple(avoid)

    def op(ex, rng):
        # the record's nested feature, or its flat 'objects/color', ... keys (as the grain source yields them)
        objects = ex[key] if key in ex else {a: get(ex, f"{key}/{a}") for a, _ in _ATTRS}
        if rng.random() >= prob:
            return ex
        i = int(rng.integers(len(objects["color"])))
        colour, shape, size = _names_of(objects, i)
        sized = not (unsized and rng.random() < unsized)
        mention = phrase(size if sized else None, colour, shape)
        candidates = absent_neighbours(objects, i, avoid, sized)
        picked = [candidates[j] for j in rng.permutation(len(candidates))[:num]]
        valid = np.zeros(num, np.int32)
        valid[:len(picked)] = 1
        out = {**ex, text: mention, neg: picked + [mention] * (num - len(picked)), f"{neg}_valid": valid}
        if present_slots:
            named = _scene_names(objects)
            # the texts true for this image: each object's phrase, and without its size when mentions may omit it
            phrases = sorted({phrase(z, c, s) for c, s, z0 in named for z in ((z0, None) if unsized else (z0,))})
            if len(phrases) > present_slots:
                raise ValueError(f"scene_object_mention: the scene has {len(phrases)} object phrases"
                                 f"{' (sized and not)' if unsized else ''} but present_slots={present_slots}")
            ids = np.full(present_slots, -1, np.int32)
            ids[:len(phrases)] = [text_id(p) for p in phrases]
            out.update({f"{text}_id": np.int32(text_id(mention)), f"{text}_present": ids})
        return out

    return op
