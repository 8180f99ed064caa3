"""Prefix-LM VLM task: image prefix + chat-formatted text, next-token loss on `mask_loss`, decoding evaluators.

Batch (the `vlmjax.data.chat_ops` outputs): `image` float[B, H, W, 3] in [-1, 1], `tokens` int32[B, L] and
`input_mask`, `mask_ar`, `mask_loss` int32[B, L] (L = `config.text_len`); VQ variant: optional `image_last`
int32[B] (1 = an image-generation example: text first, then `<|boi|> codes <|eoi|>` supervised with weight
`config.image_loss_weight`) and optional precomputed `image_codes` int32[B, h, w].

Top-level keys: `tokenizer` (SentencePiece path), `image_size`, `text_len`, `image_input` ('continuous' | 'vq'),
`vq_workdir` (a trained vqvae run: its encoder makes the codes, frozen, and its decoder draws generated images),
`loss_normalize` ('per_token' | 'per_example'), `z_loss`, `image_loss_weight`, `cfg_dropout` (probability that a
generation example's caption is replaced by the null prompt, for classifier-free guidance), `attention`
('prefix': bidirectional image + first prompt; 'causal': every token causal, the ablation).
`config.model`: `lm` (DecoderLM keys; vocab_size defaults to the tokenizer's), `vit` (ViT keys, continuous),
`projector` ('linear' | 'mlp2x_gelu'), `feature_layer` (-1 final, -2 LLaVA's second-to-last block), `token_merge`
(k: k x k patch tokens concatenated into one LM token).

Evaluators (`config.evals.<name>.type`), all greedy, on data from `chat_prompts` + `text_bytes` (+ `list_index`):
  vqa         `accuracy`: exact match of the decoded answer over every question of the split, plus
              `accuracy_<type>` with `question_types` (names of the `list_index` values); `max_new_tokens`
  caption     `cider` (CIDEr-D against all references, vlmjax.tasks.cider) and `exact` (decoded caption equals
              one of the references); optional `gen_captions`: VQ variant, a TensorBoard grid of images generated
              for them (`cfg_scale`, `temperature`, `top_k`, `seed`)
  perplexity  exp of the per-token cross-entropy on teacher-forced text (training-format data); `ce`
Predict fns: `answer(variables, images, prompt_tokens, prompt_mask) -> int32[B, T]`, `generate_image(variables,
prompt_tokens, prompt_mask, rng) -> uint8[B, H, W, 3]` (VQ); host helpers `answer_texts`, `generate_images`.
"""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlmjax.data import chat_ops
from vlmjax.losses.lm import NORMALIZE, check_supervised, next_token_batch, next_token_loss
from vlmjax.models.lm import DecoderLM
from vlmjax.models.masks import make_attn_mask, positions_from_mask
from vlmjax.models.vit import ViT
from vlmjax.models.vlm import VLM, join_segments
from vlmjax.models.vqvae import VQVAE
from vlmjax.tasks import cider
from vlmjax.tasks.base import Evaluator, Task
from vlmjax.tasks.decode import decode
from vlmjax.tasks.model_config import build_module, check_keys
from vlmjax.tasks.vqvae import generator_params

MODEL_KEYS = ("lm", "vit", "projector", "feature_layer", "token_merge")
EVAL_KEYS = {"vqa": ("max_new_tokens", "question_types"), "perplexity": (),
             "caption": ("max_new_tokens", "gen_captions", "cfg_scale", "temperature", "top_k", "seed")}
ATTENTION = ("prefix", "causal")


def load_checkpoint_variables(workdir: str) -> dict:
    """{'params': ..., **model_state} of a run's latest checkpoint as host numpy (never the optimizer state)."""
    import orbax.checkpoint as ocp

    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"config.vq_workdir={workdir!r}: no checkpoints at {directory}; train a VQ-VAE "
                                "first (experiments/prefixlm_vq_scenes.py:vqvae)")
    mngr = ocp.CheckpointManager(directory, item_names=("state", "data"),
                                 item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                                                "data": ocp.JsonCheckpointHandler()},
                                 options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        step = mngr.latest_step()
        if step is None:
            raise FileNotFoundError(f"config.vq_workdir={workdir!r}: no finished checkpoint in {directory}")
        meta = mngr.item_metadata(step)["state"]
        meta = getattr(meta, "tree", meta)
        wanted = {k: meta[k] for k in ("params", "model_state") if k in meta}
        args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
        state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=wanted, restore_args=args, partial_restore=True))).state
    finally:
        mngr.close()
    return {"params": state["params"], **state.get("model_state", {})}


