"""The AWD-LSTM layers as specifications: mask statistics, sharing, scaling, identity at
inference, and the weight-dropped LSTM against a NumPy LSTM."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfawd.nn.layers import EmbeddingDropout, LockedDropout, WeightDropLSTM
from tfawd.nn.losses import activation_regularization, temporal_activation_regularization


def test_locked_dropout_mask_is_shared_across_time_and_differs_across_rows():
    x = tf.ones([64, 30, 50])
    y = LockedDropout(0.4, seed=1)(x, training=True).numpy()
    assert np.all(y == y[:, :1, :])  # identical at every time step
    masks = y[:, 0, :]
    assert len({m.tobytes() for m in masks}) == 64  # every sequence has its own mask
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.6)}  # kept units scaled by 1/(1-p)
    assert abs((masks > 0).mean() - 0.6) < 0.02  # keep rate


def test_locked_dropout_preserves_the_expectation_and_is_identity_at_inference():
    layer = LockedDropout(0.65, seed=2)
    x = tf.random.normal([16, 5, 8], seed=3)
    np.testing.assert_array_equal(layer(x, training=False), x)
    mean = np.mean([layer(tf.ones([200, 1, 50]), training=True).numpy().mean() for _ in range(20)])
    assert abs(mean - 1.0) < 0.02


def _dropout_layers(policy, rate=0.65):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        lstm = WeightDropLSTM(300, weight_dropout=rate, seed=3)
        lstm.build((None, None, 4))
        # Ones, not the orthogonal initialisation: a QR can return an exact 0.0 by cancellation
        # (5 of 2,909 builds of a 300x1200 kernel here), which reads as a dropped unit.
        lstm.recurrent_kernel.assign(tf.ones(lstm.recurrent_kernel.shape))
        return (LockedDropout(rate, seed=1),
                EmbeddingDropout(50_000, 1, dropout=rate, seed=2, embeddings_initializer="ones"),
                lstm)
    finally:
        keras.config.set_dtype_policy(previous)


def _kept(layers):
    locked, embed, lstm = layers
    outs = (locked(tf.ones([500, 1, 400], locked.compute_dtype), training=True),
            embed(tf.range(50_000)[None], training=True),
            lstm.dropped_recurrent_kernel(training=True))
    return [tf.cast(o, tf.float32).numpy() != 0 for o in outs]


def test_mixed_precision_draws_the_float32_masks_at_the_float32_keep_rate():
    """Same seed, same units dropped in float32 and mixed_bfloat16 (dropout on a bfloat16
    tensor would draw bfloat16 uniforms: other masks), so the two precisions' training runs
    differ by rounding alone (benchmarks/precision_guard.py)."""
    exact, mixed = _kept(_dropout_layers("float32")), _kept(_dropout_layers("mixed_bfloat16"))
    for a, b in zip(exact, mixed):
        np.testing.assert_array_equal(a, b)
        assert abs(b.mean() - 0.35) < 0.005  # about 2e5 draws or more


def test_locked_dropout_masks_change_between_calls():
    layer = LockedDropout(0.5, seed=4)
    a, b = layer(tf.ones([8, 3, 16]), training=True), layer(tf.ones([8, 3, 16]), training=True)
    assert not np.array_equal(a, b)


def test_embedding_dropout_drops_whole_words_everywhere_in_the_batch():
    vocab, dim = 100, 6
    layer = EmbeddingDropout(vocab, dim, dropout=0.3, seed=5)
    ids = tf.constant(np.random.default_rng(0).integers(0, vocab, size=(20, 40)), tf.int32)
    out = layer(ids, training=True).numpy()
    table = layer.embeddings.numpy()
    dropped = {}
    for word, vec in zip(ids.numpy().ravel(), out.reshape(-1, dim)):
        if np.all(vec == 0):
            dropped.setdefault(word, True)
        else:
            np.testing.assert_allclose(vec, table[word] / 0.7, rtol=1e-6)  # kept, scaled
            dropped.setdefault(word, False)
            assert dropped[word] is False  # never both dropped and kept in one batch
    rate = np.mean(list(dropped.values()))
    assert 0.15 < rate < 0.45  # ~30% of the distinct words (100 words: loose bound)
    np.testing.assert_array_equal(layer(ids, training=False), tf.gather(table, ids))


def test_embedding_dropout_keep_rate_over_a_large_vocabulary():
    layer = EmbeddingDropout(20000, 2, dropout=0.1, seed=6)
    ids = tf.range(20000)[None, :]
    out = layer(ids, training=True).numpy()
    assert abs(np.all(out == 0, axis=-1).mean() - 0.1) < 0.01


def numpy_lstm(x, h, c, kernel, recurrent, bias):
    """Reference LSTM, gates in (i, f, g, o) order as PyTorch and Keras."""
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    outs = []
    for t in range(x.shape[1]):
        i, f, g, o = np.split(x[:, t] @ kernel + h @ recurrent + bias, 4, axis=-1)
        c = sig(f) * c + sig(i) * np.tanh(g)
        h = sig(o) * np.tanh(c)
        outs.append(h)
    return np.stack(outs, 1), h, c


def _inputs(batch=3, steps=7, dim=5, units=4, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(batch, steps, dim)).astype(np.float32),
            rng.normal(size=(batch, units)).astype(np.float32) * 0.5,
            rng.normal(size=(batch, units)).astype(np.float32) * 0.5)


def test_weight_drop_lstm_without_dropout_is_a_plain_lstm():
    x, h0, c0 = _inputs()
    layer = WeightDropLSTM(4, weight_dropout=0.0, return_state=True)
    out, h, c = layer(x, initial_state=(h0, c0), training=True)
    ref = numpy_lstm(x, h0, c0, layer.kernel.numpy(), layer.recurrent_kernel.numpy(),
                     layer.bias.numpy())
    for got, want in zip((out, h, c), ref):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_one_token_calls_step_without_the_loop_and_agree_with_the_loop():
    """Generation feeds one token per call: such a window is a single `lstm_step` (no
    while loop); token by token it gives the outputs and state of the whole-window loop."""
    x, h0, c0 = _inputs(steps=6)
    layer = WeightDropLSTM(4, weight_dropout=0.0, return_state=True)
    out, h, c = layer(x, initial_state=(h0, c0))
    state, steps = (h0, c0), []
    for t in range(x.shape[1]):
        step_out, *state = layer(x[:, t:t + 1], initial_state=state)
        assert step_out.shape[1] == 1
        steps.append(step_out)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), out, rtol=1e-5, atol=1e-6)
    for got, want in zip(state, (h, c)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_weight_drop_lstm_uses_one_mask_for_every_time_step_of_a_call():
    x, h0, c0 = _inputs(steps=12)
    layer = WeightDropLSTM(4, weight_dropout=0.5, return_state=True, seed=7)
    layer.build(x.shape)
    state = layer.seed_generator.state.numpy()
    out, _, _ = layer(x, initial_state=(h0, c0), training=True)
    layer.seed_generator.state.assign(state)  # replay the draw the call made
    dropped = layer.dropped_recurrent_kernel(training=True).numpy()
    ref, _, _ = numpy_lstm(x, h0, c0, layer.kernel.numpy(), dropped, layer.bias.numpy())
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)  # all 12 steps used this mask
    u = layer.recurrent_kernel.numpy()
    kept = dropped != 0
    assert 0.4 < kept.mean() < 0.6
    np.testing.assert_allclose(dropped[kept], u[kept] / 0.5, rtol=1e-6)


def test_weight_drop_masks_differ_between_calls_and_vanish_at_inference():
    layer = WeightDropLSTM(32, weight_dropout=0.5, return_state=True, seed=8)
    layer.build((None, None, 8))
    a = layer.dropped_recurrent_kernel(training=True).numpy()
    b = layer.dropped_recurrent_kernel(training=True).numpy()
    assert not np.array_equal(a != 0, b != 0)
    np.testing.assert_array_equal(layer.dropped_recurrent_kernel(training=False),
                                  layer.recurrent_kernel.numpy())
    x, h0, c0 = _inputs(units=32, dim=8)
    out1, _, _ = layer(x, initial_state=(h0, c0), training=False)
    out2, _, _ = layer(x, initial_state=(h0, c0), training=False)
    np.testing.assert_array_equal(out1, out2)


def test_weight_drop_lstm_runs_in_a_tf_function_with_free_length_and_has_gradients():
    layer = WeightDropLSTM(6, weight_dropout=0.3, return_state=True, seed=9)
    layer.build((2, None, 3))

    @tf.function(input_signature=[tf.TensorSpec([2, None, 3])])
    def loss_and_grads(x):
        with tf.GradientTape() as tape:
            out, h, c = layer(x, training=True)
            loss = tf.reduce_sum(out) + tf.reduce_sum(c)
        return loss, tape.gradient(loss, layer.trainable_variables)

    for steps in (2, 5, 9):  # (one step from a zero state gives U no gradient, rightly)
        _, grads = loss_and_grads(tf.ones([2, steps, 3]))
        assert all(float(tf.norm(g)) > 0 for g in grads)
    assert loss_and_grads.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("layer", [
    LockedDropout(0.3, seed=1), EmbeddingDropout(10, 4, dropout=0.1, seed=2),
    WeightDropLSTM(5, weight_dropout=0.5, seed=3)])
def test_get_config_round_trips(layer):
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer)


def test_ar_and_tar_on_a_hand_computed_example():
    # one sequence, three steps, two units
    raw = tf.constant([[[1.0, 2.0], [2.0, 0.0], [4.0, 1.0]]])
    dropped = tf.constant([[[0.0, 4.0], [2.0, 0.0], [0.0, 2.0]]])
    # AR: alpha * mean of squares = 2 * (16 + 4 + 4) / 6 = 8
    assert float(activation_regularization(dropped, 2.0)) == pytest.approx(8.0)
    # TAR: diffs (1,-2), (2,1) -> squares 1,4,4,1 -> mean 2.5, times beta = 1
    assert float(temporal_activation_regularization(raw, 1.0)) == pytest.approx(2.5)


def test_the_layers_train_in_plain_model_fit():
    """Each regulariser is an ordinary Keras layer: a Sequential of them compiles and fits
    (seeded: the same losses every run), learns the task, and is deterministic at inference
    (dropout off in predict, on in fit's training calls)."""
    keras.utils.set_random_seed(0)  # the initialisers and fit's shuffling
    rng = np.random.default_rng(0)
    x = rng.integers(0, 20, size=(64, 10))
    y = (x + 1) % 20  # predict the successor
    model = keras.Sequential([
        keras.Input((None,), dtype="int32"),
        EmbeddingDropout(20, 16, dropout=0.1, seed=1),
        LockedDropout(0.2, seed=2),
        WeightDropLSTM(32, weight_dropout=0.3, seed=3),
        LockedDropout(0.2, seed=4),
        keras.layers.Dense(20),
    ])
    model.compile(keras.optimizers.Adam(0.02),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, epochs=15, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    logits = model.predict(x, verbose=0)
    assert logits.shape == (64, 10, 20)
    np.testing.assert_array_equal(model.predict(x, verbose=0), logits)  # no dropout here
    assert (logits.argmax(-1) == y).mean() > 0.95  # the successor of every word, learnt
    assert not np.allclose(model(x[:8], training=True), logits[:8])  # dropout in training
