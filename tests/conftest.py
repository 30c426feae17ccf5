"""Shared fixtures: the real data folder (from $TFAWD_DATA_DIR or ../shared/data) and a tiny
synthetic corpus for fast training tests."""
import os
import pathlib

from tfawd.core import runtime

runtime.configure_onednn()  # as main.py does, before TensorFlow is imported
runtime.configure_malloc()

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pipelines.lm_corpus import Corpus, load_corpus  # noqa: E402
from pipelines.vocab import Vocabulary, tokenize  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir():
    path = os.environ.get("TFAWD_DATA_DIR") or str(REPO.parent / "shared" / "data")
    if not os.path.isdir(os.path.join(path, "wikitext-2")):
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the real data: {path}/wikitext-2 is missing (TFAWD_DATA_DIR)")
        pytest.skip(f"no WikiText-2 under {path}; set TFAWD_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    """A fresh TFDS folder, so the tests prepare the dataset as a new machine does."""
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def wt2(data_dir, tfds_dir):
    return load_corpus("wikitext2", data_dir, tfds_dir)


def make_tiny_corpus(seed=0, n_train=3000, n_eval=400, vocab_size=30):
    """A synthetic corpus with learnable structure: each word mostly predicts the next."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(vocab_size)]

    def lines(n):
        out, cur = [], []
        w = 0
        for _ in range(n):
            w = (w + 1) % vocab_size if rng.random() < 0.9 else int(rng.integers(vocab_size))
            cur.append(words[w])
            if len(cur) == 12:
                out.append(" ".join(cur))
                cur = []
        return out

    splits = {"train": lines(n_train), "valid": lines(n_eval), "test": lines(n_eval)}
    tokens = {s: tokenize(ls) for s, ls in splits.items()}
    vocab = Vocabulary.from_tokens(tokens["train"])
    return Corpus("tiny", vocab, {s: vocab.encode(t) for s, t in tokens.items()})


@pytest.fixture
def tiny_corpus():
    return make_tiny_corpus()
