"""Hard-negative captions for contrastive training, as a preprocess op (NegCLIP-style).

Yuksekgonul et al. 2023 ("When and why vision-language models behave like bags-of-words") show that contrastive
towers trained on random in-batch negatives ignore what those negatives rarely contrast (word order, attribute
binding), and fix it by adding, for each image, a perturbed caption that is false for it. Here a caption is
perturbed by one edit: inside a word group the config names (e.g. the shape nouns), replace one occurrence with
another member of its group, or swap two different members of a group that both occur (binding: "a red circle left of
a blue square" -> "a red square left of a blue circle"); or, with a `phrase` regex, swap two different phrases it
matches (order: "a red circle left of a blue square" -> "a blue square left of a red circle"). Groups and phrases
must be chosen so that every such edit makes the caption false for its image; for `scenes`, whose objects have
distinct (colour, shape) pairs, colour, shape and size words and the object phrases are.

Op:
  hard_negative_caption(groups, key='text', out='text_neg', swap_prob=0.5, num=1, phrase=None, avoid=())
      text -> `out` (the perturbed text) and `<out>_valid` int32 (0 when no edit applies: `out` is then the
      unchanged text and the loss must skip it). Put it before the `tokenize` op of `out`. Each draw is a swap
      (of words or phrases) with probability `swap_prob` while one is left, else a replacement. With num=K > 1,
      `out` is a list of K different edits (drawn without replacement; valid 0 for those the caption runs out of)
      and `<out>_valid` int32[K]; `tokenize` then gives int32[K, L]. More negatives per image give more of the
      rare contrasts per step. `avoid`: phrases (whole words, e.g. held-out class names 'red square') that no
      negative may contain: an edit whose text would name one is never drawn, so a training run that withholds
      those compositions does not show them as negative captions either.
"""
import re
from typing import List, Optional, Sequence, Tuple

import numpy as np

from vlmjax.data.op_registry import Op, as_text, get, register

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
                    swap_prob: float = 0.5, phrase: Optional[str] = None, avoid: Sequence[str] = ()) -> tuple:
    """(perturbed text, True) after one replace or swap edit; (text, False) if no edit applies.

    Word matching is on whole words, case-sensitive; everything between words is kept as is.
    """
    texts, valid = distinct_negatives(text, groups, rng, 1, swap_prob, phrase, avoid)
    return texts[0], bool(valid[0])


Edit = List[Tuple[int, int, str]]  # (start, end, replacement) spans of the original text, disjoint


def _swap(a, b) -> Edit:
    return [(a[0], a[1], b[2]), (b[0], b[1], a[2])]


def caption_edits(text: str, groups: Sequence[Sequence[str]], phrase: Optional[str] = None) -> tuple:
    """(swaps: [Edit], replaces: {word span index: [Edit]}) -- every edit the op can draw for `text`."""
    group_of = {w: gi for gi, g in enumerate(groups) for w in g}
    spans = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(text) if m.group() in group_of]
    # Swaps need two occurrences of different words of one group (or two different phrases).
    swaps = [_swap(spans[i], spans[j]) for i in range(len(spans)) for j in range(i + 1, len(spans))
             if group_of[spans[i][2]] == group_of[spans[j][2]] and spans[i][2] != spans[j][2]]
    if phrase:
        found = [(m.start(), m.end(), m.group()) for m in re.finditer(phrase, text)]
        swaps += [_swap(found[i], found[j]) for i in range(len(found)) for j in range(i + 1, len(found))
                  if found[i][2] != found[j][2]]
    replaces = {i: [[(s, e, w)] for w in groups[group_of[word]] if w != word] for i, (s, e, word) in enumerate(spans)}
    return swaps, replaces


def apply_edit(text: str, edit: Edit) -> str:
    out, last = [], 0
    for s, e, new in sorted(edit):
        out.append(text[last:s] + new)
        last = e
    return "".join(out) + text[last:]


def distinct_negatives(text: str, groups: Sequence[Sequence[str]], rng: np.random.Generator, num: int,
                       swap_prob: float = 0.5, phrase: Optional[str] = None, avoid: Sequence[str] = ()) -> tuple:
    """([num] texts, int32[num] valid): `num` different edits, drawn without replacement.

    Each draw is a swap with probability `swap_prob` (while one is left), else a replacement (a group word first,
    then one of its alternatives). When the caption allows fewer than `num` edits, the rest are the unchanged text
    with valid 0. No text that contains a phrase of `avoid` (whole words) is drawn.
    """
    swaps, replaces = caption_edits(text, groups, phrase)
    forbidden = _avoid_pattern(avoid)

    def draw():  # the next edit's text that is new (a phrase swap can equal a word swap), None when none is left
        while True:
            open_spans = [i for i, edits in replaces.items() if edits]
            if swaps and (rng.random() < swap_prob or not open_spans):
                edit = swaps.pop(int(rng.integers(len(swaps))))
            elif open_spans:
                i = open_spans[int(rng.integers(len(open_spans)))]
                edit = replaces[i].pop(int(rng.integers(len(replaces[i]))))
            else:
                return None
            new = apply_edit(text, edit)
            if new != text and new not in texts and not (forbidden and forbidden.search(new)):
                return new

    texts, valid = [], []
    for _ in range(num):
        new = draw()
        texts.append(text if new is None else new)
        valid.append(new is not None)
    return texts, np.array(valid, np.int32)


def _avoid_pattern(avoid: Sequence[str]):
    """One regex matching any of the phrases as whole words (their spaces match any whitespace), or None."""
    words = [r"\s+".join(map(re.escape, str(p).split())) for p in avoid if str(p).strip()]
    return re.compile(r"(?<![\w'-])(?:" + "|".join(words) + r")(?![\w'-])") if words else None


@register("hard_negative_caption", reads=lambda a: [a["key"]])
def hard_negative_caption(groups, key: str = "text", out: str = "text_neg", swap_prob: float = 0.5,
                          num: int = 1, phrase: Optional[str] = None, avoid: Sequence[str] = ()) -> Op:
    groups = _check_groups(groups)
    if isinstance(avoid, str) or not all(isinstance(p, str) for p in avoid):
        raise ValueError(f"avoid must be a list of phrases, got {avoid!r}")
    avoid = tuple(avoid)
    if phrase:
        try:
            re.compile(phrase)
        except re.error as e:
            raise ValueError(f"phrase={phrase!r} is not a regular expression: {e}") from None
    if not 0 <= swap_prob <= 1:
        raise ValueError(f"swap_prob must be in [0, 1], got {swap_prob}")
    if not (isinstance(num, (int, np.integer)) and num >= 1):
        raise ValueError(f"num must be an int >= 1, got {num!r}")

    def op(ex, rng):
        text = as_text(get(ex, key))
        if num == 1:
            neg, ok = perturb_caption(text, groups, rng, swap_prob, phrase, avoid)
            return {**ex, out: neg, f"{out}_valid": np.int32(ok)}
        negs, valid = distinct_negatives(text, groups, rng, num, swap_prob, phrase, avoid)
        return {**ex, out: negs, f"{out}_valid": valid}

    return op
