"""The built-in `scenes` dataset: pixels, labels and generated text agree with the scene; the tfds build reads back."""
import io
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from vlmjax.data import scenes as S

SEEDS = range(300)
TRIPLE = re.compile(r"\b(small|large) (\w+) (circle|square|triangle|cross)\b")


def _key(o):
    return (o["size"], o["color"], o["shape"])


def _components(img):
    """Objects found from pixels alone: [(bbox (y0, y1, x0, x1), bool mask in bbox, median rgb)]."""
    fg = img.max(-1).astype(int) - img.min(-1) > 60  # background is grey (channel spread <= ~16)
    lab, n = ndimage.label(fg)
    out = []
    for i, sl in enumerate(ndimage.find_objects(lab)):
        m = lab[sl] == i + 1
        out.append(((sl[0].start, sl[0].stop, sl[1].start, sl[1].stop), m, np.median(img[sl][m], 0)))
    return out


def _classify(m):
    """Shape from a component's own mask: corners filled -> square; narrow top row -> triangle; low fill -> cross."""
    h, w = m.shape
    if m[0, 0] and m[0, -1] and m[-1, 0] and m[-1, -1]:
        return "square"
    if m[0].sum() * 2 < m[-1].sum():
        return "triangle"
    return "cross" if m.mean() < 0.68 else "circle"


@pytest.mark.parametrize("size", [32, 64])
def test_pixels_match_objects(size):
    small, large = S.extents(size)
    areas = {"small": [], "large": []}
    for seed in SEEDS:
        img, objs = S.render_scene(seed, size)
        assert img.shape == (size, size, 3) and img.dtype == np.uint8
        assert 1 <= len(objs) <= 3 and len({(o["color"], o["shape"]) for o in objs}) == len(objs)
        comps = _components(img)
        assert len(comps) == len(objs), seed  # separated, all visible
        for o in objs:
            cx, cy = o["x"] * size, o["y"] * size
            # The matching component is the one whose bounding-box centre is this object's centre.
            (y0, y1, x0, x1), m, rgb = min(comps, key=lambda c: abs((c[0][2] + c[0][3]) / 2 - cx)
                                           + abs((c[0][0] + c[0][1]) / 2 - cy))
            assert abs((x0 + x1) / 2 - cx) <= 1 and abs((y0 + y1) / 2 - cy) <= 1, (seed, o)
            dist = np.abs(S.RGB - rgb).max(-1)
            assert S.COLORS[int(dist.argmin())] == o["color"] and dist.min() <= S.COLOR_JITTER + 1
            assert _classify(m) == o["shape"], (seed, o)
            extent = max(y1 - y0, x1 - x0)
            assert (extent > (small + large) / 2) == (o["size"] == "large"), (seed, o, extent)
            assert extent >= 6  # visible at 32 px
            areas[o["size"]].append(int(m.sum()))
            centre = img[int(cy), int(cx)].astype(np.float32)
            assert np.abs(centre - S.RGB[S.COLORS.index(o["color"])]).max() <= S.COLOR_JITTER + 1
    assert min(areas["large"]) > max(areas["small"])  # "largest" by size class is also largest in pixels


def test_render_is_deterministic_and_varied():
    a, oa = S.render_scene(7, 64)
    b, ob = S.render_scene(7, 64)
    np.testing.assert_array_equal(a, b)
    assert oa == ob
    ea, eb = S.make_example(7, 64), S.make_example(7, 64)
    assert ea["image"] == eb["image"] and ea["questions"] == eb["questions"] and ea["answers"] == eb["answers"]
    imgs = [S.render_scene(s, 32)[0] for s in range(20)]
    assert len({im.tobytes() for im in imgs}) == 20
    labels = [S.make_example(s, 32)["label"] for s in SEEDS]
    counts = np.bincount(labels, minlength=len(S.CLASS_NAMES))
    assert (counts > 0).all()  # every colour x shape class occurs as a main object
    n_obj = np.bincount([len(S.render_scene(s, 32)[1]) for s in SEEDS], minlength=4)
    assert n_obj[0] == 0 and (n_obj[1:] > 50).all()


