"""Language models. `LstmLanguageModel` is seed 000's base model.

The model is a function of (token ids, recurrent state) -> (logits, new state): the caller
carries the state across the windows of the BPTT stream, so the same model serves training
(batch 20-80), validation (batch 10), testing (batch 1) and prediction without `stateful` layers.
"""

import dataclasses

import keras
import tensorflow as tf

from tfawd.core import runtime
from tfawd.core.checkpoints import load_config
from tfawd.core.run_guard import RunError
from tfawd.lm.config import AUTO
from tfawd.nn.adaptive_softmax import (
    AdaptiveEmbedding,
    AdaptiveSoftmax,
    balanced_cutoffs,
    cluster_shares,
    sgd_unstable,
    stable_share,
)
from tfawd.nn.layers import EmbeddingDropout, LockedDropout, WeightDropLSTM
from tfawd.nn.losses import decoder_nll


def tied_logits(h, embeddings, bias):
    """Weight tying (Inan et al. 2017; Press & Wolf 2017): the decoder is the embedding
    matrix transposed, plus a bias; computed in h's precision.

    h [..., E] is flattened to one [N, E] x [E, V] matmul: a batched matmul against the shared
    matrix would make its gradient a [B, V, E] tensor summed over the batch."""
    flat = tf.reshape(h, [-1, h.shape[-1]])
    logits = (tf.matmul(flat, tf.cast(embeddings, h.dtype), transpose_b=True)
              + tf.cast(bias, h.dtype))
    logits = tf.reshape(logits, tf.concat([tf.shape(h)[:-1], tf.shape(bias)], axis=0))
    return tf.ensure_shape(logits, h.shape[:-1].concatenate(bias.shape))


def _carried(h, c):
    """The state carried to the next window, float32 whatever the compute precision."""
    return tf.cast(h, tf.float32), tf.cast(c, tf.float32)


def _adaptive_layers(vocab_size, emsize, cutoffs, div, dropoute, tie):
    """(embedding, softmax) of an adaptive model: adaptive input tied to the adaptive softmax
    (Baevski & Auli 2019, section 3; the AWD-LSTM's tying, section 4.5) when `tie`, else a
    plain embedding and an untied adaptive softmax."""
    if tie:
        embedding = AdaptiveEmbedding(vocab_size, emsize, cutoffs, div, dropout=dropoute,
                                      name="embedding")
        return embedding, AdaptiveSoftmax(vocab_size, emsize, cutoffs, div, tied_to=embedding,
                                          name="softmax")
    layer = (EmbeddingDropout(vocab_size, emsize, dropout=dropoute, name="embedding",
                              embeddings_initializer=keras.initializers.RandomUniform(-0.1, 0.1))
             if dropoute else keras.layers.Embedding(
                 vocab_size, emsize, name="embedding",
                 embeddings_initializer=keras.initializers.RandomUniform(-0.1, 0.1)))
    return layer, AdaptiveSoftmax(vocab_size, emsize, cutoffs, div, name="softmax")


def _call(model, inputs, states, training, return_activations, targets):
    """Both models' `call`: `features`, then the logits, or the targets' NLL: `decoder_nll`
    (full softmax) or the adaptive softmax's `nll` (only the target's cluster computed)."""
    h, new_states, activations = model.features(inputs, states, training=training)
    if targets is not None and model.softmax_kind == "adaptive":
        out = model.softmax.nll(h, targets)
    elif targets is not None:
        out = decoder_nll(h, *model.decoder_weights(), targets)
    else:
        out = model.logits(h)
    if return_activations:
        return out, new_states, activations
    return out, new_states


