"""The caption head's word-level vocabulary, built from the training captions.

A word vocabulary keeps the caption head's softmax small (tens to hundreds of words for the
shapes world) where a 30k sub-word vocabulary would dominate the tokenizer's compute on CPU.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class CaptionVocab:
    def __init__(self, tokens: list[str]):
        if tokens[: len(SPECIALS)] != SPECIALS:
            raise ValueError(f"a caption vocabulary must start with {SPECIALS}")
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def build(cls, texts: Iterable[str], max_size: int) -> "CaptionVocab":
        counts = Counter(w for t in texts for w in words(t))
        # Most frequent first, ties alphabetical: the same captions always give the same ids.
        ranked = sorted(counts, key=lambda w: (-counts[w], w))
        return cls(SPECIALS + ranked[: max(0, max_size - len(SPECIALS))])

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str, max_length: int) -> list[int]:
        """<bos> words <eos>, truncated to max_length (the <eos> is kept)."""
        ids = [self.index.get(w, UNK) for w in words(text)][: max_length - 2]
        return [BOS, *ids, EOS]

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            if i == EOS:
                break
            if i in (PAD, BOS):
                continue
            out.append(self.tokens[i] if 0 <= i < len(self.tokens) else SPECIALS[UNK])
        return re.sub(r" ([,.?!])", r"\1", " ".join(out))
