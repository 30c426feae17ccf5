"""Dynamic evaluation (Krause, Kahembwe, Murray & Renals 2018, "Dynamic Evaluation of Neural
Sequence Models", arXiv:1709.07432), the RMS-normalised variant with decay toward the trained
weights that gives their best AWD-LSTM results.

The evaluation stream is cut into short segments s_1, s_2, ... (batch 1). Each segment is
scored with the current weights first, then the weights adapt to it:

    theta <- theta - eta * grad L(s_i) / (RMS_g + eps) + lambda * r (theta_0 - theta),

where RMS_g is the root mean square of each weight's gradient over training data (collected
once, `gradient_rms`), theta_0 the trained weights, and r = RMS_g / mean(RMS_g) the decay rate
per weight (its mean over each tensor averaged over tensors is 1), clipped at 1 / lambda so that
decay never overshoots theta_0. With eta = 0 nothing moves: dynamic evaluation is then exactly
static evaluation with the same segments.
"""
import time

import numpy as np
import tensorflow as tf
from absl import logging

from pipelines.bptt import bptt_dataset
from tfawd.nn import fusion
from tfawd.nn.losses import perplexity, token_nll


def gradient_rms(model, train_ids, batch_size: int = 100, bptt: int = 5, max_batches: int = 0):
    """RMS over training windows of the gradient of the mean loss, per trainable variable
    (the statistics the update divides by), with the model's state carried and no dropout.
    The squares are summed on the graph (float32 accumulators), not copied out per window."""
    variables = model.trainable_variables
    sums = [tf.Variable(tf.zeros(v.shape), trainable=False) for v in variables]
    spec = tf.TensorSpec([batch_size, None], tf.int32)
    state_spec = [(tf.TensorSpec([batch_size, None]),) * 2 for _ in model.initial_state(1)]

    @tf.function(input_signature=[spec, spec, state_spec])
    def accumulate(x, y, states):
        with tf.GradientTape() as tape:
            nll, states = model(x, states, training=False, targets=y)
            loss = tf.reduce_mean(nll)
        for total, g in zip(sums, tape.gradient(loss, variables)):
            total.assign_add(tf.square(tf.convert_to_tensor(g)))
        return states

    states, count = model.initial_state(batch_size), 0
    for x, y in bptt_dataset(train_ids, batch_size, bptt, variable=False):
        states = accumulate(x, y, states)
        count += 1
        if max_batches and count >= max_batches:
            break
    return [np.sqrt(total.numpy() / count).astype(np.float32) for total in sums]


@fusion.xla
def _adapt(values, grads, trained, rms, decay_rate, lr, lam, epsilon):
    """The update of the module doc for every weight, each one XLA-fused loop (the same
    arithmetic as separate TensorFlow kernels: 3x slower in isolation)."""
    cap = 1.0 / tf.maximum(lam, 1e-12)  # decay never overshoots theta_0
    return [v + lam * tf.minimum(rate, cap) * (v0 - v) - lr * g / (r + epsilon)
            for v, g, v0, r, rate in zip(values, grads, trained, rms, decay_rate)]


LOG_EVERY = 5000  # segments between progress lines


class DynamicEvaluator:
    """Scores a stream while adapting `model`'s weights segment by segment (see module doc).

    `rms` comes from `gradient_rms`. The trained weights are restored after every
    `evaluate`, so one evaluator can try several (lr, lambda) pairs.
    """

    def __init__(self, model, rms, epsilon: float = 2e-5):
        self.model = model
        self.variables = model.trainable_variables
        self.rms = [tf.constant(r) for r in rms]
        mean_rms = np.mean([float(np.mean(r)) for r in rms])
        self.decay_rate = [tf.constant(r / mean_rms, tf.float32) for r in rms]
        self.epsilon = epsilon
        self._step = None

    def _make_step(self):
        model, variables = self.model, self.variables
        spec = tf.TensorSpec([1, None], tf.int32)
        state_spec = [(tf.TensorSpec([1, None]),) * 2 for _ in model.initial_state(1)]
        scalar = tf.TensorSpec([], tf.float32)

        @tf.function(input_signature=[spec, spec, state_spec, scalar, scalar] +
                     [[tf.TensorSpec(v.shape, v.dtype) for v in variables]])
        def step(x, y, states, lr, lam, trained):
            with tf.GradientTape() as tape:
                logits, states, acts = model(x, states, training=False,
                                             return_activations=True)
                nll = token_nll(logits, y)
                loss = tf.reduce_mean(nll)
            grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]
            adapted = _adapt([tf.convert_to_tensor(v) for v in variables], grads, trained, self.rms,
                             self.decay_rate, lr, lam, self.epsilon)
            for v, new in zip(variables, adapted):
                v.assign(new)
            return nll, states, tf.cast(acts["raw_last"], tf.float32)

        return step

    def evaluate(self, ids, lr: float, lam: float, bptt: int = 5,
                 keep_outputs: bool = False) -> dict:
        """{'nll', 'ppl', 'tokens', 'seconds', 'tokens_per_s', 'lr', 'lambda', 'bptt'}: every
        target of `ids` scored once, by the weights adapted to all previous segments. With
        `keep_outputs` also 'outputs': (h [1, N, H], y [1, N], log p [1, N]) as
        `tfawd.lm.pointer.collect` gives them, for the cache pointer on top (`cache_grid`)."""
        self._step = self._step or self._make_step()
        trained = [tf.identity(v) for v in self.variables]
        start, total, count = time.perf_counter(), 0.0, 0
        states = self.model.initial_state(1)
        lr, lam = tf.constant(lr, tf.float32), tf.constant(lam, tf.float32)
        kept = []
        try:
            for segment, (x, y) in enumerate(bptt_dataset(ids, 1, bptt, variable=False), 1):
                nll, states, h = self._step(x, y, states, lr, lam, trained)
                total += float(tf.reduce_sum(nll))
                count += int(tf.size(y))
                if keep_outputs:
                    kept.append((h.numpy(), y.numpy(), -nll.numpy()))
                if segment % LOG_EVERY == 0:  # a whole split takes minutes: say how far it is
                    logging.info("dynamic eval: %d / %d tokens, ppl so far %.2f, %.0f tokens/s",
                                 count, len(ids) - 1, perplexity(total / count),
                                 count / (time.perf_counter() - start))
        finally:
            for v, v0 in zip(self.variables, trained):
                v.assign(v0)
        seconds = time.perf_counter() - start
        mean = total / count
        out = {"nll": mean, "ppl": perplexity(mean), "tokens": count, "seconds": seconds,
               "tokens_per_s": count / seconds, "lr": float(lr), "lambda": float(lam),
               "bptt": bptt}
        if keep_outputs:
            out["outputs"] = tuple(np.concatenate(part, 1) for part in zip(*kept))
        return out

    def tune(self, ids, lrs, lambdas, bptt: int = 5) -> dict:
        """Grid search of (lr, lambda) on `ids` (validation); the best result plus 'grid'."""
        grid = [self.evaluate(ids, lr, lam, bptt) for lam in lambdas for lr in lrs]
        best = min(grid, key=lambda g: g["nll"])
        return {**best, "grid": [{k: g[k] for k in ("lr", "lambda", "nll", "ppl")}
                                 for g in grid]}
