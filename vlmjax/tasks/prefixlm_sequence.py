"""Sequence assembly for the prefix-LM: an image segment and a text segment joined into one token sequence, the
teacher-forced pass over it, and classifier-free-guidance dropout of generation prompts.

A segment is a dict of per-token fields {x float[B, N, D] (embeddings), ids int32[B, N], input_mask, mask_ar,
mask_loss, is_image int32[B, N]} (`vlmjax.models.vlm.join_segments` concatenates them).
"""
import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp

from vlmjax.data import chat_ops
from vlmjax.losses.lm import next_token_batch
from vlmjax.models.masks import make_attn_mask, positions_from_mask
from vlmjax.models.vlm import VLM, join_segments
from vlmjax.models.vqvae import VQVAE

TEXT_FIELDS = ("tokens", "input_mask", "mask_ar", "mask_loss")


def cfg_dropout(txt: dict, generate, rng, rate: float, null: dict) -> dict:
    """The text fields {tokens, input_mask, mask_ar, mask_loss} int[B, L] with each generation row (`generate`
    bool[B]) replaced by the `null` prompt (int[L] fields) with probability `rate`: classifier-free guidance
    learns the unconditional model from those rows."""
    drop = generate.astype(bool) & (jax.random.uniform(rng, generate.shape) < rate)
    return {k: jnp.where(drop[:, None], null[k][None], v) for k, v in txt.items()}


@dataclasses.dataclass(frozen=True, eq=False)
class Sequencer:
    """Builds the prefix-LM's sequences. `ids`: the chat special ids plus 'boi'/'eoi'; `vq_model`: the frozen VQ-VAE
    of a run whose image input is its codes ('vq') or its features ('vq_features'), else None; `attention`:
    'prefix' | 'causal'."""

    model: VLM
    ids: Any
    pad_id: int
    attention: str = "prefix"
    vq_model: Optional[VQVAE] = None

    @property
    def vq(self) -> bool:
        """The image enters as discrete tokens (not as projected vectors)."""
        return self.model.image_input == "vq"

    def embed(self, params, tokens):
        return self.model.apply({"params": params}, tokens, method="embed")

    def null_prompt(self, length: int) -> dict:
        """Classifier-free guidance's "no caption" chat prompt: {tokens, input_mask, mask_ar, mask_loss} int32[L]."""
        return chat_ops.pack_chat([([], None)], self.ids, length, self.pad_id)

    def image_codes(self, state, batch):
        """int32[B, h, w]: precomputed `image_codes`, else the frozen VQ-VAE's encoding of `image`."""
        if "image_codes" in batch:
            return batch["image_codes"].astype(jnp.int32)
        return self.vq_model.apply(jax.lax.stop_gradient(state["vqvae"]), batch["image"], method=VQVAE.encode)

    def vq_features(self, vq_variables, images):
        """float[B, N, D]: the frozen VQ-VAE's pre-rounding vectors of images float[B, H, W, 3], one row per code
        position (the projector's input under image_input='vq_features')."""
        feats = self.vq_model.apply(jax.lax.stop_gradient(vq_variables), images, method=VQVAE.encode_features)
        return feats.reshape(feats.shape[0], -1, feats.shape[-1])

    def image_segment(self, params, state, batch, generate=None) -> dict:
        """The image's segment. Continuous: projected ViT patches; vq_features: the frozen VQ-VAE's pre-rounding
        vectors, projected; neither supervised. VQ: `<|boi|> codes <|eoi|>`; in rows with `generate` (bool[B],
        image after the text) causal and supervised, otherwise part of the bidirectional prefix."""
        if self.vq:
            codes = self.image_codes(state, batch)
            b = codes.shape[0]
            ids = jnp.concatenate([jnp.full((b, 1), self.ids["boi"]), codes.reshape(b, -1) +
                                   self.model.text_vocab_size, jnp.full((b, 1), self.ids["eoi"])], 1).astype(jnp.int32)
            x = self.embed(params, ids)
        elif self.model.image_input == "vq_features":
            x = self.model.apply({"params": params}, self.vq_features(state["vqvae"], batch["image"]),
                                 method="embed_features")
            ids = jnp.zeros(x.shape[:2], jnp.int32)
        else:
            x = self.model.apply({"params": params}, batch["image"], method="embed_image")
            ids = jnp.zeros(x.shape[:2], jnp.int32)
        gen = jnp.zeros((x.shape[0],), bool) if generate is None else generate.astype(bool)
        ones = jnp.ones(ids.shape, jnp.int32)
        causal = jnp.broadcast_to(gen[:, None], ids.shape).astype(jnp.int32)
        return {"x": x, "ids": ids, "input_mask": ones, "mask_ar": causal, "mask_loss": causal, "is_image": ones}

    def text_segment(self, params, tokens, input_mask, mask_ar=None, mask_loss=None) -> dict:
        """Text tokens int[B, L] as a segment (mask_ar / mask_loss default to 0: bidirectional, unsupervised)."""
        zeros = jnp.zeros(tokens.shape, jnp.int32)
        return {"x": self.embed(params, tokens), "ids": tokens.astype(jnp.int32),
                "input_mask": input_mask.astype(jnp.int32),
                "mask_ar": zeros if mask_ar is None else mask_ar.astype(jnp.int32),
                "mask_loss": zeros if mask_loss is None else mask_loss.astype(jnp.int32), "is_image": zeros}

    def attention_ar(self, mask_ar):
        """The mask_ar the model attends with: every token causal under attention='causal'."""
        return jnp.ones_like(mask_ar) if self.attention == "causal" else mask_ar

    def forward(self, params, state, batch, rngs=None, dropout_rate: float = 0.0):
        """Teacher-forced pass -> (logits float32[B, T-1, V], shifted batch, is_image int[B, T-1]). VQ rows with
        `image_last` put the image after their text; with `rngs` and dropout_rate > 0 their prompts go through
        `cfg_dropout`."""
        gen = batch.get("image_last") if self.vq else None
        txt = {k: batch[k] for k in TEXT_FIELDS}
        if gen is not None and rngs is not None and dropout_rate > 0:
            txt = cfg_dropout(txt, gen, rngs["dropout"], dropout_rate, self.null_prompt(txt["tokens"].shape[1]))
        seq = join_segments(self.image_segment(params, state, batch, gen),
                            self.text_segment(params, txt["tokens"], txt["input_mask"], txt["mask_ar"],
                                              txt["mask_loss"]), swap=gen)
        if gen is not None:  # image after padded text: real tokens first, so <|boi|> is predicted from the last
            # text token, not from a padding slot (stable: the order of the real tokens is kept)
            order = jnp.argsort(1 - seq["input_mask"], axis=1, stable=True)
            seq = {k: jnp.take_along_axis(v, order.reshape(order.shape + (1,) * (v.ndim - 2)), axis=1)
                   for k, v in seq.items()}
        nb = next_token_batch(seq["ids"], seq["input_mask"], self.attention_ar(seq["mask_ar"]), seq["mask_loss"])
        logits, _ = self.model.apply({"params": params}, seq["x"][:, :-1],
                                     make_attn_mask(nb["input_mask"], nb["mask_ar"]),
                                     positions_from_mask(nb["input_mask"]))
        return logits, nb, seq["is_image"][:, 1:]
