"""`scenes`: the built-in, locally generated image/text data for all three model families -- the scene generator.

Each image holds 1-3 non-overlapping flat shapes on a background in one of the rendering `STYLES`: `dark` (a dark
grey with a faint vertical ramp; the only style before them, and still bit-identical), `light` (a light grey, same
ramp), `noise` (any grey, Gaussian pixel noise over the whole image) and `texture` (two-tone stripes or a
checkerboard in mid greys: the held-out style). The style changes the image only: a seed's objects, captions and
questions are the same in every style. Every example is a pure function of (split, index, image size, the config's
styles), so nothing is downloaded and any example can be re-rendered for a test. This module
renders scenes and writes their text (numpy + PIL only); the tfds builder that stores them as ArrayRecord is
`vlmjax.data.sources.scenes`.

Scene rules that keep every generated sentence true and unambiguous:
  * objects in one scene have distinct (colour, shape) pairs, so "the red circle" names exactly one object;
  * centres differ by at least `_MIN_DX` of the width, so left/right relations are visible;
  * size is small or large, and any large shape covers more pixels than any small one; the MAIN object (the label)
    is the largest, ties broken by the leftmost.

Held-out compositions: a record of a train split built without `HELDOUT_CLASSES` is the first scene in the
sequence `record_seed` walks that has no object of those classes, so neither its image nor its text shows them.

Build: `python -m vlmjax.data.scenes --data_dir DIR [--config default|tiny|raw|tiny_raw|heldout|tiny_heldout|styles|
texture|light|tiny_styles|tiny_texture]`
(the configs: `vlmjax.data.sources.scenes`).
"""
import functools
import io
import itertools
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
RGB = np.array([(220, 40, 40), (40, 180, 60), (40, 90, 225), (235, 215, 40), (145, 60, 195), (250, 140, 30)],
               np.float32)
