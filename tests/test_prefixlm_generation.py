"""Prefix-LM VQ image generation (`image_last`, CFG dropout, `generate_image`) and the caption and perplexity
evaluators end to end, each against an independent computation: the model's own logits on compact, unpadded
sequences built here by hand (no join_segments, no next_token_batch, no KV cache)."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from test_prefixlm_task import PRE_LEN, _cider_reference, exp, tiny_config, tok_path  # noqa: F401  (fixture)
from vlmjax.data.ops import get_preprocess_fn
from vlmjax.evaluators import build_evaluators
from vlmjax.tasks import image_generation
from vlmjax.tasks.chat_prompts import generate_images, prompt_batch
from vlmjax.core.config import set_dotted

# A tiny VQ-VAE (f2, 16 codes): 8 px images are 4 x 4 codes, `<|boi|> 16 codes <|eoi|>` = 18 image tokens.
VQ_MODEL = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=8, norm_groups=4, num_codes=16, code_dim=4)
VQ_SIZE, N_CODES, GRID, TEXT_LEN = 8, 16, 4, 16
N_IMG = GRID * GRID + 2
CAPTIONS = ["one shape: a large red circle", "a small blue square", "two shapes: a green cross left of a square",
            "a purple triangle"]


def hand_logits(model, params, x, input_mask, mask_ar):
    """Logits of sequences float[B, T, D]: key j visible to query i iff both are real and j's block (cumsum of
    mask_ar) is not after i's; rotary position = index among the real tokens. Written here, not masks.py."""
    im, ar = np.asarray(input_mask).astype(bool), np.asarray(mask_ar)
    block = np.cumsum(ar, axis=1)
    attn = (block[:, None, :] <= block[:, :, None]) & im[:, None, :] & im[:, :, None]
    pos = np.maximum(np.cumsum(im, axis=1) - 1, 0).astype(np.int32)
    return _apply(model, params, x, jnp.asarray(attn), jnp.asarray(pos))


@jax.jit
def _log_softmax(x):
    return jax.nn.log_softmax(x.astype(jnp.float32), -1)


_APPLY = {}


def _apply(model, params, x, attn, pos):
    if model not in _APPLY:
        _APPLY[model] = jax.jit(lambda p, x, a, q: model.apply({"params": p}, x, a, q)[0])
    return np.asarray(_APPLY[model](params, x, attn, pos))


def _embed(model, params, ids):
    return model.apply({"params": params}, jnp.asarray(ids, jnp.int32), method="embed")


def pad_rows(rows, fill=0):
    n = max(len(r) for r in rows)
    return np.array([list(r) + [fill] * (n - len(r)) for r in rows], np.int32)


# ---- the VQ task, without a trained VQ-VAE ------------------------------------------------------------------------
def vq_config(scenes_tiny_dir, tok_path, vq_dir, **over):
    from vlmjax.tasks.prefixlm import PrefixLMTask
    from vlmjax.core import config as config_lib

    c = tiny_config("pretrain", scenes_tiny_dir, tok_path)
    set_dotted(c, {"image_input": "vq", "vq_workdir": vq_dir, "image_size": VQ_SIZE, "text_len": TEXT_LEN,
                   "z_loss": 0.0, "image_loss_weight": 0.5, "cfg_dropout": 0.0,
                   "model": ml_collections.ConfigDict({"lm": exp.model(32, 2, 48, 2)["lm"]}),
                   "evals": {"ppl": {"type": "perplexity", "data": {"split": "test"}}}, **over})
    return config_lib.resolve(c, PrefixLMTask.config_defaults())


@pytest.fixture(scope="module")
def vq(scenes_tiny_dir, tok_path, tmp_path_factory):
    """(task, variables, make_task): an untrained VQ prefix-LM whose frozen tokenizer is a freshly initialised
    VQ-VAE (its variables handed to the task in place of a checkpoint)."""
    from vlmjax.models.vqvae import VQVAE
    from vlmjax.tasks.prefixlm import PrefixLMTask

    vq_dir = tmp_path_factory.mktemp("vq")
    with open(vq_dir / "config.json", "w") as f:
        json.dump({"model": VQ_MODEL}, f)
    vq_vars = nn.meta.unbox(VQVAE(**VQ_MODEL).init(jax.random.PRNGKey(1), jnp.zeros((1, VQ_SIZE, VQ_SIZE, 3))))

    def make(**over):
        task = PrefixLMTask(vq_config(scenes_tiny_dir, tok_path, str(vq_dir), **over))
        task.frozen["vqvae"] = jax.tree.map(np.asarray, vq_vars)
        return task

    task = make()
    assert task.vq_grid == (GRID, GRID) and task.model.image_vocab_size == N_CODES
    batch = jax.tree.map(jnp.asarray, task.dummy_batch(2))
    variables = nn.meta.unbox(jax.jit(lambda r: task.init(r, batch))(jax.random.PRNGKey(0)))
    return task, variables, make


