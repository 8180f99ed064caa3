"""The tfds builder of the built-in `scenes` data (ArrayRecord), its configs, and the command that builds them.

The scenes themselves (rendering, captions, questions) are `vlmjax.data.scenes`. Record i of a split is the scene of
`record_seed(split, i, image_size, config.heldout)`, so any record can be re-rendered.

Configs: `default` (64 px, 50k/2k/2k), `tiny` (32 px, 4096/512/512: tests and `:runlocal`), `raw` / `tiny_raw` (each
image stored as its uint8 [S, S, 3] array, zlib-compressed by tfds and read back as the array, so the input pipeline
decodes no PNG: the `decode` op passes arrays through), and `heldout` / `tiny_heldout`: as default / tiny, but no
train image holds an object of the 4 `HELDOUT_CLASSES` (so no train caption or question names one); validation and
test keep every class. The held-out class names are the config's `heldout` and the dataset's
`info.metadata['heldout_classes']`; their test images are those with `num_objects == 1` and `label` one of them.

Rendering styles (`STYLES` of `vlmjax.data.scenes`; the background only, the objects and text of a record are the
same in every style): a config's `styles` (default `("dark",)`: every config above); with several, a record's style
is `style_of(seed, styles)` of its seed (`info.metadata['styles']` lists them; absent from a dataset built
before styles: dark). `styles` (as default; dark, light and
noise in every split: the training mix), `texture` (every split in the held-out two-tone texture style, which no
training split of `styles` shows; 2k/2k/2k: an evaluation set), `light` (every split light, 2k/2k/2k: dark-trained
models on light backgrounds), and `tiny_styles` / `tiny_texture` (32 px, tiny's sizes).

Build: `python -m vlmjax.data.scenes --data_dir DIR [--config NAME]` (NAME: default, tiny, raw, tiny_raw, heldout,
tiny_heldout, styles, texture, light, tiny_styles, tiny_texture; `make data` builds default and tiny).
"""
import argparse
import collections
import dataclasses
import os
import time
from typing import Dict, List, Tuple

import numpy as np
import tensorflow_datasets as tfds

from vlmjax.data.scenes import (CLASS_NAMES, COLORS, HELDOUT_CLASSES, SHAPES, SIZES, STYLES, captions,
                                make_example, record_seed, render_scene, style_of)


@dataclasses.dataclass
class ScenesConfig(tfds.core.BuilderConfig):
    image_size: int = 64
    num_train: int = 50_000
    num_validation: int = 2_000
    num_test: int = 2_000
    image_format: str = "png"  # 'png', or 'raw': the uint8 array (tfds Tensor, zlib), read with no image decoder
    heldout: Tuple[str, ...] = ()  # class names no train record shows (CLASS_NAMES entries)
    styles: Tuple[str, ...] = ("dark",)  # rendering styles (STYLES entries); a record's is style_of(seed, styles)


_TINY = dict(image_size=32, num_train=4096, num_validation=512, num_test=512)
_MIX = ("dark", "light", "noise")  # the `styles` training mix; `texture` is held out of every training split
_SMALL = dict(num_train=2_000, num_validation=2_000, num_test=2_000)  # single-style evaluation sets