@keras.saving.register_keras_serializable("tfawd")
class LstmLanguageModel(keras.Model):
    """Embedding -> dropout -> `nlayers` LSTMs (dropout between) -> dropout -> dense softmax.

    The "Base LSTM Model" of seed 000 (and of PyTorch's word_language_model example): plain
    dropout on the embedding output, between layers and on the last output; a fully connected
    output layer over the vocabulary, optionally tied to the embedding (Press & Wolf 2017).
    Embedding and output weights start uniform in [-0.1, 0.1], the output bias at zero.
    """

    def __init__(self, vocab_size, emsize=650, nhid=650, nlayers=2, dropout=0.5,
                 tie_weights=False, softmax="full", cutoffs=(), div=4, **kwargs):
        super().__init__(**kwargs)
        if tie_weights and nhid != emsize:
            raise ValueError(f"tie_weights needs nhid == emsize, got {nhid} and {emsize}")
        self.vocab_size, self.emsize, self.nhid = vocab_size, emsize, nhid
        self.nlayers, self.dropout_rate, self.tie_weights = nlayers, dropout, tie_weights
        self.softmax_kind, self.cutoffs, self.div = softmax, list(cutoffs), div
        init = keras.initializers.RandomUniform(-0.1, 0.1)
        if softmax == "adaptive":
            self.embedding, self.softmax = _adaptive_layers(vocab_size, emsize, cutoffs, div,
                                                            0.0, tie_weights)
        else:
            self.embedding = keras.layers.Embedding(vocab_size, emsize, name="embedding",
                                                    embeddings_initializer=init)
        self.dropouts = [keras.layers.Dropout(dropout, name=f"dropout_{i}")
                         for i in range(nlayers + 1)]
        # WeightDropLSTM without weight drop is a plain LSTM on the fast recurrence of
        # `lstm_kernel` (keras.layers.LSTM runs a generic per-step loop on CPU), initialised as
        # keras.layers.LSTM (unit forget bias).
        self.rnns = [WeightDropLSTM(nhid, 0.0, return_state=True, init="keras",
                                    name=f"lstm_{i}") for i in range(nlayers)]
        if softmax == "full" and not tie_weights:
            self.decoder = keras.layers.Dense(vocab_size, kernel_initializer=init, name="decoder")

    def build(self, input_shape=None):
        if self.tie_weights and self.softmax_kind == "full":
            self.decoder_bias = self.add_weight(shape=(self.vocab_size,), initializer="zeros",
                                                name="decoder_bias")
        self.built = True

    def initial_state(self, batch_size):
        """Zero (h, c) for every layer."""
        z = tf.zeros([batch_size, self.nhid])
        return [(z, z) for _ in range(self.nlayers)]

    def decoder_weights(self):
        """(W [V, E], b [V]) of the output layer, tied or not."""
        if self.tie_weights:
            return self.embedding.embeddings, self.decoder_bias
        return tf.transpose(self.decoder.kernel), self.decoder.bias

    def features(self, inputs, states, training=False):
        """inputs [B, T] int ids, states [(h, c)] * nlayers -> (the output layer's input
        [B, T, E], new states, {"raw_last", "dropped_last"}: the last layer's raw and dropped
        outputs)."""
        h = self.dropouts[0](self.embedding(inputs), training=training)
        new_states = []
        for rnn, drop, (h0, c0) in zip(self.rnns, self.dropouts[1:], states):
            raw, h_t, c_t = rnn(h, initial_state=(h0, c0), training=training)
            new_states.append(_carried(h_t, c_t))
            h = drop(raw, training=training)
        return h, new_states, {"raw_last": raw, "dropped_last": h}

    def logits(self, h):
        """The output layer: [..., E] -> logits [..., V] (in h's precision); with the adaptive
        softmax its exact log-probabilities (float32), which any softmax leaves unchanged."""
        if self.softmax_kind == "adaptive":
            return self.softmax.log_probs(h)
        if self.tie_weights:
            return tied_logits(h, self.embedding.embeddings, self.decoder_bias)
        return self.decoder(h)

    def call(self, inputs, states, training=False, return_activations=False, targets=None):
        """inputs [B, T] int ids, states [(h, c)] * nlayers -> logits [B, T, V], new states
        (and with `return_activations` the last layer's raw and dropped outputs). Given
        `targets` [B, T], their NLL [B, T] (`decoder_nll`) takes the place of the logits."""
        return _call(self, inputs, states, training, return_activations, targets)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "emsize": self.emsize,
                "nhid": self.nhid, "nlayers": self.nlayers, "dropout": self.dropout_rate,
                "tie_weights": self.tie_weights, **_softmax_config(self)}


