"""Image-text contrastive losses: SigLIP (pairwise sigmoid) and CLIP (symmetric softmax).

Inputs are L2-normalised embeddings zimg, ztxt float[B, D] (row i of each is a matching pair), the temperature in
log space (t = exp(log_t)) and a bias; logits = t * zimg @ ztxt.T + bias, float[B, B], computed in float32.

`make_loss_fn` gives three implementations of the same loss for a batch sharded over the mesh's batch axes:
  dense       the plain function; XLA picks the collectives (typically all-gathers and holds B x B pieces).
  all_gather  shard_map: every device all-gathers the text embeddings and holds a local_B x global_B logit block.
  ring        shard_map: text chunks travel around the device ring (`ppermute`), so a device only ever holds one
              local_B x local_B logit block; a hand-written backward ring recomputes the blocks instead of storing
              them (autodiff of a scan would keep every step's residuals, i.e. local_B x global_B again).
All three give the same loss, gradients and metrics.
"""
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P


# ---------------------------------------------------------------------------------------------------------------
# Single-device definitions (the reference every sharded version must match).


def _block_logits(zimg, ztxt, t, bias):
    """float[b, D] x float[m, D] -> float[b, m] logits, float32 whatever the embedding dtype."""
    logits = t * jnp.dot(zimg.astype(jnp.float32), ztxt.astype(jnp.float32).T)
    return logits + bias


def _dense_logits(zimg, ztxt, log_t, bias):
    bias = 0.0 if bias is None else jnp.reshape(bias, ()).astype(jnp.float32)
    return _block_logits(zimg, ztxt, jnp.exp(jnp.reshape(log_t, ()).astype(jnp.float32)), bias)


def _metrics_from_sums(pos_sum, total_sum, correct, batch):
    """Batch-level metrics from summed pieces; negatives are the B*(B-1) off-diagonal logits."""
    return {"pos_logit": pos_sum / batch,
            "neg_logit": (total_sum - pos_sum) / max(batch * (batch - 1), 1),
            "batch_accuracy": correct / batch}


def _dense_metrics(logits):
    """logits float[B, B] -> pos_logit, neg_logit, batch_accuracy (img->txt argmax lands on the diagonal)."""
    logits = lax.stop_gradient(logits)
    batch = logits.shape[0]
    pos = jnp.diagonal(logits)
    correct = jnp.sum(jnp.argmax(logits, axis=1) == jnp.arange(batch))
    return _metrics_from_sums(jnp.sum(pos), jnp.sum(logits), correct.astype(jnp.float32), batch)


def sigmoid_loss(zimg, ztxt, log_t, bias):
    """SigLIP loss: -sum_ij log sigmoid(label_ij * logit_ij) / B, label +1 on the diagonal and -1 elsewhere.

    zimg, ztxt: float[B, D] L2-normalised; log_t, bias: float[] -> (float[] loss, dict of float[] metrics).
    """
    logits = _dense_logits(zimg, ztxt, log_t, bias)
    batch = logits.shape[0]
    labels = 2.0 * jnp.eye(batch, dtype=jnp.float32) - 1.0
    loss = -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / batch
    return loss, _dense_metrics(logits)


def softmax_loss(zimg, ztxt, log_t, bias=None):
    """CLIP loss: mean of the image->text and text->image softmax cross-entropies over the B x B logits.

    zimg, ztxt: float[B, D] L2-normalised; log_t: float[]; bias: float[] or None (a constant shift, so it cancels in
    the loss and only moves the logit metrics) -> (float[] loss, dict of float[] metrics).
    """
    logits = _dense_logits(zimg, ztxt, log_t, bias)
    pos = jnp.diagonal(logits)
    img2txt = jnp.mean(jax.nn.logsumexp(logits, axis=1) - pos)
    txt2img = jnp.mean(jax.nn.logsumexp(logits, axis=0) - pos)
    return 0.5 * (img2txt + txt2img), _dense_metrics(logits)


LOSSES = {"sigmoid": sigmoid_loss, "softmax": softmax_loss}


def _own_text_logits(zimg, zpos, zneg, log_t, bias):
    """Each image against its own texts only (no other image's): zimg, zpos float[B, D], zneg float[B, K, D] ->
    (pos float[B], neg float[B, K]) logits t * cos + bias, in float32."""
    t = jnp.exp(jnp.reshape(log_t, ()).astype(jnp.float32))
    b = 0.0 if bias is None else jnp.reshape(bias, ()).astype(jnp.float32)
    pos = t * jnp.sum(zimg.astype(jnp.float32) * zpos.astype(jnp.float32), axis=-1) + b
    neg = t * jnp.einsum("bd,bkd->bk", zimg.astype(jnp.float32), zneg.astype(jnp.float32)) + b
    return pos, neg


