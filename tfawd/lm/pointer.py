"""Continuous cache pointer (Grave, Joulin & Usunier 2017, "Improving Neural Language Models
with a Continuous Cache"), as AWD-LSTM applies it at evaluation (Merity et al. 2017, section 5).

The cache holds, for each of the last `window` positions i, the last LSTM layer's output h_i
and the word that followed it, x_{i+1}. At position t the cache's distribution is

    p_cache(w) = sum_i 1[x_{i+1} = w] softmax_i(theta * h_t . h_i),

and the model predicts p(w) = (1 - lambda) p_vocab(w) + lambda p_cache(w).

Only the probability of the observed next word is needed for perplexity, so a whole segment of
T positions is scored at once: one [T, window + T] matrix of dot products with a causal band
mask, no per-token Python and no vocabulary-sized cache distribution. Differences from the
reference's pointer.py: the cache is used as soon as it holds one position (the reference waits
until it is full plus one), and any batch size works (each column is its own stream).
"""
import time

import numpy as np
import tensorflow as tf

from pipelines.bptt import bptt_dataset
from tfawd.lm.evaluation import Evaluator
from tfawd.nn import lstm_kernel
from tfawd.nn.losses import perplexity


def collect(model, ids, batch_size: int, bptt: int):
    """Runs `model` over the stream `ids` (state carried, no dropout) and returns, per column
    [B, N]: the last layer's outputs h [B, N, H], the targets, and the model's own
    log-probability of each target. At batch <= FLOAT32_MAX_BATCH a mixed-precision model
    runs as its float32 twin, as `Evaluator` scores it (faster there, and the cache's base
    perplexity is then the batch-1 evaluation's)."""
    model = Evaluator(model).scorer(batch_size)
    state_spec = [(tf.TensorSpec([batch_size, None]),) * 2 for _ in model.initial_state(1)]
    spec = tf.TensorSpec([batch_size, None], tf.int32)

    @tf.function(input_signature=[spec, spec, state_spec])
    def step(x, y, states):
        with lstm_kernel.forward_only():  # no gradient: the lean scoring recurrence
            logits, states, acts = model(x, states, training=False, return_activations=True)
        logp = -tf.nn.sparse_softmax_cross_entropy_with_logits(y, tf.cast(logits, tf.float32))
        return tf.cast(acts["raw_last"], tf.float32), logp, states

    states = model.initial_state(batch_size)
    hs, ys, logps = [], [], []
    for x, y in bptt_dataset(ids, batch_size, bptt, variable=False):
        h, logp, states = step(x, y, states)
        hs.append(h.numpy())
        ys.append(y.numpy())
        logps.append(logp.numpy())
    return np.concatenate(hs, 1), np.concatenate(ys, 1), np.concatenate(logps, 1)


@tf.function(reduce_retracing=True)
def _segment_cache_probs(mem_h, mem_y, mem_len, h, y, theta):
    """p_cache(y_t) for the T positions of one segment, per column.

    mem_h [B, W, H], mem_y [B, W] (the last W positions before the segment, oldest first; only
    the last `mem_len` are real), h [B, T, H], y [B, T]. Returns ([B, T] probabilities, [B, T]
    bool: whether position t had any cache entry)."""
    window = tf.shape(mem_h)[1]
    steps = tf.shape(h)[1]
    keys = tf.concat([mem_h, h], 1)                          # [B, W + T, H]
    values = tf.concat([mem_y, y], 1)                        # [B, W + T]
    scores = theta * tf.einsum("bth,bkh->btk", h, keys)      # [B, T, W + T]
    t = tf.range(steps)[:, None]
    k = tf.range(window + steps)[None, :]
    # Query t sits at key index W + t; it sees keys W+t-window .. W+t-1 that hold real data.
    visible = (k < window + t) & (k >= t) & (k >= window - mem_len)   # [T, W + T]
    scores = tf.where(visible[None], scores, -np.inf)
    has_cache = tf.reduce_any(visible, -1)[None] & tf.ones_like(y, tf.bool)
    attention = tf.nn.softmax(tf.where(has_cache[..., None], scores, 0.0))
    hit = tf.cast(values[:, None, :] == y[:, :, None], attention.dtype)
    probs = tf.reduce_sum(attention * hit, -1)
    return tf.where(has_cache, probs, 0.0), has_cache


def cache_probabilities(h, y, theta: float, window: int, segment: int = 512):
    """p_cache of each target of the streams h [B, N, H], y [B, N] (see `collect`), and whether
    the cache had any entry there; segments of `segment` positions, the last `window` kept."""
    batch, n, hidden = h.shape
    mem_h = np.zeros([batch, window, hidden], np.float32)
    mem_y = np.zeros([batch, window], np.int32)
    probs, has = np.zeros([batch, n], np.float32), np.zeros([batch, n], bool)
    for start in range(0, n, segment):
        hs, ys = h[:, start:start + segment], y[:, start:start + segment]
        p, c = _segment_cache_probs(mem_h, mem_y, tf.constant(min(start, window)), hs, ys,
                                    tf.constant(theta, tf.float32))
        probs[:, start:start + segment], has[:, start:start + segment] = p.numpy(), c.numpy()
        mem_h = np.concatenate([mem_h, hs], 1)[:, -window:]
        mem_y = np.concatenate([mem_y, ys], 1)[:, -window:]
    return probs, has


def mixed_nll(model_logp, cache_probs, has_cache, lam: float) -> float:
    """Mean NLL of (1 - lambda) p_vocab + lambda p_cache (p_vocab alone where the cache is
    empty)."""
    model_logp = model_logp.astype(np.float64)
    with np.errstate(divide="ignore"):  # log 0 only where the cache is empty, then unused
        mixed = np.log((1 - lam) * np.exp(model_logp) + lam * cache_probs)
    return float(-np.mean(np.where(has_cache, mixed, model_logp)))


def evaluate_with_cache(model, ids, batch_size: int, bptt: int, window: int, thetas,
                        lambdas) -> dict:
    """Perplexity with the cache for every (theta, lambda) of the grid; the model runs once,
    the cache once per theta. Returns {'nll', 'ppl', 'theta', 'lambda'} of the best pair, the
    model's plain 'base_nll'/'base_ppl', the whole 'grid', 'tokens' and 'seconds'."""
    start = time.perf_counter()
    out = cache_grid(*collect(model, ids, batch_size, bptt), window, thetas, lambdas)
    return {**out, "batch_size": batch_size, "seconds": time.perf_counter() - start}


def cache_grid(h, y, logp, window: int, thetas, lambdas) -> dict:
    """`evaluate_with_cache` on outputs already computed (`collect`'s h, y, log p_vocab; or
    those of dynamic evaluation, whose p_vocab adapts as it goes), without 'seconds'."""
    grid = []
    for theta in thetas:
        probs, has = cache_probabilities(h, y, theta, window)
        grid += [{"theta": theta, "lambda": lam, "nll": mixed_nll(logp, probs, has, lam)}
                 for lam in lambdas]
    best = min(grid, key=lambda g: g["nll"])
    base = float(-np.mean(logp, dtype=np.float64))
    return {"nll": best["nll"], "ppl": perplexity(best["nll"]), "theta": best["theta"],
            "lambda": best["lambda"], "window": window, "base_nll": base,
            "base_ppl": perplexity(base), "grid": grid, "tokens": int(y.size)}