@keras.saving.register_keras_serializable("tfawd")
class AwdLstmModel(keras.Model):
    """AWD-LSTM (Merity, Keskar & Socher 2017): embedding dropout (dropoute) -> locked
    dropout (dropouti) -> weight-dropped LSTMs emsize->nhid->...->emsize with locked dropout
    between them (dropouth) and on the output (dropout) -> decoder tied to the embedding.

    `call(..., return_activations=True)` also returns the last layer's raw and dropped
    outputs, which AR and TAR (section 4.6) penalise.
    """

    def __init__(self, vocab_size, emsize=400, nhid=1150, nlayers=3, dropout=0.4,
                 dropouth=0.2, dropouti=0.65, dropoute=0.1, wdrop=0.5, softmax="full",
                 cutoffs=(), div=4, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.emsize, self.nhid, self.nlayers = vocab_size, emsize, nhid, nlayers
        self.rates = dict(dropout=dropout, dropouth=dropouth, dropouti=dropouti,
                          dropoute=dropoute, wdrop=wdrop)
        self.softmax_kind, self.cutoffs, self.div = softmax, list(cutoffs), div
        if softmax == "adaptive":
            self.embedding, self.softmax = _adaptive_layers(vocab_size, emsize, cutoffs, div,
                                                            dropoute, tie=True)
        else:
            self.embedding = EmbeddingDropout(
                vocab_size, emsize, dropout=dropoute, name="embedding",
                embeddings_initializer=keras.initializers.RandomUniform(-0.1, 0.1))
        self.input_dropout = LockedDropout(dropouti, name="dropouti")
        self.sizes = [nhid] * (nlayers - 1) + [emsize]  # the last layer matches the tied decoder
        self.rnns = [WeightDropLSTM(n, wdrop, return_state=True, name=f"lstm_{i}")
                     for i, n in enumerate(self.sizes)]
        self.hidden_dropouts = [LockedDropout(dropouth, name=f"dropouth_{i}")
                                for i in range(nlayers - 1)]
        self.output_dropout = LockedDropout(dropout, name="dropout")

    def build(self, input_shape=None):
        if self.softmax_kind == "full":
            self.decoder_bias = self.add_weight(shape=(self.vocab_size,), initializer="zeros",
                                                name="decoder_bias")
        self.built = True

    def initial_state(self, batch_size):
        return [(tf.zeros([batch_size, n]), tf.zeros([batch_size, n])) for n in self.sizes]

    def decoder_weights(self):
        """(W [V, E], b [V]) of the tied output layer."""
        return self.embedding.embeddings, self.decoder_bias

    def features(self, inputs, states, training=False):
        """As `LstmLanguageModel.features`."""
        h = self.input_dropout(self.embedding(inputs, training=training), training=training)
        new_states = []
        for i, (rnn, (h0, c0)) in enumerate(zip(self.rnns, states)):
            raw, h_t, c_t = rnn(h, initial_state=(h0, c0), training=training)
            new_states.append(_carried(h_t, c_t))
            drop = self.hidden_dropouts[i] if i < self.nlayers - 1 else self.output_dropout
            h = drop(raw, training=training)
        return h, new_states, {"raw_last": raw, "dropped_last": h}

    def logits(self, h):
        """The tied output layer: [..., E] -> logits [..., V] (in h's precision), or the
        adaptive softmax's exact log-probabilities."""
        if self.softmax_kind == "adaptive":
            return self.softmax.log_probs(h)
        return tied_logits(h, self.embedding.embeddings, self.decoder_bias)

    def call(self, inputs, states, training=False, return_activations=False, targets=None):
        """As `LstmLanguageModel.call`."""
        return _call(self, inputs, states, training, return_activations, targets)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "emsize": self.emsize,
                "nhid": self.nhid, "nlayers": self.nlayers, **self.rates,
                **_softmax_config(self)}


def _softmax_config(model) -> dict:
    return {"softmax": model.softmax_kind, "cutoffs": model.cutoffs, "div": model.div}


