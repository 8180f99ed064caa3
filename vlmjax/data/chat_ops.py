"""Preprocessing ops for the prefix-LM: chat-template packing into the one mask contract, eval prompts, references.

Chat template (one sequence after the image prefix, which the model puts in front):

    <|user|> q1<|end|><|assistant|> a1<|end|><|user|> q2<|end|><|assistant|> a2<|end|> pad ...

Per token: `input_mask` 1 = real; `mask_ar` 0 = joins the bidirectional prefix (image + first user turn, up to and
including its `<|assistant|>`), 1 = causal step (every answer token, and the later user turns); `mask_loss` 1 on
assistant tokens only (the answer and its closing `<|end|>`, so the model learns to stop). With
`prompt_blocks=True` a later user turn is its own bidirectional block (first token 1, the rest 0): block-causal.
Turns that do not fit in `max_len` are dropped whole; only a first turn longer than `max_len` is cut, which can
leave no supervised token — the task's `check_batch` reports such a batch instead of training on a zero loss.

Ops (registered in `op_registry.OPS`; `vlmjax.data.ops` imports this module with the other op families):
  chat_qa(max_len, questions, answers, max_turns=0, min_turns=1, shuffle=True, prompt_blocks=False)
        multi-turn chat from aligned question/answer lists: a random number of turns in [min_turns, max_turns]
        (0 = all) in random order (shuffle=False: all turns in order, for deterministic eval)
  chat_caption(max_len, key='captions', prompt='caption', generate_prob=0.0)
        one turn "<prompt> -> random caption"; with probability generate_prob instead an image-generation example
        "<|user|> caption<|end|><|assistant|>" with nothing supervised in the text and `image_last` = 1 (the task
        appends the image tokens after the text and supervises them)
  chat_prompts(max_len, key=None, prompt=None, max_prompts=1, out='prompts')
        decoding prefixes "<|user|> p<|end|><|assistant|>" of a list field (or one fixed prompt) ->
        int32[max_prompts, max_len] `out`, `<out>_mask`, `<out>_valid` int32[max_prompts]
  text_bytes(key, max_items, max_chars, out)   list of str -> uint8[max_items, max_chars] (0-padded UTF-8) and
                                               `<out>_valid`: reference strings carried through jitted predict fns
  list_index(key, values, max_items, out)      list of str -> int32[max_items] index into `values` (-1: absent)
"""
from typing import List, Optional, Sequence, Tuple

import numpy as np

from vlmjax.data.op_registry import DropExample, as_text, get, in_key_out_key, register

CHAT_SYMBOLS = ("<|user|>", "<|assistant|>", "<|end|>")
Turn = Tuple[List[int], Optional[List[int]]]  # (prompt ids, answer ids or None = open for generation)


def special_ids(tokenizer) -> dict:
    """{'user', 'assistant', 'end'} -> id; raises if the tokenizer lacks the chat symbols (a silent unk would
    train a template the model can never be prompted with)."""
    ids = {}
    for name, sym in zip(("user", "assistant", "end"), CHAT_SYMBOLS):
        i = tokenizer.piece_to_id(sym)
        if i == tokenizer.unk_id:
            raise ValueError(f"tokenizer {tokenizer!r} has no piece {sym!r}; train it with the chat symbols "
                             "(vlmjax.data.tokenizer.SPECIAL_SYMBOLS)")
        ids[name] = int(i)
    return ids


def chat_tokens(turns: Sequence[Turn], specials: dict, prompt_blocks: bool = False):
    """Unpadded (tokens, mask_ar, mask_loss) int lists, one list of segments per turn (to drop whole turns)."""
    out = []
    for i, (prompt, answer) in enumerate(turns):
        user = [specials["user"], *prompt, specials["end"], specials["assistant"]]
        if i == 0:
            ar = [0] * len(user)
        else:
            ar = [1] + [0 if prompt_blocks else 1] * (len(user) - 1)
        seg = (user, ar, [0] * len(user))
        if answer is not None:
            ans = [*answer, specials["end"]]
            seg = (user + ans, ar + [1] * len(ans), seg[2] + [1] * len(ans))
        out.append(seg)
    return out


def pack_chat(turns: Sequence[Turn], specials: dict, max_len: int, pad_id: int = 0,
              prompt_blocks: bool = False) -> dict:
    """Turns -> {'tokens', 'input_mask', 'mask_ar', 'mask_loss'}: int32[max_len] each, right-padded."""
    tokens, ar, loss = [], [], []
    for i, (t, a, m) in enumerate(chat_tokens(turns, specials, prompt_blocks)):
        if i > 0 and len(tokens) + len(t) > max_len:
            break  # later turns are dropped whole, never cut mid-answer
        tokens, ar, loss = tokens + t, ar + a, loss + m
    tokens, ar, loss = tokens[:max_len], ar[:max_len], loss[:max_len]
    n = len(tokens)

    def pad(values, fill=0):
        arr = np.full(max_len, fill, np.int32)
        arr[:n] = values
        return arr

    return {"tokens": pad(tokens, pad_id), "input_mask": pad([1] * n), "mask_ar": pad(ar), "mask_loss": pad(loss)}


def _check_len(max_len):
    if not (isinstance(max_len, (int, np.integer)) and max_len > 0):
        raise ValueError(f"max_len must be a positive int, got {max_len!r}")


