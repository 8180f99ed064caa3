"""The greedy decoding pass the `vqa` and `caption` evaluators share (data from `chat_prompts` + `text_bytes`)."""

PASSED_THROUGH = ("prompts_valid", "refs", "refs_valid", "question_type")


def predict_answers(task, max_new_tokens: int):
    """predict fn over eval batches with `prompts` int[B, Q, Lp] (+ `_mask`, `_valid`) and `refs` uint8[B, K, C]:
    {'pred': int32[B, Q, max_new_tokens], and the batch's PASSED_THROUGH keys}."""
    answer_each = task.predict_fns()["answer_each"]

    def predict(variables, batch):
        pred = answer_each(variables, batch, max_new_tokens)
        return {"pred": pred, **{k: batch[k] for k in PASSED_THROUGH if k in batch}}

    return predict
