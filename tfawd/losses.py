"""Losses and gradient utilities shared by training and evaluation."""
import math

import tensorflow as tf


def token_nll(logits, targets):
    """Per-token negative log-likelihood [B, T] of integer targets, computed in float32."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=targets, logits=tf.cast(logits, tf.float32))


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
