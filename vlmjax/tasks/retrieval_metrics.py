"""Evaluation metrics for image-text towers: zero-shot classification and image<->text retrieval recall.

Pure numpy on embeddings gathered to the host. Similarities are cosine (inputs are L2-normalised here, so already
normalised embeddings pass through unchanged). Ranks count only items scoring strictly higher than the best match,
so exact ties count in the query's favour.
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
    """Prompt-template ensemble (CLIP): text_emb float[C, T, D] -> float[C, D].

    Each template embedding is normalised before averaging so that no template dominates by its norm; the mean is
    normalised again.
    """
    text_emb = np.asarray(text_emb)
    if text_emb.ndim != 3:
        raise ValueError(f"zeroshot_classifier: text_emb must be [classes, templates, dim], got {text_emb.shape}")
    return l2_normalize(np.mean(l2_normalize(text_emb), axis=1))


def _ranks_of_target(scores, target_scores, exclude=None):
    """Number of items scoring strictly above the target: scores float[Q, K], target_scores float[Q] -> int[Q].

    exclude bool[Q, K] marks items that are not competitors (other correct answers)."""
    above = scores > target_scores[:, None]
    if exclude is not None:
        above &= ~exclude
    return np.sum(above, axis=1)


def zeroshot_accuracy(img_emb, class_emb, labels, chunk_size: int = 4096) -> dict:
    """Top-1 (and top-5 when C >= 5) accuracy of classifying images by the nearest class embedding.

    img_emb float[N, D], class_emb float[C, D], labels int[N] -> {'top1': float, 'top5': float}.
    """
    img, cls = l2_normalize(img_emb), l2_normalize(class_emb)
    labels = np.asarray(labels)
    if labels.shape != (img.shape[0],):
        raise ValueError(f"zeroshot_accuracy: labels {labels.shape} do not match {img.shape[0]} images")
    ranks = []
    for start in range(0, img.shape[0], chunk_size):
        scores = img[start:start + chunk_size] @ cls.T  # [n, C]
        target = np.take_along_axis(scores, labels[start:start + chunk_size, None], axis=1)[:, 0]
        ranks.append(_ranks_of_target(scores, target))
    ranks = np.concatenate(ranks) if ranks else np.zeros((0,), int)
    out = {"top1": float(np.mean(ranks < 1))}
    if cls.shape[0] >= 5:
        out["top5"] = float(np.mean(ranks < 5))
    return out


def retrieval_recall(img_emb, txt_emb, txt_to_img, ks: Sequence[int] = (1, 5, 10), chunk_size: int = 4096) -> dict:
    """Recall@k in both directions; several captions may describe one image.

    img_emb float[N, D], txt_emb float[M, D], txt_to_img int[M] (the image each caption describes) ->
    {'img2txt_r@k': float, 'txt2img_r@k': float for k in ks}. An image query is a hit when ANY of its captions is
    in the top k; images without captions are left out of img2txt. A caption query is a hit when its image is in
    the top k.
    """
    img, txt = l2_normalize(img_emb), l2_normalize(txt_emb)
    txt_to_img = np.asarray(txt_to_img)
    if txt_to_img.shape != (txt.shape[0],):
        raise ValueError(f"retrieval_recall: txt_to_img {txt_to_img.shape} does not match {txt.shape[0]} captions")
    if txt_to_img.size and (txt_to_img.min() < 0 or txt_to_img.max() >= img.shape[0]):
        raise ValueError(f"retrieval_recall: txt_to_img must index the {img.shape[0]} images")

    img_ranks = []
    has_caption = np.bincount(txt_to_img, minlength=img.shape[0]) > 0
    for start in range(0, img.shape[0], chunk_size):
        ids = np.arange(start, min(start + chunk_size, img.shape[0]))
        scores = img[ids] @ txt.T  # [n, M]
        positive = txt_to_img[None, :] == ids[:, None]
        best = np.max(np.where(positive, scores, -np.inf), axis=1)
        img_ranks.append(_ranks_of_target(scores, best, exclude=positive)[has_caption[ids]])

    txt_ranks = []
    for start in range(0, txt.shape[0], chunk_size):
        scores = txt[start:start + chunk_size] @ img.T  # [m, N]
        target = np.take_along_axis(scores, txt_to_img[start:start + chunk_size, None], axis=1)[:, 0]
        txt_ranks.append(_ranks_of_target(scores, target))

    img_ranks = np.concatenate(img_ranks) if img_ranks else np.zeros((0,), int)
    txt_ranks = np.concatenate(txt_ranks) if txt_ranks else np.zeros((0,), int)
    out = {}
    for k in ks:
        out[f"img2txt_r@{k}"] = float(np.mean(img_ranks < k)) if img_ranks.size else float("nan")
        out[f"txt2img_r@{k}"] = float(np.mean(txt_ranks < k)) if txt_ranks.size else float("nan")
    return out