def _texts(v) -> List[str]:
    """A list field's strings; a single string field (web captions) is a list of one."""
    if isinstance(v, (str, bytes, np.bytes_)) or (isinstance(v, np.ndarray) and v.ndim == 0):
        return [as_text(v)]
    return [as_text(t) for t in v]


@register("chat_qa", reads=lambda a: [a["questions"], a["answers"]])
def chat_qa(max_len: int, questions: str = "questions", answers: str = "answers", max_turns: int = 0,
            min_turns: int = 1, shuffle: bool = True, prompt_blocks: bool = False, *, tokenizer=None):
    _check_len(max_len)
    if min_turns < 1 or max_turns < 0 or (max_turns and min_turns > max_turns):
        raise ValueError(f"need 1 <= min_turns <= max_turns (0 = all), got {min_turns}, {max_turns}")

    def op(ex, rng):
        qs, ans = _texts(get(ex, questions)), _texts(get(ex, answers))
        if len(qs) != len(ans):
            raise ValueError(f"chat_qa: {questions!r} and {answers!r} have different lengths {len(qs)}, {len(ans)}")
        if not qs:
            raise DropExample(f"empty_{questions}")
        order = np.arange(len(qs))
        if shuffle:
            hi = len(qs) if max_turns == 0 else min(max_turns, len(qs))
            k = int(rng.integers(min(min_turns, hi), hi + 1))
            order = rng.permutation(len(qs))[:k]
        elif max_turns:
            order = order[:max_turns]
        turns = [(tokenizer.encode(qs[i]), tokenizer.encode(ans[i])) for i in order]
        return {**ex, **pack_chat(turns, special_ids(tokenizer), max_len, tokenizer.pad_id, prompt_blocks)}

    return op


@register("chat_caption", reads=lambda a: [a["key"]])
def chat_caption(max_len: int, key: str = "captions", prompt: str = "caption", generate_prob: float = 0.0, *,
                 tokenizer=None):
    _check_len(max_len)
    if not 0.0 <= generate_prob <= 1.0:
        raise ValueError(f"generate_prob must be in [0, 1], got {generate_prob}")

    def op(ex, rng):
        caps = _texts(get(ex, key))
        if not caps:
            raise DropExample(f"empty_{key}")
        cap = caps[int(rng.integers(len(caps)))]
        generate = generate_prob > 0 and rng.random() < generate_prob
        turn = (tokenizer.encode(cap), None) if generate else (tokenizer.encode(prompt), tokenizer.encode(cap))
        out = {**ex, **pack_chat([turn], special_ids(tokenizer), max_len, tokenizer.pad_id)}
        if generate_prob > 0:
            out["image_last"] = np.int32(generate)
        return out

    return op


def prompt_rows(prompts: Sequence[str], tokenizer, max_len: int, max_prompts: int) -> dict:
    """Decoding prefixes for a list of prompts: {'tokens', 'input_mask'} int32[max_prompts, max_len], 'valid'."""
    specials = special_ids(tokenizer)
    rows = [pack_chat([(tokenizer.encode(p), None)], specials, max_len, tokenizer.pad_id)
            for p in list(prompts)[:max_prompts]]
    n = len(rows)
    tokens = np.full((max_prompts, max_len), tokenizer.pad_id, np.int32)
    mask = np.zeros((max_prompts, max_len), np.int32)
    for i, r in enumerate(rows):
        tokens[i], mask[i] = r["tokens"], r["input_mask"]
    return {"tokens": tokens, "input_mask": mask, "valid": (np.arange(max_prompts) < n).astype(np.int32)}


@register("chat_prompts", reads=lambda a: [a["key"]])
def chat_prompts(max_len: int, key: Optional[str] = None, prompt: Optional[str] = None, max_prompts: int = 1,
                 out: str = "prompts", *, tokenizer=None):
    _check_len(max_len)
    if (key is None) == (prompt is None):
        raise ValueError("give exactly one of key (a list field of prompts) or prompt (a fixed prompt)")

    def op(ex, rng):
        texts = [prompt] if prompt is not None else _texts(get(ex, key))
        r = prompt_rows(texts, tokenizer, max_len, max_prompts)
        return {**ex, out: r["tokens"], f"{out}_mask": r["input_mask"], f"{out}_valid": r["valid"]}

    return op


@register("text_bytes", reads=lambda a: [a["key"]])
def text_bytes(key: str, max_items: int, max_chars: int, out: Optional[str] = None):
    out = out or key

    def op(ex, rng):
        arr = np.zeros((max_items, max_chars), np.uint8)
        texts = _texts(get(ex, key))[:max_items]
        for i, t in enumerate(texts):
            b = t.encode("utf-8")[:max_chars]
            arr[i, :len(b)] = np.frombuffer(b, np.uint8)
        return {**ex, out: arr, f"{out}_valid": (np.arange(max_items) < len(texts)).astype(np.int32)}

    return op


def bytes_to_text(arr) -> str:
    """uint8[C] 0-padded UTF-8 (a `text_bytes` row) -> str."""
    return bytes(np.asarray(arr, np.uint8)).rstrip(b"\0").decode("utf-8", errors="replace")


@register("list_index")
@in_key_out_key
def list_index(key: str, values: Sequence[str], max_items: int, out: Optional[str] = None):
    values = [str(v) for v in values]

    def fn(texts, rng):
        idx = np.full(max_items, -1, np.int32)
        for i, t in enumerate(_texts(texts)[:max_items]):
            idx[i] = values.index(t) if t in values else -1
        return idx

    return fn
