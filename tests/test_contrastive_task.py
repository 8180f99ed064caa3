"""Contrastive task (SigLIP / CLIP / LiT) through the trainer core on scenes/tiny, plus the zero-shot CLI."""
import copy
import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from test_core import losses
from vlmjax.core.config import set_dotted
from vlmjax.data import scenes
from vlmjax.losses.contrastive import sigmoid_loss
from vlmjax.tasks.contrastive import build_two_towers
from vlmjax.core.checkpoint import load_params_numpy
from vlmjax.core.config import load_experiment
from vlmjax.core.loop import Trainer, train
from vlmjax.core.optim import param_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 150
TEMPLATES = ["a single large {} on a plain background", "one large {}"]


@pytest.fixture(scope="module")
def tokenizer_path(scenes_tiny_tokenizer):
    return scenes_tiny_tokenizer


def tiny_config(data_dir, tok, experiment="siglip_scenes.py:runlocal", **over):
    c = load_experiment(os.path.join(ROOT, "experiments", experiment))
    set_dotted(c, {"data.data_dir": data_dir, "tokenizer": tok, "checkpoint.async_save": False, **over})
    return c


@pytest.fixture(scope="module")
def siglip_run(scenes_tiny_dir, tokenizer_path, tmp_path_factory):
    """The reduced siglip_scenes run on ONE device (dense loss), evaluated at its end."""
    wd = str(tmp_path_factory.mktemp("siglip"))
    cfg = tiny_config(scenes_tiny_dir, tokenizer_path, **{
        "total_steps": STEPS, "log_every_steps": 1, "batch_size": 64, "mesh.data": 1, "schedule.warmup_steps": 20,
        "eval.every_steps": STEPS, "evals.zeroshot.templates": TEMPLATES,
        "evals.zeroshot.data.max_examples": 512, "evals.retrieval.data.max_examples": 512})
    final = train(cfg, wd, devices=jax.devices()[:1])
    return wd, cfg, final


def run_config(siglip_run):
    """A fresh copy of the reduced run's config (tests edit it)."""
    return copy.deepcopy(siglip_run[1])


def test_temperature_bias_init_and_log_space():
    from vlmjax.models.two_towers import CLIP_INIT, SIGLIP_INIT

    tower = {"patch_size": (8, 8), "width": 16, "depth": 1, "num_heads": 2, "mlp_dim": 32}
    img, ids, mask = jnp.ones((4, 16, 16, 3)), jnp.arange(32).reshape(4, 8) % 50, jnp.ones((4, 8), jnp.int32)

    def model(**inits):
        cfg = {"image": tower, "text": {k: v for k, v in tower.items() if k != "patch_size"}, "out_dim": 8, **inits}
        m = build_two_towers(cfg, 50)
        params = jax.jit(lambda: nn.meta.unbox(m.init(jax.random.key(0), img, ids, mask)["params"]))()
        return m, params, jax.jit(lambda p: m.apply({"params": p}, img, ids, mask))

    m, p, fwd = model(**SIGLIP_INIT)
    assert float(p["t"][0]) == pytest.approx(math.log(10.0)) and float(p["b"][0]) == -10.0  # t stored as its log
    zimg, ztxt, out = fwd(p)
    assert float(out["temperature"]) == pytest.approx(10.0) and float(out["bias"]) == -10.0
    np.testing.assert_allclose(np.linalg.norm(zimg, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ztxt, axis=1), 1.0, rtol=1e-5)

    # The gradient reaches log t through exp: dL/d(log t) = t * dL/dt.
    def loss_of(params):
        zi, zt, o = fwd(params)
        return sigmoid_loss(zi, zt, o["log_temperature"], o["bias"])[0]

    g = jax.jit(jax.grad(loss_of))(p)["t"][0]
    dl_dt = jax.jit(jax.grad(lambda t: sigmoid_loss(zimg, ztxt, jnp.log(t), out["bias"])[0]))(jnp.float32(10.0))
    assert float(g) == pytest.approx(10.0 * float(dl_dt), rel=1e-4) and float(g) != 0.0

    m, p, fwd = model(**CLIP_INIT)
    assert "b" not in p and float(p["t"][0]) == pytest.approx(math.log(1 / 0.07))
    p = {**p, "t": jnp.full((1,), math.log(1000.0))}  # beyond the clamp of 100: capped, and no gradient
    _, _, out = fwd(p)
    assert float(out["temperature"]) == pytest.approx(100.0, rel=1e-5) and "bias" not in out
    assert float(jax.jit(jax.grad(lambda q: fwd(q)[2]["temperature"]))(p)["t"][0]) == 0.0


