"""`scenes` rendering styles: `dark` is unchanged from version 1.1.0, a seed's objects and text are the same in every
style, each style's background is what it says and keeps every palette colour visible, multi-style configs draw
their styles deterministically, a small build reads back in the right styles; and benchmarks/seeds.py's
`--eval_data` (evaluation-only dataset override and its own result file)."""
import hashlib
import json
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from vlmjax.data import scenes as S
from vlmjax.data.sources.scenes import Scenes, ScenesConfig, build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import seeds  # noqa: E402

# sha256 of render_scene(seed, size)[0].tobytes(), recorded with the renderer of version 1.1.0 (before styles).
# Seeds: train records, a validation and a test record, and a record_seed retry (k = 1).
PINNED = {
    0: ("6176ebf171a0e795ca33c7eee78c02af6da829aa4ebbeb6b9c801edb7fed3cf6",
        "a4fb9d4da4b9b939985b346f9ce3b6cf7c2d0fdae5e66ff9829f29e6bfb88d26"),
    1: ("c1e9a10e194b4e9f18ac40e28a1bc1c4898cc0def548dad3e98acad3b44701f5",
        "d59b3735b247f7a8f34f0886fb8d31a59802ac549b83353a80adbfddfcad30d5"),
    7: ("3c4290954303eb8a788fc14f69d22232bd4a361ff2e63428b3ad2f6bb904e010",
        "2611901e993be9f5bce0574b06ba9eaa2850751e8fc936a6e00eeb992016cbec"),
    12345: ("e2c1258307291d0fd4a5d70ec9cb8cbfd7e9a7db5bf93c7ca0ea212e3a17c8a9",
            "c064cda59152205fe1698032f660457bc7e410cdcb246d733769013a51ee439f"),
    100000003: ("35639daf9c8e4c2f7e4134619718468026d6cf9e80e1507d653377fc88306443",
                "bf0e45e15a8f5208e9811d6f9969096517629113475f300c394ebca1c5a3daca"),
    200000011: ("928adfa03fea966a2ba4604c9ef4b1fe77280dcbc216b03275f9e39117bb243f",
                "e097832b6e22afd5033960f871e26085cc55742337427375f182242ab3114664"),
    1000000005: ("90ae4968c076eed5b5ea4b557a35a413dc8d9403eb2e32d0ff091cf309bacff1",
                 "d1cc50c81ba92341d53a1877e370c3aab2cba76984f6bccf3c4a23a5abeedaec"),
}
SEEDS = range(40)
TEXT_KEYS = ("label", "captions", "questions", "answers", "question_types", "num_objects")


def _sha(img):
    return hashlib.sha256(img.tobytes()).hexdigest()


def _background_mask(seed, size):
    """bool[S, S]: the background pixels of a seed's scene. Dark (<= 90) and light (>= 157) backgrounds never share
    a pixel value, and the objects are the same in both, so the pixels that differ are exactly the background."""
    return np.any(S.render_scene(seed, size, "dark")[0] != S.render_scene(seed, size, "light")[0], -1)


def test_dark_is_unchanged_from_version_1_1_0():
    """`dark` (the default, and every config built before styles) is bit-identical to version 1.1.0's renderer: the
    hashes were recorded with the 1.1.0 code, before styles existed; built datasets and published numbers rely on
    them. Unchanged from version 1.1.0, on purpose: a failure here means the default scenes changed."""
    for seed, (h64, h32) in PINNED.items():
        assert _sha(S.render_scene(seed, 64)[0]) == h64, seed
        assert _sha(S.render_scene(seed, 32)[0]) == h32, seed
        assert _sha(S.render_scene(seed, 32, "dark")[0]) == h32, seed
        assert _sha(S.make_example(seed, 32, "raw")["image"]) == h32, seed  # make_example's default style too


def test_objects_and_text_are_the_same_in_every_style():
    for seed in SEEDS:
        dark, objs = S.render_scene(seed, 32)
        ex = S.make_example(seed, 32, "raw")
        fg = ~_background_mask(seed, 32)
        assert fg.any()
        for style in S.STYLES[1:]:
            img, o = S.render_scene(seed, 32, style)
            assert o == objs, (seed, style)
            other = S.make_example(seed, 32, "raw", style)
            for k in TEXT_KEYS:
                assert np.array_equal(other[k], ex[k]), (seed, style, k)
            np.testing.assert_array_equal(other["multi_labels"], ex["multi_labels"])
            assert other["objects"].keys() == ex["objects"].keys()
            for k in ex["objects"]:
                assert np.array_equal(other["objects"][k], ex["objects"][k]), (seed, style, k)
            diff = img[fg].astype(int) - dark[fg]
            if style == "noise":  # the objects' pixels plus zero-mean noise (sigma 10-15)
                assert np.abs(diff).mean() < 20 and abs(diff.mean()) < 3, seed
            else:
                assert not diff.any(), (seed, style)  # the same object pixels, to the bit