def _text_rows(task, generate):
    """chat_caption rows (the training preprocessing): caption turns, or generation prompts with image_last."""
    rows = []
    for i, g in enumerate(generate):
        fn = get_preprocess_fn([dict(op="chat_caption", max_len=TEXT_LEN, generate_prob=1.0 if g else 0.0)],
                               tokenizer=task.tok)
        r = fn({"captions": [CAPTIONS[i % len(CAPTIONS)]]}, np.random.default_rng(i))
        r["image_last"] = np.int32(g)
        rows.append(r)
    return {k: np.stack([r[k] for r in rows]) for k in ("tokens", "input_mask", "mask_ar", "mask_loss", "image_last")}


def _mixed_batch(task, generate, seed=0):
    b = _text_rows(task, generate)
    b["image_codes"] = np.random.default_rng(seed).integers(0, N_CODES, (len(generate), GRID, GRID)).astype(np.int32)
    return b


def _null_text(task):
    """The null prompt, by hand: `<|user|><|end|><|assistant|>` then padding, nothing supervised or causal."""
    ids = task.ids
    tokens = np.full(TEXT_LEN, task.tok.pad_id, np.int32)
    tokens[:3] = [ids["user"], ids["end"], ids["assistant"]]
    return {"tokens": tokens, "input_mask": (np.arange(TEXT_LEN) < 3).astype(np.int32),
            "mask_ar": np.zeros(TEXT_LEN, np.int32), "mask_loss": np.zeros(TEXT_LEN, np.int32)}


def hand_sequences(task, batch):
    """Compact sequences: caption rows `<|boi|> codes <|eoi|>` (bidirectional prefix, unsupervised) then the text;
    image_last rows the text, then the image tokens, causal and supervised. -> ids, mask_ar, loss, is_img."""
    v = task.model.text_vocab_size
    seqs = []
    for r in range(len(batch["tokens"])):
        real = batch["input_mask"][r].astype(bool)
        text = [batch["tokens"][r][real], batch["mask_ar"][r][real], batch["mask_loss"][r][real]]
        img_ids = [task.ids["boi"], *(batch["image_codes"][r].reshape(-1) + v), task.ids["eoi"]]
        n = len(img_ids)
        if batch["image_last"][r]:
            seqs.append((list(text[0]) + img_ids, list(text[1]) + [1] * n, list(text[2]) + [1] * n,
                         [0] * len(text[0]) + [1] * n))
        else:
            seqs.append((img_ids + list(text[0]), [0] * n + list(text[1]), [0] * n + list(text[2]),
                         [1] * n + [0] * len(text[0])))
    ids, ar, loss, is_img = (pad_rows([s[i] for s in seqs]) for i in range(4))
    input_mask = pad_rows([[1] * len(s[0]) for s in seqs])
    return ids, input_mask, ar, loss, is_img


def hand_token_ce(task, params, batch):
    """Per supervised token: (row, cross-entropy, is an image token), from the model's logits on hand sequences."""
    ids, im, ar, loss, is_img = hand_sequences(task, batch)
    logp = _log_softmax(hand_logits(task.model, params, _embed(task.model, params, ids), im, ar))
    logp = np.asarray(logp)
    return [(b, -logp[b, t - 1, ids[b, t]], bool(is_img[b, t])) for b, t in zip(*np.nonzero(loss * im)) if t > 0]


def hand_loss(task, params, batch, weight):
    ce = hand_token_ce(task, params, batch)
    text = [c for _, c, img in ce if not img]
    img = [c for _, c, img in ce if img]
    return np.mean(text) + weight * np.mean(img), np.mean(img), len(text), len(img)