def test_reduced_siglip_learns(siglip_run):
    wd, cfg, final = siglip_run
    # A model that tells no pair apart can at best give every logit log(1/(B-1)) (bias and temperature alone do
    # that within ~20 steps): loss B * binary entropy(1/B) = 5.15 at B = 64. Going well below it needs
    # image-text alignment. Measured: 4.4 after 150 steps.
    b = cfg.batch_size
    uninformed = -(math.log(1 / b) + (b - 1) * math.log(1 - 1 / b))
    assert losses(wd)[-10:].mean() < uninformed - 0.4
    # 150 steps at 32 px learn colour long before shape (see docs/contrastive.md), so zero-shot accuracy is low
    # but clearly above chance: measured top-1 0.113 and top-5 0.445 vs chance 1/24 = 0.042 and 5/24 = 0.208;
    # retrieval R@10 measured 0.086 / 0.163 vs chance 10/512 = 0.020. Thresholds ~2x chance, below the
    # (deterministic, seeded) measurement.
    assert final["eval/zeroshot/accuracy"] >= 0.08 and final["eval/zeroshot/top5"] >= 0.33, final
    assert final["eval/retrieval/img2txt_r@10"] >= 0.05 and final["eval/retrieval/txt2img_r@10"] >= 0.05, final
    for d in ("img2txt", "txt2img"):
        r = [final[f"eval/retrieval/{d}_r@{k}"] for k in (1, 5, 10)]
        assert r == sorted(r) and r[-1] <= 1.0


def test_evaluators_end_to_end(siglip_run, tmp_path):
    """Both evaluators recomputed by hand (model applied to the raw tfds examples, per-query loops over caption
    strings), on 60 images in batches of 32 (so padding rows are in play); wrong class names must hurt."""
    import tensorflow_datasets as tfds

    from vlmjax.tasks.text_inputs import tokenize_texts
    from vlmjax.cli.evaluate import evaluate_workdir
    from vlmjax.api import load_run

    wd, cfg = siglip_run[0], run_config(siglip_run)
    task, variables, _ = load_run(wd, keys=("params",))
    params = variables["params"]
    v = {"params": params}
    # the test split, as before the experiments' evaluations moved to validation: this short run's zero-shot on
    # those 60 images is well above chance, which the wrong-class-names check below needs
    src = tfds.data_source("scenes/tiny", split="test", data_dir=cfg.data.data_dir, download=False)
    n = 60
    exs = [src[i] for i in range(n)]
    images = np.stack([e["image"] for e in exs]).astype(np.float32) / 127.5 - 1
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    zimg = unit(np.asarray(jax.jit(lambda v, x: task.model.apply(v, images=x)[0])(v, images), np.float64))

    def embed(texts):
        ids, mask = tokenize_texts(task.text_tokenize_fn(), texts)
        return unit(np.asarray(jax.jit(lambda v, i, m: task.model.apply(v, text=i, text_mask=m)[1])(v, ids, mask),
                               np.float64))

    # Retrieval, by the documented rule: a caption text is correct for every image that came with it, and a
    # query's rank counts the wrong items strictly above its best correct one.
    texts_of = [{c.decode() for c in e["captions"]} for e in exs]
    caps = [c.decode() for e in exs for c in e["captions"]]
    assert len(set(caps)) < len(caps)  # scenes repeats captions across images: the rule is exercised
    sims = zimg @ embed(caps).T  # [n, M]

    def recall(scores_of, correct, queries, items, k):
        hits = []
        for q in queries:
            best = max(scores_of(q, i) for i in items if correct(q, i))
            hits.append(sum(scores_of(q, i) > best for i in items if not correct(q, i)) < k)
        return np.mean(hits)

    want_ret = {}
    for k in (1, 5, 10):
        want_ret[f"img2txt_r@{k}"] = recall(lambda q, j: sims[q, j], lambda q, j: caps[j] in texts_of[q],
                                            range(n), range(len(caps)), k)
        want_ret[f"txt2img_r@{k}"] = recall(lambda j, i: sims[i, j], lambda j, i: caps[j] in texts_of[i],
                                            range(len(caps)), range(n), k)

    names = list(scenes.CLASS_NAMES)
    cls = unit(unit(embed([t.format(c) for c in names for t in TEMPLATES])).reshape(24, len(TEMPLATES), -1).mean(1))
    want_zs = np.mean(np.argmax(zimg @ cls.T, axis=1) == np.array([e["label"] for e in exs]))

    set_dotted(cfg, {f"evals.{e}.data.{k}": val for e in ("zeroshot", "retrieval")
                   for k, val in (("max_examples", n), ("batch_size", 32), ("split", "test"))})
    _, got = evaluate_workdir(wd, cfg)  # the run's mesh (data=1) on the first device of the 8
    assert got["eval/zeroshot/accuracy"] == pytest.approx(want_zs, abs=1e-6)
    for k, val in want_ret.items():
        assert got[f"eval/retrieval/{k}"] == pytest.approx(val, abs=1e-6), k

    # Class names given in the config replace the dataset's: names rotated by one colour (4 shapes) give every
    # label another colour, which this short run has learnt best, so the accuracy must fall well below.
    set_dotted(cfg, {"evals.zeroshot.class_names": names[4:] + names[:4]})
    del cfg.evals["retrieval"]
    _, bad = evaluate_workdir(wd, cfg)
    assert bad["eval/zeroshot/accuracy"] < 0.5 * got["eval/zeroshot/accuracy"]


