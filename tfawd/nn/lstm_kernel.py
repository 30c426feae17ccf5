"""The LSTM recurrence with a hand-written backward pass, laid out for CPU speed.

What autodiff of a `tf.while_loop` LSTM does is slow on CPU in two ways: every step of the
backward loop multiplies h_{t-1}^T by the gate gradients ([H, B] x [B, 4H], a thin matmul whose
large output is then added into an accumulator), and it stores every intermediate of the forward
step. Here (as cuDNN does, and the AWD-LSTM reference gets from it):

- forward: z_t = x_t W + b (given, one matmul for the window) + h_{t-1} U; the gate activations
  (i, f, g, o) and c_t are stored, nothing else;
- backward: a loop that only propagates dh/dc and records dz_t, then the recurrent weight's
  gradient dU = [h_{-1} .. h_{T-2}]^T [dz_0 .. dz_{T-1}] as ONE matmul over the whole window
  (K = T * B instead of B), like the input weights' gradient.

Each step's element-wise work (gates, cell update; their derivatives backward) is one XLA-fused
function (`_cell_forward`, `_cell_backward`): a step is then a matmul and one fused kernel
instead of a dozen small kernels, which on CPU are paid in dispatch more than in arithmetic
(benchmarks/xla_fusion.py). The matmuls stay TensorFlow's (oneDNN): XLA's own bfloat16 matmul
is slower here (benchmarks/xla_recurrence.py). Exported graphs use standard kernels instead
(`fusion.standard_kernels`).

The state and the gate arithmetic are float32 whatever the matmul precision: with bfloat16
matmuls (mixed precision) only the products h U and dz U^T are computed in bfloat16, so the cell
state does not lose precision over a window (Micikevicius et al. 2018, mixed precision training).

    outputs [T, B, H], h_T, c_T = lstm_recurrence(z_in [T, B, 4H], h0, c0, U [H, 4H])

Gate order (i, f, g, o), the order of `keras.layers.LSTM` and of PyTorch's `nn.LSTM`.

Scoring only (`forward_only()`, evaluation at batch 1 to 4 in float32: `scoring_only`): no
gradient will be asked for, so nothing is kept for a backward pass, and the whole window is one
XLA computation (`lstm_forward`): its loop runs inside XLA, where each step of the loop above
is a matmul kernel, a fused kernel and TensorArray writes dispatched one by one, the larger
part of a step's time when the products are [1, H] x [H, 4H]. Adapting (`adapting()`, dynamic
evaluation's 5-token segments at batch 1): the same recurrence with the forward and the backward
each one XLA computation (`lstm_window`). `recurrence_for` picks among the three.
"""
import contextlib

import tensorflow as tf

from tfawd.nn import fusion


def _gates(z):
    """Activations of the pre-activations z [B, 4H] -> (i, f, g, o), float32."""
    i, f, g, o = tf.split(z, 4, axis=-1)
    return tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)


@fusion.xla
def _cell_forward(z_in, hu, c):
    """One step's gates and cell update from x_t W + b and h_{t-1} U: (h_t in U's dtype, c_t,
    the activations [i, f, g, o] kept for backward), float32 arithmetic."""
    i, f, g, o = _gates(tf.cast(z_in, tf.float32) + tf.cast(hu, tf.float32))
    c = f * c + i * g
    return tf.cast(o * tf.tanh(c), hu.dtype), c, tf.concat([i, f, g, o], -1)


@fusion.xla
def _cell_backward(acts, c, c_prev, dh, dc, d_out, dtype):
    """One backward step: from the gradients reaching h_t (dh from step t+1, d_out from the
    layer's output) and c_t, the pre-activation gradient dz_t (in `dtype`, the matmul dtype)
    and the part of dc_{t-1} through the forget gate. float32 arithmetic."""
    i, f, g, o = tf.split(acts, 4, axis=-1)
    tanh_c = tf.tanh(c)
    dh = dh + d_out
    dc = dc + dh * o * (1 - tf.square(tanh_c))
    dz = tf.concat([dc * g * i * (1 - i), dc * c_prev * f * (1 - f),
                    dc * i * (1 - tf.square(g)), dh * tanh_c * o * (1 - o)], -1)
    return tf.cast(dz, dtype), dc * f


