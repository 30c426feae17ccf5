"""Speech features and batches for the attention recogniser (seed 003 part 2; issue 6).

An utterance enters as `{"audio": float32 [n] in [-1, 1], "sample_rate": int32, "transcript":
string}` (every speech source yields this) and leaves as `{"features": float32 [T, 40],
"frames": int32, "labels": int32 [L], "transcript": string}`: 40-band log-mel energies over
25 ms frames every 10 ms, normalised per utterance and band, and the transcript's character ids
ending in `<eos>`. Batches are padded (features with 0, labels with `<pad>` = 0) and bucketed
by length. Nothing here knows about models.
"""
import numpy as np
import tensorflow as tf

N_MELS = 40
FRAME_SECONDS, HOP_SECONDS = 0.025, 0.010
PAD, SOS, EOS = "<pad>", "<sos>", "<eos>"
CHARACTERS = "abcdefghijklmnopqrstuvwxyz '"


class CharVocab:
    """Character vocabulary: `<pad>` = 0, `<sos>` = 1, `<eos>` = 2, then one id per character."""

    def __init__(self, characters: str = CHARACTERS):
        self.characters = characters
        self.tokens = [PAD, SOS, EOS] + list(characters)
        self.pad_id, self.sos_id, self.eos_id = 0, 1, 2

    def __len__(self):
        return len(self.tokens)

    def encode(self, transcript: tf.Tensor) -> tf.Tensor:
        """string scalar -> int32 [L] ids + `<eos>`; characters outside the set are an error."""
        codes = tf.strings.unicode_decode(transcript, "UTF-8")
        table = np.full(0x250, -1, np.int32)
        for i, ch in enumerate(self.characters):
            table[ord(ch)] = i + 3
        ids = tf.gather(table, tf.minimum(codes, len(table) - 1))
        tf.debugging.assert_non_negative(
            ids, message=f"transcript has a character outside {self.characters!r}; "
                         "normalise transcripts (lowercase a-z, space, apostrophe)")
        return tf.concat([ids, [self.eos_id]], axis=0)

    def decode(self, ids) -> str:
        """ids (stops at the first `<eos>`, skips `<pad>`/`<sos>`) -> text."""
        out = []
        for i in np.asarray(ids).tolist():
            if i == self.eos_id:
                break
            if i >= 3:
                out.append(self.tokens[i])
        return "".join(out)


def frame_sizes(sample_rate: int):
    """(frame_length, frame_step, fft_length) in samples for 25 ms / 10 ms frames."""
    frame_length = int(round(sample_rate * FRAME_SECONDS))
    return frame_length, int(round(sample_rate * HOP_SECONDS)), 1 << (frame_length - 1).bit_length()


def band_edges(sample_rate: int) -> tuple:
    """(lowest, highest) frequency in Hz of the mel filterbank `log_mel` uses."""
    return 20.0, sample_rate / 2


def log_mel(audio: tf.Tensor, sample_rate: int, n_mels: int = N_MELS) -> tf.Tensor:
    """float32 [n] waveform -> [T, n_mels] log-mel energies, T = ceil(n / hop) (pad_end)."""
    frame_length, frame_step, fft_length = frame_sizes(sample_rate)
    stft = tf.signal.stft(audio, frame_length, frame_step, fft_length, pad_end=True)
    mel = tf.signal.linear_to_mel_weight_matrix(n_mels, fft_length // 2 + 1, sample_rate,
                                                *band_edges(sample_rate))
    return tf.math.log(tf.matmul(tf.square(tf.abs(stft)), mel) + 1e-6)


def normalise(features: tf.Tensor) -> tf.Tensor:
    """Zero mean, unit variance per band over the utterance (cepstral mean/variance norm.)."""
    mean, var = tf.nn.moments(features, axes=[0], keepdims=True)
    return (features - mean) * tf.math.rsqrt(var + 1e-5)