def test_fewshot_probe_of_the_image_embedding_by_hand(siglip_run):
    """`type='fewshot'` on the towers: the image embeddings of the first 200 train and 60 test images computed here
    from the raw tfds examples, the first k of each class standardised with a constant bias feature, and ridge
    solved as least squares on the augmented system: the evaluator's accuracies equal that to the example."""
    import tensorflow_datasets as tfds

    from test_fewshot import ridge_lstsq
    from vlmjax.api import load_run
    from vlmjax.cli.evaluate import evaluate_workdir

    wd, cfg = siglip_run[0], run_config(siglip_run)
    task, variables, _ = load_run(wd, keys=("params",))
    embed = jax.jit(lambda v, x: task.model.apply(v, images=x)[0])

    def split(name, n):
        src = tfds.data_source("scenes/tiny", split=name, data_dir=cfg.data.data_dir, download=False)
        exs = [src[i] for i in range(n)]
        images = np.stack([e["image"] for e in exs]).astype(np.float32) / 127.5 - 1
        labels = np.array([e["label"] for e in exs])
        return np.asarray(embed({"params": variables["params"]}, images), np.float64), labels

    (zp, yp), (zt, yt) = split("train", 200), split("test", 60)
    want = {}
    for k in (1, 3):
        idx = np.sort(np.concatenate([np.flatnonzero(yp == c)[:k] for c in range(24)]))
        mean, std = zp[idx].mean(0), zp[idx].std(0) + 1e-6
        feats = lambda z: np.hstack([(z - mean) / std, np.full((len(z), 1), 100.0)])  # noqa: E731
        a, y = feats(zp[idx]), np.where(yp[idx][:, None] == np.arange(24), 1.0, -1.0)
        w = ridge_lstsq(a, y, 256.0)
        want[k] = np.mean(np.argmax(feats(zt) @ w, 1) == yt)
    cfg.evals = ml_collections.ConfigDict({"fewshot": dict(
        type="fewshot", shots=(1, 3), l2_reg=256.0, train_data=dict(max_examples=200),
        data=dict(split="test", max_examples=60, batch_size=32, preprocess=list(cfg.evals.zeroshot.data.preprocess)))})
    _, got = evaluate_workdir(wd, cfg)
    assert got["eval/fewshot/classes"] == 24
    for k in (1, 3):
        assert got[f"eval/fewshot/{k}shot_accuracy"] == pytest.approx(want[k], abs=1e-6), k
    assert want[3] > 1 / 24  # above chance, from a 150-step run (6 of 60 here, chance 2.5)


def test_sharded_ring_matches_one_device(siglip_run, tmp_path):
    """Mesh (2,2,2) with the ring loss (the default when the batch is sharded) vs the 1-device dense run: the
    first steps' losses agree (warmup covers them, so the shorter run has the same learning rates)."""
    wd, cfg = siglip_run[0], run_config(siglip_run)
    set_dotted(cfg, {"total_steps": 3, "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "evals": {}})
    t = Trainer(cfg, str(tmp_path))
    t.run()
    np.testing.assert_allclose(losses(str(tmp_path)), losses(wd)[:3], rtol=2e-5)
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), t.task.dummy_batch(cfg.batch_size))
    with jax.set_mesh(t.mesh):
        hlo = t._train_step.lower(t.abstract_state, batch).as_text()
    assert "collective_permute" in hlo  # the ring (loss_impl '' = auto) ran, not the dense loss


