"""Zero-shot and retrieval metrics on hand-made embeddings with known answers, and against brute-force sorting."""
import numpy as np
import pytest

from vlmjax.evaluators.retrieval_metrics import (PROMPT_TEMPLATES, class_scores, retrieval_recall,
                                                 zeroshot_accuracy, zeroshot_classifier)


def unit(*v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def test_prompt_templates_format():
    assert len(PROMPT_TEMPLATES) >= 3
    assert all(t.format("dog").count("dog") == 1 for t in PROMPT_TEMPLATES)


def test_zeroshot_classifier_normalises_each_template_before_averaging():
    # Template 0 is long and leans towards e4, template 1 is short and leans away by the same angle: only
    # per-template normalisation cancels the lean (a plain mean would tilt towards e4).
    c, d = 3, 5
    eye = np.eye(d)
    text = np.stack([np.stack([3.0 * (eye[i] + 0.5 * eye[4]), 0.2 * (eye[i] - 0.5 * eye[4])]) for i in range(c)])
    clf = zeroshot_classifier(text)
    assert clf.shape == (c, d)
    np.testing.assert_allclose(clf, eye[:c], atol=1e-6)


def test_zeroshot_accuracy_known_ranks():
    classes = np.eye(6)
    # Each image's scores are its row; the true class sits at rank 0, 1, 0, 5 and 2.
    imgs = np.array([[.9, .1, 0, 0, 0, 0],
                     [.9, .5, .1, 0, 0, 0],
                     [0, 0, .2, .9, 0, 0],
                     [.6, .5, .4, .3, .2, .1],
                     [.1, .2, .9, .8, .7, 0]])
    labels = np.array([0, 1, 3, 5, 4])
    acc = zeroshot_accuracy(imgs, classes, labels)
    assert acc["top1"] == pytest.approx(2 / 5)
    assert acc["top5"] == pytest.approx(4 / 5)
    # Fewer than five classes: no top-5 entry.
    assert "top5" not in zeroshot_accuracy(imgs[:, :4], classes[:4, :4], np.array([0, 1, 3, 0, 2]))


def test_zeroshot_max_aggregation_scores_each_class_by_its_best_template():
    # Two classes x two templates in 3-d. The image lies near class 1's second template only: the mean ensemble
    # picks class 0 (its templates average closer), the max picks class 1.
    e = np.eye(3)
    text = np.stack([[e[0], e[0] + 0.3 * e[1]], [-e[0], e[2]]])  # [C=2, T=2, D=3]
    img = np.array([[0.35, 0.0, 0.6]])
    assert zeroshot_accuracy(img, zeroshot_classifier(text), np.array([1]))["top1"] == 0.0
    assert zeroshot_accuracy(img, text, np.array([1]))["top1"] == 1.0
    # chunking over the [n, C*T] block changes nothing
    rng = np.random.default_rng(0)
    imgs, txt, labels = rng.normal(size=(50, 8)), rng.normal(size=(7, 5, 8)), rng.integers(0, 7, 50)
    assert zeroshot_accuracy(imgs, txt, labels, chunk_size=3) == zeroshot_accuracy(imgs, txt, labels)


def test_per_class_prompt_lists_of_different_lengths():
    """Ragged class_emb (CuPL-style per-class prompts): max = each class's best prompt by brute force, in blocks
    of any size; mean = each class's own template ensemble."""
    rng = np.random.default_rng(1)
    lists = [rng.normal(size=(t, 6)) for t in (1, 4, 9, 2)]
    imgs, labels = rng.normal(size=(40, 6)), rng.integers(0, 4, 40)
    unit_rows = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    brute = np.array([[max(unit_rows(p) @ unit_rows(i)) for p in lists] for i in imgs])
    for block in (1, 7, 1 << 24):
        np.testing.assert_allclose(class_scores(imgs, lists, block=block), brute, rtol=1e-6)
    want = np.mean(brute.argmax(1) == labels)
    assert zeroshot_accuracy(imgs, lists, labels, chunk_size=7)["top1"] == pytest.approx(want)
    np.testing.assert_allclose(zeroshot_classifier(lists)[2], zeroshot_classifier(lists[2][None])[0])
    # a rectangular list is the [C, T, D] case
    same = [rng.normal(size=(3, 6)) for _ in range(4)]
    np.testing.assert_allclose(class_scores(imgs, same), class_scores(imgs, np.stack(same)), rtol=1e-6)
    with pytest.raises(ValueError, match="class 1 has no prompts"):
        class_scores(imgs, [lists[0], np.zeros((0, 6))])


def test_retrieval_one_caption_each_two_of_four_ranked_first():
    imgs = np.eye(4)
    txts = np.stack([unit(1, 0, 0, 0),
                     unit(0, 1, 0, 0),
                     unit(0, .8, .6, 0),       # image 1 outranks its image 2: rank 1
                     unit(.7, .6, 0, .39)])    # images 0 and 1 outrank image 3: rank 2
    r = retrieval_recall(imgs, txts, np.arange(4), ks=(1, 2, 3))
    assert (r["txt2img_r@1"], r["txt2img_r@2"], r["txt2img_r@3"]) == (0.5, 0.75, 1.0)
    assert r["img2txt_r@1"] == 1.0


def test_retrieval_any_caption_counts_for_image_queries():
    imgs = np.eye(2)
    txts = np.stack([unit(.6, .8), unit(.1, .995), unit(.8, .6), unit(0, 1)])
    txt_to_img = np.array([0, 0, 1, 1])
    r = retrieval_recall(imgs, txts, txt_to_img, ks=(1, 2))
    # Image 1's first caption has two other captions above it, but its second ranks 1st; image 0's best ranks 2nd.
    assert (r["img2txt_r@1"], r["img2txt_r@2"]) == (0.5, 1.0)
    assert (r["txt2img_r@1"], r["txt2img_r@2"]) == (0.25, 1.0)


def test_retrieval_matches_brute_force_sorting_and_chunking():
    rng = np.random.RandomState(0)
    n, m, d = 23, 50, 6
    imgs, txts = rng.randn(n, d), rng.randn(m, d)
    txt_to_img = rng.randint(0, n - 3, size=m)  # the last images have no captions
    ks = (1, 5, 10)
    sims = (imgs / np.linalg.norm(imgs, axis=1, keepdims=True)) @ (txts / np.linalg.norm(txts, axis=1,
                                                                                          keepdims=True)).T
    i2t = {k: [] for k in ks}
    for i in range(n):
        caps = set(np.flatnonzero(txt_to_img == i))
        if not caps:
            continue
        order = list(np.argsort(-sims[i]))
        first = min(order.index(j) for j in caps)
        for k in ks:
            i2t[k].append(first < k)
    t2i = {k: [list(np.argsort(-sims[:, j])).index(txt_to_img[j]) < k for j in range(m)] for k in ks}
    labels = rng.randint(0, 7, size=n)
    top = np.argsort(-sims[:, :7], axis=1)
    for chunk in (4, 4096):
        r = retrieval_recall(imgs, txts, txt_to_img, ks=ks, chunk_size=chunk)
        for k in ks:
            assert r[f"img2txt_r@{k}"] == pytest.approx(np.mean(i2t[k]))
            assert r[f"txt2img_r@{k}"] == pytest.approx(np.mean(t2i[k]))
        z = zeroshot_accuracy(imgs, txts[:7], labels, chunk_size=chunk)
        assert z["top1"] == pytest.approx(np.mean(top[:, 0] == labels))
        assert z["top5"] == pytest.approx(np.mean([labels[i] in top[i, :5] for i in range(n)]))


def test_retrieval_rejects_bad_indices():
    with pytest.raises(ValueError, match="txt_to_img"):
        retrieval_recall(np.eye(2), np.eye(2), np.array([0, 2]))


def test_identical_captions_are_one_answer():
    # Images 0 and 1 came with the same text (group 7), embedded once per image; image 2 has its own caption.
    # Image 1 scores the copy that came with image 0 highest: still a hit, whichever copy rounding favours.
    imgs = np.stack([unit(1, 0, 0), unit(1, .05, 0), unit(0, 0, 1)])
    # The two copies differ slightly (a stand-in for rounding under another batch layout): image 1's copy scores a
    # hair lower for both images.
    txts = np.stack([unit(1, .02, 0), unit(1, .02, 1e-3), unit(0, .1, 1)])
    txt_to_img, groups = np.array([0, 1, 2]), np.array([7, 7, 3])
    r = retrieval_recall(imgs, txts, txt_to_img, ks=(1,), txt_groups=groups)
    assert r["img2txt_r@1"] == 1.0 and r["txt2img_r@1"] == 1.0
    # By caption index alone (no groups), image 1 and image 1's copy miss: decided by that hair.
    r = retrieval_recall(imgs, txts, txt_to_img, ks=(1,))
    assert r["img2txt_r@1"] == pytest.approx(2 / 3) and r["txt2img_r@1"] == pytest.approx(2 / 3)


def test_other_exact_ties_count_in_the_query_favour():
    # Caption 1 (image 1's) scores exactly as high for image 0 as image 0's own caption: no wrong item is strictly
    # above, so image 0 is a hit at 1; the same rule for a zero-shot class tie.
    imgs = np.stack([unit(1, 1), unit(0, 1)])
    txts = np.stack([unit(1, 0), unit(0, 1)])
    assert retrieval_recall(imgs, txts, np.arange(2), ks=(1,))["img2txt_r@1"] == 1.0
    assert zeroshot_accuracy(imgs[:1], txts, np.array([1]))["top1"] == 1.0


def test_grouped_retrieval_matches_brute_force():
    """Against per-query loops over sets of texts (repeated captions, images without captions, chunking)."""
    rng = np.random.RandomState(1)
    n, m, d, ks = 17, 40, 5, (1, 3, 10)
    imgs, txts = rng.randn(n, d), rng.randn(m, d)
    txt_to_img = rng.randint(0, n - 2, size=m)
    text = [f"caption {g}" for g in rng.randint(0, 12, size=m)]  # many repeated texts
    for j in range(m):  # identical texts embed identically
        txts[j] = txts[text.index(text[j])]
    sims = (imgs / np.linalg.norm(imgs, axis=1, keepdims=True)) @ (txts / np.linalg.norm(txts, axis=1,
                                                                                          keepdims=True)).T
    texts_of = [{text[j] for j in range(m) if txt_to_img[j] == i} for i in range(n)]
    i2t = {k: [] for k in ks}
    for i in range(n):
        if not texts_of[i]:
            continue
        best = max(sims[i, j] for j in range(m) if text[j] in texts_of[i])
        above = sum(sims[i, j] > best for j in range(m) if text[j] not in texts_of[i])
        for k in ks:
            i2t[k].append(above < k)
    t2i = {k: [] for k in ks}
    for j in range(m):
        best = max(sims[i, j] for i in range(n) if text[j] in texts_of[i])
        above = sum(sims[i, j] > best for i in range(n) if text[j] not in texts_of[i])
        for k in ks:
            t2i[k].append(above < k)
    # Any distinct ids work: only equality matters. (Not hash() % N: salted per process, two texts can collide.)
    ids = {t: 1000 + 7 * i for i, t in enumerate(sorted(set(text)))}
    groups = np.array([ids[t] for t in text])
    for chunk in (3, 4096):
        r = retrieval_recall(imgs, txts, txt_to_img, ks=ks, chunk_size=chunk, txt_groups=groups)
        for k in ks:
            assert r[f"img2txt_r@{k}"] == pytest.approx(np.mean(i2t[k]))
            assert r[f"txt2img_r@{k}"] == pytest.approx(np.mean(t2i[k]))
    assert np.mean(t2i[1]) > retrieval_recall(imgs, txts, txt_to_img, ks=(1,))["txt2img_r@1"]  # groups matter here