def hard_negative_loss(kind, zimg, ztxt, zneg, log_t, bias, valid):
    """Each image against its own hard-negative captions (NegCLIP-style), an extra term beside the batch loss.

    zimg, ztxt: float[B, D] L2-normalised (image, its caption); zneg: float[B, D] or float[B, K, D], K captions
    false for image i; valid: int/bool[B] or [B, K] (0 = no such negative); log_t, bias: float[] (bias may be None)
    -> (float[] loss, metrics). kind 'sigmoid': the SigLIP terms of K more negative pairs,
    -sum_ik log sigmoid(-logit(i, neg_ik)) / B, so with weight 1 it is exactly the batch loss with K extra negative
    columns per row; its gradient is sigmoid(logit) and stays small while every logit is low. kind 'pairwise': a
    (K+1)-way softmax of the caption against its valid negatives, sum_i [logsumexp(pos_i, neg_i.) - pos_i] / B
    (K=1: log(1 + exp(neg - pos))), whose gradient is large whenever they are undecided, whatever the logits'
    level (NegCLIP puts the negatives into the batch softmax instead, which a sharded ring cannot do without a
    second pass; this keeps the term local). Elementwise over the batch, so any sharding gives the same value.
    """
    if zneg.ndim == 2:
        zneg, valid = zneg[:, None], valid[:, None]
    pos, neg = _own_text_logits(zimg, ztxt, zneg, log_t, bias)
    valid = valid.astype(jnp.float32)
    if kind == "sigmoid":
        per = jnp.sum(-jax.nn.log_sigmoid(-neg) * valid, axis=-1)
    elif kind == "pairwise":
        both = jnp.concatenate([pos[:, None], jnp.where(valid > 0, neg, -jnp.inf)], axis=-1)
        per = (jax.nn.logsumexp(both, axis=-1) - pos) * (jnp.sum(valid, axis=-1) > 0)
    else:
        raise ValueError(f"hard_negative_loss kind={kind!r}: expected 'sigmoid' or 'pairwise'")
    n = jnp.maximum(jnp.sum(valid), 1.0)
    sg = lax.stop_gradient
    metrics = {"hard_neg_logit": jnp.sum(sg(neg) * valid) / n,
               "hard_neg_accuracy": jnp.sum((sg(pos)[:, None] > sg(neg)) * valid) / n}
    return jnp.sum(per) / zimg.shape[0], metrics


def presence_loss(zimg, zpos, zneg, log_t, bias, valid, pos_id=None, present=None):
    """Per-image object presence, scored on the batch loss's own logit scale: a text naming something the image
    shows against K texts naming things it does not (multi-label, as a sigmoid classifier per pair).

    zimg, zpos: float[B, D] L2-normalised (image i, a text true for it); zneg: float[B, K, D] texts false for image i;
    valid: int/bool[B, K] (0 = no such negative); log_t, bias: float[] (bias may be None) -> (float[] loss, metrics).
    Loss: sum_i [-log sigmoid(logit(i, pos_i)) - sum_k valid_ik log sigmoid(-logit(i, neg_ik))] / B. Unlike the
    batch loss, a text may be true for several images (two scenes that both hold a small red circle), so it is never
    used as another image's negative; unlike the pairwise hard-negative term, each logit is pushed to an absolute
    side of 0, so one text's logits rank images by whether they show it. Elementwise over the batch.

    With `pos_id` int[B] (an id of text pos_j, >= 0) and `present` int[B, P] (the ids of every text true for image i,
    -1 padded), every image is also scored against every other image's positive text, labelled by whether it is
    true for it (`present`): the positive term becomes sum_ij BCE(logit(i, pos_j), [pos_id_j in present_i]), the
    SigLIP sum over the batch with the labels a multi-label batch has. A text's logits are then trained to rank
    the batch's images by presence, which is what a zero-shot multi-label ranking (mAP) asks of them. It needs every
    positive text of the batch (GSPMD gathers it under a sharded batch: B x D, small).
    """
    pos, neg = _own_text_logits(zimg, zpos, zneg, log_t, bias)
    valid = valid.astype(jnp.float32)
    per = -jnp.sum(jax.nn.log_sigmoid(-neg) * valid, axis=-1)
    sg = lax.stop_gradient
    n = jnp.maximum(jnp.sum(valid), 1.0)
    metrics = {"presence_pos_logit": jnp.mean(sg(pos)), "presence_neg_logit": jnp.sum(sg(neg) * valid) / n,
               "presence_accuracy": (jnp.sum(sg(pos) > 0) + jnp.sum((sg(neg) < 0) * valid)) / (pos.shape[0] + n)}
    if pos_id is None:
        per = per - jax.nn.log_sigmoid(pos)
    else:
        if present is None:
            raise ValueError("presence_loss: pos_id needs present (the ids true for each image)")
        logits = _dense_logits(zimg, zpos, log_t, bias)  # [B images, B texts]
        labels = jnp.any(present[:, None, :] == pos_id[None, :, None], axis=-1)
        per = per - jnp.sum(jax.nn.log_sigmoid(jnp.where(labels, logits, -logits)), axis=-1)
        metrics["presence_batch_accuracy"] = jnp.mean((sg(logits) > 0) == labels)
        metrics["presence_batch_positives"] = jnp.mean(jnp.sum(labels, axis=-1).astype(jnp.float32))
    return jnp.sum(per) / zimg.shape[0], metrics


