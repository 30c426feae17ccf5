"""The hand-written LSTM recurrence (tfawd/nn/lstm_kernel.py) against autodiff of a plain loop."""
import contextlib

import numpy as np
import pytest
import tensorflow as tf

from tfawd.nn import fusion
from tfawd.nn.lstm_kernel import lstm_recurrence, lstm_step, lstm_window


def plain_lstm(z_in, h0, c0, recurrent):
    """The textbook recurrence, differentiated by TensorFlow (float32)."""
    h, c, hs = h0, c0, []
    for t in range(z_in.shape[0]):
        i, f, g, o = tf.split(z_in[t] + h @ recurrent, 4, axis=-1)
        c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
        h = tf.sigmoid(o) * tf.tanh(c)
        hs.append(h)
    return tf.stack(hs), h, c


def inputs(steps=6, batch=3, units=5, seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *s: tf.constant(rng.normal(size=s), tf.float32)  # noqa: E731
    return f(steps, batch, 4 * units), f(batch, units), f(batch, units), f(units, 4 * units) * 0.5


def loss_and_grads(fn, z, h0, c0, u, weights):
    with tf.GradientTape() as tape:
        tape.watch([z, h0, c0, u])
        hs, h, c = fn(z, h0, c0, u)
        # every output reaches the loss with its own weights (hs, h_T and c_T all matter)
        loss = (tf.reduce_sum(tf.cast(hs, tf.float32) * weights[0])
                + tf.reduce_sum(h * weights[1]) + tf.reduce_sum(c * weights[2]))
    return (hs, h, c), tape.gradient(loss, [z, h0, c0, u])


@pytest.mark.parametrize("xla,fn", [(True, lstm_recurrence), (False, lstm_recurrence),
                                    (True, lstm_window)],
                         ids=["xla_fused_steps", "standard_kernels", "window_as_xla_loops"])
def test_outputs_and_all_four_gradients_equal_autodiff_of_the_plain_loop(xla, fn):
    z, h0, c0, u = inputs()
    rng = np.random.default_rng(1)
    weights = [tf.constant(rng.normal(size=s), tf.float32) for s in ([6, 3, 5], [3, 5], [3, 5])]
    want_out, want_grads = loss_and_grads(plain_lstm, z, h0, c0, u, weights)
    with contextlib.nullcontext() if xla else fusion.standard_kernels():
        got_out, got_grads = loss_and_grads(fn, z, h0, c0, u, weights)
    for got, want in zip(got_out + tuple(got_grads), want_out + tuple(want_grads)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_bfloat16_gradients_follow_the_float32_ones():
    """The bf16 backward (dz U^T by a transposed matmul of U, not a copy of U^T) computes the
    same gradients as float32 up to bfloat16's rounding."""
    z, h0, c0, u = inputs(steps=8, batch=4, units=16)
    rng = np.random.default_rng(2)
    weights = [tf.constant(rng.normal(size=s), tf.float32) for s in ([8, 4, 16], [4, 16],
                                                                    [4, 16])]
    _, want = loss_and_grads(lstm_recurrence, z, h0, c0, u, weights)
    rounded = tf.cast(tf.cast(u, tf.bfloat16), tf.float32)  # the same U, rounded as bf16 sees it
    _, ref = loss_and_grads(lstm_recurrence, tf.cast(tf.cast(z, tf.bfloat16), tf.float32), h0,
                            c0, rounded, weights)
    _, got = loss_and_grads(lambda z, h0, c0, u: lstm_recurrence(
        tf.cast(z, tf.bfloat16), h0, c0, tf.cast(u, tf.bfloat16)), z, h0, c0, u, weights)
    for g, r, w in zip(got, ref, want):
        g = tf.cast(g, tf.float32).numpy()
        scale = np.abs(w).max()
        assert np.abs(g - r).max() < 0.03 * scale, np.abs(g - r).max() / scale
        assert np.corrcoef(g.ravel(), np.asarray(w).ravel())[0, 1] > 0.999


def test_it_runs_in_a_tf_function_for_any_length_without_retracing():
    z, h0, c0, u = inputs(steps=7)

    @tf.function(input_signature=[tf.TensorSpec([None, 3, 20]), tf.TensorSpec([3, 5]),
                                  tf.TensorSpec([3, 5]), tf.TensorSpec([5, 20])])
    def grads(z, h0, c0, u):
        with tf.GradientTape() as tape:
            tape.watch(u)
            hs, _, _ = lstm_recurrence(z, h0, c0, u)
            loss = tf.reduce_sum(hs)
        return tape.gradient(loss, u)

    for steps in (7, 3, 1):
        _, want = loss_and_grads(plain_lstm, z[:steps], h0, c0, u,
                                 [tf.ones([steps, 3, 5]), tf.zeros([3, 5]), tf.zeros([3, 5])])
        np.testing.assert_allclose(grads(z[:steps], h0, c0, u), want[3], rtol=1e-5, atol=1e-6)
    assert grads.experimental_get_tracing_count() == 1


def test_bfloat16_matmuls_keep_a_float32_state_close_to_the_float32_result():
    """Mixed precision: U and the outputs in bfloat16, h_T/c_T and the cell math float32."""
    z, h0, c0, u = inputs(steps=20, batch=4, units=16)
    hs32, h32, c32 = lstm_recurrence(z, h0, c0, u)
    hs16, h16, c16 = lstm_recurrence(tf.cast(z, tf.bfloat16), h0, c0, tf.cast(u, tf.bfloat16))
    assert hs16.dtype == tf.bfloat16 and h16.dtype == tf.float32 and c16.dtype == tf.float32
    np.testing.assert_allclose(c16, c32, atol=0.05)
    np.testing.assert_allclose(tf.cast(hs16, tf.float32), hs32, atol=0.03)
    assert np.abs(c16 - c32).mean() < 0.01
    np.testing.assert_array_equal(h16, tf.cast(hs16[-1], tf.float32))  # h_T: the last output
    np.testing.assert_allclose(h16, h32, atol=0.03)
    # the cell state is not rounded to bfloat16 at any step: it keeps float32's bits
    as_bf16 = tf.cast(tf.cast(c16, tf.bfloat16), tf.float32)
    assert np.mean(as_bf16.numpy() != c16.numpy()) > 0.9


@pytest.mark.parametrize("steps", [1, 2])
def test_short_windows(steps):
    """Windows of one and two steps (the loops run once or twice): outputs, h_T, c_T and all
    four gradients equal the plain loop's; the outputs are the first steps of a 6-step
    window's from the same state; a one-step window is one `lstm_step` (what generation runs)."""
    z6, h0, c0, u = inputs(steps=6)
    z = z6[:steps]
    rng = np.random.default_rng(2)
    w = [tf.constant(rng.normal(size=s), tf.float32) for s in ([steps, 3, 5], [3, 5], [3, 5])]
    want_out, want_grads = loss_and_grads(plain_lstm, z, h0, c0, u, w)
    got_out, got_grads = loss_and_grads(lstm_recurrence, z, h0, c0, u, w)
    assert got_out[0].shape == (steps, 3, 5)
    for got, want in zip(got_out + tuple(got_grads), want_out + tuple(want_grads), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got_out[0][-1], got_out[1])  # h_T is the last output
    longer, _, _ = lstm_recurrence(z6, h0, c0, u)
    np.testing.assert_allclose(got_out[0], longer[:steps], rtol=1e-6, atol=1e-7)
    if steps == 1:
        h, c = lstm_step(z[0], h0, c0, u)
        np.testing.assert_allclose(h, got_out[1], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(c, got_out[2], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("steps", [2, 7])
def test_the_scoring_recurrence_equals_the_training_one(steps, monkeypatch):
    """`lstm_forward` (one XLA computation a window, nothing kept for backward) gives the
    outputs, h_T and c_T of `lstm_recurrence`; a model traced in `forward_only()` runs it in
    every layer and scores as the model traced outside it."""
    from tfawd.lm.models import AwdLstmModel
    from tfawd.nn import lstm_kernel
    from tfawd.nn.lstm_kernel import forward_only, lstm_forward, scoring_only
    z, h0, c0, u = inputs(steps=steps)
    for got, want in zip(lstm_forward(z, h0, c0, u), lstm_recurrence(z, h0, c0, u)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    model = AwdLstmModel(50, emsize=8, nhid=12, nlayers=2)
    x = tf.constant(np.random.default_rng(3).integers(0, 50, size=(1, steps)), tf.int32)
    states = model.initial_state(1)
    model(x, states)  # built
    want, want_states = tf.function(lambda x, states: model(x, states, targets=x))(x, states)
    calls = []
    monkeypatch.setattr(lstm_kernel, "lstm_forward",
                        lambda *a: calls.append(1) or lstm_forward(*a))

    @tf.function
    def scored(x, states):
        with forward_only():
            assert scoring_only(1) and not scoring_only(8) and not scoring_only(1, tf.bfloat16)
            return model(x, states, targets=x)

    got, got_states = scored(x, states)
    assert not scoring_only(1) and len(calls) == 2  # both layers, once (one trace)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for got_hc, want_hc in zip(got_states, want_states):
        np.testing.assert_allclose(got_hc, want_hc, rtol=1e-5, atol=1e-6)


def test_the_recurrence_is_picked_by_mode_batch_and_dtype():
    """Small float32 batches run as one XLA computation a window: `lstm_forward` when scoring,
    `lstm_window` when adapting (gradients asked for); anything else, and outside both
    modes, the hand-written recurrence (oneDNN matmuls a step)."""
    from tfawd.nn.lstm_kernel import adapting, forward_only, lstm_forward, recurrence_for
    assert recurrence_for(1) is lstm_recurrence
    with forward_only():
        assert recurrence_for(1) is lstm_forward and recurrence_for(4) is lstm_forward
        assert recurrence_for(5) is lstm_recurrence
        assert recurrence_for(1, tf.bfloat16) is lstm_recurrence
        assert recurrence_for(None) is lstm_recurrence  # batch unknown when traced
    with adapting():
        assert recurrence_for(1) is lstm_window and recurrence_for(8) is lstm_recurrence
        assert recurrence_for(1, tf.bfloat16) is lstm_recurrence
    assert recurrence_for(1) is lstm_recurrence