def test_label_is_largest_then_leftmost():
    for seed in SEEDS:
        img, objs = S.render_scene(seed, 64)
        name = S.CLASS_NAMES[S.make_example(seed, 64)["label"]]
        main = next(o for o in objs if f"{o['color']} {o['shape']}" == name)
        rank = {"small": 0, "large": 1}
        assert all(rank[main["size"]] >= rank[o["size"]] for o in objs)
        assert all(main["x"] <= o["x"] for o in objs if o["size"] == main["size"])


def test_captions_describe_the_scene():
    words = {1: "one", 2: "two", 3: "three"}
    for seed in SEEDS:
        objs = S.render_scene(seed, 32)[1]
        by_name = {f"{o['color']} {o['shape']}": o for o in objs}
        caps = S.make_example(seed, 32)["captions"]
        assert len(caps) >= 3
        for cap in caps:
            found = [m.groups() for m in TRIPLE.finditer(cap)]
            assert sorted(found) == sorted(_key(o) for o in objs), cap  # every object exactly once
            assert re.search(r"\b(one|two|three|single|left|right)\b", cap), cap  # a count or a relation
        assert caps[0].startswith(f"{words[len(objs)]} shape")
        for cap in caps:
            for a, b in re.findall(r"\w+ (\w+ \w+) (?:to the )?left of a \w+ (\w+ \w+)", cap):
                assert by_name[a]["x"] < by_name[b]["x"], cap
            if "from left to right" in cap:
                xs = [by_name[f"{c} {s}"]["x"] for _, c, s in TRIPLE.findall(cap)]
                assert xs == sorted(xs), cap
            m = re.match(r"a \w+ (\w+ \w+) with (.*)", cap)
            if m:
                main = by_name[m[1]]
                groups = re.findall(r"(.*?) to its (left|right)(?: and |$)", m[2])
                assert sum(len(TRIPLE.findall(g)) for g, _ in groups) == len(objs) - 1, cap
                for group, side in groups:
                    for _, c, s in TRIPLE.findall(group):
                        assert (by_name[f"{c} {s}"]["x"] < main["x"]) == (side == "left"), cap


def _resolve(objs, size, pos, attr, value):
    """The objects a question's description picks out (size optional, leftmost/rightmost optional)."""
    cands = [o for o in objs if o[attr] == value and (size is None or o["size"] == size)]
    if pos == "leftmost":
        cands = [min(cands, key=lambda o: o["x"])]
    elif pos == "rightmost":
        cands = [max(cands, key=lambda o: o["x"])]
    return cands


def test_caption_space_holds_every_caption_under_its_label():
    """`captions_by_main_class` (zero-shot prompts) is the generator's caption space: every caption of rendered
    scenes is listed under the scene's label, and no caption is under two classes."""
    table = S.captions_by_main_class()
    assert set(table) == set(S.CLASS_NAMES)
    owner = {}
    for name, caps in table.items():
        for c in caps:
            assert owner.setdefault(c, name) == name, f"{c!r} under {owner[c]!r} and {name!r}"
    # 1 object: 3 phrasings with 9 regions -> 11 each; 2 and 3 objects: 3 phrasings of every ordered choice
    n_obj = 2 * len(S.CLASS_NAMES)
    n2 = n_obj * (n_obj - 2)  # distinct (colour, shape): the second object is not the first's name in either size
    n3 = n2 * (n_obj - 4)
    assert len(owner) == n_obj * 11 + 3 * (n2 + n3)
    for i in range(300):
        ex = S.make_example(S.example_seed("validation", i), 32)
        name = S.CLASS_NAMES[ex["label"]]
        for c in ex["captions"]:
            assert owner.get(c) == name, (i, c)


