"""A character language model of the training transcripts for shallow fusion (Gulcehre et al.
2015, "On Using Monolingual Corpora in Neural Machine Translation", section 4.1; for attention
recognisers Kannan et al. 2018, "An Analysis of Incorporating an External Language Model into a
Sequence-to-Sequence Model"): its log-probabilities, weighted, join the joint CTC/attention
beam search's score (`tfawd.speech.ctc.joint_beam_search`):

    score(y) = (1 - w) log p_att(y | x) + w log p_ctc(y | x) + beta log p_lm(y) + gamma |y|,

beta = --lm_weight, gamma = --lm_length_bonus per character (every character costs the LM
probability, so without a bonus fusion prefers short transcripts).

It learns only from the training split's transcripts (the validation speakers' transcripts
choose its best epoch; the test transcripts are never seen), and lives in the run folder
(`char_lm.weights.h5`, `char_lm.json`): trained once, read by every later evaluation.
"""
import os

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfawd.core import files

WEIGHTS, INFO = "char_lm.weights.h5", "char_lm.json"


class CharLM(keras.Model):
    """An LSTM over characters: `call` scores whole sequences (training), `step` one character
    of N hypotheses at a time (decoding); both are the same function."""

    def __init__(self, vocab_size: int, units: int = 256, embed_dim: int = 32, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.units = vocab_size, units
        self.embed = keras.layers.Embedding(vocab_size, embed_dim)
        self.cell = keras.layers.LSTMCell(units)
        self.rnn = keras.layers.RNN(self.cell, return_sequences=True)
        self.project = keras.layers.Dense(vocab_size)

    def call(self, tokens):
        """Logits [B, T, V] of each next character after inputs [B, T]."""
        return self.project(self.rnn(self.embed(tokens)))

    def initial_state(self, n: int):
        return [tf.zeros([n, self.units]), tf.zeros([n, self.units])]

    def step(self, tokens, state):
        """tokens [N] (each hypothesis's last character), state -> (log p of the next
        character [N, V], new state)."""
        h, state = self.cell(self.embed(tokens), state)
        return tf.nn.log_softmax(self.project(h)), state


def _batch(sequences, sos_id: int):
    """Label sequences (each ending in <eos>) -> inputs [B, L] (<sos> + all but the last),
    targets [B, L], mask [B, L] (padding 0)."""
    width = max(len(s) for s in sequences)
    inputs = np.zeros([len(sequences), width], np.int32)
    targets = np.zeros_like(inputs)
    for i, s in enumerate(sequences):
        inputs[i, :len(s)] = [sos_id, *s[:-1]]
        targets[i, :len(s)] = s
    return inputs, targets, (targets > 0).astype(np.float32)


def nll_per_char(model, sequences, sos_id: int) -> float:
    """Mean negative log-likelihood per character (<eos> included) of `sequences`."""
    inputs, targets, mask = _batch(sequences, sos_id)
    nll = tf.keras.losses.sparse_categorical_crossentropy(targets, model(inputs), from_logits=True)
    return float(tf.reduce_sum(nll * mask) / mask.sum())


def train(train_seqs, valid_seqs, vocab_size: int, sos_id: int, units: int = 256,
          epochs: int = 40, batch_size: int = 32, lr: float = 3e-3, seed: int = 0):
    """A `CharLM` fitted to `train_seqs` (label id sequences ending in <eos>) with Adam; the
    weights of the epoch with the lowest validation NLL per character are kept (early
    stopping: the transcripts are few). Returns (model, info)."""
    keras.utils.set_random_seed(seed)
    model = CharLM(vocab_size, units)
    optimizer = keras.optimizers.Adam(lr, clipnorm=1.0)
    model(np.zeros([1, 1], np.int32))

    @tf.function
    def fit(inputs, targets, mask):
        with tf.GradientTape() as tape:
            nll = keras.losses.sparse_categorical_crossentropy(targets, model(inputs),
                                                               from_logits=True)
            loss = tf.reduce_sum(nll * mask) / tf.reduce_sum(mask)
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                      model.trainable_variables))
        return loss

    rng = np.random.default_rng(seed)
    best, best_weights, curve = np.inf, model.get_weights(), []
    for epoch in range(epochs):
        order = rng.permutation(len(train_seqs))
        for i in range(0, len(order), batch_size):
            fit(*_batch([train_seqs[j] for j in order[i:i + batch_size]], sos_id))
        valid = nll_per_char(model, valid_seqs, sos_id)
        curve.append(round(valid, 4))
        if valid < best:
            best, best_weights = valid, model.get_weights()
    model.set_weights(best_weights)
    info = {"units": units, "epochs": epochs, "best_epoch": int(np.argmin(curve)) + 1,
            "valid_nll_per_char": best, "valid_ppl_per_char": float(np.exp(best)),
            "train_nll_per_char": nll_per_char(model, train_seqs, sos_id),
            "uniform_nll_per_char": float(np.log(vocab_size)), "valid_curve": curve,
            "train_transcripts": len(train_seqs), "valid_transcripts": len(valid_seqs)}
    return model, info


def label_sequences(dataset) -> list:
    """The "labels" (ids ending in <eos>) of a featurized split."""
    return [ex["labels"].numpy().tolist() for ex in dataset]


def for_run(cfg, vocab, data):
    """The run's character LM: read from `cfg.model_dir` if trained there with
    --char_lm_units, else trained on `data["train"]`'s transcripts (best epoch by
    `data["valid"]`'s) and saved there. (model, info)."""
    folder = files.absolute(cfg.model_dir)
    info_path, weights_path = os.path.join(folder, INFO), os.path.join(folder, WEIGHTS)
    if files.exists(info_path) and files.exists(weights_path):
        info = files.read_json(info_path)
        if info["units"] == cfg.char_lm_units:
            model = CharLM(len(vocab), info["units"])
            model(np.zeros([1, 1], np.int32))
            model.load_weights(weights_path)
            return model, info
    if "train" not in data or "valid" not in data:
        raise ValueError(f"--lm_weight needs the character LM of {folder} ({INFO}), or the "
                         "train and valid splits to train it on")
    model, info = train(label_sequences(data["train"]), label_sequences(data["valid"]),
                        len(vocab), vocab.sos_id, cfg.char_lm_units, seed=cfg.seed)
    files.makedirs(folder)
    model.save_weights(weights_path)
    files.write_json(info_path, info)
    logging.info("character LM: valid perplexity %.3f per character (uniform %d), epoch %d",
                 info["valid_ppl_per_char"], len(vocab), info["best_epoch"])
    return model, info
