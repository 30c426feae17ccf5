"""Location-aware attention (Chorowski et al. 2015, "Attention-Based Models for Speech
Recognition", section 2.1).

Content-based attention (as `tfawd.speech.las.dot_attention`) scores each encoder frame by its
similarity to the decoder state alone, so a frame that sounds like the next character scores
high wherever it is in the utterance. Location-aware attention also sees where the previous
step attended: k filters F of width r convolve the previous weights alpha_{i-1},
    f_i = F * alpha_{i-1}                                   (k features per frame j, f_{i,j})
    e_{i,j} = w^T tanh(W s_{i-1} + V h_j + U f_{i,j} + b)
    alpha_{i,j} = exp(e_{i,j}) / sum_j' exp(e_{i,j'})
    context c_i = sum_j alpha_{i,j} h_j (here: the values)
so the energies can prefer frames just after the previous focus (a monotonic left-to-right
alignment) without being told to. V h_j (the keys) does not depend on the step: the caller
computes it once per utterance (e.g. the listener's key projection, without bias: b is here).

Conventions as `dot_attention`: mask [B, T] bool (True on real frames); padded frames get energy
`NEG` and the softmax is multiplied by the mask, so their weight is exactly 0.
"""
import keras
import tensorflow as tf

from tfawd.speech.las import NEG


def initial_weights(mask, uniform=False):
    """The "previous" attention weights of the first decoder step, [B, T] float32.

    Default: all mass on the first frame. Speech alignments are monotonic and start at the
    beginning of the utterance, so a one-hot at frame 0 gives the location features of step 1 the
    position the alignment should leave from, the same prior `las.Speller`'s attention window
    uses (peak frame 0 before the first step). A uniform alpha_0 (`uniform=True`, the choice of
    ESPnet's location-aware attention) carries no position: the convolution of a constant is
    constant except near the edges, so step 1 is then (almost) content-only. Both give an
    utterance without frames all-zero weights."""
    mask = tf.cast(mask, tf.float32)
    if uniform:
        return mask / tf.maximum(tf.reduce_sum(mask, axis=1, keepdims=True), 1.0)
    first = tf.one_hot(tf.zeros(tf.shape(mask)[:1], tf.int32), tf.shape(mask)[1])
    return first * mask


@keras.saving.register_keras_serializable("tfawd")
class LocationAwareAttention(keras.layers.Layer):
    """Chorowski et al. (2015) section 2.1's location-aware attention (module docstring).

    attention_dim: the size of W s, V h, U f and w. filters (k) and kernel_size (r, odd: the
    convolution is centred, so frame j's features see the previous weights of frames
    j - (r-1)/2 .. j + (r-1)/2, zero beyond the ends). Kernels of ~200 frames are common for
    10 ms encoder frames (e.g. ESPnet's r = 201); AN4's pyramid encoder steps are several times
    longer, so the default r = 31 still covers 15 steps either side of the previous focus, far
    more than the alignment moves per character.

    Weights: query_kernel W [A_q, A], location_kernel F [r, 1, k], location_projection U [k, A],
    bias b [A], energy_kernel w [A, 1].

    call(query [B, A_q] (s_{i-1}), keys [B, T, A] (V h_j), values [B, T, D], mask [B, T] bool,
    previous_weights [B, T]) -> (context [B, D] in the compute dtype, weights [B, T] float32).
    The energies are masked and normalised in float32 whatever the dtype policy (as Keras does
    for softmax under mixed precision), and the weights stay float32, so they can be fed back
    as `previous_weights` of the next step in a `tf.while_loop` under any policy."""

    def __init__(self, attention_dim, filters=10, kernel_size=31, **kwargs):
        super().__init__(**kwargs)
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (a centred convolution): {kernel_size}")
        self.attention_dim, self.filters, self.kernel_size = attention_dim, filters, kernel_size

    def build(self, query_shape):
        a, k = self.attention_dim, self.filters
        self.query_kernel = self.add_weight(name="query_kernel", shape=(query_shape[-1], a),
                                            initializer="glorot_uniform")
        self.location_kernel = self.add_weight(name="location_kernel",
                                               shape=(self.kernel_size, 1, k),
                                               initializer="glorot_uniform")
        self.location_projection = self.add_weight(name="location_projection", shape=(k, a),
                                                   initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(a,), initializer="zeros")
        self.energy_kernel = self.add_weight(name="energy_kernel", shape=(a, 1),
                                             initializer="glorot_uniform")

    def location_features(self, previous_weights):
        """f_i = F * alpha_{i-1}: [B, T] -> [B, T, k] (a centred cross-correlation)."""
        kernel = tf.cast(self.location_kernel, self.compute_dtype)
        alpha = tf.cast(previous_weights, self.compute_dtype)[:, :, None]
        return tf.nn.conv1d(alpha, kernel, stride=1, padding="SAME")

    def energies(self, query, keys, previous_weights):
        """e_{i,j} = w^T tanh(W s_{i-1} + V h_j + U f_{i,j} + b): [B, T] in the compute dtype."""
        cast = lambda v: tf.cast(v, self.compute_dtype)  # noqa: E731
        projected = tf.matmul(cast(query), cast(self.query_kernel))[:, None, :]
        location = tf.einsum("btk,ka->bta", self.location_features(previous_weights),
                             cast(self.location_projection))
        hidden = tf.tanh(cast(keys) + projected + location + cast(self.bias))
        return tf.squeeze(tf.einsum("bta,ao->bto", hidden, cast(self.energy_kernel)), -1)

    def call(self, query, keys, values, mask, previous_weights):
        energies = tf.cast(self.energies(query, keys, previous_weights), tf.float32)
        mask = tf.cast(mask, tf.bool)
        energies = tf.where(mask, energies, NEG)
        weights = tf.nn.softmax(energies, axis=-1) * tf.cast(mask, tf.float32)
        context = tf.einsum("bt,btd->bd", tf.cast(weights, values.dtype), values)
        return context, weights

    def get_config(self):
        return {**super().get_config(), "attention_dim": self.attention_dim,
                "filters": self.filters, "kernel_size": self.kernel_size}