def test_background_statistics_of_each_style():
    for seed in SEEDS:
        bg = _background_mask(seed, 64)
        imgs = {st: S.render_scene(seed, 64, st)[0].astype(np.float64) for st in S.STYLES}
        b = {st: im[bg] for st, im in imgs.items()}
        assert b["dark"].mean() < 100 and b["dark"].max() <= 90
        assert b["light"].mean() > 150 and b["light"].min() >= 157 and b["light"].max() <= 215
        tones = np.unique(b["texture"], axis=0)
        assert len(tones) == 2, seed  # two-tone, in mid greys, both on screen
        assert 70 <= tones.min() and tones.max() <= 180 and b["texture"].mean(-1).std() > 10
        # Local variance: neighbouring background pixels in a row (the ramp is vertical: plain styles are flat).
        both = bg[:, 1:] & bg[:, :-1]
        step = {st: np.abs(np.diff(im, axis=1))[both].mean() for st, im in imgs.items()}
        assert step["dark"] == 0 and step["light"] == 0
        assert step["noise"] > 8, (seed, step["noise"])


def test_noise_backgrounds_span_dark_and_light():
    means = [S.render_scene(seed, 32, "noise")[0][_background_mask(seed, 32)].mean() for seed in range(60)]
    assert min(means) < 70 and max(means) > 150


def test_every_palette_colour_stands_out_from_every_background():
    """Mean absolute difference (over channels) between each palette colour and the background: over a scene's
    background pixels (margin 35) and at the 1st percentile of its pixels (margin 25). The closest pairs: green on
    dark (~43, as in 1.1.0), purple on a mid grey (~44) and yellow on light (~65: light stops at 215)."""
    for seed in SEEDS:
        bg = _background_mask(seed, 32)
        for style in S.STYLES:
            pix = S.render_scene(seed, 32, style)[0][bg].astype(np.float32)
            diff = np.abs(pix[:, None, :] - S.RGB[None]).mean(-1)  # [pixels, colours]
            assert diff.mean(0).min() > 35, (seed, style, S.COLORS[diff.mean(0).argmin()])
            assert np.percentile(diff, 1, axis=0).min() > 25, (seed, style)


def test_unknown_style_is_refused():
    with pytest.raises(ValueError, match="unknown scene style 'sepia'"):
        S.render_scene(0, 32, "sepia")
    with pytest.raises(ValueError, match="styles \\['sepia'\\]"):
        Scenes(config=ScenesConfig(name="bad_style", styles=("sepia",)))


def test_style_of_draws_every_listed_style_deterministically():
    for styles in (S.STYLES, ("dark", "light", "noise"), ("light", "texture")):
        drawn = [S.style_of(seed, styles) for seed in range(100)]
        assert set(drawn) == set(styles)
        assert drawn == [S.style_of(seed, styles) for seed in range(100)]
        assert min(drawn.count(st) for st in styles) > 100 / len(styles) / 2  # roughly balanced
    assert {S.style_of(seed, ("light",)) for seed in range(100)} == {"light"}


def test_registered_style_configs():
    cfg = lambda name: Scenes(config=name).builder_config  # noqa: E731
    for name in ("default", "tiny", "raw", "tiny_raw", "heldout", "tiny_heldout"):
        assert cfg(name).styles == ("dark",)
    for name in ("styles", "tiny_styles"):
        assert cfg(name).styles == ("dark", "light", "noise")  # the held-out texture is in no training mix
    for name in ("texture", "tiny_texture"):
        assert cfg(name).styles == ("texture",)
    assert cfg("light").styles == ("light",)
    assert (cfg("styles").image_size, cfg("styles").num_train) == (64, 50_000)
    assert (cfg("texture").image_size, cfg("texture").num_train, cfg("texture").num_test) == (64, 2_000, 2_000)
    assert (cfg("tiny_texture").image_size, cfg("tiny_styles").num_train) == (32, 4096)


