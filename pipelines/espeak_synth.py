"""Synthesised speech for the character-level Listen-Attend-Spell recogniser (issue 6).

WikiText-2 sentences, normalised to the recogniser's character set, spoken by eSpeak NG (the
`espeakng-loader` wheel ships the library and its voices; ctypes drives it, no system package):
an open-vocabulary corpus whose test split is spoken by held-out voices. `build_corpus` writes
TFRecords once, `load_split` reads them back. Pipelines know nothing of models.
"""
import _ctypes
import contextlib
import ctypes
import functools
import importlib.metadata
import json
import os
import random
import re
import threading
import unicodedata

import numpy as np
import tensorflow as tf
from absl import logging

from pipelines.corpus_files import DataError, open_data
from pipelines.speech_features import CHARACTERS  # noqa: F401  (transcripts use only these)

SPLITS = ("train", "valid", "test")
DEFAULT_SIZES = {"train": 3000, "valid": 200, "test": 300}
# Disjoint speaker sets: the test split is spoken only by variants never heard in training.
TRAIN_VOICES = tuple(f"{lang}+{v}" for lang in ("en", "en-us")
                     for v in ("m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3"))
TEST_VOICES = tuple(f"{lang}+{v}" for lang in ("en", "en-us") for v in ("m6", "m7", "f4", "f5"))
RATE_RANGE = (140, 200)  # words per minute
PITCH_RANGE = (35, 65)  # eSpeak's 0..100 scale
PROGRESS_EVERY = 500

# speak_lib.h: AUDIO_OUTPUT_SYNCHRONOUS, espeakINITIALIZE_DONT_EXIT, espeakRATE, espeakPITCH,
# POS_CHARACTER, espeakCHARS_UTF8, EE_OK
_SYNCHRONOUS, _DONT_EXIT, _RATE, _PITCH, _POS_CHARACTER, _UTF8, _EE_OK = 2, 0x8000, 1, 3, 1, 1, 0
_LOCK = threading.Lock()  # the library keeps global state and is not re-entrant
_CHUNKS = []  # int16 blocks of the utterance being synthesised


def _collect(wav, n, _events):
    """Synth callback: keep a copy of each block of samples."""
    if n > 0:
        _CHUNKS.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
    return 0


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.c_void_p)(_collect)  # module-level: never garbage-collected
_LIBC = ctypes.CDLL(None)


@contextlib.contextmanager
def _fresh_library(lib_path, data_path):
    """Lock, map and initialise the library; yield (lib, sample_rate); terminate and unmap it.

    espeak_Initialize does not reset the synthesiser's static state (pitch-flutter phase, gain
    control, noise filters), so the same text would come out slightly different on every call.
    A freshly mapped library per utterance (well under a millisecond) makes synthesis repeatable.
    """
    with _LOCK:
        lib = ctypes.CDLL(lib_path)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        try:
            rate = lib.espeak_Initialize(_SYNCHRONOUS, 0, data_path.encode(), _DONT_EXIT)
            if rate <= 0:
                raise RuntimeError(f"espeak_Initialize failed ({rate}) with data at {data_path}")
            lib.espeak_SetSynthCallback(_CALLBACK)
            yield lib, rate
        finally:
            lib.espeak_Terminate()
            _ctypes.dlclose(lib._handle)


@functools.cache  # once per process
def _engine():
    """Paths, sample rate and voice names of the shipped library, checked by initialising it."""
    try:
        import espeakng_loader
        lib_path, data_path = espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
        with _fresh_library(lib_path, data_path) as (_, sample_rate):
            pass
    except (ImportError, OSError, RuntimeError) as e:
        raise DataError("cannot load the eSpeak NG library: install it into this Python with "
                           f"`pip install espeakng-loader==0.2.4` ({e})") from e
    languages = sorted(f.lower() for _, _, files in os.walk(os.path.join(data_path, "lang"))
                       for f in files)
    variants = sorted(os.listdir(os.path.join(data_path, "voices", "!v")),
                      key=lambda v: (len(v), v.lower()))  # f1..f5, m1..m8 first
    return dict(lib_path=lib_path, data_path=data_path, sample_rate=sample_rate,
                languages=languages, variants=variants)