# ---------------------------------------------------------------------------------------------------------------
# Sharded versions.


def _ring_size(mesh: Mesh, batch_axes: Sequence[str]) -> int:
    return math.prod(mesh.shape[a] for a in batch_axes)


def _sigmoid_block_sum(logits, pos_mask):
    """-sum log sigmoid(label * logits) over a block; pos_mask bool[b, m] marks the +1 labels (None: all -1)."""
    signed = -logits if pos_mask is None else jnp.where(pos_mask, logits, -logits)
    return -jnp.sum(jax.nn.log_sigmoid(signed))


def _all_gather_shard(kind, axes, n):
    """Per-device body: local images x all-gathered texts, float[b, B] logits."""

    def body(zimg, ztxt, log_t, bias):
        b = zimg.shape[0]
        batch = b * n
        k = lax.axis_index(axes)
        txt_all = lax.all_gather(ztxt, axes, axis=0, tiled=True)  # [B, D]
        logits = _block_logits(zimg, txt_all, jnp.exp(log_t), bias)  # [b, B]
        rows = k * b + jnp.arange(b)
        pos_mask = jnp.arange(batch)[None, :] == rows[:, None]
        pos = jnp.sum(jnp.where(pos_mask, logits, 0.0), axis=1)  # [b]
        if kind == "sigmoid":
            loss = lax.psum(_sigmoid_block_sum(logits, pos_mask), axes) / batch
        else:
            # Column log-sum-exp over all images: combine per-device partial sums with a shared max for stability.
            part = jax.nn.logsumexp(logits, axis=0)  # [B]
            m = lax.pmax(lax.stop_gradient(part), axes)
            lse_col = m + jnp.log(lax.psum(jnp.exp(part - m), axes))
            lse_col_local = lax.dynamic_slice_in_dim(lse_col, k * b, b)
            local = jnp.sum(jax.nn.logsumexp(logits, axis=1) - pos) + jnp.sum(lse_col_local - pos)
            loss = lax.psum(local, axes) / (2 * batch)
        sg = lax.stop_gradient
        correct = jnp.sum(jnp.argmax(sg(logits), axis=1) == rows).astype(jnp.float32)
        sums = lax.psum((jnp.sum(sg(pos)), jnp.sum(sg(logits)), correct), axes)
        return loss, _metrics_from_sums(*sums, batch)

    return body


def _argmax_update(best_val, best_idx, logits, col_offset):
    """Running row argmax over column chunks, first index wins ties (as jnp.argmax over the whole row)."""
    val = jnp.max(logits, axis=1)
    idx = jnp.argmax(logits, axis=1) + col_offset
    take = (val > best_val) | ((val == best_val) & (idx < best_idx))
    return jnp.where(take, val, best_val), jnp.where(take, idx, best_idx)