def test_small_multi_style_build_reads_back(tmp_path):
    config = ScenesConfig(name="styles_small", image_size=32, num_train=64, num_validation=16, num_test=16,
                          styles=S.STYLES)
    assert build(str(tmp_path), config)[0]
    builder = Scenes(data_dir=str(tmp_path), config=config)
    assert builder.info.metadata["styles"] == list(S.STYLES)
    seen = set()
    for split, n in (("train", 64), ("validation", 16), ("test", 16)):
        src = builder.as_data_source(split=split)
        assert len(src) == n
        for i in range(n):
            seed = S.record_seed(split, i, 32)
            style = S.style_of(seed, S.STYLES)
            seen.add(style)
            ex = src[i]
            np.testing.assert_array_equal(ex["image"], S.render_scene(seed, 32, style)[0])
            assert [c.decode() for c in ex["captions"]] == S.captions(S.render_scene(seed, 32)[1])
    assert seen == set(S.STYLES)


# ---- benchmarks/seeds.py --eval_data ----------------------------------------------------------------------------
def _args(**kw):
    return SimpleNamespace(**{"name": "r", "config": "experiments/vit_scenes.py:runlocal", "split": "test",
                              "workdir_root": "/w", "eval_data": None, **kw})


def test_eval_data_overrides_the_evaluation_only():
    names = ["classification", "mention"]
    extra = ["--config.total_steps=3"]
    train0, eval0 = seeds.commands(_args(), 1, extra, names)
    train1, eval1 = seeds.commands(_args(eval_data="scenes/texture"), 1, extra, names)
    assert train1 == train0  # the same training: a finished workdir is reused, not trained again
    assert not any(".data.name=" in a for a in train1 + eval0)
    assert eval1 == eval0[:-1] + ["--config.evals.classification.data.name=scenes/texture",
                                  "--config.evals.mention.data.name=scenes/texture"] + eval0[-1:]
    assert "--config.evals.classification.data.split=test" in eval1 and "--workdir" in eval1
    # The override reaches the evaluator's data config as vlmjax-eval loads it.
    from vlmjax.core import config as config_lib

    _, overrides = config_lib.split_overrides(seeds.data_overrides(["classification"], "scenes/texture"))
    cfg = config_lib.load_with_overrides("experiments/vit_scenes.py:runlocal", overrides)
    config_lib.fill_eval_data(cfg)
    assert cfg.evals.classification.data.name == "scenes/texture" and cfg.data.name == "scenes/tiny"


def test_eval_data_result_file_and_test_guard(tmp_path, monkeypatch):
    assert seeds.result_path("d", "r", "test") == os.path.join("d", "seeds_r_test.json")
    texture = os.path.join("d", "seeds_r_test_scenes_texture.json")
    assert seeds.result_path("d", "r", "test", "scenes/texture") == texture
    calls = []

    def fake_run_seed(args, seed, extra, names):
        calls.append((args.eval_data, seed))
        return {"eval/classification/accuracy": 0.5 + seed / 10}, 1.0, []

    monkeypatch.setattr(seeds, "run_seed", fake_run_seed)
    monkeypatch.setattr(seeds, "eval_names", lambda spec: ["test"])
    (tmp_path / "seeds_r_test.json").write_text(json.dumps({"commit": "0123456789ab"}))  # the in-domain test result
    argv = ["--name", "r", "--config", "experiments/vit_scenes.py:runlocal", "--split", "test", "--seeds", "0,1",
            "--out_dir", str(tmp_path), "--eval_data", "scenes/texture"]
    assert seeds.main(argv) == 0  # its own file: the in-domain test result does not block it
    out = tmp_path / "seeds_r_test_scenes_texture.json"
    result = json.loads(out.read_text())
    assert result["eval_data"] == "scenes/texture" and result["split"] == "test" and calls == [
        ("scenes/texture", 0), ("scenes/texture", 1)]
    assert result["summary"]["eval/classification/accuracy"]["mean"] == pytest.approx(0.55)
    assert "of `scenes/texture`" in seeds.table(result)
    assert json.loads((tmp_path / "seeds_r_test.json").read_text()) == {"commit": "0123456789ab"}  # untouched
    assert seeds.main(argv) == 2  # ... and it is itself read once
    assert json.loads(out.read_text()) == result and len(calls) == 2
