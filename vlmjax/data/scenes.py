"""`scenes`: a built-in, locally generated image/text dataset (tfds, ArrayRecord) for all three model families.

Each image holds 1-3 non-overlapping flat shapes on a plain background. Every example is a pure function of
(split, index, image size), so nothing is downloaded and any example can be re-rendered for a test.

Scene rules that keep every generated sentence true and unambiguous:
  * objects in one scene have distinct (colour, shape) pairs, so "the red circle" names exactly one object;
  * centres differ by at least `_MIN_DX` of the width, so left/right relations are visible;
  * size is small or large, and any large shape covers more pixels than any small one; the MAIN object (the label)
    is the largest, ties broken by the leftmost.

Build: `python -m vlmjax.data.scenes --data_dir DIR [--config default|tiny|raw|tiny_raw]`. The `raw` configs store each
image as its uint8 [S, S, 3] array (zlib-compressed by tfds, read back as the array), so the input pipeline decodes
no PNG: the `decode` op passes arrays through.
"""
import argparse
import dataclasses
import functools
import io
import itertools
import os
import time
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

import tensorflow_datasets as tfds

COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
RGB = np.array([(220, 40, 40), (40, 180, 60), (40, 90, 225), (235, 215, 40), (145, 60, 195), (250, 140, 30)],
               np.float32)
SHAPES = ("circle", "square", "triangle", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
SIZES = ("small", "large")
CLASS_NAMES = tuple(f"{c} {s}" for c in COLORS for s in SHAPES)
OBJECT_NAME = rf"(?:{'|'.join(COLORS)}) (?:{'|'.join(SHAPES)})"  # regex of a class name ("red circle") in a caption
NUMBER_WORDS = ("zero", "one", "two", "three")
COLOR_JITTER = 12  # max per-channel deviation of an object's colour from its palette entry
QUESTIONS_PER_TYPE = 2

_MIN_DX = 0.12
_SPLIT_SEED = {"train": 0, "validation": 1, "test": 2}
# Row-major 3x3 grid of image regions, used to place a lone object in words.
REGIONS = ("in the top left", "at the top", "in the top right", "on the left", "in the center", "on the right",
           "in the bottom left", "at the bottom", "in the bottom right")

Obj = Dict[str, object]  # {'color': str, 'shape': str, 'size': str, 'x': float, 'y': float}


def extents(image_size: int) -> Tuple[int, int]:
    """Bounding-box side in pixels of (small, large) objects; small stays >= 7 px so 32 px images are legible."""
    return max(7, round(0.22 * image_size)), max(12, round(0.38 * image_size))


def example_seed(split: str, index: int) -> int:
    return _SPLIT_SEED[split] * 10**8 + int(index)


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


def render_scene(seed: int, image_size: int = 64) -> Tuple[np.ndarray, List[Obj]]:
    """(uint8[S, S, 3] image, objects sorted left to right) for one seed."""
    rng = np.random.default_rng(seed)
    objs, boxes = _sample_layout(rng, image_size)
    gray = rng.uniform(20, 70) + rng.uniform(-8, 8, size=3)
    ramp = np.linspace(0, rng.uniform(0, 12), image_size, dtype=np.float32)
    img = np.empty((image_size, image_size, 3), np.float32)
    img[:] = (gray[None, :] + ramp[:, None])[:, None, :]
    for o, (x0, y0, e) in zip(objs, boxes):
        colour = RGB[COLORS.index(o["color"])] + rng.uniform(-COLOR_JITTER, COLOR_JITTER, size=3)
        img[y0:y0 + e, x0:x0 + e][shape_mask(o["shape"], e)] = colour
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), objs


def main_index(objs: List[Obj]) -> int:
    """Index of the largest object, ties broken by the leftmost."""
    return min(range(len(objs)), key=lambda i: (-SIZES.index(objs[i]["size"]), objs[i]["x"]))


def label_of(obj: Obj) -> int:
    return COLORS.index(obj["color"]) * len(SHAPES) + SHAPES.index(obj["shape"])


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


def make_example(seed: int, image_size: int, image_format: str = "png") -> dict:
    """One record in the dataset's feature layout (image as PNG bytes, or the uint8 array for 'raw')."""
    img, objs = render_scene(seed, image_size)
    qa = questions(objs, np.random.default_rng([seed, 1]))
    return {
        "image": img if image_format == "raw" else _png(img),
        "label": label_of(objs[main_index(objs)]),
        "captions": captions(objs),
        "questions": [q for _, q, _ in qa],
        "answers": [a for _, _, a in qa],
        "question_types": [t for t, _, _ in qa],
        "num_objects": np.int32(len(objs)),
        "objects": {k: [o[k] for o in objs] for k in ("color", "shape", "size")} |
                   {k: np.asarray([o[k] for o in objs], np.float32) for k in ("x", "y")},
    }


# ---- tfds builder ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ScenesConfig(tfds.core.BuilderConfig):
    image_size: int = 64
    num_train: int = 50_000
    num_validation: int = 2_000
    num_test: int = 2_000
    image_format: str = "png"  # 'png', or 'raw': the uint8 array (tfds Tensor, zlib), read with no image decoder