_small_batch_mode = None  # "score" within forward_only(), "adapt" within adapting()


@contextlib.contextmanager
def _within(mode):
    global _small_batch_mode
    kept, _small_batch_mode = _small_batch_mode, mode
    try:
        yield
    finally:
        _small_batch_mode = kept


def forward_only():
    """Within (at trace time): float32 recurrences that no gradient will be asked of run as
    `lstm_forward`. For scoring graphs only: a gradient through them is not defined."""
    return _within("score")


def adapting():
    """Within (at trace time): small float32 recurrences whose gradient is asked for at every
    call (dynamic evaluation's segments) run as `lstm_window`."""
    return _within("adapt")


SCORING_MAX_BATCH = 4  # larger products keep TensorFlow's (oneDNN) matmul kernels


def scoring_only(batch_size=None, dtype=tf.float32) -> bool:
    """Whether a `forward_only()` block is being traced and a recurrence of this (static)
    batch size and matmul dtype should run as `lstm_forward`: float32 (XLA's bfloat16
    matmuls are slow here) at batch <= SCORING_MAX_BATCH, where dispatch is most of a step."""
    return _small_batch_mode == "score" and _small_float32(batch_size, dtype)


def _small_float32(batch_size, dtype) -> bool:
    return dtype == tf.float32 and batch_size is not None and batch_size <= SCORING_MAX_BATCH


def recurrence_for(batch_size=None, dtype=tf.float32):
    """The recurrence a layer calls for this (static) batch size and matmul dtype:
    `lstm_forward` when scoring small float32 batches (`forward_only()`), `lstm_window` when
    adapting them (`adapting()`), else `lstm_recurrence`."""
    if scoring_only(batch_size, dtype):
        return lstm_forward
    if _small_batch_mode == "adapt" and _small_float32(batch_size, dtype):
        return lstm_window
    return lstm_recurrence


def _lstm_forward_loop(z_in, h0, c0, recurrent):
    """`lstm_recurrence`'s forward without what its backward pass reads."""
    steps = tf.shape(z_in)[0]

    def step(t, h, c, hs):
        h, c, _ = _cell_forward(z_in[t], tf.matmul(h, recurrent), c)
        return t + 1, h, c, hs.write(t, h)

    _, h, c, hs = tf.while_loop(
        lambda t, *_: t < steps, step,
        (tf.constant(0), tf.cast(h0, recurrent.dtype), tf.cast(c0, tf.float32),
         tf.TensorArray(recurrent.dtype, size=steps)))
    return hs.stack(), tf.cast(h, tf.float32), c


@fusion.xla(fallback=lambda z_in, h0, c0, recurrent: lstm_recurrence(z_in, h0, c0, recurrent))
def lstm_forward(z_in, h0, c0, recurrent):
    """`lstm_recurrence` for scoring: the same outputs (h_1..h_T [T, B, H], h_T, c_T), the
    window's loop compiled as one XLA computation, nothing kept for a backward pass. Exported
    graphs (standard kernels) use `lstm_recurrence`."""
    return _lstm_forward_loop(z_in, h0, c0, recurrent)


def lstm_step(z_in, h, c, recurrent):
    """One step without a loop (generation reads one token at a time): z_in = x_t W + b [B, 4H],
    h/c [B, H] float32, U [H, 4H] in the matmul dtype -> (h_t in the matmul dtype, c_t float32),
    the arithmetic of one iteration of `lstm_recurrence`; differentiable by autodiff."""
    h, c, _ = _cell_forward(z_in, tf.matmul(tf.cast(h, recurrent.dtype), recurrent), c)
    return h, c