def test_image_last_puts_supervised_image_tokens_after_the_text(vq):
    """Generation rows: text, then `<|boi|> codes <|eoi|>` supervised with image_loss_weight; caption rows: the image
    as an unsupervised bidirectional prefix. Loss == text CE + 0.5 * image CE computed by hand."""
    task, variables, _ = vq
    params = variables["params"]
    batch = _mixed_batch(task, [1, 0, 1, 0])
    loss_fn = jax.jit(lambda p, b: task.loss(p, {}, b, {"dropout": jax.random.PRNGKey(0)}, 0))
    loss, (metrics, _) = loss_fn(params, batch)
    want, want_img, n_text, n_img = hand_loss(task, params, batch, 0.5)
    assert n_img == 2 * N_IMG  # boi, 16 codes and eoi of each generation row
    assert float(metrics["image_num_supervised"]) == n_img and float(metrics["num_supervised"]) == n_text
    np.testing.assert_allclose(float(metrics["image_ce"]), want_img, rtol=1e-5)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    # The codes of a generation row are targets: changing one changes the loss; the same change in a caption row
    # changes only the conditioning (still equal to the hand value).
    for row in (0, 1):
        other = dict(batch, image_codes=batch["image_codes"].copy())
        other["image_codes"][row, 1, 2] = (other["image_codes"][row, 1, 2] + 5) % N_CODES
        np.testing.assert_allclose(float(loss_fn(params, other)[0]), hand_loss(task, params, other, 0.5)[0], rtol=1e-5)
    # Evaluation perplexity (the evaluator's predict + reduce) counts the text tokens only, never the image ones.
    ev = build_evaluators(task)["ppl"]
    out = jax.tree.map(np.asarray, jax.jit(ev.predict)(variables, batch))
    text = [(b, c) for b, c, img in hand_token_ce(task, params, batch) if not img]
    np.testing.assert_array_equal(out["count"], [sum(b == r for b, _ in text) for r in range(4)])
    np.testing.assert_allclose(out["ce_sum"], [sum(c for b, c in text if b == r) for r in range(4)], rtol=1e-5)
    got = ev.reduce(out)
    np.testing.assert_allclose(got["perplexity"], np.exp(np.mean([c for _, c in text])), rtol=1e-5)


def test_cfg_dropout_replaces_generation_prompts_at_the_configured_rate(vq):
    """With cfg_dropout 0.3, about 30% of image_last rows (and no caption row) train on the null prompt: read off the
    teacher-forced sequence the loss sees, and the loss equals the hand loss of the batch with those rows nulled."""
    task0, variables, make = vq
    params = variables["params"]
    task = make(cfg_dropout=0.3)
    gen = np.arange(256) % 4 != 0  # 192 generation rows, 64 caption rows
    batch = _mixed_batch(task, gen.astype(int))
    null = _null_text(task)
    nulled = dict(batch, **{k: np.broadcast_to(null[k], batch[k].shape) for k in null})  # every row's null twin
    assert not (nulled["tokens"] == batch["tokens"]).all(1).any()  # every prompt differs from the null one

    def layout(b):  # the sequence the loss should see: [image; text] or [real text; image; text padding]
        v = task.model.text_vocab_size
        img = np.concatenate([np.full((len(gen), 1), task.ids["boi"]), b["image_codes"].reshape(len(gen), -1) + v,
                              np.full((len(gen), 1), task.ids["eoi"])], 1)
        ones = np.ones_like(img)
        fields = []
        for k, part in (("tokens", img), ("input_mask", ones), ("mask_ar", 0 * ones), ("mask_loss", 0 * ones)):
            rows = []
            for r in range(len(gen)):
                n = int(b["input_mask"][r].sum())  # chat rows are right-padded
                gen_part = ones[r] if k in ("mask_ar", "mask_loss") else part[r]  # causal, supervised
                rows.append(np.concatenate([b[k][r][:n], gen_part, b[k][r][n:]]) if gen[r]
                            else np.concatenate([part[r], b[k][r]]))
            fields.append(np.stack(rows))
        ids, im, ar, lo = fields
        return {"targets": ids[:, 1:], "inputs": ids[:, :-1], "input_mask": im[:, :-1], "mask_ar": ar[:, :-1],
                "mask_loss": (lo * im)[:, 1:]}

    keep, drop = layout(batch), layout(nulled)
    fwd = jax.jit(lambda p, b, k: task._forward(p, {}, b, None if k is None else {"dropout": k})[1])
    fwd0 = jax.jit(lambda p, b, k: task0._forward(p, {}, b, {"dropout": k})[1])

    def dropped_rows(f, b, key):
        nb = jax.tree.map(np.asarray, f(params, b, key))
        is_keep = np.all([(nb[k] == keep[k]).all(1) for k in keep], 0)
        is_drop = np.all([(nb[k] == drop[k]).all(1) for k in drop], 0)
        assert (is_keep != is_drop).all(), "a row is neither its own sequence nor its null-prompt twin"
        return is_drop

    counts = []
    for seed in range(5):
        d = dropped_rows(fwd, batch, jax.random.PRNGKey(seed))
        assert not d[~gen].any(), "a caption row lost its prompt"
        counts.append(d)
    rate = np.mean([c[gen].mean() for c in counts])
    assert abs(rate - 0.3) < 0.06, rate  # 960 draws: binomial SE 0.015
    assert len({tuple(np.flatnonzero(c)) for c in counts}) == 5  # a fresh draw every step
    # The loss trains on exactly that: the hand loss of the batch with the dropped rows' prompts nulled.
    key = jax.random.PRNGKey(0)
    d = counts[0]
    want = dict(batch, **{k: np.where(d[:, None], null[k][None], batch[k]) for k in null})
    loss = jax.jit(lambda p, b, k: task.loss(p, {}, b, {"dropout": k}, 0)[0])(params, batch, key)
    np.testing.assert_allclose(float(loss), hand_loss(task, params, want, 0.5)[0], rtol=1e-5)
    # Never otherwise: no dropout rng (evaluation), or cfg_dropout 0.
    assert not dropped_rows(fwd, batch, None).any()
    assert not dropped_rows(fwd0, batch, jax.random.PRNGKey(0)).any()


