"""SentencePiece tokenizer: a thin wrapper with fixed special ids, and a trainer for the built-in `scenes` text.

Ids: pad 0, unk 1, bos 2, eos 3, then the chat-template symbols (each one piece, matched anywhere in the text).
Byte fallback (default) makes any text encodable without unk, at the cost of 256 byte pieces.

Train one: `python -m vlmjax.data.tokenizer --data_dir DIR --dataset scenes/default --out PATH.model`, or on your
own captions (one per line) with `--text_file captions.txt` instead of `--data_dir`/`--dataset`.
"""
import argparse
import os
from typing import Iterable, List, Sequence

import sentencepiece as spm

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPECIAL_SYMBOLS = ("<|user|>", "<|assistant|>", "<|end|>", "<|image|>", "<|boi|>", "<|eoi|>")
TEXT_FIELDS = ("captions", "questions", "answers")


class Tokenizer:
    """encode(str) -> list[int], decode(ids) -> str; picklable (grain workers get a copy of the model bytes)."""

    def __init__(self, path: str):
        self.path = str(path)
        if not os.path.isfile(os.path.expanduser(self.path)):
            raise FileNotFoundError(
                f"SentencePiece model not found: {self.path!r}. Train one with `python -m vlmjax.data.tokenizer "
                f"--data_dir DIR --dataset scenes/default --out {self.path}`.")
        self._sp = spm.SentencePieceProcessor(model_file=os.path.expanduser(self.path))

    def __getstate__(self):
        return {"path": self.path, "proto": self._sp.serialized_model_proto()}

    def __setstate__(self, state):
        self.path = state["path"]
        self._sp = spm.SentencePieceProcessor(model_proto=state["proto"])

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def pad_id(self) -> int:
        return self._sp.pad_id()

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> List[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return self._sp.encode(text, add_bos=add_bos, add_eos=add_eos)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; pad, bos and eos ids decode to nothing."""
        return self._sp.decode([int(i) for i in ids])

    def piece_to_id(self, piece: str) -> int:
        """Id of a whole piece (unk_id if it is not one), e.g. piece_to_id('<|image|>')."""
        return self._sp.piece_to_id(piece)

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    def __repr__(self):
        return f"Tokenizer({self.path!r}, vocab_size={self.vocab_size})"


def train_from_texts(texts: Iterable[str], out: str, vocab_size: int = 512, *, byte_fallback: bool = True,
                     user_defined_symbols: Sequence[str] = SPECIAL_SYMBOLS) -> Tokenizer:
    """Trains a BPE model on `texts`, writes `out` (a .model path) and returns it loaded.

    BPE, not unigram: on this small, repetitive corpus unigram EM keeps sub-word fragments ('w', 'ha', 't' for
    "what") while BPE merges every frequent word into one piece. vocab_size counts the 256 byte pieces when
    byte_fallback is on; a corpus too small to fill it gets fewer pieces (`hard_vocab_limit=False`).
    """
    out = os.path.expanduser(str(out))
    prefix = out[:-len(".model")] if out.endswith(".model") else out
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=(t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in texts),
        model_prefix=prefix, vocab_size=vocab_size, model_type="bpe", character_coverage=1.0,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, user_defined_symbols=list(user_defined_symbols),
        byte_fallback=byte_fallback, hard_vocab_limit=False, input_sentence_size=1_000_000,
        shuffle_input_sentence=True, num_threads=2, minloglevel=2)
    return Tokenizer(prefix + ".model")


def dataset_texts(data_dir: str, dataset: str, split: str = "train", max_examples: int = 0) -> Iterable[str]:
    """Captions, questions and answers of a tfds dataset's split (read through tfds; never downloads)."""
    import tensorflow_datasets as tfds

    from vlmjax.data.sources.tfds import builder

    src = builder(dataset, data_dir).as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    n = len(src) if max_examples <= 0 else min(len(src), max_examples)
    for i in range(n):
        ex = src[i]
        for field in TEXT_FIELDS:
            yield from ex.get(field, [])


def main(argv=None):
    p = argparse.ArgumentParser(description="Train a SentencePiece model on a dataset's captions and QA text.")
    p.add_argument("--data_dir", help="tfds data_dir of --dataset")
    p.add_argument("--dataset", default="scenes/default")
    p.add_argument("--text_file", help="instead of a tfds dataset: a text file, one caption per line")
    p.add_argument("--out", required=True, help="output path, ending in .model")
    p.add_argument("--vocab_size", type=int, default=512)
    p.add_argument("--max_examples", type=int, default=0, help="0 = the whole train split")
    p.add_argument("--no_byte_fallback", action="store_true")
    args = p.parse_args(argv)
    if args.text_file:
        with open(args.text_file, encoding="utf-8") as f:
            texts = [line.strip() for line in f if line.strip()]
    elif args.data_dir:
        texts = dataset_texts(args.data_dir, args.dataset, max_examples=args.max_examples)
    else:
        p.error("give --data_dir (with --dataset) or --text_file")
    tok = train_from_texts(texts, args.out, args.vocab_size, byte_fallback=not args.no_byte_fallback)
    print(f"wrote {tok.path} (vocab_size={tok.vocab_size}); e.g. 'what color is the circle?' -> "
          f"{[tok.id_to_piece(i) for i in tok.encode('what color is the circle?')]}")


if __name__ == "__main__":
    main()
