"""The CMU Census database (AN4) as Sphinx cepstra: utterances, transcripts, speaker splits.

Source: the AN4 close-talking set (Acero, "Acoustical and environmental robustness in automatic
speech recognition", Kluwer 1993; CMU, BSD-style licence) as distributed with CMU Sphinx, laid
out under `<data_dir>/an4/`: `feat/an4_clstk/<speaker>/<id>.mfc` (948 training utterances of
74 speakers), `feat/an4test_clstk/<speaker>/<id>.mfc` (130 test utterances of 10 other
speakers), `etc/an4_{train,test}.fileids` and `etc/an4_{train,test}.transcription` (one
`WORDS (utterance-id)` a line). There is no audio: each .mfc is a big-endian int32 count of
floats, then big-endian float32 frames of 13 mel cepstra (16 kHz, 100 frames/s, 40 mel filters
130-6800 Hz, 512-point FFT; an4/SOURCE-README).

Splits: `test` is the 10 test speakers (final figures only); `valid` is every utterance of
`valid_speakers` training speakers drawn by a seeded shuffle (female and male speakers in
proportion, ids starting with f/m); `train` the rest. No speaker is in two splits.

Features: the 13 cepstra as stored, or 40 log-mel bands recovered from them. The cepstra are
sphinxbase's "legacy" DCT (fe_sigproc.c, fe_spec2cep, the default `-transform legacy`):
    c[i] = 1/40 * sum_j beta_j * logmel[j] * cos(pi * i * (j + 0.5) / 40),  i = 0..12,
with natural-log mel energies and beta_0 = 0.5, beta_j = 1 otherwise (the half weight is on
the first *filter*, in every coefficient, not on c[0]). Thirteen coefficients cannot give back
40 bands; the inverse here returns the one log-mel spectrum in the span of the first 13 cosines
that has exactly these cepstra (a smoothed log-mel spectrum; without the beta quirk it is the
usual truncated DCT-III). Normalise with training statistics (`feature_stats`, global CMVN).
"""
import collections
import os
import re

import numpy as np
import tensorflow as tf

from pipelines.corpus_files import DATA_DIR_ENV, DataError, open_data
from pipelines.speech_features import CHARACTERS, feature_stats  # noqa: F401 (re-exported)

N_CEPSTRA, N_FILTERS = 13, 40
BAND_EDGES_HZ = (130.0, 6800.0)  # the filterbank's lowest and highest frequency
SPLITS = ("train", "valid", "test")
FEATURES = ("cepstra", "logmel")
# part of the release -> (feature folder, utterances, speakers)
PARTS = {"train": ("an4_clstk", 948, 74), "test": ("an4test_clstk", 130, 10)}
MARKERS = {"<s>", "</s>", "<sil>"}
LINE_RE = re.compile(r"^(.*?)\s*\(([^()\s]+)\)\s*$")
Utterance = collections.namedtuple("Utterance", "utterance speaker path text")


def _legacy_dct() -> np.ndarray:
    """[40, 13]: log-mel frames (rows) @ this = Sphinx legacy cepstra."""
    i, j = np.arange(N_CEPSTRA)[None, :], np.arange(N_FILTERS)[:, None]
    beta = np.where(j == 0, 0.5, 1.0)
    return beta * np.cos(np.pi * i * (j + 0.5) / N_FILTERS) / N_FILTERS


LOGMEL_TO_CEPSTRA = _legacy_dct()
_BASIS = np.cos(np.pi * np.arange(N_CEPSTRA)[:, None] * (np.arange(N_FILTERS) + 0.5)
                / N_FILTERS)  # [13, 40]: the first 13 cosines over the filters
# [13, 40]: cepstra @ this = the spectrum in span(_BASIS) whose legacy DCT is the cepstra
CEPSTRA_TO_LOGMEL = np.linalg.solve(_BASIS @ LOGMEL_TO_CEPSTRA, _BASIS)


def to_cepstra(logmel: np.ndarray) -> np.ndarray:
    """[T, 40] natural-log mel energies -> [T, 13] cepstra, as Sphinx computes them."""
    return (np.asarray(logmel, np.float64) @ LOGMEL_TO_CEPSTRA).astype(np.float32)


def to_logmel(cepstra: np.ndarray) -> np.ndarray:
    """[T, 13] cepstra -> [T, 40] smoothed log-mel spectrum (the inverse truncated DCT)."""
    return (np.asarray(cepstra, np.float64) @ CEPSTRA_TO_LOGMEL).astype(np.float32)