def _hand_generation_logits(task, params, prompt_tokens, prompt_mask, codes):
    """Teacher-forced logits float[B, n, V] of step t (predicting code t) given the prompt and codes[:t], on compact
    sequences `prompt <|boi|> codes` (prompt bidirectional, then causal)."""
    v = task.model.text_vocab_size
    rows, ars = [], []
    for toks, m, c in zip(np.asarray(prompt_tokens), np.asarray(prompt_mask), codes):
        p = list(toks[m.astype(bool)])
        rows.append(p + [task.ids["boi"]] + list(c[:-1] + v))
        ars.append([0] * len(p) + [1] * len(c))  # <|boi|> and the codes: causal
    ids, ar = pad_rows(rows), pad_rows(ars)
    im = pad_rows([[1] * len(r) for r in rows])
    logits = hand_logits(task.model, params, _embed(task.model, params, ids), im, ar)
    n = codes.shape[1]
    starts = [len(r) - n for r in rows]  # the position of <|boi|>: it predicts code 0
    return np.stack([logits[b, s:s + n] for b, s in enumerate(starts)])


def test_generate_image_samples_only_image_tokens_with_guidance(vq, monkeypatch):
    """generate_image: 16 codes per prompt, all in the image-token range; with cfg_scale s each step's logits are
    uncond + s * (cond - uncond) of the same model on the caption and on the null prompt (by hand, teacher-forced);
    top_k=1 picks the argmax of the image logits; the pixels are the VQ-VAE's decoding of those codes."""
    from vlmjax.models.vqvae import VQVAE

    task, variables, _ = vq
    params = variables["params"]
    v, vocab = task.model.text_vocab_size, task.model.vocab_size
    captions = ["a large red circle", "two shapes: a small blue square left of a green cross"]
    tokens, mask = prompt_batch(task, captions)
    assert mask[0].sum() < mask[1].sum()  # mixed prompt lengths: padding inside the guided prefix
    seen = {}
    real_decode = image_generation.decode

    def spy(*args, **kw):
        out, logits = real_decode(*args, return_logits=True, **kw)
        seen.update(tokens=np.asarray(out), logits=np.asarray(logits), kw=kw)
        return out

    monkeypatch.setattr(image_generation, "decode", spy)
    null = _null_text(task)
    null_tokens = np.broadcast_to(null["tokens"][:3], (2, 3))
    vq_decode = jax.jit(lambda vv, c: task.vq_model.apply(vv, c, method=VQVAE.decode))

    def pixels_of(codes):
        p = np.asarray(vq_decode(variables["vqvae"], codes.reshape(-1, GRID, GRID)))
        return np.round((np.clip(p, -1, 1) + 1) * 127.5).astype(np.uint8)

    for scale in (3.0, None):
        pixels = np.asarray(image_generation.generate_image(task, variables, tokens, mask, jax.random.PRNGKey(0),
                                                            cfg_scale=scale, top_k=1))
        out = seen["tokens"]
        assert out.shape == (2, GRID * GRID) and pixels.shape == (2, VQ_SIZE, VQ_SIZE, 3) and pixels.dtype == np.uint8
        assert ((out >= v) & (out < v + N_CODES)).all(), out
        codes = out - v
        cond = _hand_generation_logits(task, params, tokens, mask, codes)
        if scale is None:
            want = cond
        else:
            uncond = _hand_generation_logits(task, params, null_tokens, np.ones_like(null_tokens), codes)
            want = uncond + scale * (cond - uncond)
            assert np.abs(cond - uncond).max() > 1e-2  # the prompt matters: guidance is not a no-op here
        assert seen["logits"].shape == (2, GRID * GRID, vocab)
        np.testing.assert_allclose(seen["logits"], want, atol=2e-4 * max(1.0, np.abs(want).max()))
        np.testing.assert_array_equal(codes, np.argmax(want[..., v:v + N_CODES], -1))
        np.testing.assert_array_equal(pixels, pixels_of(codes))
        if scale == 3.0:
            guided_pixels = pixels
    # Stochastic sampling at a high temperature still draws image tokens only, and more than one of them.
    image_generation.generate_image(task, variables, tokens, mask, jax.random.PRNGKey(1), cfg_scale=3.0, temperature=3.0)
    out = seen["tokens"]
    assert ((out >= v) & (out < v + N_CODES)).all(), out
    assert len(np.unique(out)) > 4
    monkeypatch.undo()  # the host helper jits generate_image: no spy inside
    # The host helper (jitted, prompts from strings) draws the same images; cfg_scale 1 is the plain conditional.
    np.testing.assert_array_equal(generate_images(task, variables, captions, cfg_scale=3.0, top_k=1), guided_pixels)
    np.testing.assert_array_equal(generate_images(task, variables, captions, cfg_scale=1.0, top_k=1), pixels)


