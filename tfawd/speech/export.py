"""The speech recogniser's serving signatures, for TF Serving (layout: `tfawd.core.serving`).

- `transcribe_wav`: wav string [B] (file bytes) -> transcripts string [B], scores float32 [B],
  attention float32 [B, L, T'], frames int32 [B] (encoder frames of each utterance).
- `transcribe_features`: features float32 [B, T, 40] (log-mels as `log_mel` computes them) or
  [B, T, 13] (Sphinx cepstra, AN4's features; either is turned into the form the model was
  trained on), lengths int32 [B] -> the same outputs.
Bad requests give InvalidArgument errors naming the problem (parameter ranges, not a WAV file,
wrong sample rate, empty audio, wrong feature size), never a crash.

Each wav is checked (RIFF/WAVE header, the model's sample rate, at least one sample), decoded
with `tf.audio.decode_wav` (16-bit PCM; first channel, as the training sources read it) and
featurised exactly as in training: `speech_features.log_mel`, then the model's normalisation
(`ListenAttendSpell.normalise`: each utterance over its own frames, or the training split's
mean and std saved with the weights under --feature_norm=global). `transcribe_features` takes
the log-mels (not normalised) and normalises them the same way over their `lengths` frames.
Decoding is `greedy` (a `tf.while_loop` of at most `max_decode_len` characters); a transcript
stops at its `<eos>`.
"""

import keras
import numpy as np
import tensorflow as tf

from pipelines import an4, speech_features
from pipelines.speech_features import N_MELS, CharVocab
from tfawd.core.serving import export_name, save_version, write_models_config
from tfawd.nn import fusion
from tfawd.speech import inference
from tfawd.speech.las import encoder_frames


class SpeechSignatures:
    def __init__(self, model, char_vocab, sample_rate: int, max_decode_len: int):
        self.model, self.vocab = model, char_vocab
        self.sample_rate, self.max_len = int(sample_rate), int(max_decode_len)

    def _featurise(self, wav):
        """One wav file's bytes -> normalised log-mels [T, 40], after the checks."""
        head = tf.strings.substr(tf.strings.join([wav, " " * 12]), 0, 12)
        is_wav = ((tf.strings.substr(head, 0, 4) == "RIFF")
                  & (tf.strings.substr(head, 8, 4) == "WAVE"))
        check = tf.debugging.Assert(is_wav, ["not a WAV file (no RIFF/WAVE header): send the "
                                             "bytes of a 16-bit PCM .wav file"])
        with tf.control_dependencies([check]):
            audio, rate = tf.audio.decode_wav(wav, desired_channels=1)
        checks = [
            tf.debugging.assert_equal(rate, self.sample_rate, message=(
                f"the wav's sample rate is not {self.sample_rate} Hz, the rate this model's "
                "features are computed at; resample the audio")),
            tf.debugging.assert_positive(tf.shape(audio)[0], message="zero-length audio: the "
                                         "wav has no samples")]
        with tf.control_dependencies(checks):
            audio = tf.identity(audio[:, 0])
        return speech_features.log_mel(audio, self.sample_rate)  # normalised by the model

    def _decode(self, features, frames):
        tokens, scores, attention = self.model.greedy(features, frames, self.max_len)
        chars = tf.constant([t.encode("utf-8") for t in self.vocab.tokens])
        before_eos = tf.cumsum(tf.cast(tokens == self.vocab.eos_id, tf.int32), axis=1) == 0
        keep = before_eos & (tokens >= 3)  # <pad>, <sos>, <eos> are not characters
        text = tf.strings.reduce_join(tf.where(keep, tf.gather(chars, tokens), ""), axis=1)
        listener = self.model.listener
        return {"transcripts": text, "scores": scores, "attention": attention,
                "frames": encoder_frames(frames, listener.frame_stack, listener.pyramid_layers)}

    def transcribe_wav(self, wav):
        feats = tf.map_fn(self._featurise, wav, fn_output_signature=tf.RaggedTensorSpec(
            [None, N_MELS], tf.float32, ragged_rank=0))
        frames = tf.cast(feats.row_lengths(), tf.int32)
        return self._decode(self.model.normalise(feats.to_tensor(), frames), frames)

    def transcribe_features(self, features, lengths):
        """features: log-mels [B, T, 40] as `log_mel` computes them, or Sphinx cepstra
        [B, T, 13] (AN4's .mfc frames), turned into the model's input by the DCT pair the AN4
        reader uses (`pipelines.an4.to_logmel` / `to_cepstra`); not normalised (the model
        does it)."""
        shape = tf.shape(features)
        bands = shape[-1]
        checks = [
            tf.debugging.assert_equal(tf.rank(features), 3, message="features must be "
                                      "[batch, frames, bands]"),
            tf.debugging.Assert((bands == N_MELS) | (bands == an4.N_CEPSTRA), [
                f"features must have {N_MELS} log-mel bands or {an4.N_CEPSTRA} Sphinx cepstra "
                "(AN4's .mfc frames) in the last dimension"]),
            tf.debugging.assert_equal(tf.shape(lengths)[0], shape[0], message="lengths must "
                                      "have one entry per utterance of features"),
            tf.debugging.assert_positive(lengths, message="lengths must be >= 1 (zero-length "
                                         "utterance)"),
            tf.debugging.assert_less_equal(lengths, shape[1], message="lengths must be at most "
                                           "the frames dimension of features")]
        dim = self.model.feature_dim
        with tf.control_dependencies(checks):
            # the one of the two forms the model does not take goes through the DCT pair
            other, matrix = ((an4.N_CEPSTRA, an4.CEPSTRA_TO_LOGMEL) if dim == N_MELS
                             else (N_MELS, an4.LOGMEL_TO_CEPSTRA))
            features = tf.cond(bands == other,
                               lambda: tf.einsum("btc,cm->btm", features,
                                                 tf.constant(matrix, tf.float32)),
                               lambda: tf.identity(features))
            features = tf.ensure_shape(features, [None, None, dim])
            lengths = tf.identity(lengths)
        return self._decode(self.model.normalise(features, lengths), lengths)


