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
from tfawd.lm.models import copy_weights, float32_twin
from tfawd.nn import fusion, lstm_kernel
from tfawd.nn.losses import decoder_nll_and_gradients, perplexity


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


def _step(v, g, v0, r, lr, lam, inv_mean_rms, epsilon):
    """The update of the module doc for one weight (element-wise): decay toward theta_0 at
    rate r = RMS_g / mean(RMS_g), capped so that it never overshoots, and the RMS-normalised
    gradient step."""
    cap = 1.0 / tf.maximum(lam, 1e-12)
    return v + lam * tf.minimum(r * inv_mean_rms, cap) * (v0 - v) - lr * g / (r + epsilon)


@fusion.xla
def _adapt(values, grads, trained, rms, lr, lam, inv_mean_rms, epsilon):
    """`_step` for every weight, each one XLA-fused pass that reads the weight, its gradient,
    its trained value and its RMS and writes the weight (the decay rate is recomputed in the
    pass rather than read: one tensor less of memory traffic a segment)."""
    return [_step(v, g, v0, r, lr, lam, inv_mean_rms, epsilon)
            for v, g, v0, r in zip(values, grads, trained, rms)]


@fusion.xla
def _adapt_tied(value, trained, rms, d_logits, inputs, rows, row_grads, lr, lam, inv_mean_rms,
                epsilon):
    """`_step` of the tied embedding / output matrix W [V, E] without its gradient ever
    written out: the output layer's part is the rank-N product d_logits^T inputs of the
    segment's N tokens, summed as N outer products inside the one fused pass over W (which
    reads W, theta_0 and RMS and writes W), and the embedding's part touches only the N rows
    it looked up (`rows`, `row_grads`), scattered into the result."""
    product = d_logits[0][:, None] * inputs[0][None, :]
    for k in range(1, d_logits.shape[0]):  # N is static: the segment length
        product += d_logits[k][:, None] * inputs[k][None, :]
    new = _step(value, product, trained, rms, lr, lam, inv_mean_rms, epsilon)
    return tf.tensor_scatter_nd_sub(new, rows[:, None],
                                    lr * row_grads / (tf.gather(rms, rows) + epsilon))


LOG_EVERY = 5000  # segments between progress lines
CHUNK = 500  # segments a graph call adapts to (no Python or host sync in between)


def update_bytes(model) -> int:
    """Bytes of memory one segment's update must move: every trainable weight's value,
    gradient, trained value and RMS read, and the value written (float32)."""
    return 5 * 4 * int(sum(np.prod(v.shape) for v in model.trainable_variables))


