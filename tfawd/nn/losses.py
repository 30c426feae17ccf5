"""Losses and gradient utilities shared by training and evaluation."""
import math

import tensorflow as tf

from tfawd.nn import fusion


def token_nll(logits, targets):
    """Per-token negative log-likelihood [B, T] of integer targets, computed in float32."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=targets, logits=tf.cast(logits, tf.float32))


# WikiText-2's 33,278 words padded to 33,280: at the paper config's shape (N = 5,600 tokens,
# E = 400, bf16) the output layer's forward + backward (`decoder_nll`) took 898 against 979 ms,
# its three products 158.6 / 159.7 / 168.0 against 206.6 / 200.0 / 176.2 ms (forward, dX, dW;
# medians of 4 alternated rounds, 2-core Intel Xeon with AMX, `benchmarks/vocab_align.py`:
# results/before_after/vocab_align_probe_intel_amx.json).
VOCAB_ALIGN = 64
PAD_LOGIT = -1e30  # exp(PAD_LOGIT - lse) is exactly 0 in float32


@fusion.xla
def _nll_from_products(products, bias, targets):
    """(NLL [N], log-sum-exp [N]) of the logits `products` [N, V] + `bias`, in float32.

    XLA fuses the cast, bias add, max, exp-sum and pick into loops over `products` instead of
    the [N, V] float32 temporaries TensorFlow's kernels would write one by one."""
    logits = tf.cast(products, tf.float32) + bias
    lse = tf.reduce_logsumexp(logits, axis=-1)
    return lse - tf.gather(logits, targets[:, None], batch_dims=1)[:, 0], lse


def _logits_gradient_unfused(products, bias, lse, targets, d):
    """`_logits_gradient` for standard kernels: the one-hot subtracted by a scatter instead
    of an [N, V] one-hot tensor."""
    d_logits = tf.exp(tf.cast(products, tf.float32) + bias - lse[:, None]) * d[:, None]
    picks = tf.stack([tf.range(tf.shape(targets)[0]), targets], axis=1)
    d_logits = tf.tensor_scatter_nd_sub(d_logits, picks, d)
    return tf.cast(d_logits, products.dtype), tf.reduce_sum(d_logits, axis=0)


@fusion.xla(fallback=_logits_gradient_unfused)
def _logits_gradient(products, bias, lse, targets, d):
    """(d_logits = (softmax - one_hot) * d in the products' dtype [N, V], its row sum = the
    bias gradient [V]), recomputing the softmax from `products` in one fused loop."""
    probs = tf.exp(tf.cast(products, tf.float32) + bias - lse[:, None])
    d_logits = (probs - tf.one_hot(targets, tf.shape(products)[1])) * d[:, None]
    return tf.cast(d_logits, products.dtype), tf.reduce_sum(d_logits, axis=0)


def decoder_nll(h, weights, bias, targets):
    """Per-token NLL [...] of `targets` [...] under softmax(h W^T + b), h [..., E] in the compute
    precision, W [V, E] and b [V] float32: the output layer and the cross-entropy as one
    function with a hand-written gradient.

    The matmuls run in h's precision (bfloat16 under mixed precision), the softmax and the loss
    in float32. The [N, V] products h W^T are the only [N, V] tensor kept for the backward pass;
    everything element-wise over them (bias, log-sum-exp, softmax - one_hot, the bias gradient)
    runs in two XLA-fused loops, where autodiff of `token_nll(tied_logits(...))` runs a dozen
    kernels each writing an [N, V] float32 temporary. Same function, same gradients
    (tests/test_losses_and_eval.py); measured in benchmarks/xla_fusion.py.

    The vocabulary is padded to a multiple of `VOCAB_ALIGN` inside (zero rows of W, bias
    `PAD_LOGIT`: probability exactly 0, gradient exactly 0, cut off before it is returned):
    oneDNN's bf16 products are faster on aligned sizes (see `VOCAB_ALIGN`).
    """
    dims = tf.shape(targets)
    flat_h = tf.reshape(h, [-1, h.shape[-1]])
    flat_targets = tf.reshape(tf.cast(targets, tf.int32), [-1])
    vocab = weights.shape[0]
    pad = -vocab % VOCAB_ALIGN

    @tf.custom_gradient
    def nll(flat_h, weights, bias):
        w = tf.pad(tf.cast(weights, flat_h.dtype), [[0, pad], [0, 0]])
        bias = tf.pad(bias, [[0, pad]], constant_values=PAD_LOGIT)
        products = tf.matmul(flat_h, w, transpose_b=True)
        out, lse = _nll_from_products(products, bias, flat_targets)

        def grad(d):
            d_logits, d_bias = _logits_gradient(products, bias, lse, flat_targets, d)
            d_w = tf.matmul(d_logits, flat_h, transpose_a=True)[:vocab]
            return tf.matmul(d_logits, w), tf.cast(d_w, weights.dtype), d_bias[:vocab]

        return out, grad

    return tf.reshape(nll(flat_h, weights, tf.cast(bias, tf.float32)), dims)


def decoder_nll_and_gradients(flat_h, weights, bias, targets):
    """`decoder_nll` of inputs [N, E] (float32) with the gradients of their mean NLL, for a
    caller that applies the weight's gradient d_logits^T flat_h without writing it out
    (dynamic evaluation): (nll [N], d_logits [N, V], d_h [N, E], d_bias [V])."""
    products = tf.matmul(flat_h, weights, transpose_b=True)
    nll, lse = _nll_from_products(products, bias, targets)
    n = tf.shape(targets)[0]
    d = tf.fill([n], 1.0 / tf.cast(n, tf.float32))
    d_logits, d_bias = _logits_gradient(products, bias, lse, targets, d)
    return nll, d_logits, tf.matmul(d_logits, weights), d_bias


def perplexity(mean_nll: float) -> float:
    return math.exp(min(mean_nll, 700.0))


def dedupe_sparse(grad):
    """Sums the rows of an IndexedSlices gradient that share an index (others pass through).

    An embedding gradient lists a row once per occurrence of the word; its norm (for
    clipping) is only right once repeated rows are added together.
    """
    if not isinstance(grad, tf.IndexedSlices):
        return grad
    unique, position = tf.unique(grad.indices)
    values = tf.math.unsorted_segment_sum(grad.values, position, tf.shape(unique)[0])
    return tf.IndexedSlices(values, unique, grad.dense_shape)


def clip_gradients(grads, clip_norm: float):
    """(grads clipped to global norm `clip_norm` (0: unclipped), global norm before clipping)."""
    grads = [dedupe_sparse(g) for g in grads]
    if clip_norm:
        return tf.clip_by_global_norm(grads, clip_norm)
    return grads, tf.linalg.global_norm(grads)


def activation_regularization(dropped_last, alpha: float):
    """AR (Merity et al. 2017, section 4.6): alpha * mean(m * h_t)^2 over the last layer's
    output after its (locked) dropout, [B, T, H]; penalises large activations."""
    return alpha * tf.reduce_mean(tf.square(tf.cast(dropped_last, tf.float32)))


def temporal_activation_regularization(raw_last, beta: float):
    """TAR (section 4.6): beta * mean(h_t - h_{t+1})^2 over the last layer's raw output
    [B, T, H] (before dropout); penalises fast-changing hidden states."""
    raw = tf.cast(raw_last, tf.float32)
    return beta * tf.reduce_mean(tf.square(raw[:, 1:] - raw[:, :-1]))