class Synthesizer:
    """Repeatable text-to-speech with eSpeak NG voices such as "en-us" or "en+f3"."""

    def __init__(self):
        self._engine = _engine()
        self.sample_rate = self._engine["sample_rate"]
        self._library = functools.partial(_fresh_library, self._engine["lib_path"],
                                          self._engine["data_path"])

    def _set_voice(self, lib, voice):
        """Select `voice`, or raise ValueError listing a few known ones."""
        base, _, variant = voice.partition("+")
        # eSpeak itself silently ignores an unknown variant, hence the explicit check
        known = base and (not variant or variant in self._engine["variants"])
        if not known or lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            english = [lang for lang in self._engine["languages"] if lang.startswith("en")]
            raise ValueError(f"unknown eSpeak voice {voice!r}; available are e.g. "
                             f"{', '.join(english)} with variants "
                             f"{', '.join('+' + v for v in self._engine['variants'][:13])}, ...")

    def synthesize(self, text, voice="en-us", rate=175, pitch=50):
        """Speak `text`: (int16 samples [n], sample rate). The same inputs give the same samples."""
        if not text or not text.strip():
            raise ValueError("cannot synthesise an empty text")
        if not (80 <= rate <= 450 and 0 <= pitch <= 100):
            raise ValueError(f"need rate in 80..450 wpm and pitch in 0..100, got {rate}, {pitch}")
        data = text.encode("utf-8") + b"\0"
        with self._library() as (lib, sample_rate):
            self._set_voice(lib, voice)
            lib.espeak_SetParameter(_RATE, int(rate), 0)
            lib.espeak_SetParameter(_PITCH, int(pitch), 0)
            lib.espeak_ng_SetRandSeed(0)  # breath noise; parts of the library use libc rand()
            _LIBC.srand(0)
            _CHUNKS.clear()
            status = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _UTF8, None, None)
            lib.espeak_Synchronize()
            audio = np.concatenate(_CHUNKS) if _CHUNKS else np.zeros(0, np.int16)
        if status != _EE_OK:
            raise RuntimeError(f"espeak_Synth failed with status {status} for {text[:40]!r}")
        return audio, sample_rate


def normalise_transcript(text):
    """Lowercase ASCII letters, spaces and in-word apostrophes; WikiText artefacts resolved."""
    text = re.sub(r"\s*@([-,.])@\s*", r"\1", text)  # "state @-@ of" -> "state-of"
    text = re.sub(r"\s*’\s*(s|t|re|ve|ll|d|m)\b", r"'\1", text)  # "children ’ s"
    text = re.sub(r" '(?=[a-zA-Z])", "'", text)  # WikiText splits "don 't", "game 's"
    text = unicodedata.normalize("NFKD", text.lower()).encode("ascii", "ignore").decode()
    text = re.sub(r"[^a-z']+", " ", text)
    text = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", text)  # quotes, trailing possessive marks
    return " ".join(text.split())


def select_sentences(tokens_path, min_words=3, max_words=10, limit=None, seed=0):
    """Distinct normalised sentences of a WikiText token file, shuffled by `seed` (None: in order).

    Dropped: headings, sentences with `<unk>` or digits, outside min..max words, or with a word
    without a vowel (initials, abbreviations like "st", "jr": eSpeak spells out or expands them).
    """
    sentences, seen = [], set()
    with open_data(tokens_path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("=") and line.endswith("="):
                continue
            for raw in line.split(" . "):
                sentence = normalise_transcript(raw)
                words = sentence.split()
                if ("<unk>" in raw or any(c.isdigit() for c in raw) or sentence in seen
                        or not min_words <= len(words) <= max_words
                        or not all(re.search("[aeiouy]", w) for w in words)):
                    continue
                seen.add(sentence)
                sentences.append(sentence)
    if seed is not None:
        random.Random(seed).shuffle(sentences)
    return sentences[:limit]


def _example(audio, sample_rate, transcript, voice):
    """One utterance as a tf.train.Example (audio: raw little-endian int16)."""
    feature = {k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v])) for k, v in
               (("audio", audio.astype("<i2").tobytes()), ("transcript", transcript.encode()),
                ("voice", voice.encode()))}
    feature["sample_rate"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[sample_rate]))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _write_split(synth, split, sentences, voices, path, seed):
    """Speak `sentences` with random voices, rates and pitches into `path`; returns seconds."""
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    seconds = 0.0
    with tf.io.TFRecordWriter(path + ".partial") as writer:
        for i, sentence in enumerate(sentences, 1):
            voice = voices[rng.integers(len(voices))]
            rate, pitch = (int(rng.integers(lo, hi + 1)) for lo, hi in (RATE_RANGE, PITCH_RANGE))
            audio, sample_rate = synth.synthesize(sentence, voice, rate, pitch)
            writer.write(_example(audio, sample_rate, sentence, voice).SerializeToString())
            seconds += len(audio) / sample_rate
            if i % PROGRESS_EVERY == 0 or i == len(sentences):
                logging.info("espeak %s: %d/%d utterances, %.0f s of audio", split, i,
                             len(sentences), seconds)
    # an interrupted build leaves only *.partial files
    tf.io.gfile.rename(path + ".partial", path, overwrite=True)
    return seconds


