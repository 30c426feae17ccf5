"""Speech input: log-mel features, character vocabulary, SpecAugment, joined spoken digits,
manifests and seed-format arrays, bucketed batches."""
import os
import wave

import numpy as np
import pytest
import tensorflow as tf

from pipelines import speech_features as sf
from pipelines import speech_sources, spoken_digits
from pipelines.corpus_files import DataError


def write_wav(path, samples, rate=8000):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def test_frame_sizes_follow_the_sample_rate():
    assert sf.frame_sizes(8000) == (200, 80, 256)
    assert sf.frame_sizes(16000) == (400, 160, 512)


def test_log_mel_of_a_known_wav(tmp_path):
    """A 1 kHz tone, 0.5 s at 8 kHz: 50 frames of 40 bands, energy peaking in the band whose
    centre is nearest 1 kHz, the same in every full frame."""
    t = np.arange(4000) / 8000
    write_wav(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 1000 * t))
    audio, rate = tf.audio.decode_wav(tf.io.read_file(str(tmp_path / "tone.wav")))
    feats = sf.log_mel(audio[:, 0], int(rate)).numpy()
    assert feats.shape == (50, sf.N_MELS)
    mel_matrix = tf.signal.linear_to_mel_weight_matrix(40, 129, 8000, 20.0, 4000.0).numpy()
    band_at_1k = mel_matrix[int(1000 / 8000 * 256)].argmax()
    peaks = feats[:45].argmax(axis=1)
    assert (peaks == band_at_1k).all()
    assert np.ptp(feats[:45, band_at_1k]) < 0.1
    normed = sf.normalise(feats).numpy()
    np.testing.assert_allclose(normed.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(normed.std(0)[normed.std(0) > 0], 1, atol=1e-2)


def test_vocab_round_trip_and_unknown_characters():
    vocab = sf.CharVocab()
    ids = vocab.encode(tf.constant("seven three")).numpy()
    assert ids[-1] == vocab.eos_id and (ids[:-1] >= 3).all()
    assert vocab.decode(ids) == "seven three"
    assert vocab.decode([vocab.sos_id, 3, 4, vocab.eos_id, 5]) == "ab"
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside"):
        vocab.encode(tf.constant("Seven"))


@pytest.mark.parametrize("bands,widest", [(40, 6), (13, 2)], ids=["logmel", "cepstra"])
def test_spec_augment_masks_are_seeded_bands_and_spans(bands, widest):
    """Two band masks of up to 15% of the bands each (6 of 40 log-mels, 2 of 13 cepstra) and
    two frame spans of up to 5% of the frames, the same for the same seed."""
    feats = tf.ones([100, bands])
    a = sf.spec_augment(feats, tf.constant([1, 2], tf.int64)).numpy()
    b = sf.spec_augment(feats, tf.constant([1, 2], tf.int64)).numpy()
    c = sf.spec_augment(feats, tf.constant([3, 4], tf.int64)).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    zero_bands = (a == 0).all(axis=0)  # masked bands are zero in every frame
    zero_frames = (a == 0).all(axis=1)
    assert ((a == 0) == (zero_bands[None, :] | zero_frames[:, None])).all()
    assert zero_bands.sum() <= 2 * widest and zero_frames.sum() <= 2 * 5
    widths = [(sf.spec_augment(feats, tf.constant([s, 9], tf.int64)).numpy() == 0).all(0).sum()
              for s in range(60)]
    assert max(widths) > widest  # two masks together exceed one mask's widest (not all zero)


def _centres_hz(bands, edges):
    low, high = (1127 * np.log1p(e / 700) for e in edges)
    mels = low + (high - low) / (bands + 1) * np.arange(1, bands + 1)
    return 700 * np.expm1(mels / 1127)


@pytest.mark.parametrize("edges", [(20.0, 4000.0), (130.0, 6800.0)], ids=["fsdd", "an4"])
def test_vtlp_moves_each_band_to_its_scaled_frequency(edges):
    """f -> alpha f: band j takes the value found at f_j / alpha (in band units of the mel
    filterbank), so a spectral peak moves up for alpha > 1 and down for alpha < 1."""
    centres = _centres_hz(40, edges)
    np.testing.assert_allclose(sf.warp_sources(1.0, 40, edges), np.arange(40), atol=1e-3)
    for alpha in (0.9, 1.1):
        src = sf.warp_sources(alpha, 40, edges).numpy()
        inside = (src > 0) & (src < 39)  # bands whose source lies between two centres
        assert inside.sum() >= 30
        j = np.flatnonzero(inside)
        lo = np.floor(src[j]).astype(int)
        # the source frequency lies between the centres of the two bands it interpolates
        assert (centres[lo] <= centres[j] / alpha + 1e-3).all()
        assert (centres[j] / alpha <= centres[lo + 1] + 1e-3).all()
    peak = np.exp(-0.5 * ((np.arange(40) - 20) / 1.5) ** 2).astype(np.float32)
    feats = tf.constant(np.tile(peak, (5, 1)))
    for alpha, side in ((1.1, 1), (0.9, -1)):
        seed = next(s for s in ([a, b] for a in range(50) for b in range(50))
                    if (tf.random.stateless_uniform([], s, 0.9, 1.1).numpy() - 1) * side > 0.05)
        drawn = tf.random.stateless_uniform([], seed, 0.9, 1.1).numpy()
        out = sf.vtlp(feats, tf.constant(seed), edges, 0.1).numpy()
        moved = out[0].argmax()
        want = np.abs(centres - centres[20] * drawn).argmin()
        assert abs(moved - want) <= 1 and np.sign(moved - 20) == side, (alpha, drawn, moved)
        np.testing.assert_array_equal(out, out[:1].repeat(5, 0))  # every frame alike


def test_vtlp_is_seeded_bounded_and_off_at_zero():
    rng = np.random.default_rng(0)
    feats = tf.constant(rng.normal(size=(50, 40)), tf.float32)
    seed = tf.constant([3, 4], tf.int64)
    a, b = sf.vtlp(feats, seed, (20.0, 4000.0)), sf.vtlp(feats, seed, (20.0, 4000.0))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sf.vtlp(feats, tf.constant([5, 6], tf.int64), (20.0, 4000.0)))
    np.testing.assert_allclose(sf.vtlp(feats, seed, (20.0, 4000.0), 0.0), feats, atol=1e-4)
    # interpolation never leaves the range of the values it mixes
    out = sf.vtlp(feats, seed, (20.0, 4000.0)).numpy()
    assert (out.max(1) <= feats.numpy().max(1) + 1e-6).all()
    assert (out.min(1) >= feats.numpy().min(1) - 1e-6).all()


