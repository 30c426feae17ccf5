"""A trained recogniser, the model only (no optimizer, no training step): built from the run's
`model.json` (the architecture saved with the weights), its best weights restored.
"""
import dataclasses

import tensorflow as tf

from pipelines import speech_features
from pipelines.speech_features import CharVocab
from tfawd.core import files
from tfawd.core.checkpoints import latest as latest_checkpoint
from tfawd.core.checkpoints import load_config, restore_weights, weights_checkpoint
from tfawd.core.run_dir import RunDir
from tfawd.core.run_flags import check_architecture
from tfawd.core.run_guard import RunError
from tfawd.speech.data import feature_dim
from tfawd.speech.las import ListenAttendSpell

FIX_RESULTS = "restore it from a copy of the run folder, or re-run its training command"


def build_las(cfg, vocab: CharVocab) -> ListenAttendSpell:
    dim = feature_dim(cfg)
    model = ListenAttendSpell(len(vocab), vocab.sos_id, vocab.eos_id, cfg.listener_units,
                              cfg.speller_units, cfg.attention_dim, cfg.char_embed_dim,
                              cfg.pyramid_layers, cfg.frame_stack, cfg.attention_window,
                              cfg.attention_window_back, cfg.max_chars_per_frame,
                              cfg.ctc_weight, cfg.attention, cfg.feature_norm, dim,
                              cfg.features)
    model.teacher_forced(tf.zeros([1, 4, dim]), tf.constant([4]),
                         tf.constant([[vocab.eos_id]]))
    return model


def batch_spec(bands: int) -> tuple:
    """Signature of a padded batch: features [B, T, bands], frames [B], labels [B, L]."""
    return (tf.TensorSpec([None, None, bands], tf.float32),
            tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, None], tf.int32))


def make_decoder(model, max_len: int, beam_size: int = 1):
    """(features, frames) -> (tokens [B, max_len], scores [B], attention [B, max_len, T'])."""
    @tf.function(input_signature=batch_spec(model.feature_dim)[:2])
    def decode(features, frames):
        if beam_size == 1:
            return model.greedy(features, frames, max_len)
        return model.beam_search(features, frames, max_len, beam_size)
    return decode


# Flags that define the trained network and how it attends and decodes, and the
# ListenAttendSpell config keys that hold them.
MODEL_FLAGS = {"listener_units": "listener_units", "frame_stack": "frame_stack",
               "pyramid_layers": "pyramid_layers", "speller_units": "speller_units",
               "attention_dim": "attention_dim", "char_embed_dim": "embed_dim",
               "attention_window": "attention_window",
               "attention_window_back": "attention_window_back",
               "max_chars_per_frame": "max_chars_per_frame", "ctc_weight": "ctc_weight",
               "attention": "attention", "feature_norm": "feature_norm",
               "features": "features"}


def _saved_model_flags(cfg) -> dict | None:
    """The MODEL_FLAGS of the run in `cfg.model_dir`: from its model.json, else (runs older
    than it) the flags in its results.json, a flag the run predates taking its default;
    None when the folder holds no run."""
    run = RunDir(cfg.model_dir)
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    if files.exists(run.model):
        saved = load_config(run.model)["config"]
        return {flag: saved.get(key, defaults[flag]) for flag, key in MODEL_FLAGS.items()}
    if files.exists(run.results):
        saved = files.read_json(run.results, fix=FIX_RESULTS).get("flags", {})
        return {k: saved.get(k, defaults[k]) for k in MODEL_FLAGS}
    return None


def trained_model_flags(cfg):
    """`cfg` with the architecture of the run in `cfg.model_dir`, so that evaluating or
    exporting it needs no architecture flags; unchanged when the folder holds no run yet.
    Architecture flags the user gave (`cfg.explicit`; every field of a config built in code)
    must agree with the run's: a conflict is refused naming both values."""
    values = _saved_model_flags(cfg)
    if values is None:
        return cfg
    check_architecture(cfg, cfg.model_dir, values)
    return dataclasses.replace(cfg, **values)


def load_trained(cfg) -> tuple:
    """(model, cfg with the run's architecture) of the trained run in `cfg.model_dir`: the
    model only, its best weights restored."""
    best = latest_checkpoint(RunDir(cfg.model_dir).best)
    if not best:
        raise RunError(f"no trained weights in {cfg.model_dir}/best: train first")
    cfg = trained_model_flags(cfg)
    model = build_las(cfg, CharVocab())
    restore_weights(weights_checkpoint(model), best, RunDir(cfg.model_dir).model)
    return model, cfg


class Recognizer:
    """A trained recogniser for Python callers: `transcribe(wav_paths)` -> transcripts.

      from tfawd import speech
      rec = speech.load("runs/las_digits")
      rec.transcribe(["a.wav", "b.wav"])  # ["three one", "nine"]
    """

    def __init__(self, model, cfg, sample_rate: int):
        self.model, self.cfg, self.vocab, self.sample_rate = model, cfg, CharVocab(), sample_rate
        self._decode = make_decoder(model, cfg.max_decode_len, cfg.beam_size)

    def features(self, wav_path: str):
        """Log-mels of one WAV file at the model's sample rate (not yet normalised)."""
        if not self.sample_rate:
            raise ValueError(f"{self.cfg.model_dir} was trained on precomputed features "
                             f"(--dataset={self.cfg.dataset}, no audio): it cannot transcribe "
                             f"wav files; serve its export's transcribe_features")
        audio, rate = tf.audio.decode_wav(tf.io.read_file(wav_path))
        if int(rate) != self.sample_rate:
            raise ValueError(f"{wav_path}: {int(rate)} Hz, the model was trained on "
                             f"{self.sample_rate} Hz audio; resample it first")
        return speech_features.log_mel(audio[:, 0], self.sample_rate)

    def transcribe(self, wav_paths) -> list:
        feats = [self.features(p) for p in wav_paths]
        frames = tf.constant([int(f.shape[0]) for f in feats], tf.int32)
        batch = tf.stack([tf.pad(f, [[0, int(max(frames)) - f.shape[0]], [0, 0]])
                          for f in feats])
        tokens, _, _ = self._decode(self.model.normalise(batch, frames), frames)
        return [self.vocab.decode(t) for t in tokens.numpy()]


def sample_rate_of(cfg) -> int:
    """The sample rate the run of `cfg.model_dir` trained on (its results.json), else the one
    of its --dataset; 0 for data without audio (precomputed features, e.g. AN4)."""
    results = RunDir(cfg.model_dir).results
    if files.exists(results):
        recorded = files.read_json(results, fix=FIX_RESULTS)
        if "sample_rate" in recorded:  # 0: trained on precomputed features
            return int(recorded["sample_rate"] or 0)
    from tfawd.speech.data import sources
    return sources(cfg)[1]


def load(model_dir: str, **flags) -> Recognizer:
    """The trained recogniser of `model_dir` (decoding settings such as beam_size,
    max_decode_len may be given as keyword arguments)."""
    from tfawd.speech.config import SpeechConfig
    cfg = SpeechConfig(model_dir=model_dir, explicit=tuple(flags), **flags)
    model, cfg = load_trained(cfg)
    return Recognizer(model, cfg, sample_rate_of(cfg))
