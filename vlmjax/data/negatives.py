"""Hard-negative captions for contrastive training, as a preprocess op (NegCLIP-style).

Yuksekgonul et al. 2023 ("When and why vision-language models behave like bags-of-words") show that contrastive
towers trained on random in-batch negatives ignore what those negatives rarely contrast (word order, attribute
binding), and fix it by adding, for each image, a perturbed caption that is false for it. Here a caption is
perturbed by one edit inside a word group the config names (e.g. the shape nouns): replace one occurrence with
another member of its group, or swap two different members of a group that both occur (binding: "a red circle left of
a blue square" -> "a red square left of a blue circle"). The groups must be chosen so that every such edit makes the
caption false for its image; for `scenes`, whose objects have distinct (colour, shape) pairs, colour, shape and size
words are.

Op:
  hard_negative_caption(groups, key='text', out='text_neg', swap_prob=0.5, num=1)
      text -> `out` (the perturbed text) and `<out>_valid` int32 (0 when no word of any group occurs: `out` is then
      the unchanged text and the loss must skip it). Put it before the `tokenize` op of `out`. With num=K > 1, `out`
      is a list of K different edits (drawn without replacement; valid 0 for those the caption runs out of) and
      `<out>_valid` int32[K]; `tokenize` then gives int32[K, L]. More negatives per image give more of the rare contrast per step: with groups of
      shape and size words, K=3 draws both kinds for almost every caption.
"""
import re
from typing import List, Sequence

import numpy as np

from vlmjax.data.ops import Op, _get, _text, register

_WORD = re.compile(r"[\w'-]+")  # "red-ish" is one word, not "red"


def _check_groups(groups) -> List[List[str]]:
    groups = [[str(w) for w in g] for g in (groups or [])]
    if not groups or any(len(g) < 2 for g in groups):
        raise ValueError(f"groups must be a non-empty list of word lists, each with >= 2 words; got {groups!r}")
    words = [w for g in groups for w in g]
    dup = sorted({w for w in words if words.count(w) > 1})
    if dup:
        raise ValueError(f"groups: words {dup} appear in more than one group (or twice in one)")
    return groups


def perturb_caption(text: str, groups: Sequence[Sequence[str]], rng: np.random.Generator,
                    swap_prob: float = 0.5) -> tuple:
    """(perturbed text, True) after one replace or swap edit inside a group; (text, False) if no group word occurs.

    Word matching is on whole words, case-sensitive; everything between words is kept as is.
    """
    texts, valid = distinct_negatives(text, groups, rng, 1, swap_prob)
    return texts[0], bool(valid[0])


def distinct_negatives(text: str, groups: Sequence[Sequence[str]], rng: np.random.Generator, num: int,
                       swap_prob: float = 0.5) -> tuple:
    """([num] texts, int32[num] valid): `num` different edits, drawn without replacement.

    Each draw is a swap with probability `swap_prob` (while one is left), else a replacement (a group word first,
    then one of its alternatives). When the caption allows fewer than `num` edits, the rest are the unchanged text
    with valid 0.
    """
    group_of = {w: gi for gi, g in enumerate(groups) for w in g}
    spans = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(text) if m.group() in group_of]
    # Swaps need two occurrences of different words of one group.
    swaps = [{i: spans[j][2], j: spans[i][2]} for i in range(len(spans)) for j in range(i + 1, len(spans))
             if group_of[spans[i][2]] == group_of[spans[j][2]] and spans[i][2] != spans[j][2]]
    replaces = {i: [w for w in groups[group_of[word]] if w != word] for i, (_, _, word) in enumerate(spans)}
    texts, valid = [], []
    for _ in range(num):
        open_spans = [i for i, words in replaces.items() if words]
        if swaps and (rng.random() < swap_prob or not open_spans):
            new = swaps.pop(int(rng.integers(len(swaps))))
        elif open_spans:
            i = open_spans[int(rng.integers(len(open_spans)))]
            new = {i: replaces[i].pop(int(rng.integers(len(replaces[i]))))}
        else:
            texts.append(text)
            valid.append(0)
            continue
        out, last = [], 0
        for k, (s, e, w) in enumerate(spans):
            out.append(text[last:s] + new.get(k, w))
            last = e
        texts.append("".join(out) + text[last:])
        valid.append(1)
    return texts, np.array(valid, np.int32)


@register("hard_negative_caption")
def hard_negative_caption(groups, key: str = "text", out: str = "text_neg", swap_prob: float = 0.5,
                          num: int = 1) -> Op:
    groups = _check_groups(groups)
    if not 0 <= swap_prob <= 1:
        raise ValueError(f"swap_prob must be in [0, 1], got {swap_prob}")
    if not (isinstance(num, (int, np.integer)) and num >= 1):
        raise ValueError(f"num must be an int >= 1, got {num!r}")

    def op(ex, rng):
        text = _text(_get(ex, key))
        if num == 1:
            neg, ok = perturb_caption(text, groups, rng, swap_prob)
            return {**ex, out: neg, f"{out}_valid": np.int32(ok)}
        negs, valid = distinct_negatives(text, groups, rng, num, swap_prob)
        return {**ex, out: negs, f"{out}_valid": valid}

    return op