# ---- the caption and perplexity evaluators, end to end through the trainer ----------------------------------------
SOURCE = "prefixlm_generation_test"
CAPTION_EXAMPLES = []  # filled by the test once it knows what the model says about each image
N_CAPTION, CAPTION_STEPS, N_PPL = 12, 6, 20


@pytest.fixture(scope="module")
def trainer(scenes_tiny_dir, tok_path, tmp_path_factory):
    """An untrained continuous prefix-LM Trainer (8 CPU devices) with a caption evaluator over images whose
    references the test writes, and a perplexity evaluator over 20 scenes/tiny test captions (batches of 16: the
    second one 4 real rows, 12 padding)."""
    from vlmjax.data.pipeline import register_source
    from vlmjax.core.loop import Trainer

    register_source(SOURCE)(lambda cfg, split: CAPTION_EXAMPLES)
    c = tiny_config("pretrain", scenes_tiny_dir, tok_path, z_loss=0.0)
    set_dotted(c, {"eval.batch_size": 16, "evals": {
        "caption": {"type": "caption", "max_new_tokens": CAPTION_STEPS,
                    "data": {"name": f"{SOURCE}:caps", "split": "test", "preprocess": exp.caption_pp()}},
        "ppl": {"type": "perplexity",
                "data": {"split": "test", "preprocess": exp.pretrain_pp(PRE_LEN), "max_examples": N_PPL}}}})
    t = Trainer(c, str(tmp_path_factory.mktemp("eval")), open_data=False)
    return t, t.init_state()


def run_eval(t, params, name):
    """One evaluator as Trainer.evaluate runs it: batches from the pipeline, predict jitted over the mesh, reduce."""
    return t.evaluators[name].run({"params": params}, t)


def _image_prefix(model, params, images):
    return np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, method="embed_image"))(params, images))


def test_perplexity_evaluator_is_exp_of_the_token_mean_nll(trainer):
    """eval/ppl == exp(sum of the supervised tokens' NLL / their number) over the split's 20 real rows, the NLL read
    off the model's logits on [image tokens; caption turn] by hand (not per batch, not per row, no prompt tokens)."""
    t, state = trainer
    model, params = t.task.model, jax.device_get(state["params"])
    nll, per_row = [], []
    for batch in t.batches(t.config.evals.ppl.data):
        b = jax.tree.map(np.asarray, batch)
        img = _image_prefix(model, params, b["image"])
        n = img.shape[1]
        x = np.concatenate([img, np.asarray(_embed(model, params, b["tokens"]))], 1)
        im = np.concatenate([np.ones((len(img), n), np.int32), b["input_mask"]], 1)
        ar = np.concatenate([np.zeros((len(img), n), np.int32), b["mask_ar"]], 1)
        logp = np.asarray(_log_softmax(hand_logits(model, params, x, im, ar)))
        for r in np.flatnonzero(b["_valid"]):
            row = [-logp[r, n + j - 1, b["tokens"][r, j]] for j in np.flatnonzero(b["mask_loss"][r])]
            nll += row
            per_row.append(np.mean(row))
    assert len(per_row) == N_PPL
    got = run_eval(t, state["params"], "ppl")
    np.testing.assert_allclose(got["ce"], np.mean(nll), rtol=1e-5)
    np.testing.assert_allclose(got["perplexity"], np.exp(np.mean(nll)), rtol=1e-5)
    assert abs(np.mean(per_row) - np.mean(nll)) > 1e-3  # the token mean is not the row mean: the check can tell


