"""Your own speech data for the recogniser: a manifest of wav files, or seed 003's arrays.

- Manifest: a TSV, one utterance a line, `path/to/file.wav<TAB>transcript` (relative paths are
  relative to the manifest). Yields the source structure every speech source has:
  `{"audio": float32 [n], "sample_rate": int32, "transcript": string}`.
- Seed 003's format: `<prefix>{split}.npy`, an object array of float (T, 40) feature arrays,
  and `<prefix>{split}_transcripts.npy`, an array of strings (or of character lists). Yields
  already-computed features: `{"features": float32 [T, 40], "transcript": string}`.
"""
import os

import numpy as np
import tensorflow as tf

from pipelines.corpus_files import DataError, is_remote, open_data


def read_manifest(path: str) -> list:
    """[(wav path, transcript)]; a clear error names the line of any malformed entry."""
    if not tf.io.gfile.exists(path):
        raise DataError(f"manifest {path!r} not found (--manifest)")
    root, rows = os.path.dirname(path if is_remote(path) else os.path.abspath(path)), []
    with open_data(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2 or not parts[1].strip():
                raise DataError(f"{path}:{number}: expected `wav path<TAB>transcript`")
            wav = (parts[0] if os.path.isabs(parts[0]) or is_remote(parts[0]) else
                   os.path.join(root, parts[0]))
            if not tf.io.gfile.exists(wav):
                raise DataError(f"{path}:{number}: no such file {wav!r}")
            rows.append((wav, parts[1].strip().lower()))
    if not rows:
        raise DataError(f"manifest {path!r} lists no utterances")
    return rows


def manifest_dataset(path: str) -> tf.data.Dataset:
    """The manifest's utterances, decoded with tf.audio.decode_wav (mono: first channel)."""
    wavs, texts = zip(*read_manifest(path))

    def load(wav, text):
        audio, rate = tf.audio.decode_wav(tf.io.read_file(wav), desired_channels=1)
        return {"audio": audio[:, 0], "sample_rate": rate, "transcript": text}
    return tf.data.Dataset.from_tensor_slices((list(wavs), list(texts))).map(load)


def _load_npy(path: str):
    with open_data(path, "rb") as f:
        return np.load(f, allow_pickle=True)


def npy_dataset(prefix: str, split: str, n_mels: int = 40) -> tf.data.Dataset:
    """Seed 003's arrays as {"features", "transcript"}; shapes are checked up front."""
    paths = f"{prefix}{split}.npy", f"{prefix}{split}_transcripts.npy"
    for p in paths:
        if not tf.io.gfile.exists(p):
            raise DataError(f"{p!r} not found (--npy_prefix={prefix})")
    feats, texts = (_load_npy(p) for p in paths)
    if len(feats) != len(texts):
        raise DataError(f"{paths[0]} has {len(feats)} utterances, {paths[1]} {len(texts)}")
    for i, f in enumerate(feats):
        if np.ndim(f) != 2 or np.shape(f)[1] != n_mels or len(f) == 0:
            raise DataError(f"{paths[0]}[{i}] has shape {np.shape(f)}; expected (T > 0, {n_mels})")
    texts = ["".join(t) if not isinstance(t, str) else t for t in texts]
    features = tf.RaggedTensor.from_row_lengths(
        np.concatenate([np.asarray(f, np.float32) for f in feats]), [len(f) for f in feats])
    return tf.data.Dataset.from_tensor_slices({"features": features,
                                               "transcript": [t.lower() for t in texts]})