def _lstm_keep_loop(z_in, h0, c0, recurrent):
    """`lstm_recurrence`'s forward, stacked: (h_0..h_T [T + 1, B, H], c_0..c_T [T + 1, B, H],
    the gate activations [T, B, 4H], h_T, c_T)."""
    steps = tf.shape(z_in)[0]

    def step(t, h, c, hs, cs, acts):
        h, c, a = _cell_forward(z_in[t], tf.matmul(h, recurrent), c)
        return t + 1, h, c, hs.write(t + 1, h), cs.write(t + 1, c), acts.write(t, a)

    h0, c0 = tf.cast(h0, recurrent.dtype), tf.cast(c0, tf.float32)
    _, h, c, hs, cs, acts = tf.while_loop(
        lambda t, *_: t < steps, step,
        (tf.constant(0), h0, c0, tf.TensorArray(recurrent.dtype, size=steps + 1).write(0, h0),
         tf.TensorArray(tf.float32, size=steps + 1).write(0, c0),
         tf.TensorArray(tf.float32, size=steps)))
    return hs.stack(), cs.stack(), acts.stack(), tf.cast(h, tf.float32), c


def _lstm_backward_loop(hs_all, cs, acts, d_hs, d_h_last, d_c_last, recurrent):
    """`lstm_recurrence`'s backward from the stacked forward of `_lstm_keep_loop`:
    (dz [T, B, 4H], dh_0, dc_0, dU)."""
    steps = tf.shape(acts)[0]
    d_hs = tf.cast(d_hs, tf.float32)

    def back(t, dh, dc, dz_ta):
        dz, dc_prev = _cell_backward(acts[t], cs[t + 1], cs[t], dh, dc, d_hs[t],
                                     recurrent.dtype)
        # dz U^T as a dot over U's rows: a transposed copy of U made first (what the graph-mode
        # loop keeps for float32 oneDNN matmuls, `_times_transposed`) costs XLA a slow strided
        # pass over all of U at every call
        dh = tf.matmul(dz, recurrent, transpose_b=True)
        return t - 1, tf.cast(dh, tf.float32), dc_prev, dz_ta.write(t, dz)

    _, dh0, dc0, dz = tf.while_loop(
        lambda t, *_: t >= 0, back,
        (steps - 1, tf.cast(d_h_last, tf.float32), tf.cast(d_c_last, tf.float32),
         tf.TensorArray(recurrent.dtype, size=steps)))
    dz = dz.stack()
    units = tf.shape(recurrent)[0]
    d_recurrent = tf.matmul(tf.reshape(hs_all[:-1], [-1, units]), tf.reshape(dz, [-1, 4 * units]),
                            transpose_a=True)
    return dz, dh0, dc0, d_recurrent


_keep_xla = fusion.xla(_lstm_keep_loop)
_backward_xla = fusion.xla(_lstm_backward_loop)


@tf.custom_gradient
def lstm_window(z_in, h0, c0, recurrent):
    """`lstm_recurrence` with its forward and its backward each one XLA computation: for
    small float32 batches whose gradient is asked for (dynamic evaluation adapts at batch 1),
    where a step's kernels dispatched one by one are most of its time."""
    # the inputs' gradients are `grad`'s: no tape may record the loops inside (XLA would fail
    # on the while loop's gradient accumulators)
    hs_all, cs, acts, h_last, c_last = _keep_xla(
        *(tf.stop_gradient(t) for t in (z_in, h0, c0, recurrent)))

    def grad(d_hs, d_h_last, d_c_last):
        dz, dh0, dc0, d_recurrent = _backward_xla(hs_all, cs, acts, d_hs, d_h_last, d_c_last,
                                                  recurrent)
        return (tf.cast(dz, z_in.dtype), tf.cast(dh0, h0.dtype), tf.cast(dc0, c0.dtype),
                d_recurrent)

    return (hs_all[1:], h_last, c_last), grad


