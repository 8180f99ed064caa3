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
  hard_negative_caption(groups, key='text', out='text_neg', swap_prob=0.5)
      text -> `out` (the perturbed text) and `<out>_valid` int32 (0 when no word of any group occurs: `out` is then
      the unchanged text and the loss must skip it). Put it before the `tokenize` op of `out`.
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
    group_of = {w: gi for gi, g in enumerate(groups) for w in g}
    spans = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(text) if m.group() in group_of]
    if not spans:
        return text, False
    # Swaps need two occurrences of different words of one group.
    swaps = [(i, j) for i in range(len(spans)) for j in range(i + 1, len(spans))
             if group_of[spans[i][2]] == group_of[spans[j][2]] and spans[i][2] != spans[j][2]]
    if swaps and rng.random() < swap_prob:
        i, j = swaps[int(rng.integers(len(swaps)))]
        new = {i: spans[j][2], j: spans[i][2]}
    else:
        i = int(rng.integers(len(spans)))
        others = [w for w in groups[group_of[spans[i][2]]] if w != spans[i][2]]
        new = {i: others[int(rng.integers(len(others)))]}
    out, last = [], 0
    for k, (s, e, w) in enumerate(spans):
        out.append(text[last:s] + new.get(k, w))
        last = e
    return "".join(out) + text[last:], True


@register("hard_negative_caption")
def hard_negative_caption(groups, key: str = "text", out: str = "text_neg", swap_prob: float = 0.5) -> Op:
    groups = _check_groups(groups)
    if not 0 <= swap_prob <= 1:
        raise ValueError(f"swap_prob must be in [0, 1], got {swap_prob}")

    def op(ex, rng):
        text, ok = perturb_caption(_text(_get(ex, key)), groups, rng, swap_prob)
        return {**ex, out: text, f"{out}_valid": np.int32(ok)}

    return op