def _ring_forward_shard(kind, axes, n):
    """Per-device forward ring. Device k starts with text chunk k; at step s it holds chunk (k - s) mod n.

    Returns the loss, metrics and (softmax) the row / column log-sum-exps float[b] of its own rows / texts, which
    the backward ring needs to rebuild the softmax probabilities block by block.
    """
    perm = [(i, (i + 1) % n) for i in range(n)]

    def body(zimg, ztxt, log_t, bias):
        b = zimg.shape[0]
        batch = b * n
        k = lax.axis_index(axes)
        t = jnp.exp(log_t)
        logits = _block_logits(zimg, ztxt, t, bias)  # diagonal block, [b, b]
        pos = jnp.diagonal(logits)
        eye = jnp.eye(b, dtype=bool)
        best_val, best_idx = _argmax_update(jnp.full((b,), -jnp.inf), jnp.zeros((b,), jnp.int32), logits, k * b)
        carry = {"txt": ztxt, "best_val": best_val, "best_idx": best_idx, "total": jnp.sum(logits)}
        if kind == "sigmoid":
            carry["loss"] = _sigmoid_block_sum(logits, eye)
        else:
            # The column log-sum-exp of a text chunk travels with the chunk, accumulating over every image shard.
            carry["lse_row"] = jax.nn.logsumexp(logits, axis=1)
            carry["lse_col"] = jax.nn.logsumexp(logits, axis=0)

        def step(c, s):
            c = dict(c)
            c["txt"] = lax.ppermute(c["txt"], axes, perm)
            logits = _block_logits(zimg, c["txt"], t, bias)  # the only logits this device holds: [b, b]
            c["best_val"], c["best_idx"] = _argmax_update(c["best_val"], c["best_idx"], logits, ((k - s) % n) * b)
            c["total"] = c["total"] + jnp.sum(logits)
            if kind == "sigmoid":
                c["loss"] = c["loss"] + _sigmoid_block_sum(logits, None)
            else:
                c["lse_row"] = jnp.logaddexp(c["lse_row"], jax.nn.logsumexp(logits, axis=1))
                c["lse_col"] = jnp.logaddexp(lax.ppermute(c["lse_col"], axes, perm), jax.nn.logsumexp(logits, axis=0))
            return c, None

        carry, _ = lax.scan(step, carry, jnp.arange(1, n))
        if kind == "sigmoid":
            loss = lax.psum(carry["loss"], axes) / batch
            lse_row = lse_col = jnp.zeros((b,), jnp.float32)
        else:
            # After n-1 steps this device holds chunk k+1's finished column sums; one hop brings them home.
            lse_row = carry["lse_row"]
            lse_col = lax.ppermute(carry["lse_col"], axes, perm)
            loss = lax.psum(jnp.sum(lse_row - pos) + jnp.sum(lse_col - pos), axes) / (2 * batch)
        correct = jnp.sum(carry["best_idx"] == k * b + jnp.arange(b)).astype(jnp.float32)
        sums = lax.psum((jnp.sum(pos), carry["total"], correct), axes)
        return loss, _metrics_from_sums(*sums, batch), lse_row, lse_col

    return body


def _ring_backward_shard(kind, axes, n):
    """Per-device backward ring: recompute each [b, b] block, form dloss/dlogits, and let the text-gradient
    accumulator travel with its chunk (one extra hop at the end brings it home)."""
    perm = [(i, (i + 1) % n) for i in range(n)]

    def body(zimg, ztxt, log_t, bias, lse_row, lse_col, ct):
        b = zimg.shape[0]
        batch = b * n
        t = jnp.exp(log_t)
        img32 = zimg.astype(jnp.float32)
        eye = jnp.eye(b, dtype=jnp.float32)

        def dlogits(logits, lse_col_chunk, diag):
            if kind == "sigmoid":
                labels = 2.0 * eye - 1.0 if diag else -1.0
                g = -labels * jax.nn.sigmoid(-labels * logits) / batch
            else:
                g = jnp.exp(logits - lse_row[:, None]) + jnp.exp(logits - lse_col_chunk[None, :])
                g = (g - 2.0 * eye if diag else g) / (2 * batch)
            return ct * g

        def contribution(txt, lse_col_chunk, diag):
            logits = _block_logits(zimg, txt, t, bias)
            g = dlogits(logits, lse_col_chunk, diag)
            # dL/dlog_t = sum g * t * <zimg, ztxt> = sum g * (logits - bias).
            return (g @ txt.astype(jnp.float32), g.T @ img32, jnp.sum(g * (logits - bias)), jnp.sum(g))

        dimg, dtxt, dlog_t, dbias = contribution(ztxt, lse_col, True)
        carry = {"txt": ztxt, "lse_col": lse_col, "dtxt": dtxt, "dimg": dimg, "dlog_t": dlog_t, "dbias": dbias}

        def step(c, _):
            c = dict(c)
            for name in ("txt", "lse_col", "dtxt"):
                c[name] = lax.ppermute(c[name], axes, perm)
            di, dt, dl, db = contribution(c["txt"], c["lse_col"], False)
            c["dimg"], c["dtxt"] = c["dimg"] + di, c["dtxt"] + dt
            c["dlog_t"], c["dbias"] = c["dlog_t"] + dl, c["dbias"] + db
            return c, None

        carry, _ = lax.scan(step, carry, None, length=n - 1)
        dtxt = lax.ppermute(carry["dtxt"], axes, perm)
        return ((t * carry["dimg"]).astype(zimg.dtype), (t * dtxt).astype(ztxt.dtype),
                lax.psum(carry["dlog_t"], axes), lax.psum(carry["dbias"], axes))

    return body