def test_questions_have_unique_correct_answers():
    seen = set()
    num = {"zero": 0, "one": 1, "two": 2, "three": 3}
    for seed in SEEDS:
        objs = S.render_scene(seed, 32)[1]
        ex = S.make_example(seed, 32)
        assert len(ex["questions"]) == len(ex["answers"]) == len(ex["question_types"]) >= 3
        by_name = {f"{o['color']} {o['shape']}": o for o in objs}
        for t, q, a in zip(ex["question_types"], ex["questions"], ex["answers"]):
            seen.add(t)
            if m := re.fullmatch(r"what color is the (?:(small|large) )?(?:(leftmost|rightmost) )?(\w+)\?", q):
                hits = _resolve(objs, m[1], m[2], "shape", m[3])
                assert t == "color" and len(hits) == 1 and a == hits[0]["color"], (q, a, objs)
            elif m := re.fullmatch(r"what shape is the (?:(small|large) )?(?:(leftmost|rightmost) )?(\w+) object\?", q):
                hits = _resolve(objs, m[1], m[2], "color", m[3])
                assert t == "shape" and len(hits) == 1 and a == hits[0]["shape"], (q, a, objs)
            elif q == "how many shapes are there?":
                assert t == "count" and num[a] == len(objs)
            elif m := re.fullmatch(r"how many (\w+) shapes are there\?", q):
                assert t == "count" and num[a] == sum(o["color"] == m[1] for o in objs)
            elif m := re.fullmatch(r"how many (\w+) are there\?", q):
                assert t == "count" and num[a] == sum(S.PLURALS[o["shape"]] == m[1] for o in objs)
            elif m := re.fullmatch(r"what is to the (left|right) of the (\w+ \w+)\?", q):
                ref = by_name[m[2]]
                side = [n for n, o in by_name.items() if (o["x"] < ref["x"]) == (m[1] == "left") and o is not ref]
                assert t == "relation" and side == [a], (q, a, objs)
            elif m := re.fullmatch(r"is the (\w+ \w+) to the (left|right) of the (\w+ \w+)\?", q):
                left = by_name[m[1]]["x"] < by_name[m[3]]["x"]
                assert t == "relation" and a == ("yes" if left == (m[2] == "left") else "no"), q
            else:
                raise AssertionError(f"unparsed question {q!r}")
    assert seen == {"color", "shape", "count", "relation"}


def test_built_tiny_dataset_reads_back(scenes_tiny_dir):
    import tensorflow_datasets as tfds

    sizes = {"train": 4096, "validation": 512, "test": 512}
    firsts = []
    for split, n in sizes.items():
        src = tfds.data_source("scenes/tiny", split=split, data_dir=scenes_tiny_dir, download=False,
                               decoders={"image": tfds.decode.SkipDecoding()})
        assert len(src) == n
        for i in (0, n // 2 + 3, n - 1):
            ex = src[i]
            ref = S.make_example(S.example_seed(split, i), 32)
            img = np.asarray(Image.open(io.BytesIO(ex["image"])))
            np.testing.assert_array_equal(img, S.render_scene(S.example_seed(split, i), 32)[0])
            assert ex["label"] == ref["label"] and ex["num_objects"] == ref["num_objects"]
            for k in ("captions", "questions", "answers", "question_types"):
                assert [t.decode() for t in ex[k]] == ref[k]
            objs = S.render_scene(S.example_seed(split, i), 32)[1]
            assert [S.COLORS[c] for c in ex["objects"]["color"]] == [o["color"] for o in objs]
            assert [S.SHAPES[c] for c in ex["objects"]["shape"]] == [o["shape"] for o in objs]
            assert [S.SIZES[c] for c in ex["objects"]["size"]] == [o["size"] for o in objs]
            np.testing.assert_allclose(ex["objects"]["x"], [o["x"] for o in objs], atol=1e-6)
        firsts.append(src[0]["image"])
    assert len(set(firsts)) == 3  # splits hold different scenes
    builder = tfds.builder("scenes/tiny", data_dir=scenes_tiny_dir)
    assert builder.info.features["label"].names == list(S.CLASS_NAMES)
    assert builder.info.features["label"].names[:2] == ["red circle", "red square"]
    decoded = tfds.data_source("scenes/tiny", split="test", data_dir=scenes_tiny_dir, download=False)[1]
    assert decoded["image"].shape == (32, 32, 3) and decoded["image"].dtype == np.uint8


def test_cli_is_idempotent(scenes_tiny_dir):
    r = subprocess.run([sys.executable, "-m", "vlmjax.data.scenes", "--data_dir", scenes_tiny_dir, "--config", "tiny"],
                       capture_output=True, text=True, check=True, timeout=120)
    assert "already exists" in r.stdout