def built_in(precision: str, make) -> keras.Model:
    """`make()`'s model, its layers created under the dtype policy `precision` ("auto"
    resolved for this machine by `runtime.resolve_precision`; weights stay float32), then
    built by one call on a [1, 1] input."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(runtime.resolve_precision(precision))
    try:
        model = make()
    finally:
        keras.config.set_dtype_policy(previous)
    model(tf.zeros([1, 1], tf.int32), model.initial_state(1))
    return model


def build_model(cfg, vocab_size: int) -> keras.Model:
    """The model named by `cfg.model`, built (its weights created), its layers computing in
    `cfg.precision` (`built_in`)."""
    softmax = dict(softmax=cfg.softmax, cutoffs=cfg.adaptive_cutoffs_list(), div=cfg.adaptive_div)
    if softmax["cutoffs"] and softmax["cutoffs"][-1] >= vocab_size:
        raise ValueError(f"--adaptive_cutoffs={cfg.adaptive_cutoffs} must stay below the "
                         f"vocabulary size {vocab_size}; lower the last cut-off")
    if cfg.model == "awd_lstm":
        return built_in(cfg.precision, lambda: AwdLstmModel(
            vocab_size, cfg.emsize, cfg.nhid, cfg.nlayers, cfg.dropout, cfg.dropouth,
            cfg.dropouti, cfg.dropoute, cfg.wdrop, **softmax))
    if cfg.model == "lstm":
        return built_in(cfg.precision, lambda: LstmLanguageModel(
            vocab_size, cfg.emsize, cfg.nhid, cfg.nlayers, cfg.dropout, cfg.tie_weights,
            **softmax))
    raise ValueError(f"unknown --model {cfg.model!r}")


AUTO_HEAD = 2000  # --adaptive_cutoffs=auto: the head's words (a fifth of smaller vocabularies)


def resolve_cutoffs(cfg, counts):
    """`cfg` with `--adaptive_cutoffs=auto` replaced by cut-offs for ids sorted by frequency
    (`counts[w]` training occurrences of id w): a head of min(2000, V // 5) words, then tail
    clusters of at most `stable_share(lr)` = 1.5 / lr of the tokens each (`balanced_cutoffs`;
    `sgd_unstable` says why). Deterministic for a corpus and lr, so a resumed run resolves
    them alike; the model saves the resolved ones. Any other value is returned unchanged."""
    if cfg.softmax != "adaptive" or cfg.adaptive_cutoffs != AUTO:
        return cfg
    head = max(1, min(AUTO_HEAD, len(counts) // 5))
    cutoffs = balanced_cutoffs(counts, head, stable_share(cfg.lr))
    return dataclasses.replace(cfg, adaptive_cutoffs=",".join(str(c) for c in cutoffs))


def unstable_cluster_warning(cfg, counts) -> str | None:
    """With `--softmax=adaptive`: a warning naming the tail clusters whose logit plain SGD at
    `--lr` would make oscillate (`sgd_unstable`: too large a share of the training tokens,
    `counts[w]` the occurrences of id w), and cut-offs of at most `stable_share(lr)` of the
    tokens per tail cluster that avoid it; else None."""
    if cfg.softmax != "adaptive":
        return None
    cutoffs = cfg.adaptive_cutoffs_list()
    bounds = [0, *cutoffs, len(counts)]
    shares = cluster_shares(counts, bounds)
    bad = [f"[{bounds[i]}, {bounds[i + 1]}) holds {shares[i]:.1%}"
           for i in range(1, len(shares)) if sgd_unstable(shares[i], cfg.lr)]
    if not bad:
        return None
    fix = ",".join(str(c) for c in balanced_cutoffs(counts, cutoffs[0], stable_share(cfg.lr)))
    return (f"--adaptive_cutoffs={cfg.adaptive_cutoffs}: the tail cluster(s) {'; '.join(bad)} "
            f"of the training tokens; SGD at --lr={cfg.lr:g} makes such a cluster's logit "
            f"oscillate (lr * share * (1 - share) > 2) and the loss can stall at the unigram "
            f"level for thousands of steps. Clusters of at most {stable_share(cfg.lr):.1%} each: "
            f"--adaptive_cutoffs={fix}")


def float32_twin(model: keras.Model) -> keras.Model:
    """A copy of `model` (same class and config) computing in float32; `copy_weights` fills
    it. Small-batch evaluation uses it under mixed precision: at batch 1 every matmul is a
    matrix-vector product, which runs slower in bfloat16 than in float32 on this CPU."""
    return built_in("float32", lambda: type(model).from_config(
        {**model.get_config(), "dtype": "float32"}))


def copy_weights(source: keras.Model, target: keras.Model) -> None:
    for src, dst in zip(source.variables, target.variables, strict=True):
        dst.assign(src)



MODEL_CLASSES = {"LstmLanguageModel": LstmLanguageModel, "AwdLstmModel": AwdLstmModel}
MODEL_FLAG = {"LstmLanguageModel": "lstm", "AwdLstmModel": "awd_lstm"}



def from_saved_config(path: str, precision: str = "float32") -> keras.Model:
    """The model `save_config` described, built (weights at their initial values) and computing
    in `precision` ("auto" resolved for this machine)."""
    saved = load_config(path)
    if saved["class"] not in MODEL_CLASSES:
        raise RunError(f"{path} names model class {saved['class']!r}, not a language model "
                       f"({', '.join(MODEL_CLASSES)}); restore it from a copy of the run folder")
    try:
        return built_in(precision, lambda: MODEL_CLASSES[saved["class"]](**saved["config"]))
    except (TypeError, ValueError, KeyError) as e:
        raise RunError(f"{path} is damaged (its config does not build a "
                       f"{saved['class']}: {str(e).splitlines()[0][:120]}); restore it from a "
                       f"copy of the run folder") from None


def architecture_flags(path: str) -> dict:
    """The flags (`--model`, `--emsize`, ...) that describe the model of a saved config."""
    saved = load_config(path)
    c = saved["config"]
    if saved["class"] not in MODEL_FLAG or not all(k in c for k in ("emsize", "nhid",
                                                                     "nlayers")):
        raise RunError(f"{path} is damaged or not a language model's (class "
                       f"{saved['class']!r}); restore it from a copy of the run folder")
    out = {"model": MODEL_FLAG[saved["class"]], "emsize": c["emsize"], "nhid": c["nhid"],
           "nlayers": c["nlayers"], "softmax": c.get("softmax", "full")}
    if saved["class"] == "LstmLanguageModel":
        out["tie_weights"] = c["tie_weights"]
    if out["softmax"] == "adaptive":
        out.update(adaptive_cutoffs=",".join(str(x) for x in c["cutoffs"]), adaptive_div=c["div"])
    return out