SHAPES = ("circle", "square", "triangle", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
SIZES = ("small", "large")
# Rendering styles (background only; objects are the same for a seed in every style). `texture` is the held-out
# style: no training split of a built-in config shows it.
STYLES = ("dark", "light", "noise", "texture")
CLASS_NAMES = tuple(f"{c} {s}" for c in COLORS for s in SHAPES)
OBJECT_NAME = rf"(?:{'|'.join(COLORS)}) (?:{'|'.join(SHAPES)})"  # regex of a class name ("red circle") in a caption
NUMBER_WORDS = ("zero", "one", "two", "three")
COLOR_JITTER = 12  # max per-channel deviation of an object's colour from its palette entry
QUESTIONS_PER_TYPE = 2
# Colour-shape classes a `heldout` config keeps out of its train split: one per shape, each of another colour.
HELDOUT_CLASSES = ("red square", "green cross", "blue circle", "orange triangle")

_MIN_DX = 0.12
_SPLIT_SEED = {"train": 0, "validation": 1, "test": 2}
_RETRY_STRIDE = 10**9  # record_seed's next try: above every example_seed, so no two records share a scene
# Row-major 3x3 grid of image regions, used to place a lone object in words.
REGIONS = ("in the top left", "at the top", "in the top right", "on the left", "in the center", "on the right",
           "in the bottom left", "at the bottom", "in the bottom right")

Obj = Dict[str, object]  # {'color': str, 'shape': str, 'size': str, 'x': float, 'y': float}


def extents(image_size: int) -> Tuple[int, int]:
    """Bounding-box side in pixels of (small, large) objects; small stays >= 7 px so 32 px images are legible."""
    return max(7, round(0.22 * image_size)), max(12, round(0.38 * image_size))


def example_seed(split: str, index: int) -> int:
    return _SPLIT_SEED[split] * 10**8 + int(index)


def record_seed(split: str, index: int, image_size: int, excluded: Sequence[str] = ()) -> int:
    """Seed of record `index` of `split`: example_seed(split, index), or with `excluded` class names the first of
    example_seed + k * 1e9 (k = 0, 1, ...) whose scene has no object of those classes (about 1 in 3 scenes has
    one of 4 excluded classes, so k is small)."""
    seed = example_seed(split, index)
    excluded = set(excluded)
    while excluded and any(_name(o) in excluded for o in _sample_layout(np.random.default_rng(seed), image_size)[0]):
        seed += _RETRY_STRIDE
    return seed


def shape_mask(shape: str, extent: int) -> np.ndarray:
    """bool[e, e] mask of `shape` in its bounding box (coordinates are pixel centres mapped to [-1, 1])."""
    c = (np.arange(extent, dtype=np.float32) + 0.5) / extent * 2 - 1
    u, v = c[None, :], c[:, None]
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (np.abs(u) <= 0.9) & (np.abs(v) <= 0.9)
    if shape == "triangle":  # apex up, base on the bottom row
        return np.abs(u) <= (v + 1) / 2
    if shape == "cross":
        return (np.abs(u) <= 0.34) | (np.abs(v) <= 0.34)
    raise ValueError(f"unknown shape {shape!r}")


def _sample_layout(rng: np.random.Generator, image_size: int):
    """Objects (left to right) and their integer boxes (x0, y0, extent); resamples until the rules hold."""
    small, large = extents(image_size)
    n = int(rng.integers(1, 4))
    while True:
        pairs = set()
        objs, boxes = [], []
        for _ in range(n):
            for _ in range(50):
                c, s, z = int(rng.integers(len(COLORS))), int(rng.integers(len(SHAPES))), int(rng.integers(2))
                e = large if z else small
                x0, y0 = (int(t) for t in rng.integers(1, image_size - e, size=2))
                cx = (x0 + e / 2) / image_size
                ok = (c, s) not in pairs and all(
                    abs(cx - o["x"]) >= _MIN_DX and
                    (x0 >= bx + be + 2 or bx >= x0 + e + 2 or y0 >= by + be + 2 or by >= y0 + e + 2)
                    for o, (bx, by, be) in zip(objs, boxes))
                if ok:
                    break
            else:
                break  # crowded; start the scene over
            pairs.add((c, s))
            objs.append(dict(color=COLORS[c], shape=SHAPES[s], size=SIZES[z], x=cx, y=(y0 + e / 2) / image_size))
            boxes.append((x0, y0, e))
        if len(objs) == n:
            order = np.argsort([o["x"] for o in objs], kind="stable")
            return [objs[i] for i in order], [boxes[i] for i in order]


def style_of(seed: int, styles: Sequence[str]) -> str:
    """The rendering style of the record with `seed` in a dataset of `styles`: styles[0] when there is one, else a
    draw from `np.random.default_rng([seed, 8])` (a stream nothing else uses), so it is re-computable from the seed."""
    if len(styles) == 1:
        return styles[0]
    return styles[int(np.random.default_rng([seed, 8]).integers(len(styles)))]


def _plain(rng: np.random.Generator, image_size: int, low: float, high: float) -> np.ndarray:
    """float[S, S, 3]: a grey of level uniform(low, high), tinted per channel by up to +-8, plus a vertical ramp."""
    gray = rng.uniform(low, high) + rng.uniform(-8, 8, size=3)
    ramp = np.linspace(0, rng.uniform(0, 12), image_size, dtype=np.float32)
    return np.broadcast_to((gray[None, :] + ramp[:, None])[:, None, :], (image_size, image_size, 3))


def _two_tone(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """float[S, S, 3]: stripes at a random angle, or a checkerboard at a random angle, in two mid greys (about
    85-115 and 35-55 above it, one shared tint); period 10-25% of the width (at least 4 px)."""
    dark = rng.uniform(85, 115)
    tones = np.array([dark, dark + rng.uniform(35, 55)])[:, None] + rng.uniform(-5, 5, size=3)[None, :]
    period = max(4.0, rng.uniform(0.10, 0.25) * image_size)
    angle = rng.uniform(0, np.pi)
    y, x = np.mgrid[:image_size, :image_size].astype(np.float64) + 0.5
    u = x * np.cos(angle) + y * np.sin(angle)
    v = -x * np.sin(angle) + y * np.cos(angle)
    band = np.floor(u / period * 2).astype(np.int64)  # half a period per tone
    if rng.random() < 0.5:  # checkerboard
        band = band + np.floor(v / period * 2).astype(np.int64)
    return tones[band % 2]


def _background(style: str, style_rng: np.random.Generator, image_size: int) -> np.ndarray:
    """float[S, S, 3] background of a non-dark style, drawn from `style_rng` only."""
    if style == "light":  # <= 195 + 8 + 12 = 215, so yellow keeps its contrast
        return _plain(style_rng, image_size, 165, 195)
    if style == "noise":  # any grey level, dark or light; the noise itself is added over the whole image
        return _plain(style_rng, image_size, 20, 195)
    if style == "texture":
        return _two_tone(style_rng, image_size)
    raise ValueError(f"unknown scene style {style!r}; expected one of {STYLES}")


def render_scene(seed: int, image_size: int = 64, style: str = "dark") -> Tuple[np.ndarray, List[Obj]]:
    """(uint8[S, S, 3] image, objects sorted left to right) for one seed, in rendering style `style` (STYLES).

    The style changes the background only (and `noise` adds Gaussian noise, sigma 10-15, over the whole image):
    object layout and colours come from `default_rng(seed)` as in version 1.1.0, whose `dark` background draws are
    made (and for other styles discarded) in the same order, so `dark` is bit-identical to 1.1.0 and every style
    shows the same objects for a seed. A non-dark style draws from `default_rng([seed, 7])` alone."""
    rng = np.random.default_rng(seed)
    objs, boxes = _sample_layout(rng, image_size)
    img = np.empty((image_size, image_size, 3), np.float32)
    img[:] = _plain(rng, image_size, 20, 70)  # the dark background (drawn for every style: the objects' stream)
    if style != "dark":
        style_rng = np.random.default_rng([seed, 7])
        img[:] = _background(style, style_rng, image_size)
    for o, (x0, y0, e) in zip(objs, boxes):
        colour = RGB[COLORS.index(o["color"])] + rng.uniform(-COLOR_JITTER, COLOR_JITTER, size=3)
        img[y0:y0 + e, x0:x0 + e][shape_mask(o["shape"], e)] = colour
    if style == "noise":
        img += style_rng.normal(0, style_rng.uniform(10, 15), size=img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), objs


def main_index(objs: List[Obj]) -> int:
    """Index of the largest object, ties broken by the leftmost."""
    return min(range(len(objs)), key=lambda i: (-SIZES.index(objs[i]["size"]), objs[i]["x"]))


def label_of(obj: Obj) -> int:
    """Index of the object's colour-shape class in CLASS_NAMES."""
    return COLORS.index(obj["color"]) * len(SHAPES) + SHAPES.index(obj["shape"])


def multi_labels(objs: List[Obj]) -> np.ndarray:
    """int32[len(CLASS_NAMES)]: 1 for each colour-shape class present in the scene, else 0."""
    hot = np.zeros(len(CLASS_NAMES), np.int32)
    hot[[label_of(o) for o in objs]] = 1
    return hot


# ---- text -------------------------------------------------------------------------------------------------------
def _phrase(o: Obj) -> str:
    return f"a {o['size']} {o['color']} {o['shape']}"


def _name(o: Obj) -> str:
    return f"{o['color']} {o['shape']}"


def _region(o: Obj) -> str:
    col, row = min(int(o["x"] * 3), 2), min(int(o["y"] * 3), 2)
    return REGIONS[row * 3 + col]


def captions(objs: List[Obj]) -> List[str]:
    """Three phrasings; each names every object (size, colour, shape) and a count or a left/right relation."""
    n, ps = len(objs), [_phrase(o) for o in objs]
    m = main_index(objs)
    if n == 1:
        return [f"one shape: {ps[0]}", f"one {objs[0]['size']} {_name(objs[0])} {_region(objs[0])}",
                f"a single {objs[0]['size']} {_name(objs[0])} on a plain background"]
    listing = " left of ".join(ps) if n == 2 else f"{ps[0]}, {ps[1]} and {ps[2]}, from left to right"
    rel = f"{ps[0]} to the left of {ps[1]}" if n == 2 else f"from left to right: {ps[0]}, {ps[1]} and {ps[2]}"
    sides = [(" and ".join(ps[i] for i in idx), side) for idx, side in [(range(m), "left"), (range(m + 1, n), "right")]]
    around = " and ".join(f"{who} to its {side}" for who, side in sides if who)
    return [f"{NUMBER_WORDS[n]} shapes: {listing}", rel, f"{ps[m]} with {around}"]


@functools.lru_cache(maxsize=None)
def captions_by_main_class() -> Dict[str, List[str]]:
    """{class name: every caption `captions` can write for a scene whose main object is of that class}.

    The caption space of the grammar (~300k captions; 1 to 3 objects with distinct (colour, shape) pairs, a lone
    object in each of the 9 regions), built by calling `captions` itself on every object list, so it is the
    generator's grammar by construction. A caption names its main object's class unambiguously (sizes and order
    decide it), so no caption is under two classes. For zero-shot as retrieval over all captions: a class scores
    its best-matching caption (`class_prompts` of a zero-shot evaluator).
    """
    objs = [dict(color=c, shape=s, size=z) for z in SIZES for c in COLORS for s in SHAPES]
    out = {name: set() for name in CLASS_NAMES}
    for o in objs:  # a lone object: one scene per region centre (the region caption depends on the place)
        for r in range(len(REGIONS)):
            out[_name(o)].update(captions([dict(o, x=(r % 3 + 0.5) / 3, y=(r // 3 + 0.5) / 3)]))
    for n in (2, 3):
        for tup in itertools.permutations(objs, n):
            if len({_name(o) for o in tup}) < n:
                continue
            scene = [dict(o, x=(k + 1) / (n + 1), y=0.5) for k, o in enumerate(tup)]  # left to right
            out[_name(scene[main_index(scene)])].update(captions(scene))
    return {name: sorted(caps) for name, caps in out.items()}


def _refer(objs: List[Obj], i: int, drop: str):
    """Shortest description of objs[i] that matches it alone, not using attribute `drop`; None if there is none."""
    o = objs[i]
    key = "color" if drop == "shape" else "shape"
    head = f"{o['color']} object" if drop == "shape" else o["shape"]
    if sum(p[key] == o[key] for p in objs) == 1:
        return head
    if sum(p[key] == o[key] and p["size"] == o["size"] for p in objs) == 1:
        return f"{o['size']} {head}"
    same = [j for j, p in enumerate(objs) if p[key] == o[key]]  # objs are sorted left to right
    return f"leftmost {head}" if i == same[0] else f"rightmost {head}" if i == same[-1] else None


def questions(objs: List[Obj], rng: np.random.Generator) -> List[Tuple[str, str, str]]:
    """[(type, question, answer)], up to QUESTIONS_PER_TYPE of each type (color, shape, count, relation)."""
    n = len(objs)
    cands = {"color": [], "shape": [], "count": [], "relation": []}
    for i, o in enumerate(objs):
        ref = _refer(objs, i, "color")
        if ref:
            cands["color"].append((f"what color is the {ref}?", o["color"]))
        ref = _refer(objs, i, "shape")
        if ref:
            cands["shape"].append((f"what shape is the {ref}?", o["shape"]))
    cands["count"].append(("how many shapes are there?", NUMBER_WORDS[n]))
    c = COLORS[rng.integers(len(COLORS))] if rng.random() < 0.3 else objs[rng.integers(n)]["color"]
    cands["count"].append((f"how many {c} shapes are there?", NUMBER_WORDS[sum(o["color"] == c for o in objs)]))
    s = SHAPES[rng.integers(len(SHAPES))] if rng.random() < 0.3 else objs[rng.integers(n)]["shape"]
    cands["count"].append((f"how many {PLURALS[s]} are there?", NUMBER_WORDS[sum(o["shape"] == s for o in objs)]))
    for i, o in enumerate(objs):  # sorted left to right: objs[:i] are left of o
        if i == 1:
            cands["relation"].append((f"what is to the left of the {_name(o)}?", _name(objs[0])))
        if i == n - 2:
            cands["relation"].append((f"what is to the right of the {_name(o)}?", _name(objs[-1])))
        for j in range(n):
            if j != i:
                side = ("left", "right")[rng.integers(2)]
                yes = (objs[i]["x"] < objs[j]["x"]) == (side == "left")
                cands["relation"].append(
                    (f"is the {_name(o)} to the {side} of the {_name(objs[j])}?", "yes" if yes else "no"))
    out = []
    for qtype, qa in cands.items():
        for k in sorted(rng.permutation(len(qa))[:QUESTIONS_PER_TYPE]):
            out.append((qtype, *qa[k]))
    return out


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def make_example(seed: int, image_size: int, image_format: str = "png", style: str = "dark") -> dict:
    """One record in the dataset's feature layout (image as PNG bytes, or the uint8 array for 'raw'), rendered in
    `style` (the text does not depend on it)."""
    img, objs = render_scene(seed, image_size, style)
    qa = questions(objs, np.random.default_rng([seed, 1]))
    return {
        "image": img if image_format == "raw" else _png(img),
        "label": label_of(objs[main_index(objs)]),
        "captions": captions(objs),
        "questions": [q for _, q, _ in qa],
        "answers": [a for _, _, a in qa],
        "question_types": [t for t, _, _ in qa],
        "num_objects": np.int32(len(objs)),
        "multi_labels": multi_labels(objs),
        "objects": {k: [o[k] for o in objs] for k in ("color", "shape", "size")} |
                   {k: np.asarray([o[k] for o in objs], np.float32) for k in ("x", "y")},
    }


if __name__ == "__main__":  # `python -m vlmjax.data.scenes` builds the dataset (the builder's command line)
    from vlmjax.data.sources.scenes import main

    main()