def test_lit_locks_the_image_tower(scenes_tiny_dir, tokenizer_path, tmp_path):
    vit_wd = str(tmp_path / "vit")
    vit = load_experiment(os.path.join(ROOT, "experiments", "vit_scenes.py:runlocal"))
    set_dotted(vit, {"data.data_dir": scenes_tiny_dir, "total_steps": 2, "evals": {}, "checkpoint.async_save": False})
    train(vit, vit_wd)
    cfg = tiny_config(scenes_tiny_dir, tokenizer_path, "lit_scenes.py:runlocal",
                      **{"total_steps": 3, "evals": {}, "init_from.workdir": vit_wd})
    t = Trainer(cfg, str(tmp_path / "lit"))
    t.run()
    before, loaded = jax.device_get(t.init_state()["params"]), load_params_numpy(vit_wd)
    after = jax.device_get(t.state["params"])
    flat = lambda tree: {param_path(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}  # noqa: E731
    after, before, loaded = flat(after), flat(before), flat(loaded)
    img = [k for k in after if k.startswith("img/")]
    assert len(img) == len([k for k in loaded if not k.startswith("head/")]) > 10
    for k in img:  # the vit_scenes weights, bitwise, after training
        np.testing.assert_array_equal(after[k], loaded[k[len("img/"):]], err_msg=k)
    assert any(not np.array_equal(after[k], before[k]) for k in after if k.startswith("txt/"))


def test_init_from_hf_siglip_weights(scenes_tiny_dir, tokenizer_path, tmp_path):
    """config.init_from.path: a tiny random HF SiglipModel's state dict (a bare .safetensors file, so the head
    counts come from our model) is the first step's starting point, bit for bit, and training goes on from it."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import save_file

    from vlmjax.data.tokenizer import Tokenizer
    from vlmjax.models import siglip_hf as wi

    torch.manual_seed(0)
    hf_cfg = transformers.SiglipConfig(  # 4 vs 2 heads: a mix-up of the two towers' counts cannot pass
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                           image_size=32, patch_size=8),
        text_config=dict(vocab_size=Tokenizer(tokenizer_path).vocab_size, hidden_size=24, intermediate_size=40,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=24, projection_size=32))
    model = transformers.SiglipModel(hf_cfg).eval()
    with torch.no_grad():  # redrawn: the default init (ones, zeros) would hide a swapped scale/bias
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    path = str(tmp_path / "model.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    want = wi.from_hf(model.state_dict(), 4, 2)

    spec = wi.siglip_model_config(hf_cfg)
    cfg = tiny_config(scenes_tiny_dir, tokenizer_path, **{
        "total_steps": 1, "evals": {}, "mesh.data": 1, "model": spec["model"], "image_size": spec["image_size"],
        "text_len": spec["text_len"], "init_from": {"path": path, "format": "hf_siglip"}})
    t = Trainer(cfg, str(tmp_path / "run"), jax.devices()[:1])
    t.run()
    def flat(tree):
        return {param_path(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]}

    init, after = flat(t.init_state()["params"]), flat(t.state["params"])
    assert sorted(init) == sorted(want)  # every parameter came from the file
    for k, v in want.items():
        np.testing.assert_array_equal(init[k], v, err_msg=k)
    assert all(np.isfinite(losses(str(tmp_path / "run"))))
    assert sum(not np.array_equal(after[k], init[k]) for k in init) > len(init) // 2  # trained from there

    for over, err, match in [
            ({"format": "hf"}, ValueError, r"config.init_from.format='hf': expected one of hf_siglip, big_vision"),
            ({"path": path + ".missing"}, FileNotFoundError, r"config.init_from.path='.*missing': no such file"),
            ({"format": "big_vision"}, ValueError, r"config.init_from.path='.*model.safetensors' \(format "
                                                   r"'big_vision'\): big_vision checkpoint: no rule for"),
            ({"workdir": str(tmp_path)}, ValueError, r"config.init_from: set workdir=.* or path=.*, not both")]:
        bad = copy.deepcopy(cfg)
        set_dotted(bad, {f"init_from.{k}": v for k, v in over.items()})
        with pytest.raises(err, match=match):
            Trainer(bad, str(tmp_path / "bad"), jax.devices()[:1]).init_state()


def test_missing_tokenizer_is_named(scenes_tiny_dir, tmp_path):
    cfg = tiny_config(scenes_tiny_dir, "/nonexistent/spm.model")
    with pytest.raises(FileNotFoundError, match=r"config.tokenizer='/nonexistent/spm.model'"):
        Trainer(cfg, str(tmp_path))


def test_hard_negatives_train_alike_on_one_device_and_on_the_ring(scenes_tiny_dir, tokenizer_path, tmp_path):
    """`:runlocal,hardneg,presence_batch,unsized` (a second text-tower pass over K=3 perturbed captions per example,
    the (K+1)-way pairwise term; a third over one object mention, half of them without their size, and 6 absent
    ones, the presence term, with every image also scored against every mention of the batch): the (2,2,2) ring
    run's losses equal the 1-device dense run's, and the terms are live (they move and the metrics report them)."""
    over = {"total_steps": 3, "log_every_steps": 1, "batch_size": 32, "evals": {}}
    runs = {}
    for name, mesh in [("one", {"mesh.data": 1}), ("ring", {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})]:
        cfg = tiny_config(scenes_tiny_dir, tokenizer_path, "siglip_scenes.py:runlocal,hardneg,presence_batch,unsized",
                          **over, **mesh)
        train(cfg, str(tmp_path / name), devices=jax.devices()[:1] if name == "one" else None)
        with open(tmp_path / name / "metrics.jsonl") as f:
            runs[name] = [m for m in map(json.loads, f) if "train/loss" in m]
    for key in ("train/loss", "train/hard_neg_loss", "train/batch_loss", "train/presence_loss",
                "train/presence_batch_positives"):
        np.testing.assert_allclose([m[key] for m in runs["ring"]], [m[key] for m in runs["one"]], rtol=2e-5,
                                   err_msg=key)
    one = runs["one"]
    assert all(m["train/loss"] == pytest.approx(m["train/batch_loss"] + m["train/hard_neg_loss"]
                                                + m["train/presence_loss"]) for m in one)
    # presence at init: every logit near the bias (-10), so each positive pair costs ~10 and the negatives ~0; an
    # image's own mention is one positive, and in a batch of 32 scenes some mentions name objects of other images
    # (more of them when the mention has no size: "a red circle" is true of a red circle of either size; measured
    # 3.2 here, against 1-3 with sized mentions only)
    positives = one[0]["train/presence_batch_positives"]
    assert 1 < positives < 6
    assert abs(one[0]["train/presence_loss"] - 10 * positives) < 2 * positives
    assert len({m["train/presence_loss"] for m in one}) == 3
    # log(1 + K) when the caption and its K=3 negatives are undecided; each differs in a word or two, so the term
    # starts close to that
    assert abs(one[0]["train/hard_neg_loss"] - math.log(4)) < 0.5 and len({m["train/hard_neg_loss"] for m in one}) == 3


def test_hard_negatives_without_their_op_are_named(scenes_tiny_dir, tokenizer_path, tmp_path):
    cfg = tiny_config(scenes_tiny_dir, tokenizer_path, "siglip_scenes.py:runlocal",
                      **{"hard_negative_weight": 1.0, "total_steps": 1, "evals": {}})
    missing = r"no \['text_neg', 'text_neg_mask', 'text_neg_valid'\].*hard_negative_caption"
    with pytest.raises(ValueError, match=missing):
        train(cfg, str(tmp_path), devices=jax.devices()[:1])
    assert not os.path.exists(os.path.join(str(tmp_path), "checkpoints", "1"))


def test_zeroshot_cli_on_png(siglip_run, tmp_path):
    from vlmjax.api import label_prompts as prompts_of, load_run, zeroshot_probabilities

    def label_probabilities(task, params, *args, **kw):
        return zeroshot_probabilities(task, {"params": params}, *args, **kw)

    wd, cfg = siglip_run[0], run_config(siglip_run)
    img, _ = scenes.render_scene(scenes.example_seed("test", 0), 32)
    path = str(tmp_path / "a.png")
    Image.fromarray(img).save(path)
    labels = list(scenes.CLASS_NAMES[:3])
    out = subprocess.run([sys.executable, "-m", "vlmjax.cli.zeroshot", "--workdir", wd, "--image", path,
                          "--labels", ",".join(labels), "--json"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    probs = json.loads(out.stdout.strip().splitlines()[-1])["probabilities"]
    task, variables, _ = load_run(wd, keys=("params",))
    params = variables["params"]
    prompts, aggregate = prompts_of(cfg, labels)
    templates = list(cfg.evals.zeroshot.templates)
    assert aggregate == "mean" and prompts == [[t.format(c) for t in templates] for c in labels]
    x = img[None].astype(np.float32) / 127.5 - 1
    # By hand, from the two towers' raw embeddings and the t, b parameters (SigLIP: p = sigmoid(e^t' cos + b)),
    # each label's text embedding the renormalised mean of its unit prompt embeddings (CLIP's ensemble).
    from vlmjax.tasks.text_inputs import tokenize_texts

    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    ids, mask = tokenize_texts(task.text_tokenize_fn(), [p for ps in prompts for p in ps])
    zimg = np.asarray(task.model.apply({"params": params}, images=jnp.asarray(x))[0], np.float64)
    ztxt = np.asarray(task.model.apply({"params": params}, text=ids, text_mask=mask)[1], np.float64)
    label_emb = unit(unit(ztxt).reshape(len(labels), len(templates), -1).mean(axis=1))
    log_t = float(params["t"][0])
    if task.model.temperature_max > 0:
        log_t = min(log_t, np.log(task.model.temperature_max))
    want = 1 / (1 + np.exp(-(np.exp(log_t) * unit(zimg) @ label_emb.T + float(params["b"][0]))))[0]
    np.testing.assert_allclose([probs[k] for k in labels], want, rtol=1e-4)
    assert all(0.0 < p < 1.0 for p in probs.values())
    assert np.ptp(want) > 1e-3  # the labels get different probabilities: the image embedding mattered

    # aggregate 'max' (the `--eval` of a grammar-prompt evaluator): each label's logit t*cos+b is its best
    # prompt's, i.e. the max of the one-prompt logits (a one-prompt 'mean' is that prompt's embedding); per-label
    # lists may differ in length
    logit = lambda p: np.log(p) - np.log1p(-p)  # noqa: E731
    three = templates[:2] + ["a {}"]
    lists = [[t.format(c) for t in three[:2 + (i % 2)]] for i, c in enumerate(labels)]
    per_prompt = [logit(label_probabilities(task, params, x, [[ps[j]] for ps in lists])[0]) for j in range(2)]
    best = np.maximum(*per_prompt)
    best[1] = max(best[1], logit(label_probabilities(task, params, x, [lists[1][2:]])[0])[0])
    got = logit(label_probabilities(task, params, x, lists, aggregate="max")[0])
    np.testing.assert_allclose(got, best, rtol=1e-4, atol=1e-4)
    assert not np.allclose(per_prompt[0], per_prompt[1])  # the max has something to choose
    with pytest.raises(ValueError, match=r"--eval 'nope'.*\['zeroshot', 'zeroshot_1obj'\]"):
        prompts_of(cfg, labels, "nope")


def test_zeroshot_prompt_sources_and_their_errors(tmp_path):
    """Templates fill each class name; `class_prompts` (a JSON file or "module:function") gives per-class lists; a
    wrong source is one error that names the key (before anything compiles)."""
    from vlmjax.evaluators.zeroshot import zeroshot_prompts

    names = ["red circle", "blue cross"]
    cd = ml_collections.ConfigDict
    got, agg = zeroshot_prompts(cd(dict(templates=["a {}", "one {} here"])), names, "ev")
    assert got == [["a red circle", "one red circle here"], ["a blue cross", "one blue cross here"]] and agg == "mean"
    table = scenes.captions_by_main_class()
    got, agg = zeroshot_prompts(cd(dict(class_prompts="vlmjax.data.scenes:captions_by_main_class",
                                        aggregate="max")), names, "ev")
    assert got == [table[n] for n in names] and agg == "max"
    path = tmp_path / "cupl.json"
    path.write_text(json.dumps({"blue cross": ["a cross, blue"], "red circle": ["a red disc", "a red ring"]}))
    got, _ = zeroshot_prompts(cd(dict(class_prompts=str(path))), names, "ev")
    assert got == [["a red disc", "a red ring"], ["a cross, blue"]]
    (tmp_path / "flat.json").write_text(json.dumps({"red circle": "a red disc", "blue cross": "a cross"}))
    bad = [(dict(class_prompts="vlmjax.data.scenes:captions_by_main_class"), ["red circle", "pink blob"],
            r"ev.class_prompts=.*no prompts for classes \['pink blob'\]"),
           (dict(class_prompts="vlmjax.data.scenes:nope"), names, r"ev.class_prompts='vlmjax.data.scenes:nope'"),
           (dict(class_prompts="no_such_module:f"), names, r"ev.class_prompts='no_such_module:f'.*module:function"),
           (dict(class_prompts=str(tmp_path / "none.json")), names, r"ev.class_prompts=.*none.json.*JSON file"),
           (dict(class_prompts=str(tmp_path / "flat.json")), names, r"ev.class_prompts=.*flat.json.*got dict"),
           (dict(class_prompts="vlmjax.data.scenes:captions_by_main_class", templates=["{}"]), names,
            "templates or class_prompts, not both"),
           (dict(templates=["a photo"]), names, r"ev.templates: every template needs"),
           (dict(aggregate="median"), names, r"ev.aggregate='median'")]
    for cfg, classes, match in bad:
        with pytest.raises(ValueError, match=match):
            zeroshot_prompts(cd(cfg), classes, "ev")


def test_zeroshot_cli_defines_flags_only_when_run():
    """Importable next to the other CLIs: absl refuses a flag name (`workdir`, `json`) defined twice."""
    code = ("import vlmjax.cli.train, vlmjax.cli.evaluate, vlmjax.cli.zeroshot; from absl import flags; "
            "assert 'labels' not in flags.FLAGS")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]


def test_tfds_datasets_named_in_the_config(siglip_run, tmp_path):
    """Zero-shot on cifar100 (names from its ClassLabel) and retrieval on coco_captions (nested 'captions/text'),
    through tfds with its builders mocked: the pod configs' evaluator paths, minus the real files.

    tfds 4.9's random mock data cannot encode coco_captions (each field of its Sequence-of-dict features gets its own
    length, bboxes come out with min > max), so the mocked builders serve hand-made decoded examples. cifar100's
    label names are only known once the dataset is prepared, so its metadata is written as a prepared copy would
    hold it. The coco stand-in holds scenes test images and their captions plus a blank one: through the nested key,
    with the blank dropped, its retrieval metrics must equal the scenes retrieval evaluator's on the same images."""
    import tensorflow_datasets as tfds

    from vlmjax.cli.evaluate import evaluate_workdir

    wd, cfg = siglip_run[0], run_config(siglip_run)
    n = 16
    set_dotted(cfg, {"evals.retrieval.data.max_examples": n})
    del cfg.evals["zeroshot"]
    _, want = evaluate_workdir(wd, cfg)

    src = tfds.data_source("scenes/tiny", split=cfg.evals.retrieval.data.split, data_dir=cfg.data.data_dir,
                           download=False)
    coco = [{"image": src[i]["image"], "image/id": i,
             "captions": {"id": np.arange(4), "text": np.array(list(src[i]["captions"]) + [b" "], object)}}
            for i in range(n)]
    rng = np.random.default_rng(0)
    cifar = [{"image": rng.integers(0, 256, (32, 32, 3), np.uint8), "label": i, "coarse_label": i % 20,
              "id": f"train_{i}"} for i in range(n)]

    names = [f"class_{i}" for i in range(100)]
    names[1] = "aquarium_fish"
    builder = tfds.builder("cifar100", data_dir=str(tmp_path))
    builder.info.features["label"].names = names
    os.makedirs(builder.data_dir)
    builder.info.write_to_directory(builder.data_dir)

    def data_source(builder, split, deserialize_method=None, **kwargs):
        # The training source (scenes) is opened by the Trainer but never read by evaluation.
        examples = cifar if builder.name == "cifar100" else coco
        if deserialize_method != tfds.decode.DeserializeMethod.RAW_BYTES or builder.name == "scenes":
            return examples
        # raw records, which vlmjax deserialises itself: the stand-in's fields, serialised as the dataset's features
        # (images as PNG, lossless: the retrieval metrics are compared with those of the same decoded pixels)
        features = tfds.features.FeaturesDict({k: tfds.features.Image(encoding_format="png") if k == "image" else
                                               builder.info.features[k] for k in examples[0]})
        return [features.serialize_example(ex) for ex in examples]

    img = [dict(op="decode", key="image"), dict(op="resize", size=32, key="image"),
           dict(op="value_range", key="image", vmin=-1, vmax=1)]
    set_dotted(cfg, {"evals": {
        "cifar100": dict(type="zeroshot", templates=["a photo of a {}."],
                         data=dict(name="cifar100", split="test",
                                   preprocess=img + [dict(op="keep", keys=["image", "label"])])),
        "coco": dict(type="retrieval", caption_key="captions/text", max_captions=5,
                     data=dict(name="coco_captions", split="val",
                               preprocess=img + [dict(op="keep", keys=["image", "captions/text"])]))}})
    with tfds.testing.mock_data(data_dir=str(tmp_path), as_data_source_fn=data_source):
        read = Trainer(cfg, wd, jax.devices()[:1]).evaluators["cifar100"].class_names
        _, got = evaluate_workdir(wd, cfg)
    assert read == [name.replace("_", " ") for name in names]  # 'aquarium_fish' read as words
    assert 0.0 <= got["eval/cifar100/accuracy"] <= 1.0 and 0.0 <= got["eval/cifar100/top5"] <= 1.0
    for d in ("img2txt", "txt2img"):
        for k in (1, 5, 10):
            assert got[f"eval/coco/{d}_r@{k}"] == pytest.approx(want[f"eval/retrieval/{d}_r@{k}"], abs=1e-6)