def _greedy_captions(task, params, x_img, prompt):
    """int[N, CAPTION_STEPS] greedy tokens after [image; prompt], each step a full forward pass (no KV cache)."""
    model = task.model
    img = _image_prefix(model, params, x_img)
    p = img.shape[1] + len(prompt)
    text = np.full((len(x_img), len(prompt) + CAPTION_STEPS), task.tok.pad_id, np.int32)
    text[:, :len(prompt)] = prompt
    ar = np.array([[0] * p + [1] * CAPTION_STEPS] * len(x_img), np.int32)
    for step in range(CAPTION_STEPS):
        x = np.concatenate([img, np.asarray(_embed(model, params, text))], 1)
        logits = hand_logits(model, params, x, np.ones_like(ar), ar)
        text[:, len(prompt) + step] = np.argmax(logits[:, p - 1 + step], -1)
    return text[:, len(prompt):]


def test_caption_evaluator_scores_the_decoded_captions(trainer):
    """eval/caption: greedy captions decoded here without the KV cache (full forward passes over [image; prompt;
    tokens so far], cut at <|end|>) and the evaluator's CIDEr-D / exact match against references written so that
    every other image has its own decoded caption among them: exact == 0.5 and CIDEr-D == the independent
    implementation's mean. The untrained model is made to say different things about different images (its blocks'
    outputs and the projector scaled up, so that the residual stream does not just copy the last token) and to end
    some captions early (<|end|>'s embedding row swapped with a token it says only after the first step)."""
    from vlmjax.data import scenes

    t, state = trainer
    task, end = t.task, t.task.ids["end"]
    params = jax.tree.map(np.array, jax.device_get(state["params"]))
    params["proj"]["linear"]["kernel"] *= 10
    for block in ("blocks_0", "blocks_1"):
        params["lm"][block]["attn"]["out_kernel"] *= 10
        params["lm"][block]["mlp"]["down_kernel"] *= 10
    imgs = [scenes.render_scene(scenes.example_seed("test", i), 32)[0] for i in range(N_CAPTION)]
    x_img = np.stack(imgs).astype(np.float32) * np.float32(2 / 255) + np.float32(-1)  # value_range(-1, 1)
    prompt = [task.ids["user"], *task.tok.encode("caption"), end, task.ids["assistant"]]
    gen = _greedy_captions(task, params, x_img, prompt)
    for x in sorted(set(gen[:, 1:].ravel().tolist()) - set(gen[:, 0].tolist()) - {end}):
        trial = jax.tree.map(np.array, params)
        emb = trial["lm"]["embedding"]
        emb[[end, x]] = emb[[x, end]]
        g = _greedy_captions(task, trial, x_img, prompt)
        stops = [r.index(end) if end in r else -1 for r in g.tolist()]
        if 0 < sum(s > 0 for s in stops) < N_CAPTION // 2 and 0 not in stops:
            params, gen = trial, g
            break
    else:
        pytest.fail("no variant of the model ends some captions early")
    hyps = [task.tok.decode(r[:r.index(end)] if end in r else r).strip() for r in gen.tolist()]
    assert len(set(hyps)) >= N_CAPTION // 2 and all(hyps), hyps  # the captions depend on the image
    refs = [[h, "zebra quilt"] if i % 2 == 0 else ["a violin on the ocean", "marmalade"] for i, h in enumerate(hyps)]
    CAPTION_EXAMPLES[:] = [{"image": im, "captions": r} for im, r in zip(imgs, refs)]
    got = run_eval(t, params, "caption")
    exact = np.mean([any(h.lower() == r.lower() for r in rs) for h, rs in zip(hyps, refs)])
    assert exact == 0.5
    assert got["exact"] == exact
    np.testing.assert_allclose(got["cider"], np.mean(_cider_reference(hyps, refs)), rtol=1e-6)
    assert got["cider"] > 0.5