def read_mfc(path: str) -> np.ndarray:
    """float32 [T, 13] cepstra of one .mfc file; any damage is a one-line DataError."""
    try:
        with open_data(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); restore it from the AN4 "
                        "release") from None
    fix = "restore it from the AN4 release"
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes, not even the 4-byte header; {fix}")
    count = int(np.frombuffer(raw[:4], ">i4")[0])
    body = len(raw) - 4
    if count * 4 != body:
        swapped = int(np.frombuffer(raw[:4], "<i4")[0])
        what = ("little-endian (Sphinx .mfc are big-endian)" if swapped * 4 == body else
                "truncated or damaged")
        raise DataError(f"{path}: header says {count} floats ({count * 4} bytes) but "
                        f"{body} bytes follow: {what}; {fix}")
    if count == 0:
        raise DataError(f"{path}: no frames (the header says 0 floats); {fix}")
    if count % N_CEPSTRA:
        raise DataError(f"{path}: {count} floats is not a whole number of {N_CEPSTRA}-cepstra "
                        f"frames; {fix}")
    frames = np.frombuffer(raw[4:], ">f4").astype(np.float32).reshape(-1, N_CEPSTRA)
    if not np.isfinite(frames).all():
        bad = int(np.flatnonzero(~np.isfinite(frames).all(axis=1))[0])
        raise DataError(f"{path}: frame {bad} holds NaN or infinity; {fix}")
    return frames


def normalise_text(words: str, where: str) -> str:
    """AN4 words -> the CharVocab alphabet: markers dropped, lowercase, single spaces."""
    text = " ".join(w for w in words.split() if w.lower() not in MARKERS).lower()
    bad = sorted(set(text) - set(CHARACTERS))
    if bad:
        raise DataError(f"{where}: characters {''.join(bad)!r} outside {CHARACTERS!r}; "
                        "fix the transcript (letters, digits spelled as words)")
    if not text:
        raise DataError(f"{where}: empty transcript; fix the line")
    return text