def _cached_manifest(out_dir, params):
    """The manifest of a complete build with `params`, else None (a stale one is removed)."""
    path = os.path.join(out_dir, "manifest.json")
    if tf.io.gfile.exists(path):
        with open_data(path) as f:
            manifest = json.load(f)
        if manifest.get("parameters") == params and all(tf.io.gfile.exists(
                os.path.join(out_dir, f"{s}.tfrecord")) for s in params["sizes"]):
            return manifest
        tf.io.gfile.remove(path)  # must not stand next to half-rebuilt files
    return None


def build_corpus(data_dir, out_dir, sizes=None, train_voices=TRAIN_VOICES,
                 test_voices=TEST_VOICES, seed=0):
    """Write `out_dir/{split}.tfrecord` and `manifest.json`, returned; cached by parameters.

    `sizes` maps split -> utterances (DEFAULT_SIZES if None). train and valid are spoken by
    `train_voices`, test only by the held-out `test_voices`.
    """
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    if set(sizes) - set(SPLITS) or set(train_voices) & set(test_voices):
        raise ValueError(f"sizes keys must be among {SPLITS} and the voice lists disjoint")
    params = json.loads(json.dumps(dict(
        sizes=sizes, train_voices=train_voices, test_voices=test_voices, seed=seed,
        rate_range=RATE_RANGE, pitch_range=PITCH_RANGE, min_words=3, max_words=10,
        espeakng_loader=importlib.metadata.version("espeakng-loader"))))
    if manifest := _cached_manifest(out_dir, params):
        return manifest
    sources = {s: os.path.join(data_dir, "wikitext-2", f"wiki.{s}.tokens") for s in sizes}
    for path in sources.values():
        if not tf.io.gfile.exists(path):
            raise DataError(f"{path} not found: pass --data_dir pointing at the folder that "
                            "holds wikitext-2/wiki.*.tokens")
    synth = Synthesizer()
    for voice in (*train_voices, *test_voices):  # a bad voice fails now, not minutes later
        synth.synthesize("a", voice)
    tf.io.gfile.makedirs(out_dir)
    splits = {}
    for split in (s for s in SPLITS if s in sizes):
        sentences = select_sentences(sources[split], params["min_words"], params["max_words"],
                                     sizes[split], seed)
        if len(sentences) < sizes[split]:
            logging.warning("espeak %s: only %d sentences qualify", split, len(sentences))
        voices = list(test_voices if split == "test" else train_voices)
        seconds = _write_split(synth, split, sentences, voices,
                               os.path.join(out_dir, f"{split}.tfrecord"), seed)
        splits[split] = {"utterances": len(sentences), "seconds": round(seconds, 2)}
    manifest = {"parameters": params, "sample_rate": synth.sample_rate, "splits": splits,
                "espeakng_loader": params["espeakng_loader"]}
    path = os.path.join(out_dir, "manifest.json")
    with tf.io.gfile.GFile(path + ".partial", "w") as f:
        f.write(json.dumps(manifest, indent=2))
    tf.io.gfile.rename(path + ".partial", path, overwrite=True)  # last: the build is complete
    return manifest


def _parse(record):
    """A serialised Example -> {"audio": float32 [n], "sample_rate": int32, "transcript"}."""
    ex = tf.io.parse_single_example(record, {k: tf.io.FixedLenFeature([], t) for k, t in (
        ("audio", tf.string), ("sample_rate", tf.int64), ("transcript", tf.string))})
    audio = tf.io.decode_raw(ex["audio"], tf.int16, little_endian=True)
    return {"audio": tf.cast(audio, tf.float32) / 32768.0,
            "sample_rate": tf.cast(ex["sample_rate"], tf.int32), "transcript": ex["transcript"]}


def load_split(out_dir, split):
    """Dataset of {"audio": float32 [n] in [-1, 1], "sample_rate": int32, "transcript": string}."""
    path = os.path.join(out_dir, f"{split}.tfrecord")
    if not tf.io.gfile.exists(path):
        raise DataError(f"{path} not found: run pipelines.espeak_synth.build_corpus(data_dir, "
                        f"{out_dir!r}) first to synthesise the corpus")
    return tf.data.TFRecordDataset(path).map(_parse)
