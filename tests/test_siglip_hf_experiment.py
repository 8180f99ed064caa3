"""experiments/siglip_hf.py: a local HF SigLIP folder evaluated by the trainer, with HF's own embeddings.

The folder is a tiny random SiglipModel (`save_pretrained`, as test_siglip_import builds it) plus a tiny
SentencePiece model as `spiece.model`; nothing is downloaded.
"""
import os

import jax
import numpy as np
import pytest

from vlmjax.core.config import load_experiment

VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=16,
              patch_size=4)
TEXT = dict(vocab_size=512, hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=3,
            max_position_embeddings=12, projection_size=32)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """(folder, HF SiglipModel): config.json + model.safetensors + spiece.model."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from vlmjax.data.tokenizer import train_from_texts

    torch.manual_seed(0)
    model = transformers.SiglipModel(transformers.SiglipConfig(vision_config=VISION, text_config=TEXT)).eval()
    with torch.no_grad():  # every parameter redrawn: a swapped scale/bias cannot hide behind ones/zeros
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith("weight") and "norm" in name else 0.0))
    folder = tmp_path_factory.mktemp("siglip-tiny")
    model.save_pretrained(folder)
    texts = [f"a {c} {s} {w} a {c2} {s2}" for c in ("red", "blue", "green") for s in ("circle", "square")
             for w in ("left of", "above") for c2 in ("yellow", "purple") for s2 in ("triangle", "star")]
    tok = train_from_texts(texts * 20, str(folder / "spiece.model"), vocab_size=300)
    assert tok.vocab_size <= TEXT["vocab_size"]
    return str(folder), model


def test_eval_only_imports_the_hf_weights_and_evaluates(hf_folder, scenes_tiny_dir, tmp_path):
    import torch

    from vlmjax.core.loop import Trainer

    folder, hf = hf_folder
    config = load_experiment(f"siglip_hf:{folder},runlocal")
    assert (config.image_size, config.text_len, config.model.image.width) == (16, 12, 32)
    assert config.init_from.to_dict() == {"path": folder, "format": "hf_siglip"}
    config.data.data_dir = scenes_tiny_dir
    trainer = Trainer(config, str(tmp_path / "w"))
    final = trainer.run()
    assert 0.0 <= final["eval/zeroshot/accuracy"] <= 1.0  # the run evaluated
    assert os.path.isdir(tmp_path / "w" / "checkpoints" / "0")  # the imported weights, as a vlmjax run

    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32)
    ids = rng.integers(0, TEXT["vocab_size"], (3, TEXT["max_position_embeddings"])).astype(np.int32)
    params = jax.device_get(trainer.state["params"])
    zimg, ztxt, out = trainer.task.model.apply({"params": params}, images, ids, np.ones_like(ids))
    with torch.no_grad():
        ref_img = hf.get_image_features(pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2))
        ref_txt = hf.get_text_features(input_ids=torch.from_numpy(ids.astype(np.int64)))
    for ours, ref in ((zimg, ref_img), (ztxt, ref_txt)):
        ref = getattr(ref, "pooler_output", ref).numpy()  # transformers 5 returns an output object
        np.testing.assert_allclose(np.asarray(ours), ref / np.linalg.norm(ref, axis=-1, keepdims=True), atol=1e-4)
    np.testing.assert_allclose(float(out["temperature"]), float(hf.logit_scale.detach().exp()), rtol=1e-6)
    np.testing.assert_allclose(float(out["bias"]), float(hf.logit_bias.detach()[0]), rtol=1e-6)


def test_missing_folder_or_config_json_is_one_error_naming_it(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=rf"^experiments/siglip_hf.py: '{missing}/config.json' not found \(no such "
                                         r"folder\)"):
        load_experiment(f"siglip_hf:{missing}")
    with pytest.raises(ValueError, match=rf"'{tmp_path}/config.json' not found \(no config.json in it\)"):
        load_experiment(f"siglip_hf:{tmp_path},finetune")
    with pytest.raises(ValueError, match=r"^experiments/siglip_hf.py:runlocl: unknown variant 'runlocl' \(did you "
                                         r"mean 'runlocal'\?\)"):
        load_experiment("siglip_hf:runlocl")


def test_default_is_siglip_base_patch16_224(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no models/ folder here: the built-in config.json of the hub model
    c = load_experiment("siglip_hf")
    assert (c.image_size, c.text_len, c.model.text.vocab_size, c.model.image.patch_size) == (224, 64, 32000, [16, 16])
    assert c.init_from.path == "models/siglip-base-patch16-224" and c.total_steps == 0  # evaluation only
    ft = load_experiment("siglip_hf:finetune")
    assert ft.optimizer.lr == 1e-5 and ft.schedule.warmup_steps > 0 and "coco" in ft.evals
    assert os.path.basename(c.tokenizer) == "spiece.model"


def test_text_ids_equal_hf_siglip_tokenizer(hf_folder):
    """The tokenize op as siglip_hf configures it (canonicalised, eos kept on truncation, padded with eos) gives
    the ids of HF's SiglipTokenizer with padding='max_length', including a text cut at the length."""
    transformers = pytest.importorskip("transformers")
    from vlmjax.data.ops import get_preprocess_fn
    from vlmjax.data.tokenizer import Tokenizer

    folder, _ = hf_folder
    config = load_experiment(f"siglip_hf:{folder},runlocal")
    (spec,) = [op for op in config.data.preprocess if op["op"] == "tokenize"]
    ours = get_preprocess_fn([dict(spec, max_len=12)], tokenizer=Tokenizer(os.path.join(folder, "spiece.model")))
    hf_tok = transformers.SiglipTokenizer(vocab_file=os.path.join(folder, "spiece.model"))
    for text in ["A photo of a Red circle.", "a  blue square, left of a star!",
                 "red circle left of yellow triangle above blue square left of purple star above green circle"]:
        ref = hf_tok(text, padding="max_length", max_length=12, truncation=True)["input_ids"]
        assert ours({"text": text}, None)["text"].tolist() == ref, text


def test_image_pixels_equal_hf_siglip_image_processor(hf_folder, tmp_path):
    """The eval image ops siglip_hf configures (decode, bicubic resize, [-1, 1]) give HF's Pillow image processor's
    pixel values for a PNG of another size and aspect."""
    import io

    transformers = pytest.importorskip("transformers")
    from PIL import Image

    from vlmjax.data.ops import get_preprocess_fn

    processor = getattr(transformers, "SiglipImageProcessorPil", None)
    if processor is None:  # transformers 4: the Pillow processor is the only one
        processor = transformers.SiglipImageProcessor
    folder, _ = hf_folder
    config = load_experiment(f"siglip_hf:{folder},runlocal")
    ops = [op for op in config.evals.zeroshot.data.preprocess if op["op"] != "keep"]
    rng = np.random.default_rng(0)
    for h, w in ((37, 53), (64, 24)):
        png = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(png, format="PNG")
        ours = get_preprocess_fn(ops)({"image": png.getvalue()}, None)["image"]
        ref = processor(size={"height": 16, "width": 16})(images=Image.open(io.BytesIO(png.getvalue())),
                                                           return_tensors="np")["pixel_values"][0]
        assert ours.shape == (16, 16, 3)
        np.testing.assert_allclose(ours, ref.transpose(1, 2, 0), atol=1e-6)
        bilinear = get_preprocess_fn([dict(op, method="bilinear") if op["op"] == "resize" else op for op in ops])
        assert np.abs(bilinear({"image": png.getvalue()}, None)["image"] - ours).max() > 1e-2  # the method matters
