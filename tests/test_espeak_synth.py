"""Synthesised-speech corpus: eSpeak NG synthesis, transcript normalisation, sentence selection,
the cached TFRecord build and the dataset read back from it."""
import json
import os

import espeakng_loader  # noqa: F401  (pinned in pyproject.toml: missing, the suite must fail)
import numpy as np
import pytest
import tensorflow as tf

from pipelines import espeak_synth as es
from pipelines.corpus_files import DataError

SENTENCE = "the quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def synth():
    return es.Synthesizer()


def rms(audio):
    return float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))


def test_synthesis_gives_speech_of_plausible_length(synth):
    audio, sample_rate = synth.synthesize(SENTENCE, rate=175)
    assert sample_rate == synth.sample_rate == 22050
    assert audio.dtype == np.int16 and audio.ndim == 1
    assert rms(audio) > 500  # full scale is 32768; silence is 0
    words = len(SENTENCE.split())
    assert 0.15 * words < len(audio) / sample_rate < 1.0 * words


def test_faster_rate_gives_shorter_audio(synth):
    slow, _ = synth.synthesize(SENTENCE, rate=140)
    fast, _ = synth.synthesize(SENTENCE, rate=220)
    assert len(fast) < 0.8 * len(slow)


def test_synthesis_is_deterministic_whatever_came_before(synth):
    first, _ = synth.synthesize(SENTENCE, "en+f3", rate=160, pitch=40)
    synth.synthesize("something else entirely", "en-us+m2", rate=200, pitch=60)
    again, _ = synth.synthesize(SENTENCE, "en+f3", rate=160, pitch=40)
    np.testing.assert_array_equal(first, again)


def test_different_voices_give_different_audio(synth):
    male, _ = synth.synthesize(SENTENCE, "en-us+m1")
    female, _ = synth.synthesize(SENTENCE, "en-us+f3")
    n = min(len(male), len(female))
    assert not np.array_equal(male[:n], female[:n])
    assert rms(male[:n].astype(np.int32) - female[:n]) > 0.5 * rms(male)


def test_empty_text_and_unknown_voices_are_rejected(synth):
    with pytest.raises(ValueError, match="empty text"):
        synth.synthesize("  ")
    with pytest.raises(ValueError, match=r"unknown eSpeak voice 'xx-nope'.*en-us.*\+f3"):
        synth.synthesize("hello", voice="xx-nope")
    with pytest.raises(ValueError, match="unknown eSpeak voice 'en\\+zz9'"):
        synth.synthesize("hello", voice="en+zz9")  # eSpeak alone would ignore the variant


def test_all_default_voices_exist_and_are_disjoint(synth):
    assert not set(es.TRAIN_VOICES) & set(es.TEST_VOICES)
    for voice in es.TRAIN_VOICES + es.TEST_VOICES:
        synth.synthesize("a", voice)


@pytest.mark.parametrize("raw, expected", [
    ("The State @-@ of @-@ the @-@ Art", "the state of the art"),
    ("It was 1 @,@ 000 km ( 3 @.@ 5 mi ) long .", "it was km mi long"),
    ("He said , \" Don 't ! \" — twice ; the game 's end", "he said don't twice the game's end"),
    ("The players ' union and ' quoted ' words", "the players union and quoted words"),
    ("Café   Müller   & Co.", "cafe muller co"),
    ("Children ’ s Book , ‘ Man ! ’ O 'Brien said", "children's book man o'brien said"),
])
def test_normalise_transcript(raw, expected):
    out = es.normalise_transcript(raw)
    assert out == expected
    assert set(out) <= set(es.CHARACTERS)


TOKENS = """ 
 = Cats = 
 
 The cat sat on the mat . It was a sunny day in 1990 . The dog 's bone was <unk> . Short one . 
 = = Habits = = 
 State @-@ of @-@ the @-@ art systems are very good . The cat sat on the mat . 
 A very long sentence with far too many words in it to be kept here at all . 
 Don 't stop believing now . 
"""


def test_select_sentences(tmp_path):
    path = tmp_path / "wiki.train.tokens"
    path.write_text(TOKENS, encoding="utf-8")
    expected = ["the cat sat on the mat", "state of the art systems are very good",
                "don't stop believing now"]
    assert es.select_sentences(path, seed=None) == expected
    assert es.select_sentences(path, seed=None, limit=2) == expected[:2]
    assert es.select_sentences(path, min_words=5, seed=None) == expected[:2]
    shuffled = es.select_sentences(path, seed=3)
    assert sorted(shuffled) == sorted(expected) and shuffled == es.select_sentences(path, seed=3)


WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()


@pytest.fixture
def wikitext(tmp_path):
    """A tiny WikiText folder: six three-word sentences per split, distinct across splits."""
    folder = tmp_path / "data" / "wikitext-2"
    folder.mkdir(parents=True)
    for region, split in zip(("north", "south", "west"), es.SPLITS):
        sentences = [f"{WORDS[i]} {WORDS[i + 6]} {region}" for i in range(6)]
        text = f" = {split} = \n" + " . ".join(s.capitalize() for s in sentences) + " . \n"
        (folder / f"wiki.{split}.tokens").write_text(text, encoding="utf-8")
    return str(tmp_path / "data")


def read_records(path):
    spec = {k: tf.io.FixedLenFeature([], tf.string) for k in ("transcript", "voice")}
    return [{k: v.numpy().decode() for k, v in tf.io.parse_single_example(r, spec).items()}
            for r in tf.data.TFRecordDataset(path)]


SIZES = {"train": 4, "valid": 2, "test": 2}


def test_build_corpus_holds_out_voices_and_is_cached(wikitext, tmp_path, monkeypatch):
    out = str(tmp_path / "speech")
    manifest = es.build_corpus(wikitext, out, sizes=SIZES)
    assert {s: v["utterances"] for s, v in manifest["splits"].items()} == SIZES
    assert all(v["seconds"] > 0.5 * v["utterances"] for v in manifest["splits"].values())
    assert manifest == json.loads((tmp_path / "speech" / "manifest.json").read_text())
    records = {s: read_records(os.path.join(out, f"{s}.tfrecord")) for s in es.SPLITS}
    for split, recs in records.items():
        source = os.path.join(wikitext, "wikitext-2", f"wiki.{split}.tokens")
        assert [r["transcript"] for r in recs] == es.select_sentences(source, limit=SIZES[split])
    train_voices = {r["voice"] for s in ("train", "valid") for r in records[s]}
    test_voices = {r["voice"] for r in records["test"]}
    assert train_voices <= set(es.TRAIN_VOICES) and test_voices <= set(es.TEST_VOICES)
    assert not train_voices & test_voices

    mtime = os.path.getmtime(os.path.join(out, "train.tfrecord"))
    monkeypatch.setattr(es.Synthesizer, "synthesize", lambda *a, **k: pytest.fail("re-synthesised"))
    assert es.build_corpus(wikitext, out, sizes=SIZES) == manifest
    assert os.path.getmtime(os.path.join(out, "train.tfrecord")) == mtime
    assert not [f for f in os.listdir(out) if f.endswith(".partial")]


def test_build_corpus_rebuilds_when_parameters_change(wikitext, tmp_path):
    out = str(tmp_path / "speech")
    es.build_corpus(wikitext, out, sizes=SIZES)
    manifest = es.build_corpus(wikitext, out, sizes={"train": 3, "valid": 1, "test": 1})
    assert manifest["splits"]["train"]["utterances"] == 3
    assert len(read_records(os.path.join(out, "train.tfrecord"))) == 3


def test_load_split_structure(wikitext, tmp_path):
    out = str(tmp_path / "speech")
    es.build_corpus(wikitext, out, sizes=SIZES)
    ds = es.load_split(out, "valid")
    assert ds.element_spec == {
        "audio": tf.TensorSpec([None], tf.float32),
        "sample_rate": tf.TensorSpec([], tf.int32),
        "transcript": tf.TensorSpec([], tf.string)}
    elements = list(ds)
    assert len(elements) == 2
    for e in elements:
        audio = e["audio"].numpy()
        assert 0 < np.abs(audio).max() <= 1.0 and len(audio) > 22050 * 0.5
        assert int(e["sample_rate"]) == 22050
        assert set(e["transcript"].numpy().decode()) <= set(es.CHARACTERS)


def test_missing_files_name_the_fix(tmp_path):
    with pytest.raises(DataError, match="--data_dir"):
        es.build_corpus(str(tmp_path / "nowhere"), str(tmp_path / "out"), sizes=SIZES)
    with pytest.raises(DataError, match="build_corpus"):
        es.load_split(str(tmp_path / "out"), "train")
