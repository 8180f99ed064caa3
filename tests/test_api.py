"""The Python API (vlmjax.load) on tiny trained runs: its numbers against the modules applied by hand to the
checkpoint's params, images of any size, label names, and the CLIs that wrap it."""
import io
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
import sentencepiece as spm
from PIL import Image

import fake_data
import vlmjax
from test_core import tiny_config
from vlmjax.api import Classifier, TwoTowerModel
from vlmjax.core.checkpoint import load_params_numpy
from vlmjax.core.loop import train

PP = [dict(op="decode", key="image"), dict(op="value_range", key="image", vmin=-1, vmax=1)]


def fake_images(n, seed=1):
    return [np.asarray(Image.open(io.BytesIO(ex["image"]))) for ex in fake_data.make_examples(n, seed)]


def by_hand(img, size=fake_data.SIZE):
    """uint8[H, W, 3] -> the model input: PIL bilinear resize to size x size, then [-1, 1]."""
    if img.shape[:2] != (size, size):
        img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
    return img.astype(np.float32) / 127.5 - 1


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("cls"))
    train(tiny_config(**{"mesh.data": 1, "total_steps": 3}), wd, devices=jax.devices()[:1])
    return wd


@pytest.fixture(scope="module")
def contrastive_run(tmp_path_factory):
    from vlmjax.data.tokenizer import train_from_texts

    root = tmp_path_factory.mktemp("clip")
    texts = [f"example {i} of a red blue green circle square" for i in range(300)]
    tok = train_from_texts(texts, str(root / "spm.model"), vocab_size=300).path
    c = ml_collections.ConfigDict()
    c.task, c.tokenizer, c.image_size, c.text_len = "contrastive", tok, fake_data.SIZE, 8
    c.total_steps, c.batch_size, c.log_every_steps, c.seed = 3, 16, 1, 0
    c.data = dict(name="fake:clean", preprocess=PP + [dict(op="tokenize", max_len=8, key="caption", out="text"),
                                                      dict(op="keep", keys=["image", "text", "text_mask"])])
    c.evals = dict(zeroshot=dict(type="zeroshot", class_names=["red", "blue"], templates=["a {}", "{} circle"],
                                 data=dict(split="test", preprocess=PP + [dict(op="keep", keys=["image", "label"])])))
    c.eval = dict(every_steps=0, batch_size=32)
    # SigLIP's layout (a MAP head on the image side, text pooled at the last position, no image projection), so
    # that test_siglip_export can export this run to HF transformers.
    tower = dict(width=16, depth=1, num_heads=2, mlp_dim=32)
    c.model = dict(image=dict(patch_size=(4, 4), pool_type="map", **tower),
                   text=dict(pool_type="last", mask_padding=False, **tower), out_dim=[0, 16],
                   temperature_init=10.0, bias_init=-10.0)
    c.mesh = dict(data=1)
    c.checkpoint = dict(async_save=False)
    wd = str(root / "wd")
    train(c, wd, devices=jax.devices()[:1])
    return wd, tok


def test_classifier_against_the_module_by_hand(classifier_run):
    m = vlmjax.load(classifier_run)
    assert isinstance(m, Classifier) and m.step == 3
    imgs = fake_images(3)
    params = load_params_numpy(classifier_run)
    logits = np.asarray(m.task.model.apply({"params": params}, np.stack([by_hand(i) for i in imgs]))[0], np.float64)
    want = np.exp(logits - logits.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    probs = m.probabilities(imgs)
    assert probs.shape == (3, fake_data.NUM_CLASSES) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, want, atol=1e-5)

    # No tfds dataset behind fake:clean: the label names are the class indices.
    assert m.label_names == ["0", "1", "2", "3"]
    top = m.classify(imgs[0], top_k=2)  # one image -> one list
    order = np.argsort(-want[0])
    assert [lab for lab, _ in top] == [str(order[0]), str(order[1])]
    np.testing.assert_allclose([p for _, p in top], want[0][order[:2]], atol=1e-5)
    assert [r[0][0] for r in m.classify(imgs)] == [str(i) for i in want.argmax(1)]  # a list -> one list per image
    # (the calls above padded the 3 images to 4; the padding row never reaches the results) in batches of 2 and 1:
    m.BATCH = 2
    np.testing.assert_allclose(m.probabilities(imgs), want, atol=1e-5)


def test_classifier_takes_paths_pil_and_any_size(classifier_run, tmp_path):
    m = vlmjax.load(classifier_run)
    img = fake_images(1)[0]
    big = np.asarray(Image.fromarray(img).resize((40, 24), Image.NEAREST))  # another size and aspect
    path = str(tmp_path / "big.png")
    Image.fromarray(big).save(path)
    params = load_params_numpy(classifier_run)
    logits = np.asarray(m.task.model.apply({"params": params}, by_hand(big)[None])[0])
    for given in (big, Image.fromarray(big), path, [path]):
        np.testing.assert_allclose(m.probabilities(given)[0], np.asarray(jax.nn.softmax(logits[0])), atol=1e-5)
    np.testing.assert_allclose(m.probabilities(Image.fromarray(img).convert("L")),
                               m.probabilities(np.asarray(Image.fromarray(img).convert("L").convert("RGB"))))


