"""Export for TF Serving (issue 7): SavedModels with string-in signatures, in TF Serving's layout.

`--mode=export` writes `<export_dir>/<name>/<version>/` (integer versions; a new export gets
the next one, TF Serving serves the latest) and `<export_dir>/models.config`, the
ModelServerConfig text proto listing every model folder for `--model_config_file`. `<name>`
is `--export_name`, default the basename of `--model_dir`. Each version is written under a
hidden temporary name and renamed when complete, so a server never sees half an export.

Language model (`export_lm.export_language_model`); vocabulary, tokenisation and
`<unk>` mapping are in the graph (a `tf.lookup.StaticHashTable`), whitespace split as in training:
- `next_words` (also `serving_default`): text string [B], k int32 [] -> words string [B, k],
  probabilities float32 [B, k], ids int32 [B, k]: the k most likely next words (never `<unk>`).
- `score`: text string [B] -> tokens string [B, N], log_probs float32 [B, N] (0 past a line's
  end), lengths int32 [B], perplexity float32 [B], num_unknown int32 [B]: every word of the line
  and its closing `<eos>` scored, as training scores lines.
- `generate`: prompt string [B], num_tokens int32 [], temperature float32 [] (0: greedy),
  top_k int32 [] (0: all), top_p float32 [] in (0, 1], seed int64 [] -> text string [B],
  tokens string [B, num_tokens], log_probs float32 [B, num_tokens]; `<unk>` is never drawn.
A line is read in the start-of-line context of training: `<eos>` then its words, so an empty or
whitespace-only line is the distribution of a line's first word. Lines longer than `max_words`
(default `export_lm.MAX_WORDS`) are cut to their last `max_words` words. Invalid bytes are
replaced (U+FFFD), so such words are unknown words.

Speech recogniser (`export_speech.export_speech_model`):
- `transcribe_wav`: wav string [B] (file bytes) -> transcripts string [B], scores float32 [B],
  attention float32 [B, L, T'], frames int32 [B] (encoder frames of each utterance).
- `transcribe_features`: features float32 [B, T, 40] (log-mels as `log_mel` computes them),
  lengths int32 [B] -> the same outputs.
Bad requests give InvalidArgument errors naming the problem (parameter ranges, not a WAV file,
wrong sample rate, empty audio, wrong feature size), never a crash.
"""
import os

from tfawd.run_dir import RunDir
from tfawd.serving import SERVING_ROOT, next_version, save_version, write_models_config  # noqa: F401


def export_language_model(model, vocab, base_dir, name, **kwargs) -> str:
    """Traced with standard kernels only: TF Serving runs no XLA by default (tfawd/fusion.py)."""
    from tfawd import fusion
    from tfawd.export_lm import export_language_model as export
    with fusion.standard_kernels():
        return export(model, vocab, base_dir, name, **kwargs)


def export_speech_model(model, char_vocab, sample_rate, max_decode_len, base_dir, name) -> str:
    """Traced with standard kernels only, like `export_language_model`."""
    from tfawd import fusion
    from tfawd.export_speech import export_speech_model as export
    with fusion.standard_kernels():
        return export(model, char_vocab, sample_rate, max_decode_len, base_dir, name)


def _name(cfg, export_name: str) -> str:
    return export_name or os.path.basename(os.path.normpath(cfg.model_dir))


def export_lm_run(cfg, inf) -> str:
    """`--mode=export` for the language models: the trained run of `cfg.model_dir`, to
    `inf.export_dir`."""
    from tfawd import inference
    model, vocab = inference.load_trained(cfg.model_dir, cfg)
    path = export_language_model(model, vocab, inf.export_dir, _name(cfg, inf.export_name))
    print(f"| export | {path} | {write_models_config(inf.export_dir)}", flush=True)
    return path


def export_speech_run(cfg) -> str:
    """`--mode=export --model=las`: the best weights of `cfg.model_dir`, at the sample rate
    the run recorded in results.json (else the one of its --dataset)."""
    import json

    import tensorflow as tf

    from pipelines.speech_features import CharVocab
    from tfawd import speech_training
    from tfawd.models import weights_checkpoint
    best = tf.train.latest_checkpoint(RunDir(cfg.model_dir).best)
    if not best:
        raise RuntimeError(f"no trained weights in {cfg.model_dir}/best: train first")
    results = RunDir(cfg.model_dir).results
    rate = 0
    if os.path.exists(results):
        with open(results) as f:
            rate = int(json.load(f).get("sample_rate") or 0)
    if not rate:
        rate = speech_training.sources(cfg)[1]
    if not rate:
        raise ValueError(f"--dataset={cfg.dataset} has no audio: its sample rate is unknown")
    vocab = CharVocab()
    model = speech_training.build_las(speech_training.trained_model_flags(cfg), vocab)
    weights_checkpoint(model).restore(best).assert_consumed()
    path = export_speech_model(model, vocab, rate, cfg.max_decode_len, cfg.export_dir,
                               _name(cfg, cfg.export_name))
    print(f"| export | {path} | {write_models_config(cfg.export_dir)}", flush=True)
    return path
