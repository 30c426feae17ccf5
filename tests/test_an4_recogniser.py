"""The recogniser on AN4 (issue 29): its splits through the speech data path, and an export that
takes AN4's own features (Sphinx cepstra) as well as log-mels and normalises them with the
statistics saved in the model."""
import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipelines import an4
from pipelines.speech_features import CharVocab
from tfawd.speech import las
from tfawd.speech.config import SpeechConfig
from tfawd.speech.data import featurized
from tfawd.speech.export import export_speech_model


@pytest.fixture(scope="module")
def an4_data(data_dir):
    cfg = SpeechConfig(data_dir=data_dir, dataset="an4", feature_norm="global")
    return cfg, featurized(cfg, CharVocab())


def test_an4_splits_come_through_the_speech_data_path(an4_data):
    """846 / 102 / 130 utterances; globally normalised train frames have zero mean and unit
    std per band; the validation utterances (8 training speakers) do not move with --seed."""
    cfg, (data, rate, stats) = an4_data
    counts = {s: sum(1 for _ in d) for s, d in data.items()}
    assert counts == {"train": 846, "valid": 102, "test": 130} and rate == 0
    frames = np.concatenate([ex["features"] for ex in data["train"].as_numpy_iterator()])
    assert frames.shape[1] == 40
    np.testing.assert_allclose(frames.mean(0), 0, atol=1e-3)
    np.testing.assert_allclose(frames.std(0), 1, atol=1e-3)
    other = featurized(dataclasses.replace(cfg, seed=7, feature_norm="utterance"), CharVocab())
    texts = lambda d: [ex["transcript"].decode() for ex in d.as_numpy_iterator()]  # noqa: E731
    assert texts(other[0]["valid"]) == texts(data["valid"])


def test_cepstra_come_through_the_same_path_as_13_bands(an4_data):
    """--features=cepstra: AN4's 13 stored cepstra per frame, normalised by their own training
    statistics, padded into [B, T, 13] batches (SpecAugment masks scaled to 13 bands)."""
    from pipelines import speech_features
    cfg, (logmel, _, _) = an4_data
    data, _, (mean, std) = featurized(dataclasses.replace(cfg, features="cepstra"), CharVocab())
    assert mean.shape == std.shape == (13,)
    first = next(data["valid"].as_numpy_iterator())
    assert first["features"].shape[1] == 13
    assert first["transcript"] == next(logmel["valid"].as_numpy_iterator())["transcript"]
    raw = an4.load_features(an4.list_utterances(cfg.data_dir, "valid")[:1], "cepstra")[0]
    np.testing.assert_allclose(first["features"], (raw - mean) / std, atol=1e-4)
    batch = next(iter(speech_features.batches(data["train"], 8, shuffle_seed=1, augment_seed=1)))
    assert batch["features"].shape[-1] == 13


@pytest.mark.parametrize("features", ["logmel", "cepstra"])
def test_the_export_transcribes_an4_cepstra_as_their_log_mels(tmp_path, features):
    """The export takes either form and turns it into the one the model was trained on
    (`--features`): the same transcripts and scores for cepstra and their log-mels, equal to
    decoding the model's own form directly."""
    keras.utils.set_random_seed(2)
    vocab = CharVocab()
    dim = {"logmel": 40, "cepstra": 13}[features]
    model = las.ListenAttendSpell(len(vocab), listener_units=16, speller_units=24,
                                  attention_dim=12, embed_dim=8, frame_stack=3,
                                  max_chars_per_frame=0.2, feature_norm="global",
                                  attention="location", feature_dim=dim, features=features)
    model.teacher_forced(tf.zeros([1, 3, dim]), tf.constant([3]), tf.constant([[2]]))
    rng = np.random.default_rng(0)
    model.set_feature_stats(rng.normal(size=dim).astype(np.float32),
                            rng.uniform(0.5, 2, dim).astype(np.float32))
    path = export_speech_model(model, vocab, 16000, 30, str(tmp_path), "an4")
    served = tf.saved_model.load(path).signatures["transcribe_features"]

    lengths = np.array([40, 23], np.int32)
    cepstra = rng.normal(size=(2, 40, 13)).astype(np.float32) * 3
    cepstra[1, 23:] = 0
    logmel = np.stack([an4.to_logmel(c) for c in cepstra])
    by_cepstra = served(features=tf.constant(cepstra), lengths=tf.constant(lengths))
    by_logmel = served(features=tf.constant(logmel), lengths=tf.constant(lengths))
    assert by_cepstra["transcripts"].numpy().tolist() == by_logmel["transcripts"].numpy().tolist()
    np.testing.assert_allclose(by_cepstra["scores"], by_logmel["scores"], atol=1e-4)
    own = logmel if features == "logmel" else cepstra
    tokens, scores, _ = model.greedy(model.normalise(tf.constant(own), lengths),
                                     tf.constant(lengths), 30)
    assert [t.decode() for t in by_logmel["transcripts"].numpy()] == [
        vocab.decode(t) for t in tokens.numpy()]
    np.testing.assert_allclose(by_logmel["scores"], scores, atol=1e-4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="13 Sphinx cepstra"):
        served(features=tf.zeros([1, 5, 12]), lengths=tf.constant([5]))
