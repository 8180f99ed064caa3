"""Evaluation metrics for image-text towers: zero-shot classification and image<->text retrieval recall.

Pure numpy on embeddings gathered to the host. Similarities are cosine (inputs are L2-normalised here, so already
normalised embeddings pass through unchanged).

Ties, defined explicitly:
  * Identical captions are one answer. Captions with equal `txt_groups` ids (the evaluator gives equal ids to
    captions whose token ids are equal, i.e. identical to the model) are interchangeable: if image A's caption is
    also image B's caption, that text is a correct answer for both images, and both images are correct answers for
    it. Without this, a dataset with repeated captions (scenes: "one shape: a small blue triangle" describes ~1 in
    50 single-object images) has R@1 decided by float rounding between bitwise-equal or ulp-apart scores of
    identical texts, i.e. by batch layout and mesh, not by the model.
  * Any other exact tie counts in the query's favour: a rank counts only the wrong items scoring strictly higher
    than the best correct one (same for zero-shot classes).
"""
from typing import Sequence

import numpy as np

# A short CLIP-style ensemble (the CLIP paper uses 80 ImageNet templates; a handful captures most of the gain).
PROMPT_TEMPLATES = (
    "a photo of a {}.",
    "an image of a {}.",
    "a picture showing a {}.",
    "a close-up photo of a {}.",
    "a photo of the {}.",
    "a blurry photo of a {}.",
    "a drawing of a {}.",
)


def l2_normalize(x, axis: int = -1, eps: float = 1e-12):
    """float[..., D] -> same shape, unit L2 norm along `axis` (in float32 or wider)."""
    x = np.asarray(x, dtype=np.result_type(np.asarray(x).dtype, np.float32))
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def zeroshot_classifier(text_emb):
    """Prompt-template ensemble (CLIP): text_emb float[C, T, D] (or a list of C float[T_c, D]: per-class prompt
    lists) -> float[C, D].

    Each template embedding is normalised before averaging so that no template dominates by its norm; the mean is
    normalised again.
    """
    if isinstance(text_emb, (list, tuple)):
        return np.stack([zeroshot_classifier(np.asarray(e)[None])[0] for e in text_emb])
    text_emb = np.asarray(text_emb)
    if text_emb.ndim != 3:
        raise ValueError(f"zeroshot_classifier: text_emb must be [classes, templates, dim], got {text_emb.shape}")
    return l2_normalize(np.mean(l2_normalize(text_emb), axis=1))


