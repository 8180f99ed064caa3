"""The HF transformers side of benchmarks/accelerator_step.py: SiglipModel and PaliGemma train steps in torch
(eager or torch.compile), with the same optimizer settings and mixed precision as our rows.

`TorchReference(device, half, lr, wd, timer)`: `timer(step)` -> (median seconds per step, every round's) is the
benchmark's, so both sides are timed alike. Each measuring method returns (row fields, first two losses)."""
import dataclasses
import time
from typing import Callable

import numpy as np
import torch
import transformers


@dataclasses.dataclass
class TorchReference:
    device: str  # 'cuda' | 'cpu'
    half: bool  # bf16 autocast
    lr: float
    wd: float
    timer: Callable

    def siglip_init(self, vision: dict, text: dict):
        """(HF config, initial state_dict as numpy): one random init that both sides start from."""
        cfg = transformers.SiglipConfig(vision_config=vision, text_config=text)
        torch.manual_seed(0)
        model = transformers.SiglipModel(cfg)
        with torch.no_grad():  # SigLIP's inits (HF zero-inits them when built from a config)
            model.logit_scale.fill_(np.log(10.0))
            model.logit_bias.fill_(-10.0)
        return cfg, _numpy_state(model)

    def siglip(self, cfg, state_dict, batch, compile_model):
        model = self._loaded(transformers.SiglipModel, cfg, state_dict)
        pixels = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).contiguous().to(self.device)
        ids = torch.from_numpy(batch["text"].astype(np.int64)).to(self.device)
        fwd = torch.compile(model) if compile_model else model
        return self._timed(lambda: fwd(input_ids=ids, pixel_values=pixels, return_loss=True).loss, model,
                           len(batch["image"]))

    def paligemma_init(self, c: dict):
        """(HF config, initial state_dict as numpy) of PaliGemma with the shapes of `c` (the benchmark's `plm`
        size): one random init that both sides start from (ours imports it with `load_hf_paligemma`)."""
        cfg = self.paligemma_config(c)
        torch.manual_seed(0)
        return cfg, _numpy_state(transformers.PaliGemmaForConditionalGeneration(cfg))

    @staticmethod
    def paligemma_config(c: dict):
        v, lm = c["vit"], c["lm"]
        n_img = (c["image"] // c["patch"]) ** 2
        cfg = transformers.PaliGemmaConfig(
            vision_config=dict(model_type="siglip_vision_model", hidden_size=v["width"],
                               num_hidden_layers=v["depth"], num_attention_heads=v["num_heads"],
                               intermediate_size=v["mlp_dim"], image_size=c["image"], patch_size=c["patch"],
                               projection_dim=lm["width"]),
            text_config=dict(model_type="gemma", hidden_size=lm["width"], num_hidden_layers=lm["depth"],
                             num_attention_heads=lm["num_heads"], num_key_value_heads=lm["num_kv_heads"],
                             head_dim=lm["head_dim"], intermediate_size=lm["mlp_dim"], vocab_size=c["vocab"],
                             hidden_activation="gelu_pytorch_tanh"),
            image_token_index=c["vocab"] - 1, vocab_size=c["vocab"], projection_dim=lm["width"],
            hidden_size=lm["width"])
        cfg.text_config.num_image_tokens = cfg.vision_config.num_image_tokens = n_img
        return cfg

    def paligemma(self, cfg, state_dict, c: dict, batch, compile_model):
        """A train step of HF PaliGemma (`paligemma_init`'s config and weights): image tokens then the text,
        token_type_ids 0 on the prefix (image + prompt: bidirectional) and 1 on the answer (causal), labels on
        the answer but its last token (HF predicts label t + 1 from position t, and the text ends there; our
        batch masks the same target)."""
        model = self._loaded(transformers.PaliGemmaForConditionalGeneration, cfg, state_dict)
        n_img = (c["image"] // c["patch"]) ** 2
        b = c["batch"]
        text, ar = (torch.from_numpy(batch[k][:, :c["text_len"]].astype(np.int64)) for k in ("tokens", "mask_ar"))
        ids = torch.cat([torch.full((b, n_img), c["vocab"] - 1), text], 1)
        ttype = torch.cat([torch.zeros((b, n_img), dtype=torch.long), ar], 1)
        labels = torch.where(ttype == 1, ids, torch.full_like(ids, -100))
        pixels = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).contiguous()
        ids, ttype, labels, pixels = (x.to(self.device) for x in (ids, ttype, labels, pixels))
        mask = torch.ones_like(ids)
        fwd = torch.compile(model) if compile_model else model
        return self._timed(lambda: fwd(input_ids=ids, pixel_values=pixels, attention_mask=mask,
                                       token_type_ids=ttype, labels=labels).loss, model, b)

    def _loaded(self, model_class, cfg, state_dict):
        """`model_class(cfg)` with the weights of `state_dict` (numpy), on the device, in train mode."""
        model = model_class(cfg)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})
        return model.to(self.device).train()

    def _timed(self, loss_fn, model, examples):
        """(row, first losses): warm-up (compilation) timed, then the median step; AdamW (fused on CUDA)."""
        fused = dict(fused=True) if self.device == "cuda" else {}
        opt = torch.optim.AdamW(model.parameters(), lr=self.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=self.wd,
                                **fused)

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.half):
                loss = loss_fn()
            loss.backward()
            opt.step()
            return loss

        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        losses = [float(step().detach().float().cpu()) for _ in range(2)]
        compile_s = time.perf_counter() - t
        sec, all_s = self.timer(step)
        peak = torch.cuda.max_memory_allocated() if self.device == "cuda" else None
        return dict(step_s_all=all_s, warmup_2_steps_s=compile_s, peak_bytes=peak,
                    peak_bytes_per_example=peak / examples if peak else None, sec=sec), losses


def _numpy_state(model) -> dict:
    """A torch model's state_dict as numpy copies: the initial weights both sides start from."""
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