def export_speech_model(model, char_vocab, sample_rate: int, max_decode_len: int,
                        base_dir: str, name: str) -> str:
    """Writes the recogniser `model` as the next version of `<base_dir>/<name>`, traced with
    standard kernels only (`tfawd.nn.fusion`). `sample_rate` 0, or a model whose input is not
    40 log-mels: a model trained on precomputed features (AN4's cepstra), whose features no
    wav front end here reproduces: exported with `transcribe_features` only (also its
    serving_default)."""
    with fusion.standard_kernels():
        return _export(model, char_vocab, sample_rate, max_decode_len, base_dir, name)


def _export(model, char_vocab, sample_rate, max_decode_len, base_dir, name):
    if model.feature_dim != N_MELS:  # trained on AN4's cepstra: no wav front end makes them
        sample_rate = 0
    sig = SpeechSignatures(model, char_vocab, sample_rate, max_decode_len)
    archive = keras.export.ExportArchive()
    # no track(model): LAS has no call(), so Keras never marks it built; the endpoints
    # capture its variables, which ExportArchive saves.
    if sample_rate:  # a model trained on features only (AN4: no audio) has no wav front end
        archive.add_endpoint("transcribe_wav", sig.transcribe_wav,
                             [tf.TensorSpec([None], tf.string, name="wav")])
    archive.add_endpoint("transcribe_features", sig.transcribe_features,
                         [tf.TensorSpec([None, None, None], tf.float32, name="features"),
                          tf.TensorSpec([None], tf.int32, name="lengths")])
    return save_version(archive, base_dir, name, warmup_requests(sample_rate))


def warmup_requests(sample_rate: int) -> list:
    """A request per signature at batch 1 and 2 (TF Serving replays them on load): a second of
    a 440 Hz tone as a 16-bit wav (models with a wav front end), its log-mels as features."""
    out = []
    lengths = np.array([100, 60], np.int32)
    features = np.zeros([2, 100, N_MELS], np.float32)
    if sample_rate:
        tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(sample_rate) / sample_rate)
        wav = tf.audio.encode_wav(tf.constant(tone, tf.float32)[:, None], sample_rate).numpy()
        out += [("transcribe_wav", {"wav": np.array([wav])}),
                ("transcribe_wav", {"wav": np.array([wav, wav])})]
        mels = speech_features.log_mel(tf.constant(tone, tf.float32), sample_rate).numpy()
        n = min(len(mels), features.shape[1])
        features[:, :n] = mels[:n]
        lengths = np.minimum(lengths, n)
    out += [("transcribe_features", {"features": features[:1], "lengths": lengths[:1]}),
            ("transcribe_features", {"features": features, "lengths": lengths})]
    return out


def export_run(cfg) -> str:
    """`--mode=export --model=las`: the best weights of `cfg.model_dir` (architecture from its
    model.json), at the sample rate the run recorded in results.json (else the one of its
    --dataset)."""
    model, cfg = inference.load_trained(cfg)
    path = export_speech_model(model, CharVocab(), inference.sample_rate_of(cfg),
                               cfg.max_decode_len, cfg.export_dir,
                               export_name(cfg.model_dir, cfg.export_name))
    print(f"| export | {path} | {write_models_config(cfg.export_dir)}", flush=True)
    return path
