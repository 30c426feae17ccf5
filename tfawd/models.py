"""Language models. `LstmLanguageModel` is seed 000's base model.

The model is a function of (token ids, recurrent state) -> (logits, new state): the caller
carries the state across the windows of the BPTT stream, so the same model serves training
(batch 20-80), validation (batch 10), testing (batch 1) and prediction without `stateful` layers.
"""
import keras
import tensorflow as tf

from tfawd.layers import EmbeddingDropout, LockedDropout, WeightDropLSTM
from tfawd.losses import decoder_nll


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


@keras.saving.register_keras_serializable("tfawd")
class LstmLanguageModel(keras.Model):
    """Embedding -> dropout -> `nlayers` LSTMs (dropout between) -> dropout -> dense softmax.

    The "Base LSTM Model" of seed 000 (and of PyTorch's word_language_model example): plain
    dropout on the embedding output, between layers and on the last output; a fully connected
    output layer over the vocabulary, optionally tied to the embedding (Press & Wolf 2017).
    Embedding and output weights start uniform in [-0.1, 0.1], the output bias at zero.
    """

    def __init__(self, vocab_size, emsize=650, nhid=650, nlayers=2, dropout=0.5,
                 tie_weights=False, **kwargs):
        super().__init__(**kwargs)
        if tie_weights and nhid != emsize:
            raise ValueError(f"tie_weights needs nhid == emsize, got {nhid} and {emsize}")
        self.vocab_size, self.emsize, self.nhid = vocab_size, emsize, nhid
        self.nlayers, self.dropout_rate, self.tie_weights = nlayers, dropout, tie_weights
        init = keras.initializers.RandomUniform(-0.1, 0.1)
        self.embedding = keras.layers.Embedding(vocab_size, emsize, embeddings_initializer=init,
                                                name="embedding")
        self.dropouts = [keras.layers.Dropout(dropout, name=f"dropout_{i}")
                         for i in range(nlayers + 1)]
        self.rnns = [keras.layers.LSTM(nhid, return_sequences=True, return_state=True,
                                       name=f"lstm_{i}") for i in range(nlayers)]
        if not tie_weights:
            self.decoder = keras.layers.Dense(vocab_size, kernel_initializer=init, name="decoder")

    def build(self, input_shape=None):
        if self.tie_weights:
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

    def call(self, inputs, states, training=False, return_activations=False, targets=None):
        """inputs [B, T] int ids, states [(h, c)] * nlayers -> logits [B, T, V], new states
        (and with `return_activations` the last layer's raw and dropped outputs). Given
        `targets` [B, T], their NLL [B, T] (`decoder_nll`) takes the place of the logits."""
        h = self.dropouts[0](self.embedding(inputs), training=training)
        new_states = []
        for rnn, drop, (h0, c0) in zip(self.rnns, self.dropouts[1:], states):
            raw, h_t, c_t = rnn(h, initial_state=[h0, c0], training=training)
            new_states.append(_carried(h_t, c_t))
            h = drop(raw, training=training)
        if targets is not None:
            logits = decoder_nll(h, *self.decoder_weights(), targets)
        elif self.tie_weights:
            logits = tied_logits(h, self.embedding.embeddings, self.decoder_bias)
        else:
            logits = self.decoder(h)
        if return_activations:
            return logits, new_states, {"raw_last": raw, "dropped_last": h}
        return logits, new_states

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "emsize": self.emsize,
                "nhid": self.nhid, "nlayers": self.nlayers, "dropout": self.dropout_rate,
                "tie_weights": self.tie_weights}


