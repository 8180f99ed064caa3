"""SentencePiece tokenizer: round trips, special ids, chat symbols as single pieces, the scenes words, the CLI."""
import os
import pickle
import subprocess
import sys

import pytest

from vlmjax.data import scenes as S
from vlmjax.data.tokenizer import SPECIAL_SYMBOLS, Tokenizer, train_from_texts


def _texts(n=1500):
    out = []
    for seed in range(n):
        ex = S.make_example(seed, 32)
        out += ex["captions"] + ex["questions"] + ex["answers"]
    return out


@pytest.fixture(scope="module")
def corpus():
    return _texts()


@pytest.fixture(scope="module")
def tok(tmp_path_factory, corpus):
    return train_from_texts(corpus, str(tmp_path_factory.mktemp("tok") / "scenes.model"), vocab_size=512)


def test_special_ids(tok):
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert tok.vocab_size == 512
    ids = [tok.piece_to_id(s) for s in SPECIAL_SYMBOLS]
    assert len(set(ids)) == len(SPECIAL_SYMBOLS) and all(i > tok.eos_id and i < tok.vocab_size for i in ids)
    assert tok.piece_to_id("<|not_a_symbol|>") == tok.unk_id


def test_chat_symbols_are_single_pieces(tok):
    text = "<|user|><|boi|><|image|><|eoi|>what color is the circle?<|end|><|assistant|>red<|end|>"
    ids = tok.encode(text)
    for s in SPECIAL_SYMBOLS:
        assert ids.count(tok.piece_to_id(s)) == text.count(s), s
    assert tok.decode(ids) == text
    for s in SPECIAL_SYMBOLS:  # also inside words, without spaces around
        assert tok.piece_to_id(s) in tok.encode(f"ab{s}cd")


def test_round_trip_and_no_unk(tok, corpus):
    for t in corpus[::97] + ["Caption EN: Héllo wörld 123 — ok!", "answer en how many crosses are there?"]:
        ids = tok.encode(t)
        assert tok.unk_id not in ids, t  # byte fallback covers unseen characters
        assert tok.decode(ids) == t
    assert tok.encode(b"red circle") == tok.encode("red circle")


def test_decode_skips_pad_bos_eos(tok):
    ids = tok.encode("a small red circle")
    assert tok.decode([tok.bos_id] + ids + [tok.eos_id] + [tok.pad_id] * 5) == "a small red circle"
    assert tok.encode("red", add_bos=True, add_eos=True) == [tok.bos_id] + tok.encode("red") + [tok.eos_id]


def test_scenes_words_are_short(tok, corpus):
    words = set(S.COLORS) | set(S.SHAPES) | set(S.PLURALS.values()) | set(S.SIZES) | set(S.NUMBER_WORDS) | {
        "what", "color", "shape", "how", "many", "left", "right", "yes", "no", "object", "shapes", "there"}
    for w in sorted(words):
        assert len(tok.encode(w)) == 1, (w, [tok.id_to_piece(i) for i in tok.encode(w)])
    n_words = sum(len(t.split()) for t in corpus)
    n_ids = sum(len(tok.encode(t)) for t in corpus)
    assert n_ids < 1.3 * n_words  # nearly one piece per word (plus '?' and ',')


def test_pickle_and_missing_file(tok, tmp_path):
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode("three crosses") == tok.encode("three crosses")
    missing = str(tmp_path / "nope.model")
    with pytest.raises(FileNotFoundError, match="nope.model"):
        Tokenizer(missing)


def test_cli_trains_on_built_dataset(scenes_tiny_dir, tmp_path):
    out = str(tmp_path / "cli.model")
    subprocess.run([sys.executable, "-m", "vlmjax.data.tokenizer", "--data_dir", scenes_tiny_dir, "--dataset",
                    "scenes/tiny", "--out", out, "--max_examples", "800"], check=True, capture_output=True,
                   timeout=180)
    assert os.path.isfile(out)
    t = Tokenizer(out)
    assert t.pad_id == 0 and len(t.encode("<|image|>")) <= 2 and t.piece_to_id("<|image|>") != t.unk_id
    assert [t.id_to_piece(i) for i in t.encode("what color is the circle?")] == [
        "▁what", "▁color", "▁is", "▁the", "▁circle", "?"]
