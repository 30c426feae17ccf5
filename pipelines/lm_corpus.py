"""Word-level language-modelling corpora (WikiText-2, PTB) as a TFDS dataset and token ids.

`LmCorpus` is a `tfds.core.GeneratorBasedBuilder` whose examples are the lines of the token
files, in file order (shuffling disabled). `load_corpus` prepares it once, tokenises the lines
exactly as the AWD-LSTM reference code does (whitespace split, then `<eos>` at every line end,
empty lines included) and maps them to ids with a vocabulary built from the training split.
"""
import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from pipelines import corpus_files
from pipelines.vocab import Vocabulary, tokenize

TFDS_SPLITS = {"train": "train", "valid": "validation", "test": "test"}


class LmCorpus(tfds.core.GeneratorBasedBuilder):
    """Lines of a word-level LM corpus read from a data folder on any filesystem (or fetched
    from its official archive)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Lines of the tokenised files, in order."}
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n) for n in corpus_files.CORPORA]

    def __init__(self, *, source_dir: str | None = None, **kwargs):
        self._source_dir = source_dir
        super().__init__(**kwargs)

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
            disable_shuffling=True,
            homepage="https://arxiv.org/abs/1708.02182",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # corpus_files fails fast offline; TFDS's downloader would retry for minutes
        paths = corpus_files.corpus_files(self.builder_config.name, self._source_dir)
        return {TFDS_SPLITS[s]: self._generate_examples(p) for s, p in paths.items()}

    def _generate_examples(self, path):
        # Text mode and line iteration, as the reference code reads the files.
        with corpus_files.open_data(path) as f:
            for i, line in enumerate(f):
                yield i, {"text": line.rstrip("\n")}


@dataclasses.dataclass
class Corpus:
    """Token ids of each split (int32, 1-D) and the vocabulary that produced them."""
    name: str
    vocab: Vocabulary
    ids: dict  # split -> np.ndarray[int32]

    def word_counts(self, split: str = "train") -> np.ndarray:
        """How often each vocabulary id occurs in `split` (length len(vocab), zeros kept)."""
        return np.bincount(self.ids[split], minlength=len(self.vocab))


def read_lines(name: str, split: str, data_dir: str | None = None, tfds_dir: str | None = None):
    """Lines of one split, through the TFDS builder (prepared on first use)."""
    builder = LmCorpus(config=name, source_dir=data_dir,
                       data_dir=tfds_dir or str(corpus_files.default_cache_dir() / "tfds"))
    tfds.disable_progress_bar()
    builder.download_and_prepare()  # a no-op once prepared
    ds = builder.as_dataset(split=TFDS_SPLITS[split], shuffle_files=False)
    return [ex["text"].decode("utf-8") for ex in tfds.as_numpy(ds)]


def load_corpus(name: str, data_dir: str | None = None, tfds_dir: str | None = None,
                vocab: Vocabulary | None = None, order: str = "first") -> Corpus:
    """Tokenised splits of corpus `name`; the vocabulary comes from train unless given, its
    ids in `order` (`Vocabulary.from_tokens`)."""
    corpus_files.corpus_files(name, data_dir)  # verify the source even when TFDS is prepared
    tokens = {s: tokenize(read_lines(name, s, data_dir, tfds_dir)) for s in TFDS_SPLITS}
    vocab = vocab or Vocabulary.from_tokens(tokens["train"], order)
    ids = {s: vocab.encode(t) for s, t in tokens.items()}
    for s, t in tokens.items():
        logging.info("%s %s: %d tokens, %d mapped to <unk>", name, s, len(t),
                     vocab.count_unknown(t))
    return Corpus(name=name, vocab=vocab, ids=ids)

