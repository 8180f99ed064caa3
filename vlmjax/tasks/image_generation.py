"""Text-to-image sampling for the prefix-LM's VQ variant: the LM draws image codes after `<|boi|>`, the frozen VQ-VAE
decodes them."""
import jax.numpy as jnp

from vlmjax.models.vlm import join_segments
from vlmjax.models.vqvae import VQVAE
from vlmjax.tasks.decode import decode


def generate_image(task, variables, prompt_tokens, prompt_mask, rng, cfg_scale=3.0, temperature=1.0, top_k=None):
    """uint8[B, H, W, 3] sampled for chat prompts int[B, Lp] ("<|user|> caption<|end|><|assistant|>") of a VQ
    PrefixLMTask, only image tokens allowed; classifier-free guidance against the null prompt unless cfg_scale is
    None (static under jit)."""
    if not task.vq:
        raise ValueError("generate_image needs config.image_input='vq'")
    params = variables["params"]
    b = prompt_tokens.shape[0]
    boi = jnp.full((b, 1), task.ids["boi"], jnp.int32)

    def prefix(tokens, mask):
        t = task.seq.text_segment(params, tokens, mask)
        s = join_segments(t, task.seq.text_segment(params, boi, jnp.ones_like(boi), jnp.ones_like(boi)))
        return s["x"], s["input_mask"], task.seq.attention_ar(s["mask_ar"])

    empty = task.seq.null_prompt(prompt_tokens.shape[1])
    null = prefix(jnp.broadcast_to(empty["tokens"], prompt_tokens.shape),
                  jnp.broadcast_to(empty["input_mask"], prompt_tokens.shape))
    v_t, k = task.model.text_vocab_size, task.model.image_vocab_size
    allowed = (jnp.arange(task.model.vocab_size) >= v_t) & (jnp.arange(task.model.vocab_size) < v_t + k)
    n = task.vq_grid[0] * task.vq_grid[1]
    guided = cfg_scale is not None
    codes = decode(task.model, {"params": params}, *prefix(prompt_tokens, prompt_mask), max_new_tokens=n,
                   sampler="top_k" if top_k else "temperature", temperature=temperature, top_k=top_k, rng=rng,
                   logits_mask=allowed, cfg_scale=cfg_scale if guided else None,
                   cfg_null_prefix=null if guided else None)
    codes = jnp.clip(codes - v_t, 0, k - 1).reshape(b, *task.vq_grid)
    pixels = task.vq_model.apply(variables["vqvae"], codes, method=VQVAE.decode)
    return jnp.round((jnp.clip(pixels, -1, 1) + 1) * 127.5).astype(jnp.uint8)
