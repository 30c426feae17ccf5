"""The language model's serving signatures, for TF Serving (layout: `tfawd.core.serving`).

Vocabulary, tokenisation and `<unk>` mapping are in the graph (a `tf.lookup.StaticHashTable`),
whitespace split as in training:
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
(default `MAX_WORDS`) are cut to their last `max_words` words. Invalid bytes are
replaced (U+FFFD), so such words are unknown words.

Everything runs in the graph with standard kernels:
tokenisation (`tf.strings.split`), the vocabulary (`tf.lookup.StaticHashTable`, unknown words
to `<unk>`), the model, and generation (`inference.sampling_loop`, a `tf.while_loop` carrying the
LSTM state). Bad parameters fail `tf.debugging` assertions (InvalidArgument naming them)
before anything runs.
"""
import keras
import numpy as np
import tensorflow as tf

from pipelines.vocab import EOS, UNK
from tfawd.core.serving import export_name, save_version, write_models_config
from tfawd.lm import inference
from tfawd.lm.models import copy_weights, float32_twin
from tfawd.nn import fusion

MAX_WORDS = 256  # a line is cut to its last MAX_WORDS words (logits are [B, words, V])
MAX_GENERATE = 1024  # most tokens one generate request may ask for
# Whitespace Python's str.split() (the training tokeniser) splits on beyond ASCII's.
_UNICODE_SPACES = (r"[\x{1c}-\x{1f}\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}"
                   r"\x{202f}\x{205f}\x{3000}]")


class LanguageModelSignatures:
    """The signature functions of `model` with `vocab`; `lookup` is the table to track."""

    def __init__(self, model, vocab, max_words: int = MAX_WORDS):
        self.model, self.max_words = inference.WeakInferenceModel(model), max_words
        self.size, self.unk, self.eos = len(vocab), vocab.unk_id, vocab.index[EOS]
        self.words = np.array([w.encode("utf-8") for w in vocab.words], dtype=object)
        self.lookup = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(self.words,
                                                np.arange(self.size, dtype=np.int64)),
            default_value=self.unk)

    def _tokens(self, text):
        """string [B] -> (ids [B, L] int32 padded with <eos>, lengths [B], unknown [B]):
        whitespace-separated words (after replacing invalid UTF-8), the last max_words."""
        text = tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace")
        words = tf.strings.split(tf.strings.regex_replace(text, _UNICODE_SPACES, " "))
        words = words[:, -self.max_words:]
        ids = tf.cast(self.lookup.lookup(words), tf.int32)
        unknown = tf.reduce_sum(tf.cast((ids == self.unk) & (words != UNK), tf.int32), axis=1)
        return ids.to_tensor(default_value=self.eos), tf.cast(ids.row_lengths(), tf.int32), unknown

    def _read(self, text):
        """(inputs [B, L + 1]: <eos> then each line's words, lengths [B] of those, unknown)."""
        ids, lengths, unknown = self._tokens(text)
        start = tf.fill([tf.shape(ids)[0], 1], self.eos)
        return tf.concat([start, ids], axis=1), lengths + 1, unknown

    def _logits(self, inputs):
        logits, _ = self.model(inputs, self.model.initial_state(tf.shape(inputs)[0]))
        return tf.cast(logits, tf.float32)

    def _word(self, ids):
        return tf.gather(tf.constant(self.words), ids)

    def _checked(self, value, checks):
        with tf.control_dependencies(checks):
            return tf.identity(value)

    def next_words(self, text, k):
        allowed = self.size - 1  # every word but <unk>
        k = self._checked(k, [
            tf.debugging.assert_positive(k, message="k must be >= 1"),
            tf.debugging.assert_less_equal(k, allowed, message=f"k must be at most {allowed}, "
                                           f"the vocabulary without {UNK}")])
        inputs, lengths, _ = self._read(text)
        h, _ = self.model.features(inputs, self.model.initial_state(tf.shape(inputs)[0]))
        last = tf.gather(h, lengths - 1, batch_dims=1)  # the output layer at the last word only
        probs = tf.nn.softmax(tf.cast(self.model.logits(last), tf.float32))
        top = tf.math.top_k(tf.where(tf.range(self.size) == self.unk, -1.0, probs), k)
        return {"words": self._word(top.indices), "probabilities": top.values, "ids": top.indices}

    def score(self, text):
        inputs, lengths, unknown = self._read(text)
        targets = tf.concat([inputs[:, 1:], inputs[:, :1]], axis=1)  # words, then <eos>s
        logp = tf.gather(tf.nn.log_softmax(self._logits(inputs)), targets, batch_dims=2)
        mask = tf.sequence_mask(lengths, tf.shape(targets)[1])
        logp = tf.where(mask, logp, 0.0)
        perplexity = tf.exp(-tf.reduce_sum(logp, axis=1) / tf.cast(lengths, tf.float32))
        return {"tokens": tf.where(mask, self._word(targets), ""), "log_probs": logp,
                "lengths": lengths, "perplexity": perplexity, "num_unknown": unknown}

    def generate(self, prompt, num_tokens, temperature, top_k, top_p, seed):
        allowed = self.size - 1
        checks = [
            tf.debugging.assert_positive(num_tokens, message="num_tokens must be >= 1"),
            tf.debugging.assert_less_equal(num_tokens, MAX_GENERATE,
                                           message=f"num_tokens must be at most {MAX_GENERATE}"),
            tf.debugging.assert_greater_equal(temperature, 0.0, message="temperature must be "
                                              ">= 0 (0: greedy)"),
            tf.debugging.assert_less(temperature, np.inf, message="temperature must be finite"),
            tf.debugging.assert_non_negative(top_k, message="top_k must be >= 0 (0: no limit)"),
            tf.debugging.assert_less_equal(top_k, allowed, message=f"top_k must be at most "
                                           f"{allowed}, the vocabulary without {UNK}"),
            tf.debugging.assert_positive(top_p, message="top_p must be in (0, 1]"),
            tf.debugging.assert_less_equal(top_p, 1.0, message="top_p must be in (0, 1]")]
        # every parameter passes through the checks, so no op reads one before they ran
        num_tokens, temperature, top_k, top_p = (self._checked(v, checks) for v in (
            num_tokens, temperature, top_k, top_p))
        inputs, lengths, _ = self._read(prompt)
        penalty = tf.where(tf.range(self.size) == self.unk, -np.inf, 0.0)
        args = lambda t: (inputs, lengths, num_tokens, t, top_k, top_p, seed, penalty)  # noqa
        tokens, logprobs = tf.cond(
            temperature > 0,
            lambda: inference.sampling_loop(self.model, False, *args(temperature)),
            lambda: inference.sampling_loop(self.model, True, *args(1.0)))
        words = self._word(tokens)
        return {"text": tf.strings.reduce_join(words, axis=1, separator=" "), "tokens": words,
                "log_probs": logprobs}


