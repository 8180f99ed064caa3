"""SigLIP weight export: `vlmjax-export --format hf_siglip` writes a folder that transformers' SiglipModel loads and
that embeds images and texts as our model does; to_hf is the exact inverse of the importer's from_hf."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import vlmjax  # noqa: E402
from test_api import contrastive_run, fake_images  # noqa: E402,F401  (the tiny trained SigLIP-layout run)
from test_siglip_import import TEXT, VISION, hf  # noqa: E402,F401  (a random tiny HF SiglipModel)
from vlmjax.cli import export as export_cli  # noqa: E402
from vlmjax.models import siglip_big_vision, siglip_hf, two_towers, weight_files  # noqa: E402
from vlmjax.tasks.text_inputs import tokenize_texts  # noqa: E402


def test_hf_state_dict_round_trip(hf):
    model = hf[0]
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    ours = siglip_hf.from_hf(sd, VISION["num_attention_heads"], TEXT["num_attention_heads"])
    back = siglip_hf.to_hf(weight_files.nest(ours))
    assert sorted(back) == sorted(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
    # scanned blocks export to the same state dict
    scanned = siglip_hf.to_hf(weight_files.nest(weight_files.stack_blocks(ours)))
    assert all(np.array_equal(scanned[k], sd[k]) for k in sd)
    config = siglip_hf.hf_siglip_config(back, VISION["num_attention_heads"], TEXT["num_attention_heads"])
    for key, value in VISION.items():
        assert config["vision_config"][key] == value, key
    for key, value in TEXT.items():
        assert config["text_config"][key] == value, key


def test_export_cli_loads_in_transformers_with_our_embeddings(contrastive_run, tmp_path):  # noqa: F811
    wd, _ = contrastive_run
    out = str(tmp_path / "hf")
    assert export_cli.main(["--workdir", wd, "--format", "hf_siglip", "--out", out]) == 0
    hf_model = transformers.SiglipModel.from_pretrained(out).eval()
    with open(f"{out}/config.json") as f:
        assert json.load(f)["architectures"] == ["SiglipModel"]

    m = vlmjax.load(wd)
    imgs = np.stack(fake_images(3))
    texts = ["example 3", "a red circle", "blue"]
    ids, mask = tokenize_texts(m.task.text_tokenize_fn(), texts)  # padded to text_len, as SigLIP's max_length padding
    with torch.no_grad():
        ref = hf_model(input_ids=torch.from_numpy(np.asarray(ids, np.int64)),
                       pixel_values=torch.from_numpy(imgs.astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2))
    zimg, ztxt = m.embed_images(imgs), m.embed_texts(texts)
    np.testing.assert_allclose(zimg, ref.image_embeds.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(ztxt, ref.text_embeds.numpy(), atol=1e-4, rtol=0)
    assert np.abs(zimg @ ztxt.T).max() > 0.05  # not trivially zero
    # HF's logits: exp(logit_scale) * cos + logit_bias; our zero-shot uses the same t and b
    t, b = float(np.exp(m.variables["params"]["t"][0])), float(m.variables["params"]["b"][0])
    np.testing.assert_allclose(ref.logits_per_image.numpy(), t * zimg @ ztxt.T + b, atol=1e-3)

    # the folder loads back into vlmjax with the run's verbs
    back = vlmjax.load(out)
    np.testing.assert_allclose(back.embed_images(imgs), zimg, atol=1e-6)
    np.testing.assert_allclose(back.zeroshot(imgs, ["red", "blue"]), m.zeroshot(imgs, ["red", "blue"]), atol=1e-6)
    with open(f"{out}/vlmjax_config.json") as f:  # the same run, its image tower scanned: its blocks stacked on load
        cfg = json.load(f)
    cfg["model"]["image"]["scan_layers"] = True
    with open(f"{out}/vlmjax_config.json", "w") as f:
        json.dump(cfg, f)
    scanned = vlmjax.load(out)
    assert "blocks" in scanned.variables["params"]["img"]["encoder"]
    assert "blocks" not in scanned.variables["params"]["txt"]["encoder"]
    np.testing.assert_allclose(scanned.embed_images(imgs), zimg, atol=1e-5)
    np.testing.assert_allclose(scanned.embed_texts(texts), ztxt, atol=1e-5)

    # the same run as a big_vision .npz reads back (init_from's reader) to the checkpoint's params
    npz = str(tmp_path / "run.npz")
    assert export_cli.main(["--workdir", wd, "--format", "big_vision", "--out", npz]) == 0
    got, want = weight_files.flatten(two_towers.load(npz)), weight_files.flatten(m.variables["params"])
    assert sorted(got) == sorted(want) and all(np.array_equal(got[k], want[k]) for k in want)
    # a template whose text tower alone scans: that tower's blocks stacked, the image tower's left per block
    template = {k.replace("txt/encoder/block00/", "txt/encoder/blocks/"): np.shape(v) for k, v in want.items()}
    mixed = weight_files.flatten(two_towers.load(npz, template=template))
    assert any(k.startswith("txt/encoder/blocks/") for k in mixed)
    assert not any(k.startswith("img/encoder/blocks/") for k in mixed)
    assert weight_files.unstack_blocks(mixed).keys() == want.keys()


def test_export_refuses_what_hf_siglip_cannot_express(contrastive_run, tmp_path, capsys):  # noqa: F811
    with pytest.raises(ValueError, match=r"^config.model.text.mask_padding=True: HF SiglipModel needs False"):
        two_towers.check_exportable({"image": {"pool_type": "map"}, "text": {"pool_type": "last"}})
    with pytest.raises(ValueError, match=r"^config.model.image.stem_channels=16"):
        two_towers.check_exportable({"image": {"pool_type": "map", "stem_channels": 16},
                             "text": {"pool_type": "last", "mask_padding": False}})
    assert export_cli.main(["--workdir", str(tmp_path), "--format", "hf_siglip", "--out", str(tmp_path / "o")]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_big_vision_npz_both_ways(hf, tmp_path):
    from test_siglip_import import _big_vision_npz

    _big_vision_npz(hf[0], tmp_path / "bv.npz", scanned=False)  # big_vision's names, from HF's converter's list
    with np.load(tmp_path / "bv.npz") as z:
        bv = {k: z[k] for k in z.files}
    ours = siglip_big_vision.from_big_vision(bv)
    # scanned blocks come out unrolled
    back = siglip_big_vision.to_big_vision(weight_files.nest(weight_files.stack_blocks(ours)))
    assert sorted(back) == sorted(bv)
    for k in bv:
        np.testing.assert_array_equal(back[k], bv[k].reshape(back[k].shape), err_msg=k)
    assert two_towers.save_big_vision(weight_files.nest(ours), {"image": {}, "text": {}}, str(tmp_path / "out")) == [
        str(tmp_path / "out.npz")]
    again = two_towers.load(str(tmp_path / "out.npz"))
    assert all(np.array_equal(weight_files.nest(ours)[t][k], again[t][k])
               for t in ("img", "txt") for k in ("pos_embedding",))
    flat_again = weight_files.flatten(again)
    assert sorted(flat_again) == sorted(ours) and all(np.array_equal(flat_again[k], ours[k]) for k in ours)
    with pytest.raises(ValueError, match=r"^config.model.image.stem_channels=8: big_vision needs 0"):
        two_towers.save_big_vision(weight_files.nest(ours), {"image": {"stem_channels": 8}}, str(tmp_path / "x"))