def blind_vqa_prior(data_dir: str, config: str = "default", n_test: int = None) -> Tuple[Dict[str, float], int]:
    """VQA accuracy of answering from the question alone: the most common train answer of that question (of its
    type for a question never seen in train) -- what a model that ignores the image can reach. Over the questions
    of the first `n_test` test images -> ({'all': acc, '<type>': acc, ...}, number of questions)."""
    import collections

    src = lambda split: tfds.data_source(f"scenes/{config}", split=split, data_dir=data_dir,  # noqa: E731
                                         decoders={"image": tfds.decode.SkipDecoding()})
    by_q, by_t = collections.defaultdict(collections.Counter), collections.defaultdict(collections.Counter)
    train_src = src("train")
    for i in range(len(train_src)):
        ex = train_src[i]
        for q, a, t in zip(ex["questions"], ex["answers"], ex["question_types"]):
            by_q[q][a] += 1
            by_t[t][a] += 1
    test_src, hits = src("test"), collections.defaultdict(list)
    for i in range(len(test_src) if n_test is None else n_test):
        ex = test_src[i]
        for q, a, t in zip(ex["questions"], ex["answers"], ex["question_types"]):
            hits[t.decode() if isinstance(t, bytes) else t].append((by_q.get(q) or by_t[t]).most_common(1)[0][0] == a)
    every = [h for hs in hits.values() for h in hs]
    return {"all": float(np.mean(every)), **{t: float(np.mean(h)) for t, h in hits.items()}}, len(every)


# `python -m` runs this file as __main__; only the importable module registers the name `scenes`.
class Scenes(tfds.core.GeneratorBasedBuilder, skip_registration=__name__ == "__main__"):
    """Synthetic shapes scenes with class labels, captions and question/answer pairs; generated, never downloaded."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        ScenesConfig(name="default", description="64x64 images; 50k/2k/2k examples."),
        ScenesConfig(name="tiny", description="32x32 images; 4096/512/512 examples (tests).", image_size=32,
                     num_train=4096, num_validation=512, num_test=512),
        ScenesConfig(name="raw", description="As default, images stored as raw uint8 arrays (no PNG decode).",
                     image_format="raw"),
        ScenesConfig(name="tiny_raw", description="As tiny, images stored as raw uint8 arrays.", image_size=32,
                     num_train=4096, num_validation=512, num_test=512, image_format="raw"),
    ]
    DEFAULT_CONFIG_NAME = "default"

    @tfds.core.utils.classproperty
    @classmethod
    def url_infos(cls):
        # Nothing is downloaded; tfds' own lookup of a checksums file next to the code needs `importlib_resources`.
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        s, fmt = self.builder_config.image_size, self.builder_config.image_format
        if fmt not in ("png", "raw"):
            raise ValueError(f"scenes config {self.builder_config.name!r}: image_format={fmt!r}, expected 'png' or "
                             f"'raw'")
        # Raw arrays through zlib: 4x faster to read than the PNG decode, and smaller (flat colours).
        image = (tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB)
                 if fmt == "raw" else tfds.features.Image(shape=(s, s, 3), encoding_format="png"))
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict({
                "image": image,
                "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                "captions": tfds.features.Sequence(tfds.features.Text()),
                "questions": tfds.features.Sequence(tfds.features.Text()),
                "answers": tfds.features.Sequence(tfds.features.Text()),
                "question_types": tfds.features.Sequence(tfds.features.Text()),
                "num_objects": np.int32,
                "objects": tfds.features.Sequence({
                    "color": tfds.features.ClassLabel(names=COLORS),
                    "shape": tfds.features.ClassLabel(names=SHAPES),
                    "size": tfds.features.ClassLabel(names=SIZES),
                    "x": np.float32,
                    "y": np.float32,
                }),
            }),
            supervised_keys=("image", "label"),
            # Record i of a split is example_seed(split, i), so any record can be re-rendered.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is generated locally
        cfg = self.builder_config
        return {"train": self._generate_examples("train", cfg.num_train),
                "validation": self._generate_examples("validation", cfg.num_validation),
                "test": self._generate_examples("test", cfg.num_test)}

    def _generate_examples(self, split: str, num: int):
        size, fmt = self.builder_config.image_size, self.builder_config.image_format
        for i in range(num):
            yield i, make_example(example_seed(split, i), size, fmt)


def build(data_dir: str, config: str = "default") -> Tuple[bool, float]:
    """Builds `scenes/<config>` under data_dir as ArrayRecord; (newly built?, seconds)."""
    builder = Scenes(data_dir=data_dir, config=config)
    if builder.is_prepared():
        return False, 0.0
    t0 = time.perf_counter()
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP,
                                                     try_download_gcs=False))
    return True, time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description="Build the built-in `scenes` dataset (generated locally).")
    p.add_argument("--data_dir", required=True)
    p.add_argument("--config", default="default", choices=[c.name for c in Scenes.BUILDER_CONFIGS])
    args = p.parse_args(argv)
    built, secs = build(os.path.expanduser(args.data_dir), args.config)
    where = os.path.join(args.data_dir, "scenes", args.config)
    print(f"built scenes/{args.config} in {secs:.1f}s at {where}" if built
          else f"scenes/{args.config} already exists at {where}; nothing to do")


if __name__ == "__main__":
    from vlmjax.data.scenes import main as _main  # the registered builder, not this __main__ copy

    _main()