def spec_augment(features, seed, freq_masks=2, freq_frac=0.15, time_masks=2, time_frac=0.05):
    """SpecAugment (Park et al. 2019) without warping: zero `freq_masks` spans of up to
    `freq_frac` of the bands (6 of 40 log-mels, 2 of 13 cepstra) and `time_masks` spans of up
    to `time_frac` of the frames; `seed` is an int [2] (stateless, so the masks depend on the
    seed only)."""
    frames, bands = tf.shape(features)[0], tf.shape(features)[1]
    keep = tf.ones_like(features)
    seeds = tf.random.experimental.stateless_split(seed, freq_masks + time_masks)
    max_t = tf.maximum(1, tf.cast(tf.cast(frames, tf.float32) * time_frac, tf.int32))
    max_f = tf.maximum(1, tf.cast(tf.round(tf.cast(bands, tf.float32) * freq_frac), tf.int32))
    for i in range(freq_masks + time_masks):
        is_freq = i < freq_masks
        size, limit = (bands, max_f) if is_freq else (frames, max_t)
        u = tf.random.stateless_uniform([2], seeds[i])
        width = tf.cast(u[0] * tf.cast(limit + 1, tf.float32), tf.int32)
        start = tf.cast(u[1] * tf.cast(tf.maximum(size - width, 1), tf.float32), tf.int32)
        idx = tf.range(size)
        span = tf.cast((idx < start) | (idx >= start + width), features.dtype)
        keep *= span[None, :] if is_freq else span[:, None]
    return features * keep


def _mel(hz):
    return 1127.0 * np.log1p(np.asarray(hz, np.float64) / 700.0)  # tf.signal's mel scale


def warp_sources(alpha, bands: int, edges) -> tf.Tensor:
    """Fractional band indices [bands]: where band j's centre frequency f_j divided by `alpha`
    falls among the centres of `bands` mel filters spaced evenly in mel between `edges`
    (Hz), held inside [0, bands - 1]."""
    low, high = float(_mel(edges[0])), float(_mel(edges[1]))
    step = (high - low) / (bands + 1)
    centres_hz = 700.0 * np.expm1((low + step * np.arange(1, bands + 1)) / 1127.0)
    source_mel = 1127.0 * tf.math.log1p(tf.constant(centres_hz, tf.float32) / alpha / 700.0)
    return tf.clip_by_value((source_mel - low) / step - 1.0, 0.0, bands - 1.0)


def vtlp(features, seed, edges, max_warp: float = 0.1):
    """Vocal tract length perturbation (Jaitly & Hinton 2013, "Vocal Tract Length Perturbation
    (VTLP) improves speech recognition"): the frequency axis of one utterance scaled by alpha
    ~ U(1 - max_warp, 1 + max_warp), f -> alpha f, as a speaker with a shorter (alpha > 1) or
    longer vocal tract would move the formants. Applied to mel-band features [T, B] whose
    filters lie evenly in mel between `edges` (Hz): band j takes the value at f_j / alpha,
    linearly interpolated between neighbouring bands (the edge bands held). On log-mels this
    moves the spectral envelope as the paper's warped filterbank does; `seed` is an int [2]."""
    bands = features.shape[-1]
    alpha = tf.random.stateless_uniform([], seed, 1.0 - max_warp, 1.0 + max_warp)
    src = warp_sources(alpha, bands, edges)
    lo = tf.floor(src)
    frac = src - lo
    lo = tf.cast(lo, tf.int32)
    hi = tf.minimum(lo + 1, bands - 1)
    return (tf.gather(features, lo, axis=-1) * (1.0 - frac)
            + tf.gather(features, hi, axis=-1) * frac)