def _make_ring(kind, mesh, axes, n):
    """Global (zimg, ztxt, log_t, bias) -> (loss, metrics) with a custom VJP that runs the backward ring."""
    spec = P(axes)
    metric_specs = {"pos_logit": P(), "neg_logit": P(), "batch_accuracy": P()}
    fwd_map = jax.shard_map(_ring_forward_shard(kind, axes, n), mesh=mesh, in_specs=(spec, spec, P(), P()),
                            out_specs=(P(), metric_specs, spec, spec))
    bwd_map = jax.shard_map(_ring_backward_shard(kind, axes, n), mesh=mesh,
                            in_specs=(spec, spec, P(), P(), spec, spec, P()), out_specs=(spec, spec, P(), P()))

    @jax.custom_vjp
    def ring(zimg, ztxt, log_t, bias):
        loss, metrics, _, _ = fwd_map(zimg, ztxt, log_t, bias)
        return loss, metrics

    def ring_fwd(zimg, ztxt, log_t, bias):
        loss, metrics, lse_row, lse_col = fwd_map(zimg, ztxt, log_t, bias)
        return (loss, metrics), (zimg, ztxt, log_t, bias, lse_row, lse_col)

    def ring_bwd(res, cts):
        ct_loss, _ = cts  # metrics are reported, not differentiated
        return bwd_map(*res, ct_loss.astype(jnp.float32))

    ring.defvjp(ring_fwd, ring_bwd)
    return ring


def make_loss_fn(kind: str, impl: str = "dense", mesh: Optional[Mesh] = None,
                 batch_axes: Sequence[str] = ("data", "fsdp")):
    """Contrastive loss for a global batch sharded over `batch_axes` on dim 0, to call inside jit.

    The trainer passes its mesh's batch axes (the task's `batch_axes`); the default names the core's
    data-parallel axes, for callers that build a loss on a mesh by hand.

    kind: 'sigmoid' | 'softmax'; impl: 'dense' | 'all_gather' | 'ring'. Returns
    fn(zimg float[B, D], ztxt float[B, D], log_t float[], bias float[] | None) -> (float[] loss, metrics dict).
    Mesh axes not in `batch_axes` (e.g. 'tensor') must hold the embeddings replicated. B must divide evenly over
    the batch axes.
    """
    if kind not in LOSSES:
        raise ValueError(f"contrastive loss kind={kind!r}: expected one of {sorted(LOSSES)}")
    if impl == "dense":
        return LOSSES[kind]
    if impl not in ("all_gather", "ring"):
        raise ValueError(f"contrastive loss impl={impl!r}: expected 'dense', 'all_gather' or 'ring'")
    if mesh is None:
        raise ValueError(f"contrastive loss impl={impl!r} needs a mesh")
    axes = tuple(batch_axes)
    missing = [a for a in axes if a not in mesh.shape]
    if missing:
        raise ValueError(f"contrastive loss batch_axes {axes}: {missing} not in mesh axes {tuple(mesh.shape)}")
    n = _ring_size(mesh, axes)
    spec = P(axes)
    if impl == "all_gather":
        mapped = jax.shard_map(_all_gather_shard(kind, axes, n), mesh=mesh, in_specs=(spec, spec, P(), P()),
                               out_specs=(P(), {"pos_logit": P(), "neg_logit": P(), "batch_accuracy": P()}))
    else:
        mapped = _make_ring(kind, mesh, axes, n)

    def fn(zimg, ztxt, log_t, bias=None):
        if zimg.shape != ztxt.shape or zimg.ndim != 2:
            raise ValueError(f"contrastive loss: zimg {zimg.shape} and ztxt {ztxt.shape} must both be [B, D]")
        if zimg.shape[0] % n:
            raise ValueError(f"contrastive loss impl={impl!r}: batch {zimg.shape[0]} is not divisible by the "
                             f"{n} devices of batch_axes {axes}")
        log_t = jnp.reshape(log_t, ()).astype(jnp.float32)
        # softmax without a bias: a zero stand-in; the loss does not depend on it and its gradient is dropped.
        bias = jnp.zeros((), jnp.float32) if bias is None else jnp.reshape(bias, ()).astype(jnp.float32)
        return mapped(zimg, ztxt, log_t, bias)

    return fn
