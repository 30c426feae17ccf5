"""The AWD-LSTM regularisers as Keras layers (Merity, Keskar & Socher 2017, arXiv:1708.02182).

Each layer is one idea of the paper, usable on its own (also in `model.fit`), identity at
inference (`training=False`) and serialisable (`get_config` round-trips):

- `LockedDropout` (section 4.2, variational dropout): one mask per sequence and feature,
  shared by all time steps.
- `EmbeddingDropout` (section 4.3): drops whole words, i.e. rows of the embedding matrix.
- `WeightDropLSTM` (section 2, weight-dropped LSTM): DropConnect on the hidden-to-hidden
  matrix, one mask per call, shared by every time step of that call.
"""
import math

import keras
import tensorflow as tf

from tfawd.core.distribute import replica_rows_of
from tfawd.nn import lstm_kernel
from tfawd.nn.lstm_kernel import lstm_step


def dropout_mask(shape, rate, seed_generator, dtype):
    """A Bernoulli(1 - rate) / (1 - rate) mask of `shape`, drawn in float32 and returned in
    `dtype`. Dropout applied to a bfloat16 tensor draws bfloat16 uniforms, i.e. other masks
    than the float32 model draws from the same seed; drawn in float32, a mixed-precision run
    and a float32 run of one seed drop the same units, so they differ by precision alone."""
    return tf.cast(keras.random.dropout(tf.ones(shape), rate, seed=seed_generator), dtype)


@keras.saving.register_keras_serializable("tfawd")
class LockedDropout(keras.layers.Dropout):
    """Variational dropout on [batch, time, features]: a Bernoulli(1 - rate) mask of shape
    [batch, 1, features], scaled by 1 / (1 - rate), reused at every time step (section 4.2)."""

    def __init__(self, rate, seed=None, **kwargs):
        kwargs.pop("noise_shape", None)
        super().__init__(rate, noise_shape=(None, 1, None), seed=seed, **kwargs)

    def call(self, inputs, training=False):
        if not training or self.rate == 0:
            return inputs
        shape = tf.shape(inputs)
        # Under tf.distribute: this replica's rows of the global batch's mask, so a run over
        # several replicas drops what one process drops (`distribute.replica_rows_of`).
        return inputs * replica_rows_of(
            lambda rows: dropout_mask([rows, 1, shape[2]], self.rate, self.seed_generator,
                                      inputs.dtype), shape[0])


@keras.saving.register_keras_serializable("tfawd")
class EmbeddingDropout(keras.layers.Embedding):
    """An embedding whose rows (words) are dropped with probability `dropout` during
    training, the kept rows scaled by 1 / (1 - dropout): every occurrence of a dropped word in
    the batch embeds to zero (section 4.3). Scaling the looked-up vectors by the looked-up
    row mask is the same as looking up in the masked matrix, without a vocab-sized product."""

    def __init__(self, input_dim, output_dim, dropout=0.0, seed=None, **kwargs):
        super().__init__(input_dim, output_dim, **kwargs)
        self.dropout = dropout
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):
        outputs = super().call(inputs)
        if not training or self.dropout == 0:
            return outputs
        rows = dropout_mask([self.input_dim, 1], self.dropout, self.seed_generator,
                            outputs.dtype)
        return outputs * tf.gather(rows, tf.cast(inputs, tf.int32))

    def compute_output_spec(self, inputs, training=False):
        return super().compute_output_spec(inputs)  # dropout does not change the shape

    def get_config(self):
        return {**super().get_config(), "dropout": self.dropout, "seed": self.seed}


def _gpu_available() -> bool:
    return bool(tf.config.list_logical_devices("GPU"))