def _times_transposed(recurrent):
    """dz -> dz U^T for the backward loop of `lstm_recurrence`, in the faster form for U's
    dtype (oneDNN, per step [B, 4H] x [4H, H]). bfloat16: U as it is, transposed by the matmul
    (0.826 against 1.255 ms a step for a copy of U^T made once per window, batch 40, H = 1150,
    AMX Xeon; faster with AMX disabled too): oneDNN packs bf16 weights for its VNNI/AMX
    kernels, and U^T's layout is the one it must repack at every call. float32: the copy of
    U^T (faster with oneDNN capped to AVX2). Figures:
    results/before_after/lstm_backward_transpose_b_probe_intel_amx.json."""
    if recurrent.dtype == tf.bfloat16:
        return lambda dz: tf.matmul(dz, recurrent, transpose_b=True)
    recurrent_t = tf.transpose(recurrent)
    return lambda dz: tf.matmul(dz, recurrent_t)


@tf.custom_gradient
def lstm_recurrence(z_in, h0, c0, recurrent):
    """z_in: x_t W + b for every step [T, B, 4H] (float32 or the matmul dtype), h0/c0 [B, H]
    float32, recurrent U [H, 4H] in the matmul dtype. Returns (h_1..h_T [T, B, H] in the matmul
    dtype, h_T, c_T float32). Differentiable in all four inputs."""
    dtype = recurrent.dtype
    steps = tf.shape(z_in)[0]
    z_ta = tf.TensorArray(z_in.dtype, size=steps).unstack(z_in)
    # The lists the backward pass reads are kept as lists (never stacked and unstacked again);
    # c and h carry their initial value at index 0, so step t's "previous" is index t.
    keep = dict(clear_after_read=False)  # eager TensorArrays forget what was read otherwise
    acts_ta = tf.TensorArray(tf.float32, size=steps, **keep)  # post-activation gates
    cs_ta = tf.TensorArray(tf.float32, size=steps + 1, **keep).write(0, tf.cast(c0, tf.float32))
    hs_ta = tf.TensorArray(dtype, size=steps + 1).write(0, tf.cast(h0, dtype))

    def step(t, h, c, acts_ta, cs_ta, hs_ta):
        h, c, acts = _cell_forward(z_ta.read(t), tf.matmul(h, recurrent), c)
        return (t + 1, h, c, acts_ta.write(t, acts), cs_ta.write(t + 1, c),
                hs_ta.write(t + 1, h))

    _, h_last, c_last, acts_ta, cs_ta, hs_ta = tf.while_loop(
        lambda t, *_: t < steps, step,
        (tf.constant(0), tf.cast(h0, dtype), tf.cast(c0, tf.float32), acts_ta, cs_ta, hs_ta))
    hs_all = hs_ta.stack()  # [T + 1, B, H]: h_0 .. h_T
    hs = hs_all[1:]  # slices of the leading axis share the buffer (no copy)

    def grad(d_hs, d_h_last, d_c_last):
        d_hs_ta = tf.TensorArray(tf.float32, size=steps).unstack(tf.cast(d_hs, tf.float32))
        dz_ta = tf.TensorArray(dtype, size=steps)
        times_recurrent_t = _times_transposed(recurrent)

        def back(t, dh, dc, dz_ta):
            dz, dc_prev = _cell_backward(acts_ta.read(t), cs_ta.read(t + 1), cs_ta.read(t), dh,
                                         dc, d_hs_ta.read(t), dtype)
            dh_prev = tf.cast(times_recurrent_t(dz), tf.float32)
            return t - 1, dh_prev, dc_prev, dz_ta.write(t, dz)

        _, dh0, dc0, dz_ta = tf.while_loop(
            lambda t, *_: t >= 0, back,
            (steps - 1, tf.cast(d_h_last, tf.float32), tf.cast(d_c_last, tf.float32), dz_ta))
        dz = dz_ta.stack()  # [T, B, 4H]
        units = tf.shape(recurrent)[0]
        d_recurrent = tf.matmul(tf.reshape(hs_all[:-1], [-1, units]),  # h_0 .. h_{T-1}
                                tf.reshape(dz, [-1, 4 * units]), transpose_a=True)
        return (tf.cast(dz, z_in.dtype), tf.cast(dh0, h0.dtype), tf.cast(dc0, c0.dtype),
                d_recurrent)

    return (hs, tf.cast(h_last, tf.float32), c_last), grad
