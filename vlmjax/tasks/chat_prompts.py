"""Host side of the prefix-LM's predict fns: chat prompts from strings, answers and images back (the evaluators,
the API and the CLIs call these)."""
import jax
import jax.numpy as jnp
import numpy as np

from vlmjax.data import chat_ops


def to_text(tokenizer, ids, end_id: int) -> str:
    """Decoded int[T] up to the first `end_id`, stripped."""
    ids = [int(i) for i in ids]
    return tokenizer.decode(ids[:ids.index(end_id)] if end_id in ids else ids).strip()


def prompt_batch(task, prompts, max_len=None) -> tuple:
    """list of str -> (int32[B, Lp] tokens, int32[B, Lp] mask) in the chat template."""
    max_len = max_len or max(len(task.tok.encode(p)) for p in prompts) + 3  # + the template's symbols
    r = chat_ops.prompt_rows(prompts, task.tok, int(max_len), len(prompts))
    return r["tokens"], r["input_mask"]


def answer_texts(task, variables, images, prompts, max_new_tokens: int = 8) -> list:
    """Greedy answers (str) to `prompts` about images float[B, H, W, 3] in [-1, 1]."""
    tokens, mask = prompt_batch(task, prompts)
    fn = jax.jit(task.predict_fns()["answer"], static_argnames=("max_new_tokens",))
    out = np.asarray(fn(variables, jnp.asarray(images), tokens, mask, max_new_tokens=max_new_tokens))
    return [to_text(task.tok, row, task.ids["end"]) for row in out]


def generate_images(task, variables, captions, seed: int = 0, cfg_scale=3.0, temperature=1.0, top_k=None):
    """VQ variant: uint8[N, H, W, 3] sampled for N captions (cfg_scale None or 1: no guidance)."""
    tokens, mask = prompt_batch(task, captions)
    fn = jax.jit(task.predict_fns()["generate_image"], static_argnames=("top_k",))
    cfg_scale = None if cfg_scale is None or float(cfg_scale) == 1.0 else float(cfg_scale)
    return np.asarray(fn(variables, tokens, mask, jax.random.PRNGKey(seed), cfg_scale, temperature, top_k=top_k))


def answers_as_text(task, pred) -> list:
    """int[B, Q, T] decoded answers -> B lists of Q strings."""
    return [[to_text(task.tok, row, task.ids["end"]) for row in rows] for rows in np.asarray(pred)]


