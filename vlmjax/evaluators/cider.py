"""Caption/answer text metrics: CIDEr-D (Vedantam et al. 2015, the coco-caption definition) and exact match.

CIDEr-D of a hypothesis h against the references R of its image:
    10 * mean_{n=1..4} (1/|R|) sum_{r in R} exp(-(len_h - len_r)^2 / (2 sigma^2)) *
         sum_g min(v_h[g], v_r[g]) * v_r[g] / (|v_h| |v_r|)
over n-grams g of order n, with tf-idf vectors v[g] = count(g) * (log(#images) - log(max(1, df(g)))), df(g) = the
number of images whose references contain g (the idf comes from the evaluated references themselves, "corpus" mode).
Differences to plain CIDEr: the min() clipping and the Gaussian length penalty (sigma 6). As in coco-caption, the
length in the penalty is the number of bigrams (words - 1), a quirk kept so the numbers compare. Texts are
normalised (lower case, punctuation dropped) instead of the Java PTB tokenizer; for these captions the two agree.
"""
import collections
import math
import re
from typing import Dict, List, Sequence, Tuple

NGRAMS = 4
SIGMA = 6.0


def normalize(text: str) -> str:
    """Lower case, punctuation removed, single spaces: 'A red circle.' -> 'a red circle'."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def ngram_counts(text: str, n: int = NGRAMS) -> Dict[Tuple[str, ...], int]:
    words = normalize(text).split()
    counts = collections.Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i:i + k])] += 1
    return counts


def _vector(counts, df, log_n: float, n: int):
    """tf-idf per n-gram order: ([{gram: weight}] * n, [norm] * n, length = number of bigrams)."""
    vec = [dict() for _ in range(n)]
    norm = [0.0] * n
    length = 0
    for gram, tf in counts.items():
        k = len(gram) - 1
        w = tf * (log_n - math.log(max(1.0, df.get(gram, 0.0))))
        vec[k][gram] = w
        norm[k] += w * w
        if k == 1:
            length += tf
    return vec, [math.sqrt(x) for x in norm], length


def cider_d_scores(hyps: Sequence[str], refs: Sequence[Sequence[str]], n: int = NGRAMS,
                   sigma: float = SIGMA) -> List[float]:
    """Per-image CIDEr-D of hyps[i] against refs[i] (a non-empty list of strings)."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} reference lists")
    if any(len(r) == 0 for r in refs):
        raise ValueError("every image needs at least one reference")
    ref_counts = [[ngram_counts(r, n) for r in rs] for rs in refs]
    df = collections.Counter()
    for rs in ref_counts:
        df.update(set(g for c in rs for g in c))
    log_n = math.log(float(len(refs))) if refs else 0.0
    scores = []
    for h, rs in zip(hyps, ref_counts):
        vh, nh, lh = _vector(ngram_counts(h, n), df, log_n, n)
        total = [0.0] * n
        for rc in rs:
            vr, nr, lr = _vector(rc, df, log_n, n)
            penalty = math.exp(-((lh - lr) ** 2) / (2 * sigma ** 2))
            for k in range(n):
                val = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
                if nh[k] != 0 and nr[k] != 0:
                    val /= nh[k] * nr[k]
                total[k] += val * penalty
        scores.append(10.0 * sum(total) / n / len(rs))
    return scores


def cider_d(hyps: Sequence[str], refs: Sequence[Sequence[str]], n: int = NGRAMS, sigma: float = SIGMA) -> float:
    """Corpus CIDEr-D: the mean of the per-image scores (0 for an empty corpus)."""
    scores = cider_d_scores(hyps, refs, n, sigma)
    return float(sum(scores) / len(scores)) if scores else 0.0


def exact_match(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Fraction of hypotheses equal (after `normalize`) to one of their references."""
    if not hyps:
        return 0.0
    hits = [normalize(h) in {normalize(r) for r in rs} for h, rs in zip(hyps, refs)]
    return float(sum(hits) / len(hits))
