"""image_input='vq_features': the frozen VQ-VAE's vectors before rounding, projected into the LM, against hand
computations (the vectors the codes are the nearest codebook entries of; the loss of hand-built sequences)."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_prefixlm_generation import (GRID, VQ_MODEL, VQ_SIZE, _embed, _log_softmax, _text_rows, hand_logits,
                                      pad_rows, vq_config)
from test_prefixlm_task import tok_path  # noqa: F401  (fixture)
from vlmjax.models.vqvae import VQVAE


@pytest.fixture(scope="module")
def feats_task(scenes_tiny_dir, tok_path, tmp_path_factory):  # noqa: F811
    """(task, variables, vq_vars): an untrained vq_features prefix-LM over a freshly initialised VQ-VAE."""
    from vlmjax.tasks.prefixlm import PrefixLMTask

    vq_dir = tmp_path_factory.mktemp("vq_features")
    with open(vq_dir / "config.json", "w") as f:
        json.dump({"model": VQ_MODEL}, f)
    vq_vars = nn.meta.unbox(VQVAE(**VQ_MODEL).init(jax.random.PRNGKey(1), jnp.zeros((1, VQ_SIZE, VQ_SIZE, 3))))
    task = PrefixLMTask(vq_config(scenes_tiny_dir, tok_path, str(vq_dir), image_input="vq_features"))
    task.frozen["vqvae"] = jax.tree.map(np.asarray, vq_vars)
    batch = jax.tree.map(jnp.asarray, task.dummy_batch(2))
    variables = nn.meta.unbox(jax.jit(lambda r: task.init(r, batch))(jax.random.PRNGKey(0)))
    return task, variables, vq_vars


def _images(n, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, VQ_SIZE, VQ_SIZE, 3)).astype(np.float32)


def test_features_are_what_the_codes_round(feats_task):
    _, _, vq_vars = feats_task
    model, images = VQVAE(**VQ_MODEL), _images(3)
    feats = np.asarray(model.apply(vq_vars, images, method=VQVAE.encode_features))
    codes = np.asarray(model.apply(vq_vars, images, method=VQVAE.encode))
    book = np.asarray(model.apply(vq_vars, method=lambda m: m.quantizer.search_codebook()))
    assert feats.shape == (3, GRID, GRID, VQ_MODEL["code_dim"])
    dist = ((feats[..., None, :] - book) ** 2).sum(-1)  # [3, h, w, K]
    np.testing.assert_array_equal(codes, dist.argmin(-1))


def test_loss_is_the_text_cross_entropy_after_the_projected_features(feats_task):
    """The train loss equals the mean CE of the supervised text tokens of sequences built by hand: the features
    through the linear projector (numpy), a bidirectional unsupervised prefix, then the caption's real tokens."""
    task, variables, vq_vars = feats_task
    params = variables["params"]
    assert set(params) == {"lm", "proj"} and "vqvae" in variables  # the tokenizer is state, never optimised
    batch = {**_text_rows(task, [0, 0, 0]), "image": _images(3, seed=1)}
    batch.pop("image_last")
    feats = np.asarray(VQVAE(**VQ_MODEL).apply(vq_vars, batch["image"], method=VQVAE.encode_features))
    lin = params["proj"]["linear"]
    x_img = feats.reshape(3, GRID * GRID, -1) @ np.asarray(lin["kernel"]) + np.asarray(lin["bias"])
    rows, ces = [], []
    for r in range(3):
        real = batch["input_mask"][r].astype(bool)
        ids = batch["tokens"][r][real]
        x = np.concatenate([x_img[r], np.asarray(_embed(task.model, params, ids[None]))[0]])
        n = GRID * GRID
        rows.append((x, [0] * n + list(batch["mask_ar"][r][real]), [0] * n + list(batch["mask_loss"][r][real]),
                     [-1] * n + list(ids)))
    width = max(len(r[0]) for r in rows)
    x = np.stack([np.pad(r[0], ((0, width - len(r[0])), (0, 0))) for r in rows])
    im = pad_rows([[1] * len(r[0]) for r in rows])
    ar, loss_mask, ids = (pad_rows([r[i] for r in rows]) for i in (1, 2, 3))
    logp = np.asarray(_log_softmax(hand_logits(task.model, params, jnp.asarray(x), im, ar)))
    for b, t in zip(*np.nonzero(loss_mask * im)):
        ces.append(-logp[b, t - 1, ids[b, t]])
    loss_fn = jax.jit(lambda p, b: task.loss(p, {"vqvae": variables["vqvae"]}, b, {}, 0))
    loss, (metrics, _) = loss_fn(params, batch)
    assert float(metrics["num_supervised"]) == len(ces)
    np.testing.assert_allclose(float(loss), np.mean(ces), rtol=1e-5)
    grads = jax.grad(lambda p: loss_fn(p, batch)[0])(params)
    assert np.abs(np.asarray(grads["proj"]["linear"]["kernel"])).sum() > 0  # the projector learns
    # Answers decode after the same image segment.
    prompts = batch["tokens"][:, :4]
    out = jax.jit(task.answer, static_argnums=4)(variables, batch["image"], prompts, np.ones_like(prompts), 3)
    assert out.shape == (3, 3) and out.dtype == jnp.int32


def test_image_generation_rows_are_refused_with_the_key_to_change(feats_task):
    task, _, _ = feats_task
    batch = _text_rows(task, [1, 0])  # a chat_caption generation row (image_last=1) and a caption row
    with pytest.raises(ValueError, match=r"train batch at step 3: rows with image_last .* need "
                                         r"config.image_input='vq', not 'vq_features'"):
        task.check_batch(batch, "train batch at step 3")
    task.check_batch(_text_rows(task, [0, 0]), "train batch at step 3")  # caption rows alone are fine