def read_transcripts(path: str) -> dict:
    """{utterance id: normalised text} of a `WORDS (utterance-id)` transcription file."""
    if not tf.io.gfile.exists(path):
        raise DataError(f"{path} not found; restore it from the AN4 release")
    out = {}
    with open_data(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            m = LINE_RE.match(line.strip())
            if not m:
                raise DataError(f"{path}:{number}: expected `WORDS (utterance-id)`")
            if m[2] in out:
                raise DataError(f"{path}:{number}: utterance {m[2]!r} transcribed twice")
            out[m[2]] = normalise_text(m[1], f"{path}:{number}")
    return out


def an4_dir(data_dir: str) -> str:
    """`<data_dir>/an4`, or a DataError naming the fix."""
    path = os.path.join(data_dir or os.environ.get(DATA_DIR_ENV, ""), "an4")
    if not tf.io.gfile.isdir(os.path.join(path, "etc")):
        raise DataError(f"no AN4 database in {path!r}: pass --data_dir=<folder holding an4/> "
                        f"(or set {DATA_DIR_ENV})")
    return path


def _part(root: str, part: str) -> list:
    """[Utterance] of one part of the release ("train" or "test"), sorted, fully checked."""
    folder, n_utts, n_speakers = PARTS[part]
    fileids = os.path.join(root, "etc", f"an4_{part}.fileids")
    texts = read_transcripts(os.path.join(root, "etc", f"an4_{part}.transcription"))
    if not tf.io.gfile.exists(fileids):
        raise DataError(f"{fileids} not found; restore it from the AN4 release")
    rows, seen, listed = [], set(), {}
    with open_data(fileids) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.strip().split("/")
            if len(parts) != 3 or parts[0] != folder:
                raise DataError(f"{fileids}:{number}: expected `{folder}/<speaker>/<id>`")
            speaker, utt = parts[1], parts[2]
            if utt not in texts:
                raise DataError(f"{fileids}:{number}: no transcript for {utt!r} in "
                                f"an4_{part}.transcription; restore it from the AN4 release")
            speaker_dir = os.path.join(root, "feat", folder, speaker)
            if speaker_dir not in listed:  # one listing a speaker, not a stat a file (gs://)
                listed[speaker_dir] = (set(tf.io.gfile.listdir(speaker_dir))
                                       if tf.io.gfile.isdir(speaker_dir) else set())
            path = os.path.join(speaker_dir, utt + ".mfc")
            if utt + ".mfc" not in listed[speaker_dir]:
                raise DataError(f"{path} not found (listed in {fileids}:{number}); restore "
                                "it from the AN4 release")
            seen.add(utt)
            rows.append(Utterance(utt, speaker, path, texts[utt]))
    if set(texts) - seen:
        raise DataError(f"{fileids}: does not list {sorted(set(texts) - seen)[0]!r}, which "
                        f"an4_{part}.transcription transcribes; restore the AN4 fileids")
    speakers = {r.speaker for r in rows}
    if (len(rows), len(speakers)) != (n_utts, n_speakers):
        raise DataError(f"{fileids}: {len(rows)} utterances of {len(speakers)} speakers; the "
                        f"AN4 release has {n_utts} of {n_speakers}: restore the full copy")
    return sorted(rows, key=lambda r: (r.speaker, r.utterance))


def choose_valid_speakers(speakers, count: int, seed: int = 0) -> list:
    """`count` of the training speakers, deterministic per seed, female (f...) and other
    speakers in proportion to their numbers; sorted."""
    speakers = sorted(set(speakers))
    if not 0 <= count < len(speakers):
        raise ValueError(f"valid_speakers={count}: between 0 and {len(speakers) - 1}")
    female = [s for s in speakers if s.startswith("f")]
    other = [s for s in speakers if not s.startswith("f")]
    n_female = int(round(count * len(female) / len(speakers)))
    rng = np.random.default_rng(seed)
    chosen = list(rng.permutation(female)[:n_female]) + list(
        rng.permutation(other)[:count - n_female])
    return sorted(str(s) for s in chosen)


def list_utterances(data_dir: str, split: str, valid_speakers: int = 8, seed: int = 0) -> list:
    """[Utterance(utterance, speaker, path, text)] of a split, sorted by speaker then id."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; one of {', '.join(SPLITS)}")
    root = an4_dir(data_dir)
    train, test = _part(root, "train"), _part(root, "test")
    shared = {r.speaker for r in train} & {r.speaker for r in test}
    if shared:
        raise DataError(f"{root}: speakers {sorted(shared)} are in both the training and the "
                        "test part; restore the AN4 fileids")
    if split == "test":
        return test
    held = set(choose_valid_speakers([r.speaker for r in train], valid_speakers, seed))
    return [r for r in train if (r.speaker in held) == (split == "valid")]


def load_features(rows, features: str = "logmel") -> list:
    """float32 [T, 13] ("cepstra") or [T, 40] ("logmel") arrays of the rows' files."""
    if features not in FEATURES:
        raise ValueError(f"features={features!r}: one of {', '.join(FEATURES)}")
    cepstra = [read_mfc(r.path) for r in rows]
    return cepstra if features == "cepstra" else [to_logmel(c) for c in cepstra]


def apply_stats(features, stats):
    """(features - mean) / std with training statistics (global CMVN)."""
    mean, std = stats
    return (features - mean) / std


def text_counts(rows) -> dict:
    """Utterances, speakers, words and characters (single spaces between words included)."""
    return {"utterances": len(rows), "speakers": len({r.speaker for r in rows}),
            "words": sum(len(r.text.split()) for r in rows),
            "characters": sum(len(r.text) for r in rows)}


def dataset(data_dir: str, split: str, features: str = "logmel", valid_speakers: int = 8,
            seed: int = 0, stats=None) -> tf.data.Dataset:
    """A split as {"features": float32 [T, D], "transcript", "speaker", "utterance"} in the
    order of `list_utterances`; with `stats` = feature_stats(train) the features are
    normalised by them. Every file is read (and checked) before the dataset is returned."""
    rows = list_utterances(data_dir, split, valid_speakers, seed)
    feats = load_features(rows, features)
    if stats is not None:
        feats = [apply_stats(f, stats).astype(np.float32) for f in feats]
    return tf.data.Dataset.from_tensor_slices({
        "features": tf.RaggedTensor.from_row_lengths(np.concatenate(feats),
                                                     [len(f) for f in feats]),
        "transcript": [r.text for r in rows], "speaker": [r.speaker for r in rows],
        "utterance": [r.utterance for r in rows]})
