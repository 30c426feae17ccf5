"""Tokenisation and vocabulary: the reference code's rules, on small and real data."""
import numpy as np

from pipelines.vocab import EOS, UNK, Vocabulary, tokenize


def test_tokenize_appends_eos_to_every_line_including_empty_ones():
    assert tokenize([" = Title = ", "", "a  b\tc"]) == [
        "=", "Title", "=", EOS, EOS, "a", "b", "c", EOS]


def test_ids_follow_first_appearance_and_unknown_words_map_to_unk():
    vocab = Vocabulary.from_tokens(tokenize(["b a b", "c"]))
    assert vocab.words[:4] == ["b", "a", EOS, "c"]
    assert vocab.words[-1] == UNK  # added because the text had none
    ids = vocab.encode(["a", "zzz", "c"])
    assert ids.dtype == np.int32
    assert vocab.decode(ids) == ["a", UNK, "c"]
    assert vocab.count_unknown(["a", "zzz", UNK]) == 1


def test_save_load_round_trip(tmp_path):
    vocab = Vocabulary.from_tokens(tokenize(["x y", "émoji ☃ z"]))
    vocab.save(tmp_path / "vocab.txt")
    assert Vocabulary.load(tmp_path / "vocab.txt").words == vocab.words


def test_wikitext2_exact_counts(wt2):
    """The numbers the AWD-LSTM reference code gets on WikiText-2."""
    assert len(wt2.vocab) == 33278
    assert {s: len(v) for s, v in wt2.ids.items()} == {"train": 2088628, "valid": 217646,
                                                         "test": 245569}
    # The file starts with a blank line, then " = Valkyria Chronicles III = ".
    assert wt2.vocab.decode(wt2.ids["train"][:7]) == [EOS, "=", "Valkyria", "Chronicles", "III",
                                                      "=", EOS]


def test_word_counts_cover_every_id_and_sum_to_the_split_length(wt2):
    counts = wt2.word_counts()
    assert counts.shape == (len(wt2.vocab),) and counts.sum() == len(wt2.ids["train"])
    train = wt2.ids["train"]
    assert counts[train[2]] == (train == train[2]).sum()  # "Valkyria"
    valid = wt2.word_counts("valid")  # words seen only in train keep a zero count
    assert valid.shape == counts.shape and valid.sum() == len(wt2.ids["valid"])
    assert (valid == 0).any()


def test_ptb_through_the_same_code_path(data_dir, tfds_dir):
    from pipelines.lm_corpus import load_corpus
    ptb = load_corpus("ptb", data_dir, tfds_dir)
    assert len(ptb.vocab) == 10000
    assert len(ptb.ids["train"]) == 929589