def feature_stats(examples) -> tuple:
    """(mean [D], std [D]) float32 over every frame of `examples` (a tf.data.Dataset of dicts
    with "features" [T, D], or arrays [T, D]): the training split's, for global mean and
    variance normalisation (CMVN)."""
    if isinstance(examples, tf.data.Dataset):
        examples = examples.as_numpy_iterator()
    total, total_sq, n = 0.0, 0.0, 0
    for ex in examples:
        f = np.asarray(ex["features"] if isinstance(ex, dict) else ex, np.float64)
        total, total_sq, n = total + f.sum(0), total_sq + np.square(f).sum(0), n + len(f)
    if n == 0:
        raise ValueError("feature_stats needs at least one frame")
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - np.square(mean), 0.0))
    return mean.astype(np.float32), np.maximum(std, 1e-5).astype(np.float32)


def featurize(sample_rate: int, vocab: CharVocab, stats=None, raw: bool = False):
    """The map from a source element to features, frames, labels and transcript. Sources give
    "audio" (featurized here; audio at any other rate than `sample_rate` is refused, as the
    frame sizes depend on it) or precomputed "features" [T, D]. The features are normalised
    per utterance and band (`normalise`), or with `stats` = (mean, std) of the training split
    (global CMVN), or not at all with `raw`."""
    def scale(feats):
        if raw:
            return feats
        if stats is None:
            return normalise(feats)
        return (feats - stats[0]) / stats[1]

    def fn(example):
        if "features" in example:
            feats = scale(tf.cast(example["features"], tf.float32))
        else:
            tf.debugging.assert_equal(
                tf.cast(example["sample_rate"], tf.int32), sample_rate,
                message=f"audio at a sample rate other than {sample_rate} Hz, the rate this "
                        "model's features are computed at; resample the audio")
            feats = scale(log_mel(example["audio"], sample_rate))
        out = {"features": feats, "frames": tf.shape(feats)[0],
               "labels": vocab.encode(example["transcript"]),
               "transcript": example["transcript"]}
        if "speaker" in example:  # for per-speaker error rates
            out["speaker"] = example["speaker"]
        return out
    return fn


TRAIN_KEYS = ("features", "frames", "labels", "transcript")


def batches(examples: tf.data.Dataset, batch_size: int, shuffle_seed=None, augment_seed=None,
            bucket_boundaries=(150, 250, 350, 500), masks: bool = True,
            warp=None) -> tf.data.Dataset:
    """Padded batches of featurized examples, bucketed by frame count; each bucket's batch is
    scaled so that a batch holds about the same number of frames. With `shuffle_seed` the order
    is shuffled (deterministically per seed); with `augment_seed` the examples are augmented
    (one seed pair per example, from `augment_seed`): VTLP first when `warp` = (max_warp,
    band edges in Hz), then SpecAugment masks unless `masks` is False."""
    examples = examples.map(lambda ex: {k: ex[k] for k in TRAIN_KEYS})
    if shuffle_seed is not None:
        examples = examples.shuffle(4096, seed=shuffle_seed, reshuffle_each_iteration=False)

    def augment(features, seed):  # the masks keep the seed they had before VTLP existed
        if warp is not None:
            features = vtlp(features, tf.random.experimental.stateless_fold_in(seed, 1),
                            warp[1], warp[0])
        return spec_augment(features, seed) if masks else features

    if augment_seed is not None:
        pairs = tf.data.Dataset.random(seed=augment_seed).batch(2)
        examples = tf.data.Dataset.zip(examples, pairs).map(
            lambda ex, s: {**ex, "features": augment(ex["features"], s)},
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    bands = examples.element_spec["features"].shape[-1]  # 40 log-mels, 13 cepstra
    ref = bucket_boundaries[0]
    sizes = [max(1, batch_size * ref // b) for b in (ref,) + tuple(bucket_boundaries)]
    return examples.bucket_by_sequence_length(
        lambda ex: ex["frames"], list(bucket_boundaries), sizes,
        padded_shapes={"features": [None, bands], "frames": [], "labels": [None],
                       "transcript": []},
        padding_values={"features": 0.0, "frames": 0, "labels": 0, "transcript": ""},
        drop_remainder=False).prefetch(tf.data.AUTOTUNE)
