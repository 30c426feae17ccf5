"""Tokenisation and vocabulary, exactly as the AWD-LSTM reference code (Merity et al. 2017).

Each line is split on whitespace and `<eos>` is appended, so an empty line is one `<eos>`.
Word ids follow first appearance in the training split (or frequency, for an adaptive
softmax). Words outside the vocabulary map to `<unk>` (WikiText-2 and PTB already contain
it, so their valid/test splits have none left over).
"""
import collections

import numpy as np

EOS = "<eos>"
UNK = "<unk>"


def tokenize(lines):
    """Flat list of tokens: every line's whitespace-split words followed by `<eos>`."""
    out = []
    for line in lines:
        out.extend(line.split())
        out.append(EOS)
    return out


class Vocabulary:
    """A word <-> id mapping with `<eos>` and `<unk>`, saved as one word per line."""

    def __init__(self, words):
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise ValueError("vocabulary has duplicate words")
        for special in (EOS, UNK):
            if special not in self.index:
                self.index[special] = len(self.words)
                self.words.append(special)

    @classmethod
    def from_tokens(cls, tokens, order: str = "first"):
        """Words of `tokens` in order of first appearance (the reference's ids), or with
        `order="frequency"` most frequent first (ties by first appearance): what frequency
        clusters (an adaptive softmax) need."""
        if order == "frequency":
            counts = collections.Counter(tokens)
            return cls(sorted(counts, key=lambda w: -counts[w]))  # stable: first appearance
        if order != "first":
            raise ValueError(f"order must be 'first' or 'frequency', got {order!r}")
        return cls(dict.fromkeys(tokens))  # dict keeps first-appearance order

    def __len__(self):
        return len(self.words)

    @property
    def unk_id(self) -> int:
        return self.index[UNK]

    def encode(self, tokens) -> np.ndarray:
        get, unk = self.index.get, self.unk_id
        return np.fromiter((get(t, unk) for t in tokens), dtype=np.int32, count=len(tokens))

    def decode(self, ids):
        return [self.words[int(i)] for i in ids]

    def count_unknown(self, tokens) -> int:
        """Tokens that `encode` maps to `<unk>` without being `<unk>` themselves."""
        return sum(1 for t in tokens if t not in self.index)

    def save(self, path):
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(self.words) + "\n")

    @classmethod
    def load(cls, path):
        with open(path, encoding="utf-8") as f:
            return cls(line.rstrip("\n") for line in f)