def test_zeroshot_diagnosis_agrees_with_the_evaluator(siglip_run, scenes_tiny_dir, tmp_path):
    """benchmarks/zeroshot_diagnosis.py recomputes the run's own zero-shot evaluator by another path (load_run, its
    own image reads): on the same 512 validation images its accuracy is the evaluator's, up to one near-tie."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import zeroshot_diagnosis

    wd, _, final = siglip_run
    zeroshot_diagnosis.main(["--workdir", wd, "--data_dir", scenes_tiny_dir, "--dataset", "scenes/tiny",
                             "--examples", "512", "--out_dir", str(tmp_path)])
    result = json.loads((tmp_path / "zeroshot_diagnosis.json").read_text())
    assert result["split"] == "validation" and result["seed"] == run_config(siglip_run).seed and "commit" in result
    own = result["template_sets"]["zeroshot"]
    assert own["accuracy"] == pytest.approx(final["eval/zeroshot/accuracy"], abs=1.5 / 512)
    assert sum(own[f"{k}_objects"]["n"] for k in (1, 2, 3)) == 512
    for kind in result["binding"].values():  # fractions of captions scored above an edited copy
        assert all(0.0 <= v <= 1.0 for v in _leaves(kind))


def _leaves(tree):
    if isinstance(tree, dict):
        return [v for t in tree.values() for v in _leaves(t)]
    return [tree] if isinstance(tree, float) else []


def test_prompt_sweep_scores_every_candidate_on_validation(siglip_run, tmp_path):
    """benchmarks/prompt_sweep.py on the reduced run, with the run's own config: one score per candidate, the best
    is the argmax, and a candidate's score is what the evaluator gives with its templates on validation."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import prompt_sweep

    from vlmjax.cli.evaluate import evaluate_workdir

    wd = siglip_run[0]
    prompt_sweep.main(["--workdir", wd, "--eval", "zeroshot", "--metric", "accuracy", "--name", "t",
                       "--out_dir", str(tmp_path)])
    result = json.loads((tmp_path / "prompt_sweep_t.json").read_text())
    scores = {k: c["accuracy"] for k, c in result["candidates"].items()}
    assert set(scores) == set(prompt_sweep.CANDIDATES) and result["split"] == "validation"
    assert result["best"] == max(scores, key=scores.get)
    assert len(set(scores.values())) > 1  # the templates reach the evaluator
    assert result["command"].endswith("--name t --out_dir " + str(tmp_path)) and "commit" in result
    cfg = run_config(siglip_run)
    set_dotted(cfg, {"evals.zeroshot.templates": ["{}"], "evals.zeroshot.data.split": "validation"})
    for name in [e for e in cfg.evals if e != "zeroshot"]:
        del cfg.evals[name]
    _, want = evaluate_workdir(wd, cfg)
    assert scores["name_only"] == pytest.approx(want["eval/zeroshot/accuracy"], abs=1e-6)