class DynamicEvaluator:
    """Scores a stream while adapting `model`'s weights segment by segment (see module doc).

    `rms` comes from `gradient_rms`. The segments run in chunks of `chunk` per graph call (a
    `tf.while_loop`: score, gradient and update of each segment on the graph, the loss summed
    there, the trained weights in variables rather than arguments), so the per-segment cost is
    the model's forward + backward and one pass over the weights. A
    mixed-precision model adapts as its float32 twin (faster at batch 1, and exact); `model`
    itself is never changed. The trained weights are restored after every `evaluate`, so one
    evaluator can try several (lr, lambda) pairs.
    """

    def __init__(self, model, rms, epsilon: float = 2e-5, chunk: int = CHUNK):
        self.source = model
        if model.compute_dtype != "float32":  # batch 1 runs faster and exactly in float32
            model = float32_twin(model)
        self.model = model
        self.variables = model.trainable_variables
        self.rms = [tf.constant(r) for r in rms]
        self.inv_mean_rms = tf.constant(1.0 / np.mean([float(np.mean(r)) for r in rms]),
                                        tf.float32)
        self.epsilon = epsilon
        self.chunk = chunk
        self.trained = [tf.Variable(v, trainable=False) for v in self.variables]
        self._chunks = {}  # (segment length, keep outputs) -> compiled chunk
        self._tied = self._tied_decoder()

    def _tied_decoder(self):
        """(index of W, index of b) among the variables when the model's output layer is the
        full softmax over its embedding matrix W (tied), else None: then `_adapt_tied` updates
        W from the segment's rank-N output gradient (see `_segment_tied`)."""
        if getattr(self.model, "softmax_kind", "full") != "full":
            return None
        w, b = self.model.decoder_weights()  # untied: W is the kernel transposed, no variable
        ids = [id(v) for v in self.variables]
        if id(w) not in ids or id(b) not in ids:
            return None
        return ids.index(id(w)), ids.index(id(b))

    def _segment_tied(self, x, y, states, lr, lam):
        """One segment of a tied full-softmax model: the features' gradients by the tape, the
        output layer's by hand (`decoder_nll_and_gradients`), W's update by `_adapt_tied`."""
        model, variables, (w_at, b_at) = self.model, self.variables, self._tied
        with tf.GradientTape() as tape:
            h, states, acts = model.features(x, states, training=False)
        w, b = model.decoder_weights()
        flat_h = tf.reshape(h, [-1, h.shape[-1]])
        nll, d_logits, d_h, d_b = decoder_nll_and_gradients(
            flat_h, tf.convert_to_tensor(w), tf.convert_to_tensor(b), tf.reshape(y, [-1]))
        grads = tape.gradient(h, variables, output_gradients=tf.reshape(d_h, tf.shape(h)))
        grads[b_at] = d_b
        rows = grads[w_at]  # the embedding lookup's rows (an IndexedSlices)
        rest = [i for i in range(len(variables)) if i != w_at]
        adapted = _adapt([tf.convert_to_tensor(variables[i]) for i in rest],
                         [tf.convert_to_tensor(grads[i]) for i in rest],
                         [self.trained[i].read_value() for i in rest],
                         [self.rms[i] for i in rest], lr, lam, self.inv_mean_rms, self.epsilon)
        for i, new in zip(rest, adapted):
            variables[i].assign(new)
        variables[w_at].assign(_adapt_tied(
            tf.convert_to_tensor(variables[w_at]), self.trained[w_at].read_value(),
            self.rms[w_at], d_logits, flat_h, rows.indices, rows.values, lr, lam,
            self.inv_mean_rms, self.epsilon))
        return nll[None], states, acts

    def _make_chunk(self, bptt: int, keep: bool):
        """A graph call over `ids` [n * bptt + 1]: n segments scored then adapted to, in order.
        Returns (sum of the targets' NLL, new states, and with `keep` the last layer's outputs
        [n * bptt, H] and the targets' log-probabilities [n * bptt])."""
        model, variables = self.model, self.variables
        nlayers = len(model.initial_state(1))
        width = model.initial_state(1)[-1][0].shape[-1]
        state_spec = [(tf.TensorSpec([1, None]),) * 2 for _ in range(nlayers)]
        scalar = tf.TensorSpec([], tf.float32)

        def segment(x, y, states, lr, lam):
            if self._tied is not None:
                nll, states, acts = self._segment_tied(x, y, states, lr, lam)
                return nll[0], states, tf.cast(acts["raw_last"], tf.float32)[0]
            with tf.GradientTape() as tape:  # the fused output layer + NLL, as training
                nll, states, acts = model(x, states, training=False, targets=y,
                                          return_activations=True)
                loss = tf.reduce_mean(nll)
            grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]
            adapted = _adapt([tf.convert_to_tensor(v) for v in variables], grads,
                             [v.read_value() for v in self.trained], self.rms, lr, lam,
                             self.inv_mean_rms, self.epsilon)
            for v, new in zip(variables, adapted):
                v.assign(new)
            return nll[0], states, tf.cast(acts["raw_last"], tf.float32)[0]
        # Not compiled as one XLA cluster (`jit_compile=True` here): faster a segment of the
        # CPU model on the AVX512_BF16 EPYC, exact NLL, but the process segfaulted in it in a
        # longer test session (tests/test_adaptive_models.py, the cache on top of it).

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int32), state_spec, scalar,
                                      scalar])
        def chunk(ids, states, lr, lam):
            n = (tf.shape(ids)[0] - 1) // bptt
            total = tf.constant(0.0, tf.float64)
            h_out = tf.TensorArray(tf.float32, size=n if keep else 0, element_shape=[bptt, width])
            lp_out = tf.TensorArray(tf.float32, size=n if keep else 0, element_shape=[bptt])
            flat = [t for layer in states for t in layer]
            for i in tf.range(n):
                tf.autograph.experimental.set_loop_options(
                    shape_invariants=[(t, tf.TensorShape([1, None])) for t in flat])
                x = tf.slice(ids, [i * bptt], [bptt])[None]
                y = tf.slice(ids, [i * bptt + 1], [bptt])[None]
                states = [tuple(flat[2 * j:2 * j + 2]) for j in range(nlayers)]
                with lstm_kernel.adapting():  # the recurrences' loops as XLA computations
                    nll, states, h = segment(x, y, states, lr, lam)
                flat = [t for layer in states for t in layer]
                total += tf.cast(tf.reduce_sum(nll), tf.float64)
                if keep:
                    h_out = h_out.write(i, h)
                    lp_out = lp_out.write(i, -nll)
            states = [tuple(flat[2 * j:2 * j + 2]) for j in range(nlayers)]
            if keep:
                return total, states, h_out.concat(), lp_out.concat()
            return total, states

        return chunk

    def _run(self, ids, bptt, states, lr, lam, keep):
        key = (bptt, keep)
        if key not in self._chunks:
            self._chunks[key] = self._make_chunk(bptt, keep)
        return self._chunks[key](tf.constant(ids, tf.int32), states, lr, lam)

    def evaluate(self, ids, lr: float, lam: float, bptt: int = 5,
                 keep_outputs: bool = False) -> dict:
        """{'nll', 'ppl', 'tokens', 'seconds', 'tokens_per_s', 'lr', 'lambda', 'bptt'}: every
        target of `ids` scored once, by the weights adapted to all previous segments. With
        `keep_outputs` also 'outputs': (h [1, N, H], y [1, N], log p [1, N]) as
        `tfawd.lm.pointer.collect` gives them, for the cache pointer on top (`cache_grid`)."""
        ids = np.asarray(ids, np.int32)
        if self.model is not self.source:  # the twin takes the model's current weights
            copy_weights(self.source, self.model)
        for v, t in zip(self.variables, self.trained):
            t.assign(v)
        start, total = time.perf_counter(), 0.0
        states = self.model.initial_state(1)
        lr, lam = tf.constant(lr, tf.float32), tf.constant(lam, tf.float32)
        tokens = len(ids) - 1
        full, tail = divmod(tokens, bptt)
        # chunk bounds (in segments): at most self.chunk long, ending on every LOG_EVERY
        bounds = sorted(set(list(range(0, full, self.chunk)) + list(range(0, full, LOG_EVERY))
                            + [full]))
        kept = []
        try:
            for a, b in zip(bounds, bounds[1:]):
                out = self._run(ids[a * bptt:b * bptt + 1], bptt, states, lr, lam, keep_outputs)
                total += float(out[0])
                states = out[1]
                if keep_outputs:
                    kept.append((out[2].numpy(), out[3].numpy()))
                if b % LOG_EVERY == 0:  # a whole split takes minutes: say how far it is
                    count = b * bptt
                    logging.info("dynamic eval: %d / %d tokens, ppl so far %.2f, %.0f tokens/s",
                                 count, tokens, perplexity(total / count),
                                 count / (time.perf_counter() - start))
            if tail:  # the last, shorter segment
                out = self._run(ids[full * bptt:], tail, states, lr, lam, keep_outputs)
                total += float(out[0])
                if keep_outputs:
                    kept.append((out[2].numpy(), out[3].numpy()))
        finally:
            for v, v0 in zip(self.variables, self.trained):
                v.assign(v0)
        seconds = time.perf_counter() - start
        mean = total / tokens
        out = {"nll": mean, "ppl": perplexity(mean), "tokens": tokens, "seconds": seconds,
               "tokens_per_s": tokens / seconds, "lr": float(lr), "lambda": float(lam),
               "bptt": bptt}
        if keep_outputs:
            h = np.concatenate([k[0] for k in kept])[None]
            logp = np.concatenate([k[1] for k in kept])[None]
            out["outputs"] = (h, ids[None, 1:], logp)
        return out

    def tune(self, ids, lrs, lambdas, bptt: int = 5) -> dict:
        """Grid search of (lr, lambda) on `ids` (validation); the best result plus 'grid'."""
        grid = [self.evaluate(ids, lr, lam, bptt) for lam in lambdas for lr in lrs]
        best = min(grid, key=lambda g: g["nll"])
        return {**best, "grid": [{k: g[k] for k in ("lr", "lambda", "nll", "ppl")}
                                 for g in grid]}