def test_batches_warp_and_mask_as_asked_and_the_masks_keep_their_seeds():
    """VTLP on top does not move SpecAugment's masks; warp alone leaves no zero band."""
    rng = np.random.default_rng(1)
    feats = [rng.normal(size=(60, 40)).astype(np.float32) + 3.0 for _ in range(3)]
    examples = tf.data.Dataset.from_generator(
        lambda: ({"features": f, "frames": np.int32(60), "labels": np.array([3, 2], np.int32),
                  "transcript": "a"} for f in feats),
        output_signature={"features": tf.TensorSpec([None, 40], tf.float32),
                          "frames": tf.TensorSpec([], tf.int32),
                          "labels": tf.TensorSpec([None], tf.int32),
                          "transcript": tf.TensorSpec([], tf.string)})

    def first(**kw):
        return np.concatenate([b["features"].numpy() for b in sf.batches(examples, 8, **kw)])

    plain = first()
    masked = first(augment_seed=7)
    warped = first(augment_seed=7, masks=False, warp=(0.1, (20.0, 4000.0)))
    both = first(augment_seed=7, warp=(0.1, (20.0, 4000.0)))
    assert not np.array_equal(warped, plain) and not (warped == 0).all(axis=1).any()
    np.testing.assert_array_equal(both == 0, masked == 0)  # the same masks
    np.testing.assert_array_equal(np.where(masked == 0, 0, warped), both)


def test_vtlp_needs_the_filterbank_of_the_features():
    from types import SimpleNamespace

    from pipelines import an4
    from tfawd.speech.data import band_edges
    cfg = lambda **kw: SimpleNamespace(**{"features": "logmel", **kw})  # noqa: E731
    assert band_edges(cfg(dataset="an4"), 0) == an4.BAND_EDGES_HZ
    assert band_edges(cfg(dataset="spoken_digits"), 8000) == (20.0, 4000.0)
    assert band_edges(cfg(dataset="npy"), 0) is None
    assert band_edges(cfg(dataset="an4", features="cepstra"), 0) is None  # no bands


def test_splits_follow_the_official_takes_and_hold_out_a_speaker(data_dir):
    recs = spoken_digits.list_recordings(data_dir)
    assert len(recs) == 3000
    test = spoken_digits.split_recordings(recs, "test", "theo")
    train = spoken_digits.split_recordings(recs, "train", "theo")
    held = spoken_digits.split_recordings(recs, "heldout", "theo")
    assert {r[2] for r in test} == set(range(5)) and min(r[2] for r in train) == 10
    assert len(held) == 500 and {r[1] for r in held} == {"theo"}
    assert "theo" not in {r[1] for r in train + test}
    with pytest.raises(ValueError, match="heldout_speaker"):
        spoken_digits.split_recordings(recs, "train", "nobody")


