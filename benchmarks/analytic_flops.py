"""Analytic model FLOPs of a train step (matmuls only, 2 per multiply-add; 3 forwards: forward, and the backward's
two products), against which the trainer's jaxpr count (vlmjax.core.flops) is checked in
benchmarks/accelerator_step.py. Config dicts are that benchmark's SIZES entries (HF SigLIP config keys)."""


def vit_fwd(n, patch, width, depth, mlp):
    """Matmul FLOPs of one example through a ViT's patch embedding and blocks (n tokens)."""
    return 2 * n * patch * patch * 3 * width + depth * (8 * n * width ** 2 + 4 * n * n * width + 4 * n * width * mlp)


def siglip_train_flops(v, t, batch):
    """Model FLOPs of one SigLIP train step: 3 forwards, less the patch embedding's input gradient (images are
    not differentiated). Image tower: ViT + MAP head (one query: q and out projections on 1 token, k and v on n);
    text tower: blocks (the embedding is a gather) + linear head; the loss's B x B logits."""
    n, d, m, p = (v["image_size"] // v["patch_size"]) ** 2, v["hidden_size"], v["intermediate_size"], v["patch_size"]
    img = vit_fwd(n, p, d, v["num_hidden_layers"], m) + 2 * 2 * d * d + 2 * 2 * n * d * d + 4 * n * d + 4 * d * m
    L, dt, mt = t["max_position_embeddings"], t["hidden_size"], t["intermediate_size"]
    txt = t["num_hidden_layers"] * (8 * L * dt ** 2 + 4 * L * L * dt + 4 * L * dt * mt) + 2 * dt * dt
    fwd = batch * (img + txt) + 2 * batch * batch * dt
    return 3 * fwd - batch * 2 * n * p * p * 3 * d


def prefixlm_train_flops(c, batch, length):
    """Model FLOPs of one prefix-LM train step (ViT + linear projector + decoder over `length` image + text
    tokens, tied logits on every position), 3 forwards less the patch embedding's input gradient."""
    n, v, lm = (c["image"] // c["patch"]) ** 2, c["vit"], c["lm"]
    L, w, h, hkv, dh = length, lm["width"], lm["num_heads"], lm["num_kv_heads"], lm["head_dim"]
    layer = L * (2 * w * dh * (2 * h + 2 * hkv) + 6 * w * lm["mlp_dim"]) + 4 * L * L * h * dh
    fwd = vit_fwd(n, c["patch"], v["width"], v["depth"], v["mlp_dim"]) + 2 * n * v["width"] * w \
        + lm["depth"] * layer + 2 * L * w * c["vocab"]
    return batch * (3 * fwd - 2 * n * c["patch"] ** 2 * 3 * v["width"])