def class_scores(img_emb, class_emb, block: int = 1 << 24) -> np.ndarray:
    """Cosine of each image with each class: img_emb float[N, D]; class_emb float[C, D] (one embedding per class,
    e.g. `zeroshot_classifier`'s mean), or float[C, T, D] or a list of C float[T_c, D] (a class scores its
    best-matching prompt: max aggregation) -> float[N, C]. At most `block` image x prompt cosines exist at once
    (a grammar's caption space has 1e5 prompts per class)."""
    img = l2_normalize(img_emb)
    if not isinstance(class_emb, (list, tuple)) and np.ndim(class_emb) == 2:
        return img @ l2_normalize(class_emb).T
    per_class = [l2_normalize(e) for e in class_emb]
    out = np.empty((img.shape[0], len(per_class)), img.dtype)
    for c, prompts in enumerate(per_class):
        if len(prompts) == 0:
            raise ValueError(f"class_scores: class {c} has no prompts")
        step = max(1, block // len(prompts))
        for start in range(0, img.shape[0], step):
            out[start:start + step, c] = np.max(img[start:start + step] @ prompts.T, axis=1)
    return out


def _ranks(scores, correct):
    """Wrong items scoring strictly above the best correct one: scores float[Q, K], correct bool[Q, K] -> int[Q]
    (a query with no correct item gets rank K)."""
    best = np.max(np.where(correct, scores, -np.inf), axis=1)
    return np.sum((scores > best[:, None]) & ~correct, axis=1)


def zeroshot_accuracy(img_emb, class_emb, labels, chunk_size: int = 4096) -> dict:
    """Top-1 (and top-5 when C >= 5) accuracy of classifying images by their best-scoring class.

    img_emb float[N, D]; class_emb as `class_scores` takes it (float[C, D]; float[C, T, D] or a list of C
    float[T_c, D] for max aggregation); labels int[N] -> {'top1': float, 'top5': float}.
    """
    img_emb, n_cls, labels = np.asarray(img_emb), len(class_emb), np.asarray(labels)
    if labels.shape != (img_emb.shape[0],):
        raise ValueError(f"zeroshot_accuracy: labels {labels.shape} do not match {img_emb.shape[0]} images")
    ranks = []
    for start in range(0, labels.shape[0], chunk_size):
        scores = class_scores(img_emb[start:start + chunk_size], class_emb)  # [n, C]
        correct = labels[start:start + chunk_size, None] == np.arange(n_cls)[None, :]
        ranks.append(_ranks(scores, correct))
    ranks = np.concatenate(ranks) if ranks else np.zeros((0,), int)
    out = {"top1": float(np.mean(ranks < 1))}
    if n_cls >= 5:
        out["top5"] = float(np.mean(ranks < 5))
    return out


def retrieval_recall(img_emb, txt_emb, txt_to_img, ks: Sequence[int] = (1, 5, 10), chunk_size: int = 4096,
                     txt_groups=None) -> dict:
    """Recall@k in both directions; several captions may describe one image, one text may describe several.

    img_emb float[N, D], txt_emb float[M, D], txt_to_img int[M] (the image each caption came with), txt_groups
    int[M] (equal ids = identical caption text; default: all distinct) -> {'img2txt_r@k', 'txt2img_r@k' for k in ks}.

    A caption text is correct for an image when any caption of its group came with that image. An image query is a
    hit at k when fewer than k wrong captions score strictly above its best correct one (images without captions
    are left out); a caption query likewise over images. With all groups distinct this is the usual definition.
    """
    img, txt = l2_normalize(img_emb), l2_normalize(txt_emb)
    txt_to_img = np.asarray(txt_to_img)
    m, n = txt.shape[0], img.shape[0]
    if txt_to_img.shape != (m,):
        raise ValueError(f"retrieval_recall: txt_to_img {txt_to_img.shape} does not match {m} captions")
    if txt_to_img.size and (txt_to_img.min() < 0 or txt_to_img.max() >= n):
        raise ValueError(f"retrieval_recall: txt_to_img must index the {n} images")
    groups = np.arange(m) if txt_groups is None else np.unique(np.asarray(txt_groups), return_inverse=True)[1]
    if groups.shape != (m,):
        raise ValueError(f"retrieval_recall: txt_groups {np.shape(txt_groups)} does not match {m} captions")
    num_groups = int(groups.max()) + 1 if m else 0

    img_ranks = []
    has_caption = np.bincount(txt_to_img, minlength=n) > 0
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        mine = (txt_to_img >= start) & (txt_to_img < stop)
        has_group = np.zeros((stop - start, num_groups), bool)  # [n, G]: image has a caption of that text
        has_group[txt_to_img[mine] - start, groups[mine]] = True
        correct = has_group[:, groups]  # [n, M]
        img_ranks.append(_ranks(img[start:stop] @ txt.T, correct)[has_caption[start:stop]])

    txt_ranks = []
    for start in range(0, m, chunk_size):
        chunk_groups = groups[start:start + chunk_size]
        slot = np.full(num_groups, -1)  # group id -> row of `members`, for the groups in this chunk
        present = np.unique(chunk_groups)
        slot[present] = np.arange(present.size)
        members = np.zeros((present.size, n), bool)  # [g, N]: images that came with a caption of that text
        sel = slot[groups] >= 0
        members[slot[groups[sel]], txt_to_img[sel]] = True
        txt_ranks.append(_ranks(txt[start:start + chunk_size] @ img.T, members[slot[chunk_groups]]))

    img_ranks = np.concatenate(img_ranks) if img_ranks else np.zeros((0,), int)
    txt_ranks = np.concatenate(txt_ranks) if txt_ranks else np.zeros((0,), int)
    out = {}
    for k in ks:
        out[f"img2txt_r@{k}"] = float(np.mean(img_ranks < k)) if img_ranks.size else float("nan")
        out[f"txt2img_r@{k}"] = float(np.mean(txt_ranks < k)) if txt_ranks.size else float("nan")
    return out