def test_joined_utterances_match_their_recordings_and_transcripts(data_dir):
    utts = spoken_digits.utterances(data_dir, "valid", 5, seed=3, heldout_speaker="theo")
    again = spoken_digits.utterances(data_dir, "valid", 5, seed=3, heldout_speaker="theo")
    root = spoken_digits.recordings_dir(data_dir)
    for (audio, text, parts), (audio2, _, _) in zip(utts, again):
        np.testing.assert_array_equal(audio, audio2)
        assert text == " ".join(spoken_digits.WORDS[d] for d, _, _ in parts)
        assert len({s for _, s, _ in parts}) == 1 and 1 <= len(parts) <= 7
        assert all(5 <= take <= 9 for _, _, take in parts)
        clips = [spoken_digits.read_wav(os.path.join(root, f"{d}_{s}_{k}.wav"))
                 for d, s, k in parts]
        np.testing.assert_array_equal(audio[:len(clips[0])], clips[0])
        np.testing.assert_array_equal(audio[len(audio) - len(clips[-1]):], clips[-1])
        gaps = len(audio) - sum(map(len, clips))
        assert 0.05 * 8000 * (len(clips) - 1) - 1 <= gaps <= 0.3 * 8000 * (len(clips) - 1) + 1
    other = spoken_digits.utterances(data_dir, "valid", 5, seed=4, heldout_speaker="theo")
    assert [u[1] for u in other] != [u[1] for u in utts]


def test_missing_recordings_name_the_flag(tmp_path):
    with pytest.raises(DataError, match="--data_dir"):
        spoken_digits.list_recordings(str(tmp_path))


def test_featurize_refuses_another_sample_rate():
    ex = {"audio": tf.zeros([1600]), "sample_rate": tf.constant(16000), "transcript": "one"}
    with pytest.raises(tf.errors.InvalidArgumentError, match="8000 Hz"):
        sf.featurize(8000, sf.CharVocab())(ex)


def test_bucketed_batches_pad_and_keep_every_utterance():
    vocab = sf.CharVocab()
    lengths = [30, 120, 160, 400, 90, 260, 35]
    examples = tf.data.Dataset.from_generator(
        lambda: ({"audio": np.random.default_rng(n).normal(size=n * 80).astype(np.float32),
                  "sample_rate": np.int32(8000), "transcript": "ab" * (n // 30)} for n in lengths),
        output_signature={"audio": tf.TensorSpec([None], tf.float32),
                          "sample_rate": tf.TensorSpec([], tf.int32),
                          "transcript": tf.TensorSpec([], tf.string)},
    ).map(sf.featurize(8000, vocab))
    seen = []
    for batch in sf.batches(examples, 4, shuffle_seed=0, augment_seed=1):
        frames = batch["frames"].numpy()
        assert batch["features"].shape[1] == frames.max()
        for f, feats, labels in zip(frames, batch["features"].numpy(), batch["labels"].numpy()):
            assert (feats[f:] == 0).all()
            assert labels[(labels != 0).sum() - 1] == vocab.eos_id
        seen += frames.tolist()
    assert sorted(seen) == sorted(lengths)


def test_manifest_reads_wavs_and_rejects_bad_lines(tmp_path):
    write_wav(tmp_path / "a.wav", np.zeros(800))
    (tmp_path / "ok.tsv").write_text("a.wav\tHello World\n\n")
    (ex,) = list(speech_sources.manifest_dataset(str(tmp_path / "ok.tsv")))
    assert ex["audio"].shape == (800,) and int(ex["sample_rate"]) == 8000
    assert ex["transcript"].numpy() == b"hello world"
    (tmp_path / "bad.tsv").write_text("a.wav\tfine\nmissing.wav\tx\n")
    with pytest.raises(DataError, match="bad.tsv:2: no such file"):
        speech_sources.read_manifest(str(tmp_path / "bad.tsv"))
    (tmp_path / "bad2.tsv").write_text("a.wav only\n")
    with pytest.raises(DataError, match=":1: expected"):
        speech_sources.read_manifest(str(tmp_path / "bad2.tsv"))


def test_seed_format_arrays(tmp_path):
    feats = np.empty(2, object)
    feats[0], feats[1] = np.ones((5, 40)), np.zeros((3, 40))
    np.save(tmp_path / "train.npy", feats, allow_pickle=True)
    np.save(tmp_path / "train_transcripts.npy", np.array([list("ab"), list("c d")], object),
            allow_pickle=True)
    ds = list(speech_sources.npy_dataset(str(tmp_path) + "/", "train"))
    assert ds[0]["features"].shape == (5, 40) and ds[1]["transcript"].numpy() == b"c d"
    ex = sf.featurize(8000, sf.CharVocab())(ds[0])
    assert ex["frames"] == 5
    feats[1] = np.zeros((3, 13))
    np.save(tmp_path / "train.npy", feats, allow_pickle=True)
    with pytest.raises(DataError, match=r"train.npy\[1\] has shape \(3, 13\)"):
        speech_sources.npy_dataset(str(tmp_path) + "/", "train")