def export_language_model(model, vocab, base_dir: str, name: str,
                          max_words: int = MAX_WORDS) -> str:
    """Writes `model` (an LM of `vocab`) as the next version of `<base_dir>/<name>`, in
    float32 whatever precision it trained in: the server may lack bf16 units (then bf16 is
    emulated), and serving's small batches run faster in float32 on CPUs anyway. Traced with
    standard kernels only: TF Serving runs no XLA by default (`tfawd.nn.fusion`)."""
    with fusion.standard_kernels():
        return _export(model, vocab, base_dir, name, max_words)


def _export(model, vocab, base_dir, name, max_words):
    if model.compute_dtype != "float32":
        twin = float32_twin(model)
        copy_weights(model, twin)
        model = twin
    sig = LanguageModelSignatures(model, vocab, max_words)
    spec = tf.TensorSpec
    text = [spec([None], tf.string, name="text")]
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(sig.lookup)
    archive.add_endpoint("next_words", sig.next_words,
                         text + [spec([], tf.int32, name="k")])
    archive.add_endpoint("serving_default", sig.next_words,
                         text + [spec([], tf.int32, name="k")])
    archive.add_endpoint("score", sig.score, text)
    archive.add_endpoint("generate", sig.generate, [
        spec([None], tf.string, name="prompt"), spec([], tf.int32, name="num_tokens"),
        spec([], tf.float32, name="temperature"), spec([], tf.int32, name="top_k"),
        spec([], tf.float32, name="top_p"), spec([], tf.int64, name="seed")])
    return save_version(archive, base_dir, name, warmup_requests(vocab))


def warmup_requests(vocab) -> list:
    """A request per signature, at batch 1 and 4 (TF Serving replays them on load), made of
    the vocabulary's first words."""
    words = ([w for w in vocab.words if not w.startswith("<")][:8] or ["a"]) * 8
    texts = [" ".join(words[i:i + 3]).encode() for i in range(4)]
    out = []
    for batch in (texts[:1], texts):
        out += [("next_words", {"text": np.array(batch), "k": np.array(5, np.int32)}),
                ("score", {"text": np.array(batch)}),
                ("generate", {"prompt": np.array(batch), "num_tokens": np.array(5, np.int32),
                              "temperature": np.array(1.0, np.float32),
                              "top_k": np.array(0, np.int32), "top_p": np.array(1.0, np.float32),
                              "seed": np.array(0, np.int64)})]
    return out


def export_run(cfg) -> str:
    """`--mode=export` for the language models: the trained run of `cfg.model_dir`, to
    `cfg.export_dir`."""
    model, vocab = inference.load_trained(cfg.model_dir, cfg)
    path = export_language_model(model, vocab, cfg.export_dir,
                                 export_name(cfg.model_dir, cfg.export_name))
    print(f"| export | {path} | {write_models_config(cfg.export_dir)}", flush=True)
    return path