def test_two_towers_against_the_towers_by_hand(contrastive_run):
    wd, tok = contrastive_run
    m = vlmjax.load(wd)
    assert isinstance(m, TwoTowerModel)
    params = load_params_numpy(wd)
    imgs = fake_images(2) + [np.asarray(Image.fromarray(fake_images(1, 5)[0]).resize((24, 40)))]
    x = np.stack([by_hand(i) for i in imgs])
    zimg, _, out = m.task.model.apply({"params": params}, images=x)
    np.testing.assert_allclose(m.embed_images(imgs), zimg, atol=1e-5)

    sp = spm.SentencePieceProcessor(model_file=tok)

    def text_emb(texts):  # SentencePiece ids + EOS, padded to text_len (the tokenize op's layout)
        ids = np.full((len(texts), 8), sp.pad_id(), np.int32)
        mask = np.zeros((len(texts), 8), np.int32)
        for r, t in enumerate(texts):
            row = (sp.encode(t) + [sp.eos_id()])[:8]
            ids[r, :len(row)], mask[r, :len(row)] = row, 1
        return np.asarray(m.task.model.apply({"params": params}, text=ids, text_mask=mask)[1], np.float64)

    np.testing.assert_allclose(m.embed_texts(["example 3", "a red circle"]), text_emb(["example 3", "a red circle"]),
                               atol=1e-5)
    assert m.embed_texts("example 3").shape == (1, 16)

    # Zero-shot: each label the renormalised mean of its templates' unit embeddings, p = sigmoid(t cos + b).
    labels = ["red", "blue", "green"]
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    classes = unit(text_emb([t.format(lab) for lab in labels for t in ("a {}", "{} circle")])
                   .reshape(3, 2, -1).mean(1))
    logits = float(out["temperature"]) * np.asarray(zimg, np.float64) @ classes.T + float(out["bias"])
    np.testing.assert_allclose(m.zeroshot(imgs, labels), 1 / (1 + np.exp(-logits)), atol=1e-5)


def test_zeroshot_cli_any_size_and_bad_files(contrastive_run, tmp_path):
    from vlmjax.cli import zeroshot as zeroshot_cli

    wd, _ = contrastive_run
    img = np.asarray(Image.fromarray(fake_images(1)[0]).resize((33, 50)))  # the run trained at 16 x 16
    path = str(tmp_path / "odd.png")
    Image.fromarray(img).save(path)
    (result_path, probs), = zeroshot_cli.run_cli(wd, [path], ["red", "blue"])
    small = np.asarray(Image.fromarray(img).resize((fake_data.SIZE,) * 2, Image.BILINEAR))
    want = vlmjax.load(wd).zeroshot(small, ["red", "blue"])[0]  # already at the run's size: no resize
    assert result_path == path
    np.testing.assert_allclose([probs["red"], probs["blue"]], want, atol=1e-4)
    with pytest.raises(ValueError, match=r"^--image '.*nope\.png': no such file$"):
        zeroshot_cli.run_cli(wd, [str(tmp_path / "nope.png")], ["red"])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG truncated")
    out = subprocess.run([sys.executable, "-m", "vlmjax.cli.zeroshot", "--workdir", wd, "--image", str(bad),
                          "--labels", "red"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        f"error: --image {str(bad)!r}: cannot decode as an image (UnidentifiedImageError: cannot identify image "
        f"file {str(bad)!r})"], out.stderr[-2000:]


def test_predict_cli_classifies_and_names_a_bad_image_file(classifier_run, contrastive_run, tmp_path, capsys):
    from vlmjax.cli import predict as predict_cli

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    for path, why in ((str(tmp_path / "missing.png"), "no such file"), (str(bad), "cannot decode as an image")):
        capsys.readouterr()
        assert predict_cli.main(["--workdir", classifier_run, "--image", path]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: --image {path!r}: {why}"), err
    # a classification run: the top labels and probabilities, as the API gives them
    paths = [str(tmp_path / f"{i}.png") for i in range(2)]
    for path, img in zip(paths, fake_images(2)):
        Image.fromarray(img).save(path)
    assert predict_cli.main(["--workdir", classifier_run, "--image", paths[0], "--image", paths[1],
                             "--top_labels", "2"]) == 0
    want = vlmjax.load(classifier_run).classify(paths, top_k=2)
    assert capsys.readouterr().out.strip().splitlines() == [
        f"{p}: " + ", ".join(f"{label} {prob:.4f}" for label, prob in w) for p, w in zip(paths, want)]
    # a prompt on a classification run, or a run of another family: named, exit 2
    assert predict_cli.main(["--workdir", classifier_run, "--image", paths[0], "--prompt", "x"]) == 2
    assert "is a classification run: give --image only" in capsys.readouterr().err
    assert predict_cli.main(["--workdir", contrastive_run[0], "--image", paths[0], "--prompt", "x"]) == 2
    assert "config.task='contrastive'; vlmjax-predict serves prefix-LM and classification" in capsys.readouterr().err


def test_load_names_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        vlmjax.load(str(tmp_path))


def test_label_names_are_the_datasets_class_labels(scenes_tiny_dir):
    from vlmjax.data import scenes
    from vlmjax.tasks.classification import ClassificationTask
    from vlmjax.core.config import resolve

    cfg = tiny_config(**{"data.name": "scenes/tiny", "data.data_dir": scenes_tiny_dir, "num_classes": 24})
    task = ClassificationTask(resolve(cfg, ClassificationTask.config_defaults()))
    assert Classifier(task, {}).label_names == list(scenes.CLASS_NAMES)
    assert Classifier(task, {}, label_names=["a"] * 24).label_names == ["a"] * 24