class Scenes(tfds.core.GeneratorBasedBuilder):
    """Synthetic shapes scenes with class labels, captions and question/answer pairs; generated, never downloaded."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.",
                     "1.1.0": "`multi_labels` (multi-hot of the classes present); `heldout` configs. Later, "
                              "same version and record layout: rendering styles (`styles`, `texture`, `light`, "
                              "`tiny_styles`, `tiny_texture` configs; `dark`, every earlier config, is "
                              "bit-identical)."}
    BUILDER_CONFIGS = [
        ScenesConfig(name="default", description="64x64 images; 50k/2k/2k examples."),
        ScenesConfig(name="tiny", description="32x32 images; 4096/512/512 examples (tests).", **_TINY),
        ScenesConfig(name="raw", description="As default, images stored as raw uint8 arrays (no PNG decode).",
                     image_format="raw"),
        ScenesConfig(name="tiny_raw", description="As tiny, images stored as raw uint8 arrays.", image_format="raw",
                     **_TINY),
        ScenesConfig(name="heldout", description=f"As default; no train image holds a {', '.join(HELDOUT_CLASSES)}.",
                     heldout=HELDOUT_CLASSES),
        ScenesConfig(name="tiny_heldout", description=f"As tiny; no train image holds a "
                     f"{', '.join(HELDOUT_CLASSES)}.", heldout=HELDOUT_CLASSES, **_TINY),
        ScenesConfig(name="styles", description=f"As default; each record in one of the styles {', '.join(_MIX)}.",
                     styles=_MIX),
        ScenesConfig(name="texture", description="64x64, every split in the held-out two-tone `texture` style; "
                     "2k/2k/2k examples.", styles=("texture",), **_SMALL),
        ScenesConfig(name="light", description="64x64, every split on a light background; 2k/2k/2k examples.",
                     styles=("light",), **_SMALL),
        ScenesConfig(name="tiny_styles", description=f"As tiny; styles {', '.join(_MIX)}.", styles=_MIX, **_TINY),
        ScenesConfig(name="tiny_texture", description="As tiny, every split in the `texture` style.",
                     styles=("texture",), **_TINY),
    ]
    DEFAULT_CONFIG_NAME = "default"

    @tfds.core.utils.classproperty
    @classmethod
    def url_infos(cls):
        # Nothing is downloaded; tfds' own lookup of a checksums file next to the code needs `importlib_resources`.
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        s, fmt = cfg.image_size, cfg.image_format
        if fmt not in ("png", "raw"):
            raise ValueError(f"scenes config {cfg.name!r}: image_format={fmt!r}, expected 'png' or 'raw'")
        unknown = [c for c in cfg.heldout if c not in CLASS_NAMES]
        if unknown:
            raise ValueError(f"scenes config {cfg.name!r}: heldout classes {unknown} are not in {list(CLASS_NAMES)}")
        if not cfg.styles or any(st not in STYLES for st in cfg.styles):
            raise ValueError(f"scenes config {cfg.name!r}: styles {list(cfg.styles)}, expected a non-empty list of "
                             f"{list(STYLES)}")
        image = (tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB)
                 if fmt == "raw" else tfds.features.Image(shape=(s, s, 3), encoding_format="png"))
        return tfds.core.DatasetInfo(
            builder=self,
            description="Synthetic shapes scenes with class labels, captions and question/answer pairs.",
            features=tfds.features.FeaturesDict({
                "image": image,
                "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                "multi_labels": tfds.features.Tensor(shape=(len(CLASS_NAMES),), dtype=np.int32),
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
            metadata=tfds.core.MetadataDict(heldout_classes=list(cfg.heldout), styles=list(cfg.styles)),
            disable_shuffling=True,  # record i is record_seed(split, i, ...): re-renderable
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is generated locally
        cfg = self.builder_config
        return {"train": self._generate_examples("train", cfg.num_train, cfg.heldout),
                "validation": self._generate_examples("validation", cfg.num_validation),
                "test": self._generate_examples("test", cfg.num_test)}

    def _generate_examples(self, split: str, num: int, excluded=()):
        size, fmt, styles = self.builder_config.image_size, self.builder_config.image_format, self.builder_config.styles
        for i in range(num):
            seed = record_seed(split, i, size, excluded)
            yield i, make_example(seed, size, fmt, style_of(seed, styles))


def build(data_dir: str, config="default") -> Tuple[bool, float]:
    """Builds `scenes/<config>` (a config name or a ScenesConfig) under data_dir as ArrayRecord; (newly built?,
    seconds)."""
    builder = Scenes(data_dir=data_dir, config=config)
    if builder.is_prepared():
        return False, 0.0
    t0 = time.perf_counter()
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP,
                                                     try_download_gcs=False))
    return True, time.perf_counter() - t0


def blind_vqa_prior(data_dir: str, config: str = "default", n_images: int = None,
                    split: str = "test") -> Tuple[Dict[str, float], int]:
    """VQA accuracy of answering from the question alone: the most common train answer of that question (of its
    type for a question never seen in train) -- what a model that ignores the image can reach. Over the questions
    of the first `n_images` images of `split` -> ({'all': acc, '<type>': acc, ...}, number of questions)."""
    builder = Scenes(data_dir=data_dir, config=config)
    src = lambda name: builder.as_data_source(split=name, decoders={"image": tfds.decode.SkipDecoding()})  # noqa
    by_q, by_t = collections.defaultdict(collections.Counter), collections.defaultdict(collections.Counter)
    train_src = src("train")
    for i in range(len(train_src)):
        ex = train_src[i]
        for q, a, t in zip(ex["questions"], ex["answers"], ex["question_types"]):
            by_q[q][a] += 1
            by_t[t][a] += 1
    eval_src, hits = src(split), collections.defaultdict(list)
    for i in range(len(eval_src) if n_images is None else n_images):
        ex = eval_src[i]
        for q, a, t in zip(ex["questions"], ex["answers"], ex["question_types"]):
            hits[t.decode() if isinstance(t, bytes) else t].append((by_q.get(q) or by_t[t]).most_common(1)[0][0] == a)
    every = [h for hs in hits.values() for h in hs]
    return {"all": float(np.mean(every)), **{t: float(np.mean(h)) for t, h in hits.items()}}, len(every)


def write_samples(out_dir: str, n: int = 4, image_size: int = 64) -> List[str]:
    """Writes the first `n` test scenes as PNG files (`scene<i>.png`) and their captions (`scene<i>.txt`) to
    `out_dir`, for trying the CLIs and the Python API on images of the kind the scenes runs saw; returns the PNG
    paths. No dataset build needed."""
    from PIL import Image

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for i in range(n):
        img, objs = render_scene(record_seed("test", i, image_size), image_size)
        path = os.path.join(out_dir, f"scene{i}.png")
        Image.fromarray(img).save(path)
        with open(path[:-4] + ".txt", "w") as f:
            f.write("\n".join(captions(objs)) + "\n")
        paths.append(path)
    return paths


def main(argv=None):
    p = argparse.ArgumentParser(description="Build the built-in `scenes` dataset (generated locally).")
    p.add_argument("--data_dir", help="where to build it (a tfds data_dir)")
    p.add_argument("--config", default="default", choices=[c.name for c in Scenes.BUILDER_CONFIGS])
    p.add_argument("--samples", metavar="DIR", help="instead: write 4 test scenes as DIR/scene<i>.png (+ captions)")
    args = p.parse_args(argv)
    if args.samples:
        print("\n".join(write_samples(args.samples)))
        return
    if not args.data_dir:
        p.error("--data_dir is required (or --samples DIR)")
    built, secs = build(os.path.expanduser(args.data_dir), args.config)
    where = os.path.join(args.data_dir, "scenes", args.config)
    print(f"built scenes/{args.config} in {secs:.1f}s at {where}" if built
          else f"scenes/{args.config} already exists at {where}; nothing to do")