@keras.saving.register_keras_serializable("tfawd")
class AwdLstmModel(keras.Model):
    """AWD-LSTM (Merity, Keskar & Socher 2017): embedding dropout (dropoute) -> locked
    dropout (dropouti) -> weight-dropped LSTMs emsize->nhid->...->emsize with locked dropout
    between them (dropouth) and on the output (dropout) -> decoder tied to the embedding.

    `call(..., return_activations=True)` also returns the last layer's raw and dropped
    outputs, which AR and TAR (section 4.6) penalise.
    """

    def __init__(self, vocab_size, emsize=400, nhid=1150, nlayers=3, dropout=0.4,
                 dropouth=0.2, dropouti=0.65, dropoute=0.1, wdrop=0.5, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.emsize, self.nhid, self.nlayers = vocab_size, emsize, nhid, nlayers
        self.rates = dict(dropout=dropout, dropouth=dropouth, dropouti=dropouti,
                          dropoute=dropoute, wdrop=wdrop)
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
        self.decoder_bias = self.add_weight(shape=(self.vocab_size,), initializer="zeros",
                                            name="decoder_bias")
        self.built = True

    def initial_state(self, batch_size):
        return [(tf.zeros([batch_size, n]), tf.zeros([batch_size, n])) for n in self.sizes]

    def decoder_weights(self):
        """(W [V, E], b [V]) of the tied output layer."""
        return self.embedding.embeddings, self.decoder_bias

    def call(self, inputs, states, training=False, return_activations=False, targets=None):
        """As `LstmLanguageModel.call`."""
        h = self.input_dropout(self.embedding(inputs, training=training), training=training)
        new_states = []
        for i, (rnn, (h0, c0)) in enumerate(zip(self.rnns, states)):
            raw, h_t, c_t = rnn(h, initial_state=(h0, c0), training=training)
            new_states.append(_carried(h_t, c_t))
            drop = self.hidden_dropouts[i] if i < self.nlayers - 1 else self.output_dropout
            h = drop(raw, training=training)
        if targets is not None:
            logits = decoder_nll(h, *self.decoder_weights(), targets)
        else:
            logits = tied_logits(h, self.embedding.embeddings, self.decoder_bias)
        if return_activations:
            return logits, new_states, {"raw_last": raw, "dropped_last": h}
        return logits, new_states

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "emsize": self.emsize,
                "nhid": self.nhid, "nlayers": self.nlayers, **self.rates}


def build_model(cfg, vocab_size: int) -> keras.Model:
    """The model named by `cfg.model`, built (its weights created), its layers computing in
    `cfg.precision` (a Keras dtype policy; weights stay float32)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(cfg.precision)
    try:
        if cfg.model == "awd_lstm":
            model = AwdLstmModel(vocab_size, cfg.emsize, cfg.nhid, cfg.nlayers, cfg.dropout,
                                 cfg.dropouth, cfg.dropouti, cfg.dropoute, cfg.wdrop)
        elif cfg.model == "lstm":
            model = LstmLanguageModel(vocab_size, cfg.emsize, cfg.nhid, cfg.nlayers,
                                      cfg.dropout, cfg.tie_weights)
        else:
            raise ValueError(f"unknown --model {cfg.model!r}")
    finally:
        keras.config.set_dtype_policy(previous)
    model(tf.zeros([1, 1], tf.int32), model.initial_state(1))
    return model


def float32_twin(model: keras.Model) -> keras.Model:
    """A copy of `model` (same class and config) computing in float32; `copy_weights` fills
    it. Small-batch evaluation uses it under mixed precision: at batch 1 every matmul is a
    matrix-vector product, which runs slower in bfloat16 than in float32 on this CPU."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        twin = type(model).from_config({**model.get_config(), "dtype": "float32"})
    finally:
        keras.config.set_dtype_policy(previous)
    twin(tf.zeros([1, 1], tf.int32), twin.initial_state(1))
    return twin


def copy_weights(source: keras.Model, target: keras.Model) -> None:
    for src, dst in zip(source.variables, target.variables, strict=True):
        dst.assign(src)


def weights_checkpoint(model: keras.Model) -> tf.train.Checkpoint:
    """A checkpoint of all of the model's state: weights and dropout RNG, in
    `model.variables` order.

    `tf.train.Checkpoint(model=model)` is not enough with Keras 3: layers kept in a Python
    list (`self.rnns = [...]`) are not tracked by it and would be silently left out.
    """
    return tf.train.Checkpoint(variables=[v.value for v in model.variables])
