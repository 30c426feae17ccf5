"""Multi-digit utterances from the Free Spoken Digit Dataset (TFDS `spoken_digit`; issue 6).

FSDD holds 3,000 real recordings, `{digit}_{speaker}_{index}.wav` (8 kHz mono, 6 speakers,
50 takes of each digit per speaker). An utterance here joins 1-7 recordings of one speaker
with short random pauses; its transcript is the digits' words, e.g. `seven three nine`.

Splits follow the dataset's official one: takes 0-4 are test, 5-9 are our validation, 10-49
train. `heldout_speaker` removes one speaker from train/valid/test altogether and gives that
speaker's 500 recordings to a fourth split, `heldout`, to measure speaker generalisation.
Utterances are a deterministic function of (seed, split): the same seed gives the same audio.
"""
import collections
import os
import re

import numpy as np
import tensorflow as tf

from pipelines.corpus_files import DataError

SAMPLE_RATE = 8000
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FILE_RE = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")
SPLIT_TAKES = {"test": range(0, 5), "valid": range(5, 10), "train": range(10, 50)}


def recordings_dir(data_dir: str) -> str:
    path = os.path.join(data_dir or "", "fsdd", "recordings")
    if not tf.io.gfile.isdir(path) or not any(FILE_RE.match(n) for n in tf.io.gfile.listdir(path)):
        raise DataError(f"no FSDD recordings in {path!r}: pass --data_dir=<folder holding "
                        "fsdd/recordings/*.wav> (or set TFAWD_DATA_DIR)")
    return path


def list_recordings(data_dir: str) -> list:
    """[(digit, speaker, take, path)] of every recording, sorted."""
    root = recordings_dir(data_dir)
    found = []
    for name in sorted(tf.io.gfile.listdir(root)):
        m = FILE_RE.match(name)
        if m:
            found.append((int(m[1]), m[2], int(m[3]), os.path.join(root, name)))
    return found


def split_recordings(recordings, split: str, heldout_speaker: str = "") -> list:
    """The recordings a split draws from (see the module docstring)."""
    speakers = {r[1] for r in recordings}
    if heldout_speaker and heldout_speaker not in speakers:
        raise ValueError(f"--heldout_speaker={heldout_speaker!r} is not one of {sorted(speakers)}")
    if split == "heldout":
        if not heldout_speaker:
            raise ValueError("the heldout split needs --heldout_speaker")
        return [r for r in recordings if r[1] == heldout_speaker]
    if split not in SPLIT_TAKES:
        raise ValueError(f"unknown split {split!r}; one of train, valid, test, heldout")
    return [r for r in recordings if r[1] != heldout_speaker and r[2] in SPLIT_TAKES[split]]


def read_wav(path: str) -> np.ndarray:
    """float32 samples in [-1, 1] of a mono wav at SAMPLE_RATE (tf.audio.decode_wav)."""
    audio, rate = tf.audio.decode_wav(tf.io.read_file(path), desired_channels=1)
    if int(rate) != SAMPLE_RATE:
        raise DataError(f"{path}: {int(rate)} Hz, expected {SAMPLE_RATE} Hz")
    return audio.numpy()[:, 0]


def join_utterance(clips, pauses_s, sample_rate=SAMPLE_RATE) -> np.ndarray:
    """Concatenates clips with silences of the given lengths between them."""
    parts = [clips[0]]
    for clip, pause in zip(clips[1:], pauses_s):
        parts += [np.zeros(int(round(pause * sample_rate)), np.float32), clip]
    return np.concatenate(parts)


def utterances(data_dir: str, split: str, count: int, seed: int = 0, max_digits: int = 7,
               heldout_speaker: str = "", pause_s=(0.05, 0.3)):
    """`count` joined utterances of `split`: a list of (audio float32 [n], transcript, parts)
    where parts lists the (digit, speaker, take) joined. Deterministic per (seed, split)."""
    pool = split_recordings(list_recordings(data_dir), split, heldout_speaker)
    by_speaker = collections.defaultdict(list)
    for rec in pool:
        by_speaker[rec[1]].append(rec)
    speakers = sorted(by_speaker)
    rng = np.random.default_rng([seed, ["train", "valid", "test", "heldout"].index(split)])
    cache, out = {}, []
    for _ in range(count):
        recs = by_speaker[speakers[rng.integers(len(speakers))]]
        chosen = [recs[i] for i in rng.integers(len(recs), size=rng.integers(1, max_digits + 1))]
        for r in chosen:
            if r[3] not in cache:
                cache[r[3]] = read_wav(r[3])
        clips = [cache[r[3]] for r in chosen]
        pauses = rng.uniform(*pause_s, size=len(chosen) - 1)
        out.append((join_utterance(clips, pauses), " ".join(WORDS[r[0]] for r in chosen),
                    [r[:3] for r in chosen]))
    return out


def dataset(data_dir: str, split: str, count: int, seed: int = 0, **kwargs) -> tf.data.Dataset:
    """The utterances as a source dataset: {"audio", "sample_rate", "transcript"}."""
    utts = utterances(data_dir, split, count, seed, **kwargs)
    audio = tf.RaggedTensor.from_row_lengths(np.concatenate([u[0] for u in utts]),
                                             [len(u[0]) for u in utts])
    return tf.data.Dataset.from_tensor_slices({
        "audio": audio, "sample_rate": tf.fill([len(utts)], SAMPLE_RATE),
        "transcript": tf.constant([u[1] for u in utts])})