@keras.saving.register_keras_serializable("tfawd")
class WeightDropLSTM(keras.layers.Layer):
    """An LSTM layer with DropConnect on its hidden-to-hidden matrix U (section 2).

    Gates (i, f, g, o) = x W + h U' + b, with U' = U * mask / (1 - p): the mask is drawn
    once per call (per batch) and shared by every time step of the window, so the recurrent
    connections are regularised without touching the fused recurrence. `weight_dropout=0`
    makes it a plain LSTM. Weights start uniform in +-1/sqrt(units), as PyTorch's nn.LSTM
    (the reference code's) does.

    The computation is laid out for speed: the input projections of all time steps are one
    matmul, then a lean `tf.while_loop` applies h U' per step. On a GPU the dropped U' is
    handed to the fused cuDNN kernel instead, as the reference hands it to cuDNN.

    call(inputs [B, T, D], initial_state=(h, c) or None, training) -> outputs [B, T, units],
    or (outputs, h_T, c_T) with `return_state=True` (Keras' convention, so the layer also
    stacks in a `Sequential`).
    """

    INITS = ("pytorch", "keras")

    def __init__(self, units, weight_dropout=0.0, return_state=False, seed=None,
                 init="pytorch", **kwargs):
        super().__init__(**kwargs)
        if not 0 <= weight_dropout < 1:
            raise ValueError(f"weight_dropout must be in [0, 1), got {weight_dropout}")
        if init not in self.INITS:
            raise ValueError(f"init must be one of {self.INITS}, got {init!r}")
        self.units = units
        self.weight_dropout = weight_dropout
        self.return_state = return_state
        self.seed = seed
        self.init = init
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _initializers(self):
        """(kernel, recurrent, bias) initializers: "pytorch" is nn.LSTM's uniform
        +-1/sqrt(units) for all three (the AWD-LSTM reference's); "keras" is
        keras.layers.LSTM's: Glorot-uniform inputs, orthogonal recurrence, zero bias with the
        forget gate's at 1 (Jozefowicz et al. 2015), which learns faster at small rates."""
        if self.init == "pytorch":
            init = keras.initializers.RandomUniform(-1 / math.sqrt(self.units),
                                                    1 / math.sqrt(self.units))
            return init, init, init
        units = self.units

        def bias(shape, dtype=None):
            return tf.concat([tf.zeros([units]), tf.ones([units]), tf.zeros([2 * units])], 0)

        return (keras.initializers.GlorotUniform(), keras.initializers.Orthogonal(), bias)

    def build(self, input_shape):
        kernel_init, recurrent_init, bias_init = self._initializers()
        self.kernel = self.add_weight(shape=(input_shape[-1], 4 * self.units),
                                      initializer=kernel_init, name="kernel")
        self.recurrent_kernel = self.add_weight(shape=(self.units, 4 * self.units),
                                                initializer=recurrent_init,
                                                name="recurrent_kernel")
        self.bias = self.add_weight(shape=(4 * self.units,), initializer=bias_init, name="bias")

    def dropped_recurrent_kernel(self, training=False):
        """U' for this call: U with DropConnect applied when training."""
        kernel = tf.convert_to_tensor(self.recurrent_kernel)
        if not training or self.weight_dropout == 0:
            return kernel
        return kernel * dropout_mask(tf.shape(kernel), self.weight_dropout, self.seed_generator,
                                     kernel.dtype)

    def call(self, inputs, initial_state=None, training=False):
        batch = tf.shape(inputs)[0]
        if initial_state is None:
            zeros = tf.zeros([batch, self.units])
            initial_state = (zeros, zeros)
        h0, c0 = (tf.cast(s, tf.float32) for s in initial_state)
        recurrent = tf.cast(self.dropped_recurrent_kernel(training), self.compute_dtype)
        if _gpu_available():
            from keras.src import backend  # Keras' cuDNN LSTM entry point
            try:
                h0, c0 = (tf.cast(s, self.compute_dtype) for s in (h0, c0))
                _, outputs, (h, c) = backend.lstm(
                    inputs, h0, c0, None, self.kernel, recurrent, self.bias,
                    activation=tf.tanh, recurrent_activation=tf.sigmoid, return_sequences=True)
                return (outputs, h, c) if self.return_state else outputs
            except NotImplementedError:
                pass
        outputs, h, c = self._loop(inputs, h0, c0, recurrent)
        return (outputs, h, c) if self.return_state else outputs

    def _loop(self, inputs, h0, c0, recurrent):
        """All input projections in one matmul, then h_t = f(x_t W + b + h_{t-1} U') with the
        hand-written recurrence of `lstm_kernel` (float32 state, one dU matmul per window); a
        window of one step (known when traced) is a single `lstm_step`."""
        kernel, bias = (tf.cast(w, self.compute_dtype) for w in (self.kernel, self.bias))
        if inputs.shape[1] == 1:  # one token (generation, serving): one step, no loop
            h, c = lstm_step(tf.matmul(inputs[:, 0], kernel) + bias, h0, c0, recurrent)
            return h[:, None], tf.cast(h, tf.float32), c
        # time-major inputs, then one plain matmul: as fast as the einsum "btd,dg->tbg" in
        # training, faster at batch 1 (results/before_after/projection_matmul_vs_einsum_*.json,
        # eval_speed_*_window_xla_*.json)
        flat = tf.reshape(tf.transpose(inputs, [1, 0, 2]), [-1, inputs.shape[-1]])
        projected = tf.reshape(tf.matmul(flat, kernel) + bias,
                               [tf.shape(inputs)[1], tf.shape(inputs)[0], kernel.shape[-1]])
        recurrence = lstm_kernel.recurrence_for(inputs.shape[0], recurrent.dtype)
        hs, h, c = recurrence(projected, h0, c0, recurrent)
        return tf.transpose(hs, [1, 0, 2]), h, c

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "weight_dropout": self.weight_dropout, "return_state": self.return_state,
                "seed": self.seed, "init": self.init}
