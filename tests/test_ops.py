"""Preprocessing ops against independent numpy computations; spec validation messages; DropExample."""
import io

import ml_collections
import numpy as np
import pytest
from PIL import Image

from vlmjax.data import ops
from vlmjax.data.ops import DropExample, get_preprocess_fn, validate_specs


def _img(h=24, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encode(arr, fmt="PNG"):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _run(specs, ex, seed=0, tokenizer=None):
    return get_preprocess_fn(specs, tokenizer=tokenizer)(ex, np.random.default_rng(seed))


class CharTokenizer:
    """Independent stand-in: one id per character (ord + 10), pad 0, bos 1, eos 2."""
    pad_id, bos_id, eos_id = 0, 1, 2

    def encode(self, text):
        return [ord(c) + 10 for c in text]


# ---- images ------------------------------------------------------------------------------------------------------
def test_decode_png_jpeg_gray_and_passthrough():
    img = _img()
    out = _run([dict(op="decode")], {"image": _encode(img)})["image"]
    np.testing.assert_array_equal(out, img)
    smooth = np.broadcast_to(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (24, 32, 3)).copy()
    jpg = _run([dict(op="decode")], {"image": _encode(smooth, "JPEG")})["image"]
    assert jpg.shape == (24, 32, 3) and np.abs(jpg.astype(int) - smooth).mean() < 3
    gray = _run([dict(op="decode")], {"image": _encode(img[..., 0])})["image"]
    assert gray.shape == (24, 32, 3) and all((gray[..., c] == img[..., 0]).all() for c in range(3))
    wrapped = _run([dict(op="decode")], {"image": np.array(_encode(img), dtype=object)})["image"]
    np.testing.assert_array_equal(wrapped, img)
    assert _run([dict(op="decode")], {"image": img})["image"] is img


def test_decode_draft_size_scales_jpegs_only():
    """A 200x328 JPEG with draft_size 48: libjpeg's 1/4 scale (50x82, the smallest >= 48 on both sides), whose
    resize to 48 stays close to the full decode's; 1/8 would be 25x41. PNGs, and JPEGs under twice the size, decode
    whole."""
    yy, xx = np.mgrid[0:200, 0:328]
    photo = np.stack([xx * 255 // 327, yy * 255 // 199, (xx + yy) % 256], -1).astype(np.uint8)
    jpeg = _encode(photo, "JPEG")
    draft = _run([dict(op="decode", draft_size=48)], {"image": jpeg})["image"]
    assert draft.shape == (50, 82, 3)
    full = _run([dict(op="decode")], {"image": jpeg})["image"]
    resized = [_run([dict(op="resize", size=48)], {"image": im})["image"].astype(float) for im in (draft, full)]
    psnr = 10 * np.log10(255 ** 2 / np.mean((resized[0] - resized[1]) ** 2))
    assert psnr > 30, psnr
    assert _run([dict(op="decode", draft_size=[120, 48])], {"image": jpeg})["image"].shape == (200, 328, 3)
    png = _encode(photo)
    np.testing.assert_array_equal(_run([dict(op="decode", draft_size=48)], {"image": png})["image"], photo)
    with pytest.raises(ValueError, match=r"preprocess\[0\] \('decode'\): size must be"):
        validate_specs([dict(op="decode", draft_size=0)])


def test_decode_then_resize_fused_gives_the_two_ops_pixels(monkeypatch):
    """get_preprocess_fn runs a decode followed by a resize of the same field as one op (no numpy round trip in
    between): for PNG, grayscale and RGBA PNG, JPEG with and without draft_size, arrays that pass through, an
    image already at the size, and every resize method, the pixels equal the two ops run separately."""
    yy, xx = np.mgrid[0:120, 0:200]
    photo = np.stack([xx * 255 // 199, yy * 255 // 119, (xx + yy) % 256], -1).astype(np.uint8)
    rgba = np.concatenate([photo, np.full((120, 200, 1), 128, np.uint8)], -1)
    images = [_encode(photo), _encode(photo[..., 0]), _encode(rgba), _encode(photo, "JPEG"), photo, photo[..., :1],
              photo[..., 0], np.array(_encode(photo), dtype=object), _encode(photo[:48, :40])]
    built = []
    monkeypatch.setattr(ops, "_decode_then_resize", lambda *a, f=ops._decode_then_resize: built.append(a) or f(*a))
    for method in ("bilinear", "bicubic", "nearest", "area"):
        for draft in (None, 48):
            specs = [dict(op="decode", **({"draft_size": draft} if draft else {})),
                     dict(op="resize", size=[48, 40], method=method), dict(op="value_range")]
            fused, apart = get_preprocess_fn(specs), get_preprocess_fn(specs, fuse=False)
            for i, image in enumerate(images):
                ex = {"image": image, "label": 3}
                got, want = fused(ex, None), apart(ex, None)
                assert sorted(got) == sorted(want) and got["label"] == 3
                np.testing.assert_array_equal(got["image"], want["image"], err_msg=f"{method} {draft} {i}")
    assert len(built) == 8  # every fused pipeline above was fused
    with pytest.raises(DropExample, match="corrupt_image"):
        get_preprocess_fn([dict(op="decode"), dict(op="resize", size=8)])({"image": b"not an image"}, None)
    # a resize of another field, or another op between the two, leaves them as they are
    built.clear()
    ex = {"image": _encode(photo), "mask": _encode(photo)}
    for specs in ([dict(op="decode", key="mask"), dict(op="decode"), dict(op="resize", size=8, key="mask")],
                  [dict(op="decode"), dict(op="flip_lr", p=0.0), dict(op="resize", size=8)]):
        got = get_preprocess_fn(specs)(ex, np.random.default_rng(0))
        want = get_preprocess_fn(specs, fuse=False)(ex, np.random.default_rng(0))
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    assert built == []


@pytest.mark.parametrize("bad", [b"\x89PNG this is not an image", b"", None])
def test_decode_corrupt_raises_drop(bad):
    data = _encode(_img())[:60] if bad is None else bad  # None: a truncated real PNG
    with pytest.raises(DropExample) as e:
        _run([dict(op="decode")], {"image": data})
    assert e.value.reason == "corrupt_image"


def test_resize_nearest_matches_index_formula():
    img = _img(20, 30)
    out = _run([dict(op="resize", size=[8, 12], method="nearest")], {"image": img})["image"]
    rows = np.floor((np.arange(8) + 0.5) * 20 / 8).astype(int)
    cols = np.floor((np.arange(12) + 0.5) * 30 / 12).astype(int)
    np.testing.assert_array_equal(out, img[rows][:, cols])


def test_resize_bilinear_preserves_linear_ramps():
    h, w = 40, 60
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([2 * xx + 30, 3 * yy + 20, xx + yy + 40], -1).round().astype(np.uint8)
    for size, (oh, ow) in [(20, (20, 20)), ([30, 45], (30, 45))]:
        raw = _run([dict(op="resize", size=size)], {"image": img})["image"]
        assert raw.shape == (oh, ow, 3) and raw.dtype == np.uint8
        out = raw.astype(np.float64)
        # Output pixel centre (i + 0.5) maps to input coordinate (i + 0.5) * in / out - 0.5.
        sy = (np.arange(oh) + 0.5) * h / oh - 0.5
        sx = (np.arange(ow) + 0.5) * w / ow - 0.5
        ref = np.stack([2 * sx[None, :] + 30 + 0 * sy[:, None], 3 * sy[:, None] + 20 + 0 * sx[None, :],
                        sx[None, :] + sy[:, None] + 40], -1)
        inner = (slice(2, -2), slice(2, -2))
        assert np.abs(out[inner] - ref[inner]).max() <= 1.01
    f = img.astype(np.float32) / 255
    outf = _run([dict(op="resize", size=20)], {"image": f})["image"]
    assert outf.dtype == np.float32
    np.testing.assert_allclose(outf * 255, _run([dict(op="resize", size=20)], {"image": img})["image"], atol=1.01)


def test_center_crop_matches_slicing():
    img = _img(7, 9)
    out = _run([dict(op="center_crop", size=4)], {"image": img})["image"]
    np.testing.assert_array_equal(out, img[1:5, 2:6])
    out = _run([dict(op="center_crop", size=[7, 3])], {"image": img})["image"]
    np.testing.assert_array_equal(out, img[:, 3:6])


def test_crop_boxes_respect_scale_and_ratio():
    rng = np.random.default_rng(0)
    boxes = [ops.sample_crop_box(48, 64, rng, (0.3, 0.9), (0.5, 2.0)) for _ in range(300)]
    for t, l, ch, cw in boxes:
        assert 0 <= t and t + ch <= 48 and 0 <= l and l + cw <= 64
        assert 0.3 - 0.05 <= ch * cw / (48 * 64) <= 0.9 + 0.05
        assert 0.5 * 0.9 <= cw / ch <= 2.0 * 1.1
    assert len(set(boxes)) > 250
    # A window that cannot fit (ratio far from the image's) falls back to the largest central crop.
    assert ops.sample_crop_box(10, 100, np.random.default_rng(0), (0.9, 1.0), (1.0, 1.0)) == (0, 45, 10, 10)


def test_random_resized_crop_is_resize_of_sampled_window():
    img = _img(48, 64)
    spec = dict(op="random_resized_crop", size=16, scale=[0.3, 0.9])
    for seed in range(3):
        out = _run([spec], {"image": img}, seed=seed)["image"]
        t, l, ch, cw = ops.sample_crop_box(48, 64, np.random.default_rng(seed), (0.3, 0.9), (3 / 4, 4 / 3))
        ref = np.asarray(Image.fromarray(img[t:t + ch, l:l + cw]).resize((16, 16), Image.BILINEAR))
        np.testing.assert_array_equal(out, ref)
    whole = _run([dict(op="random_resized_crop", size=12, scale=[1, 1], ratio=[1, 1])], {"image": img[:, :48]})
    np.testing.assert_array_equal(whole["image"], np.asarray(Image.fromarray(img[:, :48]).resize((12, 12),
                                                                                                  Image.BILINEAR)))


def test_flip_lr():
    img = _img()
    np.testing.assert_array_equal(_run([dict(op="flip_lr", p=1.0)], {"image": img})["image"], img[:, ::-1])
    np.testing.assert_array_equal(_run([dict(op="flip_lr", p=0.0)], {"image": img})["image"], img)
    flips = [not np.array_equal(_run([dict(op="flip_lr")], {"image": img}, seed=s)["image"], img) for s in range(400)]
    assert 0.4 < np.mean(flips) < 0.6


def test_value_range():
    img = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
    out = _run([dict(op="value_range", vmin=-1, vmax=1)], {"image": img})["image"]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, img.astype(np.float64) / 255 * 2 - 1, atol=1e-6)
    out = _run([dict(op="value_range", vmin=0, vmax=1)], {"image": img})["image"]
    assert out.min() == 0 and abs(out.max() - 1) < 1e-6


# ---- text and fields ---------------------------------------------------------------------------------------------
def test_choice_single_and_aligned():
    caps = [b"a", b"b", b"c"]
    picks = {_run([dict(op="choice", key="captions", out="caption")], {"captions": caps}, seed=s)["caption"]
             for s in range(40)}
    assert picks == set(caps)
    qs, ans = [f"q{i}" for i in range(5)], [f"a{i}" for i in range(5)]
    spec = dict(op="choice", key=["questions", "answers"], out=["question", "answer"])
    for s in range(30):
        ex = _run([spec], {"questions": qs, "answers": ans}, seed=s)
        assert ex["question"][1:] == ex["answer"][1:] and ex["questions"] == qs
    with pytest.raises(DropExample):
        _run([dict(op="choice", key="captions")], {"captions": []})


def test_tokenize_pads_masks_and_truncates():
    tok = CharTokenizer()
    spec = dict(op="tokenize", key="caption", max_len=6)
    ex = _run([spec], {"caption": b"abc"}, tokenizer=tok)
    np.testing.assert_array_equal(ex["caption"], [ord("a") + 10, ord("b") + 10, ord("c") + 10, 2, 0, 0])
    np.testing.assert_array_equal(ex["caption_mask"], [1, 1, 1, 1, 0, 0])
    assert ex["caption"].dtype == np.int32
    ex = _run([dict(spec, out="ids", bos=True, eos=False)], {"caption": "abc"}, tokenizer=tok)
    np.testing.assert_array_equal(ex["ids"], [1, ord("a") + 10, ord("b") + 10, ord("c") + 10, 0, 0])
    assert ex["caption"] == "abc"
    long = _run([spec], {"caption": "abcdefgh"}, tokenizer=tok)
    np.testing.assert_array_equal(long["caption"], [ord(c) + 10 for c in "abcdef"])
    assert long["caption_mask"].all()
    for empty in ["", "   ", b" \n"]:
        with pytest.raises(DropExample) as e:
            _run([spec], {"caption": empty}, tokenizer=tok)
        assert e.value.reason == "empty_caption"


def test_keep_rename_copy():
    ex = {"a": 1, "b": 2, "c": 3}
    assert _run([dict(op="keep", keys=["a", "c"])], ex) == {"a": 1, "c": 3}
    assert _run([dict(op="rename", mapping={"a": "x", "b": "a"})], ex) == {"x": 1, "a": 2, "c": 3}
    assert _run([dict(op="copy", mapping={"a": "z"})], ex) == {"a": 1, "b": 2, "c": 3, "z": 1}
    assert ex == {"a": 1, "b": 2, "c": 3}  # input not modified
    with pytest.raises(KeyError, match="'nope'"):
        _run([dict(op="keep", keys=["nope"])], ex)


def test_chain_is_deterministic_given_rng():
    specs = [dict(op="decode"), dict(op="random_resized_crop", size=16), dict(op="flip_lr"),
             dict(op="value_range"), dict(op="choice", key="captions", out="caption"), dict(op="keep", keys=[
                 "image", "caption"])]
    ex = {"image": _encode(_img(32, 32)), "captions": [f"c{i}" for i in range(10)], "label": 3}
    a, b, c = _run(specs, ex, seed=5), _run(specs, ex, seed=5), _run(specs, ex, seed=6)
    assert set(a) == {"image", "caption"} and a["image"].shape == (16, 16, 3)
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["caption"] == b["caption"]
    assert not np.array_equal(a["image"], c["image"])


# ---- validation --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("specs,message", [
    ([dict(op="decode"), dict(op="flip_lr"), dict(op="resize", sise=8)],
     "preprocess[2] ('resize'): unknown argument 'sise'; expected one of: size, key, method"),
    ([dict(op="resise", size=8)], "preprocess[0]: unknown op 'resise' (did you mean 'resize'?)"),
    ([dict(op="resize")], "preprocess[0] ('resize'): missing argument 'size'"),
    ([dict(op="resize", size=[8, -1])], "preprocess[0] ('resize'): size must be a positive int or [h, w]"),
    ([dict(op="flip_lr", p=2)], "preprocess[0] ('flip_lr'): p must be in [0, 1]"),
    ([dict(op="tokenize", max_len=0)], "preprocess[0] ('tokenize'): max_len must be a positive int"),
    ([dict(op="tokenize", max_len=8, tokenizer="x")], "preprocess[0] ('tokenize'): unknown argument 'tokenizer'"),
    ([dict(size=8)], "preprocess[0]: unknown op None"),
])
def test_validate_specs_messages(specs, message):
    with pytest.raises(ValueError) as e:
        validate_specs(specs)
    assert message in str(e.value)


def test_validate_accepts_config_dicts_and_tokenize_needs_tokenizer():
    cfg = ml_collections.ConfigDict({"pp": [dict(op="resize", size=[8, 8]), dict(op="rename", mapping={"a": "b"}),
                                            dict(op="tokenize", key="caption", max_len=8)]})
    validate_specs(cfg.pp)
    validate_specs([ml_collections.ConfigDict(s) for s in cfg.pp])
    with pytest.raises(ValueError, match=r"preprocess\[2\] \('tokenize'\): needs a tokenizer"):
        get_preprocess_fn(cfg.pp)


# ---- hard-negative captions ----------------------------------------------------------------------------------------
GROUPS = [["circle", "square", "cross"], ["red", "blue"]]


def test_hard_negative_caption_edits_one_group_word_or_swaps_two():
    text = "a red circle left of a blue square and red-ish circles"
    words = text.split(" ")
    kinds = set()
    for s in range(200):
        ex = _run([dict(op="hard_negative_caption", groups=GROUPS, key="caption", out="neg")], {"caption": text},
                  seed=s)
        assert ex["neg_valid"] == 1 and ex["caption"] == text
        new = ex["neg"].split(" ")
        diff = [i for i, (a, b) in enumerate(zip(words, new)) if a != b]
        assert len(new) == len(words) and 1 <= len(diff) <= 2, ex["neg"]
        # whole words only: "red-ish" and "circles" never change
        assert new[-2:] == words[-2:] and all(words[i] in sum(GROUPS, []) for i in diff)
        if len(diff) == 1:  # replaced by another word of its group
            a, b = words[diff[0]], new[diff[0]]
            assert any(a in g and b in g for g in GROUPS)
            kinds.add("replace")
        else:  # two different words of one group exchanged
            i, j = diff
            assert (new[i], new[j]) == (words[j], words[i]) and any(words[i] in g and words[j] in g for g in GROUPS)
            kinds.add("swap")
    assert kinds == {"replace", "swap"}
    ex = _run([dict(op="hard_negative_caption", groups=GROUPS, swap_prob=0.0)], {"text": "a red circle"})
    assert ex["text_neg"] != "a red circle" and len(set(ex["text_neg"].split()) ^ {"a", "red", "circle"}) == 2


def test_k_hard_negative_captions_are_distinct_and_tokenize_to_k_rows():
    text = "a red circle left of a blue square"
    for s in range(50):
        ex = _run([dict(op="hard_negative_caption", groups=GROUPS, num=3)], {"text": text}, seed=s)
        assert len(ex["text_neg"]) == 3 and len(set(ex["text_neg"])) == 3 and text not in ex["text_neg"]
        assert ex["text_neg_valid"].tolist() == [1, 1, 1]
    ex = _run([dict(op="tokenize", max_len=6, key="text_neg")], {"text_neg": ["ab", "abcdefg"]},
              tokenizer=CharTokenizer())
    np.testing.assert_array_equal(ex["text_neg"], [[ord("a") + 10, ord("b") + 10, 2, 0, 0, 0],
                                                   [ord(c) + 10 for c in "abcdef"]])
    np.testing.assert_array_equal(ex["text_neg_mask"], [[1, 1, 1, 0, 0, 0], [1] * 6])
    ex = _run([dict(op="hard_negative_caption", groups=GROUPS, num=2)], {"text": "a green triangle"})
    assert ex["text_neg_valid"].tolist() == [0, 0]
    # "a red circle" allows exactly three edits (red->blue, circle->square, circle->cross): a fourth is marked invalid
    ex = _run([dict(op="hard_negative_caption", groups=GROUPS, num=4)], {"text": "a red circle"})
    assert ex["text_neg_valid"].tolist() == [1, 1, 1, 0] and ex["text_neg"][3] == "a red circle"
    assert set(ex["text_neg"][:3]) == {"a blue circle", "a red square", "a red cross"}


def test_hard_negative_phrase_swaps_exchange_whole_matches():
    phrase = r"a (?:red|blue) (?:circle|square|cross)"
    text = "a red circle left of a blue square"
    ex = _run([dict(op="hard_negative_caption", groups=[["left", "right"]], phrase=phrase, num=3, swap_prob=1.0)],
              {"text": text})
    # every swap first (one phrase swap; no word swap, "left" occurs once), then the one replacement
    assert ex["text_neg"] == ["a blue square left of a red circle", "a red circle right of a blue square", text]
    assert ex["text_neg_valid"].tolist() == [1, 1, 0]
    # a phrase swap that equals a word swap is drawn once
    ex = _run([dict(op="hard_negative_caption", groups=GROUPS, phrase=phrase, num=20)],
              {"text": "a red circle, a red square"})
    negs = [t for t, v in zip(ex["text_neg"], ex["text_neg_valid"]) if v]
    assert len(negs) == len(set(negs)) == 7 and "a red square, a red circle" in negs  # 6 replacements + 1 swap
    with pytest.raises(ValueError, match=r"phrase='a \(' is not a regular expression"):
        validate_specs([dict(op="hard_negative_caption", groups=GROUPS, phrase="a (")])


def test_hard_negative_caption_without_group_words_is_marked_invalid():
    ex = _run([dict(op="hard_negative_caption", groups=GROUPS)], {"text": b"a green triangle"})
    assert ex["text_neg"] == "a green triangle" and ex["text_neg_valid"] == 0


@pytest.mark.parametrize("groups, message", [([["circle"]], ">= 2 words"), ([["a", "b"], ["b", "c"]], "'b'"),
                                             ([], "non-empty")])
def test_hard_negative_caption_rejects_bad_groups(groups, message):
    with pytest.raises(ValueError, match=rf"preprocess\[0\] \('hard_negative_caption'\).*{message}"):
        validate_specs([dict(op="hard_negative_caption", groups=groups)])


def test_hard_negatives_never_name_an_avoided_phrase():
    # "a red circle" allows red->blue, circle->square, circle->cross; avoiding 'red square' leaves exactly two
    spec = dict(op="hard_negative_caption", groups=GROUPS, num=4, avoid=["red square"])
    ex = _run([spec], {"text": "a red circle"})
    assert ex["text_neg_valid"].tolist() == [1, 1, 0, 0]
    assert set(ex["text_neg"][:2]) == {"a blue circle", "a red cross"}
    text = "a red circle left of a blue square"  # a colour swap would write "a red square"
    for s in range(30):
        ex = _run([dict(spec, num=6, swap_prob=0.7)], {"text": text}, seed=s)
        negs = [t for t, v in zip(ex["text_neg"], ex["text_neg_valid"]) if v]
        assert negs and not any("red square" in t for t in negs)
    # whole words only: 'red squares' is not the phrase 'red square'
    ex = _run([dict(op="hard_negative_caption", groups=[["circle", "squares"]], num=1, avoid=["red square"])],
              {"text": "a red circle"})
    assert ex["text_neg"] == "a red squares" and ex["text_neg_valid"] == 1
    with pytest.raises(ValueError, match="avoid must be a list of phrases"):
        validate_specs([dict(op="hard_negative_caption", groups=GROUPS, avoid="red square")])


def test_filter_values_keeps_listed_values_and_eval_pads_the_rest():
    from vlmjax.data.pipeline import VALID_KEY, eval_batches

    source = [{"label": np.int64(i % 5), "num_objects": np.int32(1 + i % 3), "name": f"c{i % 5}".encode()}
              for i in range(30)]
    specs = [dict(op="filter_values", key="num_objects", values=[1]), dict(op="filter_values", key="label",
                                                                          values=[0, 3])]
    fn = get_preprocess_fn(specs)
    rows = [r for b in eval_batches(source, fn, batch_size=8) for r in zip(b["label"], b[VALID_KEY])]
    assert len(rows) == 32  # 30 examples padded to 4 batches of 8
    kept = [int(l) for l, v in rows if v]
    expected = [i % 5 for i in range(30) if i % 3 == 0 and i % 5 in (0, 3)]
    assert kept == expected and len(kept) == 4
    with pytest.raises(DropExample, match="value_name"):
        _run([dict(op="filter_values", key="name", values=["c1"])], source[0])
    assert _run([dict(op="filter_values", key="name", values=["c0"])], source[0]) == source[0]
    with pytest.raises(ValueError, match="values must be a non-empty list"):
        validate_specs([dict(op="filter_values", key="label", values=[])])


def test_tokenize_pad_id_keep_eos_and_canonicalize():
    tok = CharTokenizer()
    a, b, c = (ord(ch) + 10 for ch in "abc")
    ex = _run([dict(op="tokenize", max_len=5, pad_id="eos")], {"text": "ab"}, tokenizer=tok)
    assert ex["text"].tolist() == [a, b, 2, 2, 2] and ex["text_mask"].tolist() == [1, 1, 1, 0, 0]
    ex = _run([dict(op="tokenize", max_len=5, pad_id=7)], {"text": "ab"}, tokenizer=tok)
    assert ex["text"].tolist() == [a, b, 2, 7, 7]
    ex = _run([dict(op="tokenize", max_len=3, keep_eos=True)], {"text": "abcabc"}, tokenizer=tok)
    assert ex["text"].tolist() == [a, b, 2]  # cut before the eos, which stays last
    ex = _run([dict(op="tokenize", max_len=3)], {"text": "abcabc"}, tokenizer=tok)
    assert ex["text"].tolist() == [a, b, c]  # default: cut after adding it
    ex = _run([dict(op="tokenize", max_len=8, canonicalize=True)], {"text": " A, b!  C."}, tokenizer=tok)
    assert ex["text"].tolist()[:6] == [a, ord(" ") + 10, b, ord(" ") + 10, c, 2]
    with pytest.raises(ValueError, match="pad_id must be an int >= 0, 'eos' or None"):
        validate_specs([dict(op="tokenize", max_len=4, pad_id="pad")])


def test_eval_hosts_yield_equal_batch_counts_when_a_filter_empties_one_hosts_first_batch():
    """Multi-host evaluation runs collectives per batch: every process must yield the same number of batches, also
    when a selective filter drops all of one host's first rows (here host 0's first 4 records are all label 1)."""
    from vlmjax.data.pipeline import VALID_KEY, eval_batches

    labels = [1, 0] * 4 + [0, 1] * 8  # global order: host 0 reads records 0, 2, 4, ..., host 1 records 1, 3, ...
    source = [{"label": np.int64(v)} for v in labels]
    fn = get_preprocess_fn([dict(op="filter_values", key="label", values=[0])])
    per_host = [list(eval_batches(source, fn, batch_size=4, process_index=h, process_count=2)) for h in (0, 1)]
    assert len(per_host[0]) == len(per_host[1]) == 3
    kept = sum(int(b[VALID_KEY].sum()) for bs in per_host for b in bs)
    assert kept == labels.count(0)
    assert list(eval_batches(source, get_preprocess_fn([dict(op="filter_values", key="label", values=[7])]),
                             batch_size=4)) == []  # nothing survives anywhere: no batch on any host