def _to_text(tokenizer, ids, end_id: int) -> str:
    ids = [int(i) for i in ids]
    return tokenizer.decode(ids[:ids.index(end_id)] if end_id in ids else ids).strip()


class PrefixLMTask(Task):
    def __init__(self, config):
        super().__init__(config)
        from vlmjax.data.tokenizer import Tokenizer

        path = config.tokenizer
        if not path or not os.path.isfile(os.path.expanduser(path)):
            raise FileNotFoundError(f"config.tokenizer={path!r}: no SentencePiece model there; `make data` trains "
                                    "data/tfds/scenes_spm.model")
        self.tok = Tokenizer(path)
        self.ids = chat_ops.special_ids(self.tok)
        self.ids.update(boi=self.tok.piece_to_id("<|boi|>"), eoi=self.tok.piece_to_id("<|eoi|>"))
        self.vq = config.image_input == "vq"
        check_keys(config.model, MODEL_KEYS, "config.model")
        lm_cfg = dict(config.model.get("lm", {}))
        lm_cfg.setdefault("vocab_size", self.tok.vocab_size)
        lm = build_module(DecoderLM, lm_cfg, "config.model.lm")
        extra = {}
        if self.vq:
            vq_cfg = self._vq_config()
            self.vq_model = build_module(VQVAE, vq_cfg.model, "config.json of config.vq_workdir: model")
            f = self.vq_model.downsample_factor
            self.vq_grid = (int(config.image_size) // f,) * 2
            extra = dict(image_vocab_size=self.vq_model.num_codes)
            self._vq_vars = None
        else:
            vit_cfg = dict(config.model.get("vit", {}), pool_type="none", num_classes=None)
            extra = dict(vit=build_module(ViT, vit_cfg, "config.model.vit"),
                         projector=config.model.get("projector", "linear"),
                         feature_layer=int(config.model.get("feature_layer", -1)),
                         token_merge=int(config.model.get("token_merge", 1)))
        self.model = VLM(lm=lm, image_input=config.image_input, **extra)

    @classmethod
    def config_defaults(cls):
        return {"tokenizer": "", "image_size": 64, "text_len": 64, "image_input": "continuous", "vq_workdir": "",
                "loss_normalize": "per_token", "z_loss": 0.0, "image_loss_weight": 1.0, "cfg_dropout": 0.0,
                "attention": "prefix"}

    def null_prompt(self, length: int) -> dict:
        """Classifier-free guidance's "no caption" chat prompt: {tokens, input_mask, mask_ar, mask_loss} int32[L]."""
        return chat_ops.pack_chat([([], None)], self.ids, length, self.tok.pad_id)

    def _vq_config(self):
        path = os.path.join(self.config.vq_workdir, "config.json")
        if not self.config.vq_workdir or not os.path.isfile(path):
            raise FileNotFoundError(f"config.vq_workdir={self.config.vq_workdir!r}: no config.json of a trained "
                                    "vqvae run (train one: experiments/prefixlm_vq_scenes.py:vqvae)")
        with open(path) as f:
            return ml_collections.ConfigDict(json.load(f))

    def validate(self):
        c = self.config
        for key, allowed in (("image_input", ("continuous", "vq")), ("loss_normalize", NORMALIZE),
                             ("attention", ATTENTION)):
            if c[key] not in allowed:
                raise ValueError(f"config.{key}={c[key]!r}: expected one of {allowed}")
        if self.model.text_vocab_size < self.tok.vocab_size:
            raise ValueError(f"config.model.lm.vocab_size={self.model.text_vocab_size} is smaller than the "
                             f"tokenizer's vocabulary ({self.tok.vocab_size})")
        self.evaluators()

    def tokenizer(self):
        return self.tok

    def dummy_batch(self, batch_size):
        s, n = int(self.config.image_size), int(self.config.text_len)
        ints = lambda *shape: np.zeros(shape, np.int32)  # noqa: E731
        return {"image": np.zeros((batch_size, s, s, 3), np.float32), "tokens": ints(batch_size, n),
                "input_mask": ints(batch_size, n), "mask_ar": ints(batch_size, n), "mask_loss": ints(batch_size, n)}

    def init(self, rng, batch):
        tokens = batch["tokens"]
        if self.vq:  # one image id so that the image table is created with the rest
            tokens = tokens.at[:, 0].set(self.model.text_vocab_size)
        variables = dict(self.model.init({"params": rng}, batch["image"], tokens, method="init_all"))
        if self.vq:  # frozen tokenizer, carried (and checkpointed) as model state, never optimised
            if self._vq_vars is None:
                self._vq_vars = load_checkpoint_variables(self.config.vq_workdir)
            # An adversarial VQ run also holds its discriminator's params: not part of the tokenizer.
            vq = {**self._vq_vars, "params": generator_params(self._vq_vars["params"])}
            variables["vqvae"] = jax.tree.map(jnp.asarray, vq)
        return variables

    # -- sequence assembly -----------------------------------------------------------------------------------------
    def _embed(self, params, tokens):
        return self.model.apply({"params": params}, tokens, method="embed")

    def image_codes(self, state, batch):
        """int32[B, h, w]: precomputed `image_codes`, else the frozen VQ-VAE's encoding of `image`."""
        if "image_codes" in batch:
            return batch["image_codes"].astype(jnp.int32)
        return self.vq_model.apply(jax.lax.stop_gradient(state["vqvae"]), batch["image"], method=VQVAE.encode)

    def image_segment(self, params, state, batch, generate=None):
        """The image's per-token fields {x float[B, N, D], ids, input_mask, mask_ar, mask_loss, is_image}.

        Continuous: projected patches, never supervised. VQ: `<|boi|> codes <|eoi|>`; in rows with `generate`
        (bool[B], image after the text) causal and supervised, otherwise part of the bidirectional prefix.
        """
        if self.vq:
            codes = self.image_codes(state, batch)
            b = codes.shape[0]
            ids = jnp.concatenate([jnp.full((b, 1), self.ids["boi"]), codes.reshape(b, -1) +
                                   self.model.text_vocab_size, jnp.full((b, 1), self.ids["eoi"])], 1).astype(jnp.int32)
            x = self._embed(params, ids)
        else:
            x = self.model.apply({"params": params}, batch["image"], method="embed_image")
            ids = jnp.zeros(x.shape[:2], jnp.int32)
        gen = jnp.zeros((x.shape[0],), bool) if generate is None else generate.astype(bool)
        ones = jnp.ones(ids.shape, jnp.int32)
        causal = jnp.broadcast_to(gen[:, None], ids.shape).astype(jnp.int32)
        return {"x": x, "ids": ids, "input_mask": ones, "mask_ar": causal, "mask_loss": causal, "is_image": ones}

    def text_segment(self, params, tokens, input_mask, mask_ar=None, mask_loss=None):
        zeros = jnp.zeros(tokens.shape, jnp.int32)
        return {"x": self._embed(params, tokens), "ids": tokens.astype(jnp.int32),
                "input_mask": input_mask.astype(jnp.int32),
                "mask_ar": zeros if mask_ar is None else mask_ar.astype(jnp.int32),
                "mask_loss": zeros if mask_loss is None else mask_loss.astype(jnp.int32), "is_image": zeros}

    def _ar(self, mask_ar):
        return jnp.ones_like(mask_ar) if self.config.attention == "causal" else mask_ar

    def _forward(self, params, state, batch, rngs=None):
        """Teacher-forced pass -> (logits float32[B, T-1, V], shifted batch, is_image int[B, T-1])."""
        gen = batch.get("image_last") if self.vq else None
        txt = {k: batch[k] for k in ("tokens", "input_mask", "mask_ar", "mask_loss")}
        if gen is not None and rngs is not None and self.config.cfg_dropout > 0:
            drop = gen.astype(bool) & (jax.random.uniform(rngs["dropout"], gen.shape) < self.config.cfg_dropout)
            null = self.null_prompt(txt["tokens"].shape[1])
            txt = {k: jnp.where(drop[:, None], null[k][None], v) for k, v in txt.items()}
        seq = join_segments(self.image_segment(params, state, batch, gen),
                            self.text_segment(params, txt["tokens"], txt["input_mask"], txt["mask_ar"],
                                              txt["mask_loss"]), swap=gen)
        if gen is not None:  # image after padded text: real tokens first, so <|boi|> is predicted from the last
            # text token, not from a padding slot (stable: the order of the real tokens is kept)
            order = jnp.argsort(1 - seq["input_mask"], axis=1, stable=True)
            seq = {k: jnp.take_along_axis(v, order.reshape(order.shape + (1,) * (v.ndim - 2)), axis=1)
                   for k, v in seq.items()}
        nb = next_token_batch(seq["ids"], seq["input_mask"], self._ar(seq["mask_ar"]), seq["mask_loss"])
        logits, _ = self.model.apply({"params": params}, seq["x"][:, :-1],
                                     make_attn_mask(nb["input_mask"], nb["mask_ar"]),
                                     positions_from_mask(nb["input_mask"]))
        return logits, nb, seq["is_image"][:, 1:]

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
        sup = np.asarray(batch["mask_loss"]).astype(bool) & np.asarray(batch["input_mask"]).astype(bool)
        if self.vq and self.config.image_loss_weight > 0 and "image_last" in batch:
            sup = sup.any(1) | np.asarray(batch["image_last"]).astype(bool)  # generated images are supervised
        check_supervised(sup, where)

    # -- decoding -------------------------------------------------------------------------------------------------
    def decode_answers(self, params, img, prompt_tokens, prompt_mask, max_new_tokens: int = 8):
        """Greedy answers int32[B, T] (stopped by `<|end|>`) to prompts int[B, Lp] after image segments `img`."""
        seq = join_segments(img, self.text_segment(params, prompt_tokens, prompt_mask))
        return decode(self.model, {"params": params}, seq["x"], seq["input_mask"], self._ar(seq["mask_ar"]),
                      max_new_tokens=max_new_tokens, stop_tokens=(self.ids["end"],), pad_token=self.tok.pad_id)

    def answer(self, variables, images, prompt_tokens, prompt_mask, max_new_tokens: int = 8):
        """Greedy answers int32[B, T] to chat prompts int[B, Lp] about images float[B, H, W, 3] in [-1, 1]."""
        img = self.image_segment(variables["params"], variables, {"image": images})
        return self.decode_answers(variables["params"], img, prompt_tokens, prompt_mask, max_new_tokens)

    def generate_image(self, variables, prompt_tokens, prompt_mask, rng, cfg_scale=3.0, temperature=1.0,
                       top_k=None):
        """VQ variant: uint8[B, H, W, 3] sampled for chat prompts int[B, Lp] ("<|user|> caption<|end|>
        <|assistant|>"), only image tokens allowed; classifier-free guidance against the null prompt unless
        cfg_scale is None."""
        if not self.vq:
            raise ValueError("generate_image needs config.image_input='vq'")
        params = variables["params"]
        b = prompt_tokens.shape[0]
        boi = jnp.full((b, 1), self.ids["boi"], jnp.int32)

        def prefix(tokens, mask):
            t = self.text_segment(params, tokens, mask)
            s = join_segments(t, self.text_segment(params, boi, jnp.ones_like(boi), jnp.ones_like(boi)))
            return s["x"], s["input_mask"], self._ar(s["mask_ar"])

        empty = self.null_prompt(prompt_tokens.shape[1])
        null = prefix(jnp.broadcast_to(empty["tokens"], prompt_tokens.shape),
                      jnp.broadcast_to(empty["input_mask"], prompt_tokens.shape))
        v_t, k = self.model.text_vocab_size, self.model.image_vocab_size
        allowed = (jnp.arange(self.model.vocab_size) >= v_t) & (jnp.arange(self.model.vocab_size) < v_t + k)
        n = self.vq_grid[0] * self.vq_grid[1]
        guided = cfg_scale is not None  # None (static under jit): plain sampling
        codes = decode(self.model, {"params": params}, *prefix(prompt_tokens, prompt_mask), max_new_tokens=n,
                       sampler="top_k" if top_k else "temperature", temperature=temperature, top_k=top_k, rng=rng,
                       logits_mask=allowed, cfg_scale=cfg_scale if guided else None,
                       cfg_null_prefix=null if guided else None)
        codes = jnp.clip(codes - v_t, 0, k - 1).reshape(b, *self.vq_grid)
        pixels = self.vq_model.apply(variables["vqvae"], codes, method=VQVAE.decode)
        return jnp.round((jnp.clip(pixels, -1, 1) + 1) * 127.5).astype(jnp.uint8)

    def predict_fns(self):
        fns = {"answer": self.answer}
        if self.vq:
            fns["generate_image"] = self.generate_image
        return fns

    def prompt_batch(self, prompts, max_len=None):
        """Host: list of str -> (int32[B, Lp] tokens, int32[B, Lp] mask) in the chat template."""
        max_len = max_len or max(len(self.tok.encode(p)) for p in prompts) + 3  # + the template's symbols
        r = chat_ops.prompt_rows(prompts, self.tok, int(max_len), len(prompts))
        return r["tokens"], r["input_mask"]

    def answer_texts(self, variables, images, prompts, max_new_tokens: int = 8):
        tokens, mask = self.prompt_batch(prompts)
        fn = jax.jit(self.answer, static_argnames=("max_new_tokens",))
        out = np.asarray(fn(variables, jnp.asarray(images), tokens, mask, max_new_tokens=max_new_tokens))
        return [_to_text(self.tok, row, self.ids["end"]) for row in out]

    def generate_images(self, variables, captions, seed: int = 0, cfg_scale=3.0, temperature=1.0, top_k=None):
        tokens, mask = self.prompt_batch(captions)
        fn = jax.jit(self.generate_image, static_argnames=("top_k",))
        cfg_scale = None if cfg_scale is None or float(cfg_scale) == 1.0 else float(cfg_scale)
        return np.asarray(fn(variables, tokens, mask, jax.random.PRNGKey(seed), cfg_scale, temperature, top_k=top_k))

    # -- evaluation -----------------------------------------------------------------------------------------------
    def evaluators(self):
        evals = {}
        for name, cfg in self.config.evals.items():
            kind = cfg.get("type", "")
            if kind not in EVAL_KEYS:
                raise ValueError(f"config.evals.{name}.type={kind!r}: this task offers {', '.join(EVAL_KEYS)}")
            check_keys(cfg, ("type", "every_steps", "data") + EVAL_KEYS[kind], f"config.evals.{name}")
            if kind == "perplexity":
                evals[name] = Evaluator(data=cfg.data, predict=self._predict_ce, reduce=_reduce_perplexity)
                continue
            steps = int(cfg.get("max_new_tokens", 8 if kind == "vqa" else 32))
            predict = self._predict_decode(steps)
            if kind == "vqa":
                types = list(cfg.get("question_types", []))
                evals[name] = Evaluator(data=cfg.data, predict=predict, reduce=lambda o, t=types: self._reduce_vqa(o, t))
            else:
                evals[name] = Evaluator(data=cfg.data, predict=predict, reduce=self._reduce_caption,
                                        images=self._generation_hook(cfg) if self.vq else None)
        return evals

    def _predict_decode(self, max_new_tokens):
        """Eval batches with `prompts` int[B, Q, Lp] (+ `_mask`, `_valid`) and `refs` uint8[B, K, C]: the image is
        encoded once and decoded after each of its Q prompts."""
        def predict(variables, batch):
            b, q, lp = batch["prompts"].shape
            img = self.image_segment(variables["params"], variables, batch)
            img = jax.tree.map(lambda a: jnp.repeat(a, q, axis=0), img)
            out = self.decode_answers(variables["params"], img, batch["prompts"].reshape(b * q, lp),
                                      batch["prompts_mask"].reshape(b * q, lp), max_new_tokens)
            keep = {k: batch[k] for k in ("prompts_valid", "refs", "refs_valid", "question_type") if k in batch}
            return {"pred": out.reshape(b, q, max_new_tokens), **keep}
        return predict

    def _texts(self, pred):
        return [[_to_text(self.tok, row, self.ids["end"]) for row in rows] for rows in np.asarray(pred)]

    def _reduce_vqa(self, out, types):
        preds = self._texts(out["pred"])
        valid = out["prompts_valid"].astype(bool)
        correct = np.zeros(valid.shape, bool)
        for i, j in zip(*np.nonzero(valid)):
            correct[i, j] = cider.normalize(preds[i][j]) == cider.normalize(chat_ops.bytes_to_text(out["refs"][i, j]))
        metrics = {"accuracy": float(correct[valid].mean()), "questions": float(valid.sum())}
        qtype = out.get("question_type")
        for t, name in enumerate(types):
            sel = valid & (qtype == t) if qtype is not None else np.zeros_like(valid)
            if sel.any():
                metrics[f"accuracy_{name}"] = float(correct[sel].mean())
        return metrics

    def _reduce_caption(self, out):
        hyps = [p[0] for p in self._texts(out["pred"])]
        refs = [[chat_ops.bytes_to_text(r) for r, v in zip(rs, vs) if v] for rs, vs in zip(out["refs"], out["refs_valid"])]
        return {"cider": cider.cider_d(hyps, refs), "exact": cider.exact_match(hyps, refs)}

    def _predict_ce(self, variables, batch):
        logits, nb, is_img = self._forward(variables["params"], variables, batch)
        w = (nb["mask_loss"] * (1 - is_img)).astype(jnp.float32)
        ce = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, nb["targets"][..., None], -1)[..., 0]
        return {"ce_sum": (ce * w).sum(1), "count": w.sum(1)}

    def _generation_hook(self, cfg):
        captions = list(cfg.get("gen_captions", []))
        if not captions:
            return None
        kw = dict(seed=int(cfg.get("seed", 0)), cfg_scale=cfg.get("cfg_scale", 3.0),
                  temperature=float(cfg.get("temperature", 1.0)), top_k=cfg.get("top_k", None))
        return lambda variables, runtime: {"generated": self.generate_images(variables, captions, **kw)}


def _reduce_perplexity(out):
    ce = float(out["ce_sum"].sum() / max(out["count"].sum(), 1.0))
    return {"perplexity": float(np.exp(ce)), "ce": ce}
