"""Prefix-LM VLM task: image prefix + chat-formatted text, next-token loss on `mask_loss`, decoding evaluators.

Batch (the `vlmjax.data.chat_ops` outputs): `image` float[B, H, W, 3] in [-1, 1], `tokens` int32[B, L] and
`input_mask`, `mask_ar`, `mask_loss` int32[B, L] (L = `config.text_len`); VQ variant: optional `image_last`
int32[B] (1 = an image-generation example: text first, then `<|boi|> codes <|eoi|>` supervised with weight
`config.image_loss_weight`) and optional precomputed `image_codes` int32[B, h, w].

Top-level keys: `tokenizer` (SentencePiece path), `image_size`, `text_len`, `image_input` ('continuous' | 'vq' |
'vq_features': the VQ-VAE's vectors before rounding, projected: vlmjax/models/vlm.py), `vq_workdir` (a trained
vqvae run, frozen: its encoder makes the codes or features, and its decoder draws generated images),
`loss_normalize` ('per_token' | 'per_example'), `z_loss`, `image_loss_weight`, `cfg_dropout` (probability that a
generation example's caption is replaced by the null prompt, for classifier-free guidance), `attention`
('prefix': bidirectional image + first prompt; 'causal': every token causal, the ablation).
`config.model`: `lm` (DecoderLM keys; vocab_size defaults to the tokenizer's), `vit` (ViT keys, continuous),
`projector` ('linear' | 'mlp2x_gelu'; also vq_features), `feature_layer` (-1 final, -2 LLaVA's second-to-last
block), `token_merge` (k: k x k patch tokens concatenated into one LM token; also vq_features).

Evaluators (`config.evals.<name>.type`): vqa, caption, perplexity (vlmjax/evaluators/). Predict fns:
`answer(variables, images, prompt_tokens, prompt_mask) -> int32[B, T]`, `answer_each(variables, batch,
max_new_tokens) -> int32[B, Q, T]`, `text_nll(variables, batch) -> {ce_sum, count}`, `generate_image(variables,
prompt_tokens, prompt_mask, rng) -> uint8[B, H, W, 3]` (VQ, vlmjax/tasks/image_generation.py); host helpers from
strings in vlmjax/tasks/chat_prompts.py. Sequence assembly (image and text segments, CFG dropout):
vlmjax/tasks/prefixlm_sequence.py. A VQ run's frozen tokenizer (`vq_workdir`) is read by the core (`frozen_runs`).
"""
import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlmjax.data import chat_ops
from vlmjax.losses.lm import NORMALIZE, check_supervised, next_token_loss
from vlmjax.models.lm import DecoderLM
from vlmjax.models.vit import ViT
from vlmjax.models.vlm import VLM, join_segments
from vlmjax.models.vqvae import VQVAE
from vlmjax.tasks.base import Task
from vlmjax.tasks.decode import decode
from vlmjax.tasks.image_generation import generate_image
from vlmjax.tasks.model_config import build_module, check_keys
from vlmjax.tasks.prefixlm_sequence import Sequencer
from vlmjax.tasks.text_inputs import load_tokenizer
from vlmjax.tasks.vqvae import generator_params

MODEL_KEYS = ("lm", "vit", "projector", "feature_layer", "token_merge")
ATTENTION = ("prefix", "causal")
IMAGE_INPUTS = ("continuous", "vq", "vq_features")
FROZEN_TOKENIZER = ("vq", "vq_features")  # image inputs read from the frozen VQ-VAE of config.vq_workdir


