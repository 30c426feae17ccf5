"""tfawd.speech.attention: location-aware attention's masking, that its convolution of the
previous weights moves the attention, gradients, tf.function/while_loop use, mixed precision
and serialisation."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfawd.speech.attention import LocationAwareAttention, initial_weights

B, T, AQ, A, D = 4, 12, 5, 6, 4
LENGTHS = [12, 7, 1, 0]  # the last utterance has no frames: all weights 0


def inputs(seed=0, padded_junk=1e4):
    rng = np.random.default_rng(seed)
    mask = np.arange(T)[None, :] < np.array(LENGTHS)[:, None]
    keys = rng.normal(size=(B, T, A)).astype(np.float32)
    values = rng.normal(size=(B, T, D)).astype(np.float32)
    values[~mask] = padded_junk  # must not reach the context
    keys[~mask] = padded_junk
    prev = rng.uniform(size=(B, T)).astype(np.float32) * mask
    prev /= np.maximum(prev.sum(1, keepdims=True), 1e-9)
    query = rng.normal(size=(B, AQ)).astype(np.float32)
    return query, keys, values, mask, prev


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_weights_normalised_over_unpadded_frames_and_zero_on_padding(dtype):
    layer = LocationAwareAttention(A, filters=3, kernel_size=5, dtype=dtype)
    query, keys, values, mask, prev = inputs()
    context, weights = layer(query, keys, values, mask, prev)
    assert weights.dtype == tf.float32
    assert context.dtype == (tf.bfloat16 if dtype == "mixed_bfloat16" else tf.float32)
    assert all(v.dtype == "float32" for v in layer.weights)
    w = weights.numpy()
    assert np.all(w[~mask] == 0.0)
    np.testing.assert_allclose(w.sum(1), np.minimum(LENGTHS, 1), atol=1e-6)
    assert np.all(w[mask] > 0)
    assert not context.numpy()[-1].any()
    tol = 0.05 if dtype == "mixed_bfloat16" else 1e-5
    for b, n in enumerate(LENGTHS[:-1]):  # the same as each utterance alone, without padding
        ctx_b, w_b = layer(query[b:b + 1], keys[b:b + 1, :n], values[b:b + 1, :n],
                           mask[b:b + 1, :n], prev[b:b + 1, :n])
        np.testing.assert_allclose(w_b.numpy()[0], w[b, :n], atol=tol)
        np.testing.assert_allclose(np.float32(ctx_b.numpy()[0]), np.float32(context.numpy()[b]),
                                   atol=tol, rtol=tol)


def test_initial_weights():
    mask = tf.sequence_mask([4, 2, 0], 5)
    first = initial_weights(mask).numpy()
    assert first.tolist() == [[1, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    uniform = initial_weights(mask, uniform=True).numpy()
    np.testing.assert_allclose(uniform, [[.25] * 4 + [0], [.5, .5, 0, 0, 0], [0] * 5])


def shifting_layer(shift, kernel_size=9):
    """W = 0 and keys (V h) = 0, one filter that copies the previous weight of frame j - shift,
    U and w pass it through: e_j = tanh(4 alpha_{i-1, j - shift}), so the new peak is the old
    one moved by `shift` frames."""
    layer = LocationAwareAttention(4, filters=2, kernel_size=kernel_size)
    layer.build((None, AQ))
    centre = kernel_size // 2
    f = np.zeros((kernel_size, 1, 2), np.float32)
    f[centre - shift, 0, 0] = 1.0  # SAME cross-correlation: f_j = alpha_{j + m - centre}
    u = np.zeros((2, 4), np.float32)
    u[0, 0] = 4.0
    w = np.zeros((4, 1), np.float32)
    w[0, 0] = 1.0
    layer.set_weights([np.zeros((AQ, 4), np.float32), f, u, np.zeros(4, np.float32), w])
    return layer


@pytest.mark.parametrize("shift", [-3, -1, 0, 1, 2, 4])
def test_attention_follows_the_previous_peak(shift):
    layer = shifting_layer(shift)
    rng = np.random.default_rng(1)
    query = rng.normal(size=(1, AQ)).astype(np.float32)
    keys, values = np.zeros((1, T, 4), np.float32), rng.normal(size=(1, T, D)).astype(np.float32)
    mask = np.ones((1, T), bool)
    for peak in range(max(0, -shift), min(T, T - shift)):
        prev = np.exp(-0.5 * (np.arange(T) - peak) ** 2)[None].astype(np.float32)
        _, weights = layer(query, keys, values, mask, prev / prev.sum())
        assert int(np.argmax(weights.numpy()[0])) == peak + shift, peak


def test_energies_depend_on_the_previous_weights():
    layer = LocationAwareAttention(A, filters=3, kernel_size=5)
    query, keys, values, mask, prev = inputs(padded_junk=0.0)
    layer.build(query.shape)
    e1 = layer.energies(query, keys, prev).numpy()
    e2 = layer.energies(query, keys, np.roll(prev, 2, axis=1)).numpy()
    assert np.abs(e1 - e2)[0].max() > 1e-3


def test_gradients_reach_every_weight():
    layer = LocationAwareAttention(A, filters=3, kernel_size=5)
    query, keys, values, mask, prev = inputs(padded_junk=0.0)
    query, keys, values = (tf.Variable(x) for x in (query, keys, values))
    rng = np.random.default_rng(2)
    with tf.GradientTape() as tape:
        context, weights = layer(query, keys, values, mask, prev)
        loss = (tf.reduce_sum(context * rng.normal(size=(B, D)).astype(np.float32))
                + tf.reduce_sum(weights * rng.normal(size=(B, T)).astype(np.float32)))
    sources = layer.trainable_weights + [query, keys, values]
    assert len(layer.trainable_weights) == 5
    for var, grad in zip(sources, tape.gradient(loss, sources)):
        assert grad is not None and float(tf.reduce_max(tf.abs(grad))) > 0, var.name


def run_steps(layer, queries, keys, values, mask, prev):
    """Steps of attention in a tf.function while_loop, each reading the previous weights."""

    @tf.function
    def run(queries, keys, values, mask, prev):
        steps = tf.shape(queries)[0]

        def body(i, prev, contexts, all_weights):
            context, weights = layer(queries[i], keys, values, mask, prev)
            return i + 1, weights, contexts.write(i, context), all_weights.write(i, weights)

        init = (tf.constant(0), prev, tf.TensorArray(layer.compute_dtype, size=steps),
                tf.TensorArray(tf.float32, size=steps))
        _, _, contexts, all_weights = tf.while_loop(lambda i, *_: i < steps, body, init)
        return contexts.stack(), all_weights.stack()

    return run(queries, keys, values, mask, prev)


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_while_loop_matches_eager_steps(dtype):
    layer = LocationAwareAttention(A, filters=3, kernel_size=5, dtype=dtype)
    _, keys, values, mask, _ = inputs(padded_junk=0.0)
    queries = np.random.default_rng(3).normal(size=(4, B, AQ)).astype(np.float32)
    prev = initial_weights(mask)
    contexts, weights = run_steps(layer, queries, keys, values, mask, prev)  # builds it inside
    assert weights.dtype == tf.float32 and contexts.shape == (4, B, D)
    for i in range(4):
        context, prev = layer(queries[i], keys, values, mask, prev)
        tol = 1e-2 if dtype == "mixed_bfloat16" else 1e-6
        np.testing.assert_allclose(weights[i].numpy(), prev.numpy(), atol=tol)
        np.testing.assert_allclose(tf.cast(contexts[i], tf.float32).numpy(),
                                   tf.cast(context, tf.float32).numpy(), atol=tol * 5)


def test_while_loop_peak_moves_by_the_shift_each_step():
    layer = shifting_layer(2)
    mask = np.ones((1, T), bool)
    queries = np.zeros((5, 1, AQ), np.float32)
    _, weights = run_steps(layer, queries, np.zeros((1, T, 4), np.float32),
                           np.ones((1, T, D), np.float32), mask, initial_weights(mask))
    assert np.argmax(weights.numpy()[:, 0], axis=-1).tolist() == [2, 4, 6, 8, 10]


def test_serialisation_round_trip():
    layer = LocationAwareAttention(A, filters=3, kernel_size=7, dtype="mixed_bfloat16")
    query, keys, values, mask, prev = inputs(padded_junk=0.0)
    context, weights = layer(query, keys, values, mask, prev)
    config = keras.saving.serialize_keras_object(layer)
    clone = keras.saving.deserialize_keras_object(config)
    assert isinstance(clone, LocationAwareAttention)
    assert clone.get_config() == layer.get_config()
    assert (clone.attention_dim, clone.filters, clone.kernel_size) == (A, 3, 7)
    assert clone.dtype_policy.name == "mixed_bfloat16"
    assert clone.built  # from the serialised build config
    clone.set_weights(layer.get_weights())
    context2, weights2 = clone(query, keys, values, mask, prev)
    np.testing.assert_array_equal(weights2.numpy(), weights.numpy())
    np.testing.assert_array_equal(tf.cast(context2, tf.float32).numpy(),
                                  tf.cast(context, tf.float32).numpy())
    with pytest.raises(ValueError, match="odd"):
        LocationAwareAttention(A, kernel_size=4)
