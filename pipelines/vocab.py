"""Tokenisation and vocabulary, exactly as the AWD-LSTM reference code (Merity et al. 2017).

Each line is split on whitespace and `<eos>` is appended, so an empty line is one `<eos>`.
Word ids follow first appearance in the training split (or frequency, for an adaptive
softmax). Words outside the vocabulary map to `<unk>` (WikiText-2 and PTB already contain
it, so their valid/test splits have none left over).
"""
import collections
import os

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

    def text(self) -> str:
        """The file `save` writes: one word a line."""
        return "\n".join(self.words) + "\n"

    def save(self, path):
        """One word a line, written to a temporary name and renamed (never half a file)."""
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(self.text())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path):
        """The vocabulary `save` wrote; `DataError` naming the file when it is missing, not
        UTF-8 text, empty, or has blank or repeated lines (a damaged copy)."""
        from pipelines.corpus_files import DataError, open_data
        fix = "restore it from a copy of the run folder (it maps the model's ids to words)"
        try:  # a run folder on any filesystem (gs://, ram://, local)
            with open_data(path) as f:
                words = [line.rstrip("\n") for line in f]
        except FileNotFoundError:
            raise DataError(f"{path} is missing; {fix}") from None
        except UnicodeDecodeError:
            raise DataError(f"{path} is damaged (not UTF-8 text); {fix}") from None
        if not words or any(not w or " " in w for w in words):
            raise DataError(f"{path} is damaged (empty, or a blank line or a space inside a "
                            f"word); {fix}")
        try:
            return cls(words)
        except ValueError:
            raise DataError(f"{path} is damaged (a word listed twice); {fix}") from None