class PrefixLMTask(Task):
    eval_kinds = ("vqa", "caption", "perplexity")

    def __init__(self, config):
        super().__init__(config)
        self.tok = load_tokenizer(config.tokenizer, f"config.tokenizer={config.tokenizer!r}: no SentencePiece model "
                                                    f"there; `make data` trains data/tfds/scenes_spm.model")
        self.ids = chat_ops.special_ids(self.tok)
        self.ids.update(boi=self.tok.piece_to_id("<|boi|>"), eoi=self.tok.piece_to_id("<|eoi|>"))
        self.vq = config.image_input == "vq"  # discrete image tokens
        frozen_vq = config.image_input in FROZEN_TOKENIZER
        check_keys(config.model, MODEL_KEYS, "config.model")
        lm_cfg = dict(config.model.get("lm", {}))
        lm_cfg.setdefault("vocab_size", self.tok.vocab_size)
        lm = build_module(DecoderLM, lm_cfg, "config.model.lm")
        if frozen_vq:
            vq_cfg = self._vq_config()
            self.vq_model = build_module(VQVAE, vq_cfg.model, "config.json of config.vq_workdir: model")
            f = self.vq_model.downsample_factor
            self.vq_grid = (int(config.image_size) // f,) * 2
        if self.vq:
            extra = dict(image_vocab_size=self.vq_model.num_codes)
        else:  # projected vectors
            extra = dict(projector=config.model.get("projector", "linear"),
                         token_merge=int(config.model.get("token_merge", 1)))
            if not frozen_vq:
                vit_cfg = dict(config.model.get("vit", {}), pool_type="none", num_classes=None)
                extra.update(vit=build_module(ViT, vit_cfg, "config.model.vit"),
                             feature_layer=int(config.model.get("feature_layer", -1)))
        self.model = VLM(lm=lm, image_input=config.image_input, **extra)
        self.seq = Sequencer(self.model, self.ids, self.tok.pad_id, config.attention,
                             self.vq_model if frozen_vq else None)

    @classmethod
    def config_defaults(cls):
        return {"tokenizer": "", "image_size": 64, "text_len": 64, "image_input": "continuous", "vq_workdir": "",
                "loss_normalize": "per_token", "z_loss": 0.0, "image_loss_weight": 1.0, "cfg_dropout": 0.0,
                "attention": "prefix"}

    def _vq_config(self):
        path = os.path.join(self.config.vq_workdir, "config.json")
        if not self.config.vq_workdir or not os.path.isfile(path):
            raise FileNotFoundError(f"config.vq_workdir={self.config.vq_workdir!r}: no config.json of a trained "
                                    "vqvae run (train one: experiments/prefixlm_vq_scenes.py:vqvae)")
        with open(path) as f:
            return ml_collections.ConfigDict(json.load(f))

    def validate(self):
        c = self.config
        for key, allowed in (("image_input", IMAGE_INPUTS), ("loss_normalize", NORMALIZE),
                             ("attention", ATTENTION)):
            if c[key] not in allowed:
                raise ValueError(f"config.{key}={c[key]!r}: expected one of {allowed}")
        if self.model.text_vocab_size < self.tok.vocab_size:
            raise ValueError(f"config.model.lm.vocab_size={self.model.text_vocab_size} is smaller than the "
                             f"tokenizer's vocabulary ({self.tok.vocab_size})")

    def frozen_runs(self):
        return {"vqvae": (self.config.vq_workdir, "config.vq_workdir")} \
            if self.config.image_input in FROZEN_TOKENIZER else {}

    def tokenizer(self):
        return self.tok

    def dummy_batch(self, batch_size):
        s, n = int(self.config.image_size), int(self.config.text_len)
        ints = lambda *shape: np.zeros(shape, np.int32)  # noqa: E731
        return {"image": np.zeros((batch_size, s, s, 3), np.float32), "tokens": ints(batch_size, n),
                "input_mask": ints(batch_size, n), "mask_ar": ints(batch_size, n), "mask_loss": ints(batch_size, n)}

    def init(self, rng, batch):
        tokens, image = batch["tokens"], batch["image"]
        vq = None
        if self.config.image_input in FROZEN_TOKENIZER:  # carried (and checkpointed) as model state, never optimised
            if "vqvae" not in self.frozen:
                raise ValueError(f"config.vq_workdir={self.config.vq_workdir!r}: the VQ-VAE's variables were not "
                                 f"loaded (the core reads frozen_runs() before init)")
            vq_vars = self.frozen["vqvae"]
            # An adversarial VQ run also holds its discriminator's params: not part of the tokenizer.
            vq = jax.tree.map(jnp.asarray, {**vq_vars, "params": generator_params(vq_vars["params"])})
        if self.vq:  # one image id so that the image table is created with the rest
            tokens = tokens.at[:, 0].set(self.model.text_vocab_size)
        elif vq is not None:  # the projector's input: the tokenizer's features
            image = self.seq.vq_features(vq, image)
        variables = dict(self.model.init({"params": rng}, image, tokens, method="init_all"))
        if vq is not None:
            variables["vqvae"] = vq
        return variables

    def _forward(self, params, state, batch, rngs=None):
        """Teacher-forced pass (Sequencer.forward, with config.cfg_dropout while training)."""
        return self.seq.forward(params, state, batch, rngs, float(self.config.cfg_dropout))

    # -- training -------------------------------------------------------------------------------------------------
    def loss(self, params, state, batch, rngs, step):
        logits, nb, is_img = self._forward(params, state, batch, rngs)
        kw = dict(normalize=self.config.loss_normalize, z_loss=float(self.config.z_loss))
        loss, metrics = next_token_loss(logits, nb["targets"], nb["mask_loss"] * (1 - is_img), **kw)
        if self.vq:
            img_loss, m = next_token_loss(logits, nb["targets"], nb["mask_loss"] * is_img, **kw)
            loss = loss + self.config.image_loss_weight * img_loss
            metrics.update({f"image_{k}": v for k, v in m.items() if k != "z_loss"})
        return loss, (metrics, state)

    def check_batch(self, batch, where):
        if not self.vq and np.asarray(batch.get("image_last", 0)).any():
            raise ValueError(f"{where}: rows with image_last (image generation, e.g. chat_caption's generate_prob > 0) "
                             f"need config.image_input='vq', not {self.config.image_input!r}")
        sup = np.asarray(batch["mask_loss"]).astype(bool) & np.asarray(batch["input_mask"]).astype(bool)
        if self.vq and self.config.image_loss_weight > 0 and "image_last" in batch:
            sup = sup.any(1) | np.asarray(batch["image_last"]).astype(bool)  # generated images are supervised
        check_supervised(sup, where)

    # -- decoding -------------------------------------------------------------------------------------------------
    def decode_answers(self, params, img, prompt_tokens, prompt_mask, max_new_tokens: int = 8):
        """Greedy answers int32[B, T] (stopped by `<|end|>`) to prompts int[B, Lp] after image segments `img`."""
        seq = join_segments(img, self.seq.text_segment(params, prompt_tokens, prompt_mask))
        return decode(self.model, {"params": params}, seq["x"], seq["input_mask"],
                      self.seq.attention_ar(seq["mask_ar"]), max_new_tokens=max_new_tokens,
                      stop_tokens=(self.ids["end"],), pad_token=self.tok.pad_id)

    def answer(self, variables, images, prompt_tokens, prompt_mask, max_new_tokens: int = 8):
        """Greedy answers int32[B, T] to chat prompts int[B, Lp] about images float[B, H, W, 3] in [-1, 1]."""
        img = self.seq.image_segment(variables["params"], variables, {"image": images})
        return self.decode_answers(variables["params"], img, prompt_tokens, prompt_mask, max_new_tokens)

    def answer_each(self, variables, batch, max_new_tokens: int = 8):
        """Greedy answers int32[B, Q, T] to each image's Q prompts (`prompts` int[B, Q, Lp], `prompts_mask`); the
        image (`image` or `image_codes`) is encoded once."""
        b, q, lp = batch["prompts"].shape
        img = self.seq.image_segment(variables["params"], variables, batch)
        img = jax.tree.map(lambda a: jnp.repeat(a, q, axis=0), img)
        out = self.decode_answers(variables["params"], img, batch["prompts"].reshape(b * q, lp),
                                  batch["prompts_mask"].reshape(b * q, lp), max_new_tokens)
        return out.reshape(b, q, max_new_tokens)

    def text_nll(self, variables, batch):
        """Teacher-forced NLL of the supervised text tokens: {ce_sum float32[B], count float32[B]}."""
        logits, nb, is_img = self._forward(variables["params"], variables, batch)
        w = (nb["mask_loss"] * (1 - is_img)).astype(jnp.float32)
        ce = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, nb["targets"][..., None], -1)[..., 0]
        return {"ce_sum": (ce * w).sum(1), "count": w.sum(1)}

    def predict_fns(self):
        fns = {"answer": self.answer, "answer_each": self.answer_each, "text_nll": self.text_nll}
        if self.vq:
            fns["generate_image"] = functools.partial(generate_image, self)
        return fns
