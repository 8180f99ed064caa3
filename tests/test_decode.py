"""KV-cache decoding: cache == full recompute, mixed lengths == one at a time, samplers, beam search, CFG."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_lm import _init
from vlmjax.models.lm import DecoderLM
from vlmjax.models.masks import make_attn_mask, positions_from_mask
from vlmjax.tasks.decode import _decode_jit, beam_search, decode, embed_tokens, sample_logits, sample_loop

CFG = dict(vocab_size=64, width=32, depth=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64)
P, T = 7, 32
LENGTHS = np.array([7, 4, 7])


def _params(model, seed=0):
    """Host-filled params (no `init` compile); kernels 3x the fan-in scale so greedy text is not one repeated token."""
    return _init(model, seed)[1]


@pytest.fixture(scope="module")
def lm():
    model = DecoderLM(**CFG, scan_layers=True)  # the stacked cache layout (test_lm covers the per-layer list)
    return model, _params(model)


@pytest.fixture(scope="module")
def prompts(lm):
    model, variables = lm
    tokens = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (3, P), 1, CFG["vocab_size"]))
    input_mask = (np.arange(P)[None] < LENGTHS[:, None]).astype(np.int32)  # right-padded
    tokens = tokens * input_mask
    return tokens, embed_tokens(model, variables, tokens), input_mask, np.zeros((3, P), np.int32)


@pytest.fixture(scope="module")
def greedy(lm, prompts):
    model, variables = lm
    _, x, input_mask, mask_ar = prompts
    tokens, logits = decode(model, variables, x, input_mask, mask_ar, max_new_tokens=T, return_logits=True)
    return np.asarray(tokens), np.asarray(logits)


def test_kv_cache_logits_equal_full_recompute(lm, prompts, greedy):
    """Every step's cached logits equal a full forward over prefix + tokens generated so far (one causal pass
    gives all steps at once: position n-1+t only sees what step t saw)."""
    model, variables = lm
    prompt_tokens, _, _, _ = prompts
    gen, step_logits = greedy
    length = P + T - 1
    seq = np.zeros((3, length), np.int32)
    input_mask = np.zeros((3, length), np.int32)
    mask_ar = np.zeros((3, length), np.int32)
    for b, n in enumerate(LENGTHS):
        seq[b, :n], seq[b, n:n + T - 1] = prompt_tokens[b, :n], gen[b, :T - 1]
        input_mask[b, :n + T - 1] = 1
        mask_ar[b, n:n + T - 1] = 1

    @jax.jit
    def full(variables, seq, input_mask, mask_ar):
        x = model.apply(variables, seq, method="embed")
        return model.apply(variables, x, make_attn_mask(input_mask, mask_ar), positions_from_mask(input_mask))[0]

    logits = np.asarray(full(variables, seq, input_mask, mask_ar))
    for b, n in enumerate(LENGTHS):
        # float32: a 1-token step and a 38-token pass accumulate in different orders; 1e-5 of the logit scale.
        want = logits[b, n - 1:n - 1 + T]
        assert np.abs(step_logits[b] - want).max() <= 1e-5 * np.abs(want).max()
    np.testing.assert_array_equal(gen, step_logits.argmax(-1))  # greedy picked the argmax of those logits
    assert len(np.unique(gen)) > 8  # the test model writes varied text, not one repeated token


def test_mixed_lengths_decode_like_one_at_a_time(lm, prompts, greedy):
    model, variables = lm
    _, x, input_mask, mask_ar = prompts
    gen, step_logits = greedy
    for b, n in enumerate(LENGTHS):
        alone, alone_logits = decode(model, variables, x[b:b + 1, :n], input_mask[b:b + 1, :n],
                                     mask_ar[b:b + 1, :n], max_new_tokens=T, return_logits=True)
        np.testing.assert_array_equal(np.asarray(alone)[0], gen[b])
        assert np.abs(np.asarray(alone_logits)[0] - step_logits[b]).max() <= 1e-5 * np.abs(step_logits[b]).max()


def test_same_shapes_do_not_recompile(lm, prompts, greedy):
    model, variables = lm
    _, x, input_mask, mask_ar = prompts
    before = _decode_jit._cache_size()
    again, _ = decode(model, variables, x + 0.0, input_mask, mask_ar, max_new_tokens=T, return_logits=True,
                      temperature=0.5, rng=jax.random.PRNGKey(7))
    assert _decode_jit._cache_size() == before
    np.testing.assert_array_equal(np.asarray(again), greedy[0])


def test_stop_tokens_end_each_row_and_pad(lm, prompts, greedy):
    model, variables = lm
    _, x, input_mask, mask_ar = prompts
    gen = greedy[0]
    stops = (int(gen[0, 5]), int(gen[1, 9]))
    before = _decode_jit._cache_size()
    out, _ = decode(model, variables, x, input_mask, mask_ar, max_new_tokens=T, stop_tokens=stops, pad_token=0,
                    return_logits=True)
    out = np.asarray(out)
    assert _decode_jit._cache_size() == before  # stop tokens are traced: no recompile
    for b in range(3):
        hits = np.flatnonzero(np.isin(gen[b], stops))
        end = hits[0] + 1 if len(hits) else T
        np.testing.assert_array_equal(out[b, :end], gen[b, :end])  # kept up to and including the first stop
        np.testing.assert_array_equal(out[b, end:], 0)
    assert np.flatnonzero(np.isin(gen[0], stops))[0] <= 5 and np.flatnonzero(np.isin(gen[1], stops))[0] <= 9


def test_beam_width_one_is_greedy(lm, prompts, greedy):
    model, variables = lm
    _, x, input_mask, mask_ar = prompts
    out = decode(model, variables, x, input_mask, mask_ar, max_new_tokens=T, sampler="beam", beam_size=1)
    np.testing.assert_array_equal(np.asarray(out), greedy[0])


def test_constrained_nucleus_sampling_stays_in_allowed_range(lm, prompts):
    model, variables = lm
    _, x, input_mask, mask_ar = prompts
    allowed = np.arange(CFG["vocab_size"]) >= 40  # e.g. the image-token range
    out = np.asarray(decode(model, variables, x, input_mask, mask_ar, max_new_tokens=T, sampler="top_p", top_p=0.9,
                            temperature=1.5, logits_mask=allowed, rng=jax.random.PRNGKey(3)))
    assert out.min() >= 40 and len(np.unique(out)) > 3


def test_classifier_free_guidance(lm, prompts, greedy):
    model, variables = lm
    tokens, x, input_mask, mask_ar = prompts
    null_mask = (np.arange(P)[None] < np.array([[2], [1], [3]])).astype(np.int32)
    null_x = embed_tokens(model, variables, np.roll(tokens, 1, axis=0) * null_mask)
    uncond, uncond_logits = decode(model, variables, null_x, null_mask, mask_ar, max_new_tokens=T,
                                   return_logits=True)
    run = lambda s: decode(model, variables, x, input_mask, mask_ar, max_new_tokens=T, return_logits=True,  # noqa: E731
                           cfg_scale=s, cfg_null_prefix=(null_x, null_mask, mask_ar))
    np.testing.assert_array_equal(np.asarray(run(1.0)[0]), greedy[0])  # scale 1 = conditional model
    np.testing.assert_array_equal(np.asarray(run(0.0)[0]), np.asarray(uncond))  # scale 0 = null prompt model
    _, guided = run(3.0)
    want = uncond_logits[:, 0] + 3.0 * (greedy[1][:, 0] - uncond_logits[:, 0])
    np.testing.assert_allclose(np.asarray(guided)[:, 0], want, atol=1e-4)


# -- samplers and beam search on known distributions ----------------------------------------------------------------
def test_top_k_and_top_p_support_over_many_draws():
    probs = np.array([0.02, 0.30, 0.05, 0.22, 0.16, 0.01, 0.10, 0.14])
    logits = jnp.broadcast_to(jnp.log(probs), (20000, 8))
    key = jax.random.PRNGKey(0)

    def check(draws, support):
        counts = np.bincount(np.asarray(draws), minlength=8) / len(draws)
        assert set(np.flatnonzero(counts)) == set(support)
        want = np.zeros(8)
        want[support] = probs[support] / probs[support].sum()
        np.testing.assert_allclose(counts, want, atol=0.015)

    check(sample_logits(logits, key, "top_k", top_k=3), [1, 3, 4])
    # sorted: .30 .22 .16 .14 ...: mass before .16 is .52 < .6, before .14 is .68 -> keep {1, 3, 4}
    check(sample_logits(logits, key, "top_p", top_p=0.6), [1, 3, 4])
    check(sample_logits(logits, key, "top_p", top_p=0.7), [1, 3, 4, 7])
    check(sample_logits(logits, key, "temperature"), list(range(8)))
    assert set(np.unique(np.asarray(sample_logits(logits, key, "top_p", top_p=0.1)))) == {1}


# A Markov "model": next-token distribution depends on the last token only. Tokens: 0 pad, 1 A, 2 B, 3-5 C-E.
# Greedy takes A (0.55) and then faces a flat 1/3 split; B (0.45) is followed by C with 0.95.
_TABLE = np.full((6, 6), 1e-6)
_TABLE[1, 3:6] = [0.34, 0.33, 0.33]
_TABLE[2, 3] = 0.95
_TABLE[3:, 1] = 1.0
_LOGP = np.log(_TABLE / _TABLE.sum(1, keepdims=True))
_FIRST = np.log(np.array([[1e-6, 0.55, 0.45, 1e-6, 1e-6, 1e-6]]))


def _toy_step(state, tokens):
    return jnp.asarray(_LOGP, jnp.float32)[tokens], state


def _score(seq):
    prev, total = None, 0.0
    for t in seq:
        total += (_FIRST[0] - np.log(np.exp(_FIRST[0]).sum()))[t] if prev is None else _LOGP[prev, t]
        prev = t
    return total


def test_beam_search_beats_greedy_on_constructed_case():
    first = jnp.asarray(_FIRST, jnp.float32)
    greedy = np.asarray(jax.jit(lambda f: sample_loop(
        _toy_step, jnp.zeros(1), f, max_new_tokens=2, choose=lambda lg, k: jnp.argmax(lg, -1).astype(jnp.int32)))(
        first))[0]
    beam, score = jax.jit(lambda f: beam_search(_toy_step, lambda s, rows: s, jnp.zeros(1), f, beam_size=2,
                                                max_new_tokens=2))(first)
    beam = np.asarray(beam)[0]
    np.testing.assert_array_equal(greedy, [1, 3])
    np.testing.assert_array_equal(beam, [2, 3])
    assert _score(beam) > _score(greedy) + 0.5
    np.testing.assert_allclose(float(score[0]), _score(beam), rtol=1e-4)


def test_beam_search_with_the_kv_cache_equals_a_full_recompute_beam_search(lm, prompts, greedy):
    """Beam 3 on the real LM and its cache (beams reorder the cache rows: take_cache_rows) against the same search
    written over full forward passes without a cache: the same best sequence, which scores above greedy."""
    model, variables = lm
    prompt_tokens, x, input_mask, mask_ar = prompts
    k, steps, length = 3, 5, P + 5
    got = np.asarray(decode(model, variables, x, input_mask, mask_ar, max_new_tokens=steps, sampler="beam",
                            beam_size=k))

    @jax.jit
    def next_logp(seq, input_mask, mask_ar, last):
        h = model.apply(variables, seq, method="embed")
        logits = model.apply(variables, h, make_attn_mask(input_mask, mask_ar), positions_from_mask(input_mask))[0]
        return jax.nn.log_softmax(jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0], axis=-1)

    def logp_after(b, seqs):
        """log p(next token | prompt b + each generated seq), one full causal pass per seq."""
        n = LENGTHS[b]
        seq, im, ar = (np.zeros((len(seqs), length), np.int32) for _ in range(3))
        for i, s in enumerate(seqs):
            seq[i, :n], seq[i, n:n + len(s)] = prompt_tokens[b, :n], s
            im[i, :n + len(s)], ar[i, n:n + len(s)] = 1, 1
        return np.asarray(next_logp(seq, im, ar, np.full(len(seqs), n + len(seqs[0]) - 1)), np.float64)

    improved = 0
    for b in range(len(LENGTHS)):
        beams = [((), 0.0)]
        for _ in range(steps):
            logp = logp_after(b, [s for s, _ in beams])
            cands = [(s + (v,), score + logp[i, v]) for i, (s, score) in enumerate(beams) for v in range(logp.shape[1])]
            beams = sorted(cands, key=lambda c: -c[1])[:k]
        best, best_score = beams[0]
        np.testing.assert_array_equal(got[b], best)
        greedy_score = sum(logp_after(b, [tuple(greedy[0][b, :t])])[0, greedy[0][b, t]] for t in range(steps))
        assert best_score >= greedy_score - 1e-4
        improved += best_score > greedy_score + 1e-3
    assert improved >= 1  # on some row the beams overtook greedy: the cache rows were reordered for real
